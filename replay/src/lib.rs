//! retrace-replay: re-time and scale LLM traces against an OpenAI-compatible target, and
//! measure it without coordinated omission.
//!
//! Layers, from pure to effectful: [`shape`] parses load-shape values, [`schedule`] turns
//! trace rows + configuration + seed into planned requests (pure, deterministic),
//! [`prom`] parses and maps Prometheus metrics, and the runner sends, measures and writes.

pub mod cli;
pub mod prom;
pub mod schedule;
pub mod shape;

pub use cli::{run, ReplayArgs, ReplayError};
