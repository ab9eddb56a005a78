//! retrace-sim.

pub mod cli;

pub use cli::{run, SimArgs};
