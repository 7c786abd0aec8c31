//! Starting and stopping a meta node.
use tokio_util::sync::CancellationToken;

use crate::{MetaConfig, MetaNodeError};

/// Serves the meta node (Raft + meta service) on `listener` until
/// `shutdown` is cancelled.
pub async fn serve(
    config: MetaConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetaNodeError> {
    let _ = (config, listener, shutdown);
    Err(MetaNodeError::Config("not yet implemented".into()))
}
