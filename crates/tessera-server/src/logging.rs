//! Logging to stderr with `tracing-subscriber`: a filter from `--log-level`
//! (or RUST_LOG, or a per-command default), text or JSON lines. Logging
//! never fails the caller: lines that cannot be written are lost.

use std::io::IsTerminal;

use anyhow::{anyhow, Context, Result};
use tracing_subscriber::EnvFilter;

use crate::cli::LogArgs;

/// Installs the global subscriber. `default_filter` applies when neither
/// `--log-level` nor RUST_LOG is set.
pub fn init(args: &LogArgs, default_filter: &str) -> Result<()> {
    let filter = match (&args.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => {
            EnvFilter::try_new(level).with_context(|| format!("invalid --log-level `{level}`"))?
        }
        (None, Ok(env)) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).with_context(|| format!("invalid RUST_LOG `{env}`"))?
        }
        _ => EnvFilter::try_new(default_filter)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped. By default the
        // logger reports the failure with `eprintln!`, which panics when
        // stderr cannot be written either: a node whose log file was on a
        // full disk panicked in every task that logged (the gateway
        // dropped each such request without an answer; a meta node could
        // abort, panicking again while sled unwound).
        .log_internal_errors(false)
        // Children of `tessera dev` log to files: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal());
    let result = if args.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow!("cannot install the logger: {e}"))
}
