//! Command-line arguments of `retrace replay` and its entry point.

use std::future::Future;

/// Arguments of `retrace replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {}

/// Errors of `retrace replay`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Not built yet.
    #[error("`retrace replay` is not built yet")]
    NotBuilt,
}

/// Runs `retrace replay` until done or until `shutdown` resolves. Returns the process exit code.
pub async fn run(
    _args: ReplayArgs,
    _shutdown: impl Future<Output = ()> + Send,
) -> Result<u8, ReplayError> {
    Err(ReplayError::NotBuilt)
}
