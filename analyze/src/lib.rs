//! retrace-analyze.

pub mod cli;

pub use cli::{run, AnalyzeArgs};
