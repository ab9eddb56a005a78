//! Configuration of the sim, validated once.

use std::path::PathBuf;

use crate::SimError;

/// Step-time cost model: one engine step costs
/// `step_overhead_us + prefill_per_token_us × prefill tokens + decode_per_seq_us × decoding
/// sequences + attention_per_context_token_us × context tokens of the batch`, all in
/// simulated µs. Defaults are those of Llama-3-8B (bf16) under vLLM on one H100 SXM; see
/// docs/sim.md for where they come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Fixed cost of every step (weight reads, kernel launches, scheduling), µs.
    pub step_overhead_us: f64,
    /// Cost per prompt token prefilled in the step, µs.
    pub prefill_per_token_us: f64,
    /// Cost per sequence that decodes one token in the step, µs.
    pub decode_per_seq_us: f64,
    /// Attention cost per token of context held by the scheduled sequences, µs.
    pub attention_per_context_token_us: f64,
}

impl CostModel {
    /// Every step is free: for benchmarks of the HTTP side.
    pub const ZERO: CostModel = CostModel {
        step_overhead_us: 0.0,
        prefill_per_token_us: 0.0,
        decode_per_seq_us: 0.0,
        attention_per_context_token_us: 0.0,
    };

    /// Step time in µs for a step with the given work.
    pub fn step_us(&self, prefill_tokens: u64, decode_seqs: u64, context_tokens: u64) -> f64 {
        self.step_overhead_us
            + self.prefill_per_token_us * prefill_tokens as f64
            + self.decode_per_seq_us * decode_seqs as f64
            + self.attention_per_context_token_us * context_tokens as f64
    }
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            step_overhead_us: 6_000.0,
            prefill_per_token_us: 35.0,
            decode_per_seq_us: 60.0,
            attention_per_context_token_us: 0.04,
        }
    }
}

/// A periodic engine stall: every `every_us` of simulated time the engine pauses for
/// `pause_us` (e.g. `--stall 2s@30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Length of each pause, simulated µs.
    pub pause_us: u64,
    /// Period between pauses, simulated µs.
    pub every_us: u64,
}

/// Everything the sim needs to run. Build from [`Default`] and override fields.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Model name served (requests naming another model get a 400).
    pub model: String,
    /// KV cache size in blocks.
    pub kv_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Most sequences running at once.
    pub max_num_seqs: u32,
    /// Most tokens (prefill + decode) scheduled in one step.
    pub max_num_batched_tokens: u32,
    /// Longest prompt + output, tokens.
    pub max_model_len: u32,
    /// Simulated clock runs this many times faster than real time.
    pub speedup: f64,
    /// Step-time cost model.
    pub cost: CostModel,
    /// Reuse KV blocks of identical prompt prefixes.
    pub prefix_caching: bool,
    /// Memory leaked (really allocated and held) per finished request, bytes.
    pub leak_per_request_bytes: u64,
    /// Memory leaked per simulated hour, bytes.
    pub leak_rate_bytes_per_hour: u64,
    /// Leaking stops once this much is held (a cache warming up, not a leak).
    pub leak_plateau_bytes: Option<u64>,
    /// Fractional step-time growth per simulated hour (0.05 = +5 % per hour).
    pub drift_per_hour: f64,
    /// Fraction of requests answered with a 500.
    pub error_rate: f64,
    /// Fraction of streaming requests whose connection is dropped mid-stream.
    pub reset_rate: f64,
    /// Periodic engine stalls.
    pub stall: Option<Stall>,
    /// Where to write the per-request ground truth (Parquet).
    pub truth_path: Option<PathBuf>,
    /// Seed of every pseudo-random decision.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            model: "sim-7b".to_string(),
            kv_blocks: 25_000,
            block_size: 16,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: 8192,
            speedup: 1.0,
            cost: CostModel::default(),
            prefix_caching: false,
            leak_per_request_bytes: 0,
            leak_rate_bytes_per_hour: 0,
            leak_plateau_bytes: None,
            drift_per_hour: 0.0,
            error_rate: 0.0,
            reset_rate: 0.0,
            stall: None,
            truth_path: None,
            seed: 0,
        }
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> SimError {
    SimError::Config {
        field,
        message: message.into(),
    }
}

impl SimConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.model.is_empty() {
            return Err(bad("model", "must not be empty"));
        }
        if self.block_size == 0 {
            return Err(bad("block_size", "must be at least 1"));
        }
        if self.kv_blocks == 0 {
            return Err(bad("kv_blocks", "must be at least 1"));
        }
        if self.max_num_seqs == 0 {
            return Err(bad("max_num_seqs", "must be at least 1"));
        }
        if self.max_num_batched_tokens == 0 {
            return Err(bad("max_num_batched_tokens", "must be at least 1"));
        }
        if self.max_model_len < 2 {
            return Err(bad("max_model_len", "must be at least 2"));
        }
        let capacity = u64::from(self.kv_blocks) * u64::from(self.block_size);
        if u64::from(self.max_model_len) > capacity {
            // vLLM refuses to start in this case too: one full-length sequence must fit.
            return Err(bad(
                "max_model_len",
                format!(
                    "{} tokens do not fit in the KV cache ({} blocks × {} = {capacity} tokens)",
                    self.max_model_len, self.kv_blocks, self.block_size
                ),
            ));
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            return Err(bad("speedup", "must be a positive number"));
        }
        let c = &self.cost;
        for (field, v) in [
            ("cost.step_overhead_us", c.step_overhead_us),
            ("cost.prefill_per_token_us", c.prefill_per_token_us),
            ("cost.decode_per_seq_us", c.decode_per_seq_us),
            (
                "cost.attention_per_context_token_us",
                c.attention_per_context_token_us,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(field, "must be a finite number ≥ 0"));
            }
        }
        if !(self.drift_per_hour.is_finite() && self.drift_per_hour >= 0.0) {
            return Err(bad("drift_per_hour", "must be a finite number ≥ 0"));
        }
        for (field, v) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(field, "must be within 0..=1"));
            }
        }
        if let Some(stall) = self.stall {
            if stall.every_us == 0 || stall.pause_us == 0 {
                return Err(bad("stall", "pause and period must both be > 0"));
            }
        }
        Ok(())
    }
}
