//! retrace-proxy.

pub mod cli;

pub use cli::{run, ProxyArgs};
