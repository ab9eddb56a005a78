//! retrace-sim: a simulated GPU inference server that fails the way real ones do.
//!
//! It speaks the OpenAI API like vLLM's server (streaming SSE and plain JSON), runs a
//! continuous-batching engine over a paged KV cache on a simulated clock, exports vLLM's
//! Prometheus metrics, and can inject leaks, drift, errors, resets and stalls. Run it from
//! the CLI (`retrace sim`, see [`cli`]) or in-process with [`spawn`].

pub mod cli;
mod clock;
mod config;
mod engine;
mod error;
mod leak;
mod metrics;
mod rng;
mod server;
pub mod tokenizer;
mod truth;

pub use cli::{run, SimArgs};
pub use config::{CostModel, SimConfig, Stall};
pub use error::SimError;
pub use server::{spawn, SimHandle, SimSummary};

/// The in-process server handle under the name design.md uses.
pub type Server = SimHandle;
