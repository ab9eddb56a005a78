//! Command-line arguments of `retrace sim` and its entry point.

use std::future::Future;

/// Arguments of `retrace sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {}

/// Errors of `retrace sim`.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Not built yet.
    #[error("`retrace sim` is not built yet")]
    NotBuilt,
}

/// Runs `retrace sim` until done or until `shutdown` resolves. Returns the process exit code.
pub async fn run(_args: SimArgs, _shutdown: impl Future<Output = ()> + Send) -> Result<u8, SimError> {
    Err(SimError::NotBuilt)
}
