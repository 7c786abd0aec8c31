//! The `tessera` binary as a library: command line, role settings (TOML +
//! `TESSERA_*` env + flags), the three long-running roles, the `dev`
//! supervisor that runs a whole cluster as child processes, the `admin`
//! CLI and the `bench` S3 load generator. `main` only parses flags, sets
//! up logging and calls [`run`]; tests drive the same code.
//!
//! This is the top layer: it may depend on every other tessera crate, and
//! none may depend on it. It talks to running nodes only through
//! `tessera-proto` clients.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod fsutil;
pub mod health;
pub mod logging;
pub mod roles;
pub mod shutdown;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};
use config::{GatewaySettings, MetaSettings, StorageSettings};

/// Log filter when neither `--log-level` nor RUST_LOG is given: operator
/// commands stay quiet, servers say what they do.
pub fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Admin(_) | Command::Bench(_) | Command::Health(_) => "warn",
        _ => "info",
    }
}

/// Exit status of a node that stopped for a cause a restart may cure
/// (`EX_TEMPFAIL`): a node of any role that panicked (outside a gateway's
/// request handlers, see `tessera_observe::crash`), or a meta node whose
/// Raft log or state machine write failed, e.g. on a full disk.
/// Supervisors restart it (systemd `Restart=on-failure`, Kubernetes,
/// compose `restart: unless-stopped`; `tessera dev` too, with a backoff).
pub const EXIT_RESTART: u8 = tessera_observe::crash::EXIT_RESTART as u8;

/// Runs the parsed command until it finishes or `shutdown` is cancelled.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<ExitCode> {
    match cli.command {
        Command::Meta(args) => {
            let s = MetaSettings::load(&args)?;
            if args.print_config {
                print!("{}", config::render_toml(&s.listen, &s.config)?);
            } else {
                tessera_observe::crash::crash_stop_on_panic("meta");
                if let Err(e) = roles::run_meta(s, shutdown).await {
                    let raft_stopped = e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<tessera_meta::MetaNodeError>(),
                            Some(tessera_meta::MetaNodeError::RaftStopped(_))
                        )
                    });
                    if !raft_stopped {
                        return Err(e);
                    }
                    // At once, like a crash: the node's tasks still hold
                    // sled, which cannot be dropped after the I/O error
                    // that stopped Raft (see `tessera_meta::serve`).
                    tessera_observe::stderr_line(format_args!("tessera: error: {e:#}"));
                    std::process::exit(i32::from(EXIT_RESTART));
                }
            }
        }
        Command::Storage(args) => {
            let s = StorageSettings::load(&args)?;
            if args.print_config {
                print!("{}", config::render_toml(&s.listen, &s.config)?);
            } else {
                tessera_observe::crash::crash_stop_on_panic("storage");
                roles::run_storage(s, shutdown).await?;
            }
        }
        Command::Gateway(args) => {
            let s = GatewaySettings::load(&args)?;
            if args.print_config {
                print!("{}", config::render_toml(&s.listen, &s.config)?);
            } else {
                tessera_observe::crash::crash_stop_on_panic("gateway");
                roles::run_gateway(s, shutdown).await?;
            }
        }
        Command::Dev(args) => {
            let opts = dev::DevOptions {
                data_dir: args.data_dir,
                port_base: args.port_base,
                storage_nodes: args.storage_nodes,
                zones: args.zones,
                k: args.k,
                m: args.m,
                region: args.region,
                ready_timeout: Duration::from_secs(args.ready_timeout),
                binary: None,
                log_level: cli.log.log_level,
                worker_threads: cli.worker_threads.map(usize::from),
                suspect_after_ms: args.suspect_after_ms,
                down_after_ms: args.down_after_ms,
                tls: args.tls,
            };
            let mut cluster = match dev::DevCluster::start_cancellable(opts, shutdown.clone()).await
            {
                Ok(c) => c,
                // Ctrl-C while starting: what was started is stopped.
                Err(_) if shutdown.is_cancelled() => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(e),
            };
            // Not println!, which panics when stdout cannot be written.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stdout(),
                format_args!("{}\n", cluster.banner()),
            );
            cluster.supervise(&shutdown).await;
            cluster.stop().await?;
        }
        Command::Admin(args) => return admin::run(args).await,
        Command::Bench(args) => return bench::run(args, shutdown).await,
        Command::Health(args) => return health::run(args).await,
    }
    Ok(ExitCode::SUCCESS)
}
