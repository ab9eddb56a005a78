//! retrace-replay: re-time and scale LLM traces against an OpenAI-compatible target, and
//! measure it without coordinated omission.
//!
//! Layers, from pure to effectful: [`shape`] parses load-shape values, [`schedule`] turns
//! trace rows + configuration + seed into planned requests (pure, deterministic),
//! [`prom`] parses and maps Prometheus metrics, [`prompt`] makes prompts of exact token
//! counts, and [`runner`] sends, measures and writes.

pub mod cli;
mod client;
mod error;
pub mod prom;
pub mod prompt;
pub mod runner;
pub mod schedule;
pub mod shape;

pub use cli::{run, ReplayArgs};
pub use error::ReplayError;
pub use runner::{replay, ReplayConfig, ReplaySummary, ServerKind, TraceInput};
pub use schedule::ScheduleConfig;
