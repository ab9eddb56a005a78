//! The `retrace` binary's library: the small commands that sit directly on the `traces`
//! crate (import, inspect, export), the demo that strings every crate together, and
//! process set-up shared by the subcommands.

pub mod cli;
pub mod demo;
pub mod logging;
pub mod shutdown;
