//! Command-line arguments of `retrace proxy` and its entry point.

use std::future::Future;

/// Arguments of `retrace proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {}

/// Errors of `retrace proxy`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not built yet.
    #[error("`retrace proxy` is not built yet")]
    NotBuilt,
}

/// Runs `retrace proxy` until done or until `shutdown` resolves. Returns the process exit code.
pub async fn run(_args: ProxyArgs, _shutdown: impl Future<Output = ()> + Send) -> Result<u8, ProxyError> {
    Err(ProxyError::NotBuilt)
}
