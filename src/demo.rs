//! `retrace demo`: the whole product on the bundled Azure trace.

use std::future::Future;

/// Arguments of `retrace demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo. Not built yet.
pub async fn run(_args: DemoArgs, _shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<u8> {
    anyhow::bail!("`retrace demo` is not built yet (issue 7)")
}
