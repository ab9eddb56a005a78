//! `retrace import`, `inspect` and `export`: thin commands over the `traces` crate.

use std::path::PathBuf;

/// Arguments of `retrace import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The trace file to import.
    pub file: PathBuf,
    /// Output Parquet file.
    #[arg(short, long)]
    pub out: PathBuf,
}

/// Arguments of `retrace inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Files or directories of request rows.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Arguments of `retrace export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Files or directories of request rows.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// `retrace import`.
pub fn import(_args: ImportArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}

/// `retrace inspect`.
pub fn inspect(_args: InspectArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}

/// `retrace export`.
pub fn export(_args: ExportArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
