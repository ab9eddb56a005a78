//! retrace-replay.

pub mod cli;

pub use cli::{run, ReplayArgs};
