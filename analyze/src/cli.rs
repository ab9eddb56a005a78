//! Command-line arguments of `retrace analyze` and its entry point.

use std::future::Future;

/// Arguments of `retrace analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {}

/// Errors of `retrace analyze`.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// Not built yet.
    #[error("`retrace analyze` is not built yet")]
    NotBuilt,
}

/// Runs `retrace analyze` until done or until `shutdown` resolves. Returns the process exit code.
pub async fn run(_args: AnalyzeArgs, _shutdown: impl Future<Output = ()> + Send) -> Result<u8, AnalyzeError> {
    Err(AnalyzeError::NotBuilt)
}
