//! Process signals -> a cancellation token. The first SIGTERM or SIGINT
//! asks for a graceful stop; a second one exits at once.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit status of a process stopped by a second signal (128 + SIGINT).
const FORCED_EXIT_CODE: i32 = 130;

/// Returns a token that is cancelled on the first SIGTERM/SIGINT. Must be
/// called inside a tokio runtime.
pub fn on_signals() -> Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down (send it again to exit at once)"
        );
        cancel.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}
