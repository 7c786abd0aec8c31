//! Logging to stderr with `tracing-subscriber`: a filter from `--log-level`
//! (or RUST_LOG, or a per-command default), text or JSON lines.

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
        // Children of `tessera dev` log to files: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal());
    let result = if args.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow!("cannot install the logger: {e}"))
}
