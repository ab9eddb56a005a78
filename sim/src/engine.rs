//! The engine: continuous batching over a paged KV cache, vLLM V1 style.
//!
//! [`Scheduler`] is the pure scheduling logic (no clock, no I/O besides sending events on
//! each request's channel), driven in two halves per step: [`Scheduler::plan`] picks the
//! batch and returns its work (the caller turns it into a step time and sleeps), then
//! [`Scheduler::complete`] applies the step at the simulated time it ended.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::SimConfig;
use crate::metrics::MetricsState;

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishReason {
    /// `max_tokens` or the model length was reached.
    Length,
    /// The (simulated) EOS token was generated.
    Stop,
    /// The client went away, or the sim shut down.
    Abort,
    /// Answered with an injected error before it reached the engine.
    Error,
}

impl FinishReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// What the last token of a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finish {
    pub(crate) reason: FinishReason,
    pub(crate) prompt_tokens: u32,
    pub(crate) output_tokens: u32,
}

/// One event on a request's channel: a generated token, the last one carrying the finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqEvent {
    /// A generated token (not the last).
    Token,
    /// The last generated token and how the request finished.
    Last(Finish),
}

/// A request handed to the engine.
#[derive(Debug)]
pub(crate) struct NewRequest {
    pub(crate) request_id: String,
    pub(crate) endpoint: &'static str,
    pub(crate) arrival_us: i64,
    /// When the HTTP handler started on the request (`arrival_us` is when its head reached
    /// the socket).
    pub(crate) handler_us: i64,
    pub(crate) prompt_tokens: u32,
    /// Chained hashes of the prompt's full KV blocks (empty without prefix caching).
    pub(crate) prefix_hashes: Vec<u64>,
    pub(crate) max_tokens: u32,
    /// Output length at which the simulated EOS fires, if any.
    pub(crate) eos_at: Option<u32>,
    pub(crate) tx: mpsc::UnboundedSender<SeqEvent>,
    /// Set by the response stream when it hands the first token's bytes to the connection
    /// (streaming requests only).
    pub(crate) sent: Option<Arc<SentStamp>>,
}

/// When a streamed response handed its first token's bytes to the connection for writing,
/// in simulated UTC µs: set by the response body, read when the truth row is written.
#[derive(Debug)]
pub(crate) struct SentStamp(AtomicI64);

/// [`SentStamp`] before the stream has sent a token.
const SENT_PENDING: i64 = i64::MIN;
/// [`SentStamp`] of a stream that ended without sending a token.
const SENT_NEVER: i64 = i64::MIN + 1;

impl SentStamp {
    pub(crate) fn new() -> SentStamp {
        SentStamp(AtomicI64::new(SENT_PENDING))
    }

    /// Records the first token's hand-off (later calls keep the first).
    pub(crate) fn sent(&self, at_us: i64) {
        let _ = self
            .0
            .compare_exchange(SENT_PENDING, at_us, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The stream is gone: a token never sent stays unsent.
    pub(crate) fn closed(&self) {
        self.sent(SENT_NEVER);
    }

    /// `None` while pending; `Some(None)` when no token was sent; `Some(Some(t))` when it
    /// was, at `t`.
    pub(crate) fn get(&self) -> Option<Option<i64>> {
        match self.0.load(Ordering::Acquire) {
            SENT_PENDING => None,
            SENT_NEVER => Some(None),
            t => Some(Some(t)),
        }
    }
}

/// One finished request, as the truth file records it.
#[derive(Debug, Clone)]
pub(crate) struct TruthRow {
    pub(crate) request_id: String,
    pub(crate) endpoint: &'static str,
    pub(crate) arrival_us: i64,
    pub(crate) handler_us: i64,
    pub(crate) admitted_us: Option<i64>,
    /// When the engine emitted the first token (the end of the step that made it).
    pub(crate) first_token_us: Option<i64>,
    /// For a streamed response, when its first token's bytes were handed to the connection;
    /// the truth file's `first_token_us` is this once the stream has set it.
    pub(crate) sent: Option<Arc<SentStamp>>,
    pub(crate) finish_us: i64,
    pub(crate) prompt_tokens: u32,
    pub(crate) output_tokens: u32,
    pub(crate) preemptions: u32,
    pub(crate) finish_reason: FinishReason,
    pub(crate) itl: Option<retrace_traces::GapSummary>,
}

#[derive(Debug)]
struct Seq {
    req: NewRequest,
    generated: u32,
    /// Tokens whose KV is computed.
    computed: u32,
    /// Blocks owned privately.
    private_blocks: u32,
    /// Prefix-cache blocks referenced (by hash), in prompt order.
    shared: Vec<u64>,
    /// Tokens scheduled in the current step.
    sched_new: u32,
    admitted_us: Option<i64>,
    first_token_us: Option<i64>,
    last_token_us: i64,
    gaps_us: Vec<u32>,
    preemptions: u32,
}

impl Seq {
    fn num_tokens(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }
    fn held_blocks(&self) -> u32 {
        self.private_blocks + self.shared.len() as u32
    }
}

/// The work of one planned step, for the cost model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StepWork {
    pub(crate) prefill_tokens: u64,
    pub(crate) decode_seqs: u64,
    pub(crate) context_tokens: u64,
}

impl StepWork {
    pub(crate) fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decode_seqs == 0
    }
}

#[derive(Debug, Default)]
struct PrefixCache {
    /// hash → number of running sequences referencing the block.
    refs: HashMap<u64, u32>,
    /// Unreferenced cached blocks, least recently used first (may hold stale entries).
    lru: VecDeque<u64>,
    evictable: u32,
}

/// Continuous-batching scheduler state.
#[derive(Debug)]
pub(crate) struct Scheduler {
    kv_blocks: u32,
    block_size: u32,
    max_num_seqs: u32,
    max_num_batched_tokens: u32,
    max_model_len: u32,
    prefix_caching: bool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    free_blocks: u32,
    prefix: PrefixCache,
    metrics: Arc<Mutex<MetricsState>>,
    /// Finished requests not yet taken by [`Scheduler::take_finished`].
    finished: Vec<TruthRow>,
    /// Total preemptions.
    pub(crate) preemptions_total: u64,
}

fn lock(m: &Mutex<MetricsState>) -> std::sync::MutexGuard<'_, MetricsState> {
    // A panic elsewhere must not take /metrics down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Scheduler {
    pub(crate) fn new(config: &SimConfig, metrics: Arc<Mutex<MetricsState>>) -> Scheduler {
        Scheduler {
            kv_blocks: config.kv_blocks,
            block_size: config.block_size,
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_model_len: config.max_model_len,
            prefix_caching: config.prefix_caching,
            waiting: VecDeque::new(),
            running: Vec::new(),
            free_blocks: config.kv_blocks,
            prefix: PrefixCache::default(),
            metrics,
            finished: Vec::new(),
            preemptions_total: 0,
        }
    }

    /// Queues a new request (FCFS).
    pub(crate) fn submit(&mut self, req: NewRequest) {
        self.waiting.push_back(Seq {
            req,
            generated: 0,
            computed: 0,
            private_blocks: 0,
            shared: Vec::new(),
            sched_new: 0,
            admitted_us: None,
            first_token_us: None,
            last_token_us: 0,
            gaps_us: Vec::new(),
            preemptions: 0,
        });
    }

    /// No request waiting or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    #[cfg(test)]
    #[allow(dead_code)]
    pub(crate) fn num_running(&self) -> usize {
        self.running.len()
    }

    #[cfg(test)]
    #[allow(dead_code)]
    pub(crate) fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Blocks in use (held by sequences; unreferenced cached blocks count as free).
    pub(crate) fn used_blocks(&self) -> u32 {
        self.kv_blocks - self.free_blocks - self.prefix.evictable
    }

    fn available_blocks(&self) -> u32 {
        self.free_blocks + self.prefix.evictable
    }

    fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Takes `n` blocks (evicting unreferenced cached blocks when the free list runs out).
    /// The caller has checked `available_blocks() >= n`.
    fn allocate(&mut self, n: u32) {
        let from_free = n.min(self.free_blocks);
        self.free_blocks -= from_free;
        let mut rest = n - from_free;
        while rest > 0 {
            let Some(hash) = self.prefix.lru.pop_front() else {
                break;
            };
            // Stale LRU entries (re-referenced since) are skipped.
            if self.prefix.refs.get(&hash) == Some(&0) {
                self.prefix.refs.remove(&hash);
                self.prefix.evictable -= 1;
                rest -= 1;
            }
        }
    }

    fn release(&mut self, seq: &mut Seq) {
        self.free_blocks += seq.private_blocks;
        seq.private_blocks = 0;
        for hash in seq.shared.drain(..) {
            if let Some(r) = self.prefix.refs.get_mut(&hash) {
                *r -= 1;
                if *r == 0 {
                    self.prefix.evictable += 1;
                    self.prefix.lru.push_back(hash);
                }
            }
        }
    }

    /// Leading full prompt blocks found in the prefix cache (never the whole sequence: at
    /// least one token is always computed, as in vLLM).
    fn prefix_hits(&self, seq: &Seq) -> (u32, u32) {
        if !self.prefix_caching {
            return (0, 0);
        }
        let max_blocks = (seq.num_tokens() - 1) / self.block_size;
        let mut hits = 0;
        let mut evictable_hits = 0;
        for hash in seq.req.prefix_hashes.iter().take(max_blocks as usize) {
            match self.prefix.refs.get(hash) {
                Some(r) => {
                    hits += 1;
                    if *r == 0 {
                        evictable_hits += 1;
                    }
                }
                None => break,
            }
        }
        (hits, evictable_hits)
    }

    /// Plans one step at simulated time `now_us`: schedules running sequences (preempting
    /// the youngest when the cache is full), then admits waiting ones FCFS.
    pub(crate) fn plan(&mut self, now_us: i64) -> StepWork {
        let mut budget = self.max_num_batched_tokens;
        let mut preempted = false;
        let mut work = StepWork::default();
        let mut i = 0;
        while i < self.running.len() {
            let (remaining, computed, held) = {
                let s = &self.running[i];
                (s.num_tokens() - s.computed, s.computed, s.held_blocks())
            };
            let num_new = remaining.min(budget);
            if num_new == 0 {
                self.running[i].sched_new = 0;
                i += 1;
                continue;
            }
            let need = self.blocks_for(computed + num_new).saturating_sub(held);
            while self.available_blocks() < need && i < self.running.len() {
                // Recompute preemption of the youngest running sequence.
                if let Some(mut victim) = self.running.pop() {
                    self.release(&mut victim);
                    victim.computed = 0;
                    victim.sched_new = 0;
                    victim.preemptions += 1;
                    self.preemptions_total += 1;
                    preempted = true;
                    self.waiting.push_front(victim);
                }
            }
            if i >= self.running.len() {
                break;
            }
            self.allocate(need);
            let s = &mut self.running[i];
            s.private_blocks += need;
            s.sched_new = num_new;
            budget -= num_new;
            if num_new == 1 && s.generated > 0 {
                work.decode_seqs += 1;
            } else {
                work.prefill_tokens += u64::from(num_new);
            }
            work.context_tokens += u64::from(computed + num_new);
            i += 1;
        }
        // vLLM does not admit new requests in a step that had to preempt.
        while !preempted && budget > 0 && (self.running.len() as u32) < self.max_num_seqs {
            let Some(front) = self.waiting.front() else {
                break;
            };
            if front.req.tx.is_closed() {
                // The client went away while it waited.
                if let Some(seq) = self.waiting.pop_front() {
                    self.finish(seq, FinishReason::Abort, now_us, &mut None);
                }
                continue;
            }
            let (hits, evictable_hits) = self.prefix_hits(front);
            let computed = hits * self.block_size;
            let num_new = (front.num_tokens() - computed).min(budget);
            let need = self.blocks_for(computed + num_new) - hits;
            if self.available_blocks() - evictable_hits < need {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            for hash in seq.req.prefix_hashes.iter().take(hits as usize) {
                if let Some(r) = self.prefix.refs.get_mut(hash) {
                    if *r == 0 {
                        self.prefix.evictable -= 1;
                    }
                    *r += 1;
                    seq.shared.push(*hash);
                }
            }
            self.allocate(need);
            seq.private_blocks = need;
            seq.computed = computed;
            seq.sched_new = num_new;
            if seq.admitted_us.is_none() {
                seq.admitted_us = Some(now_us);
                let queue_s = (now_us - seq.req.arrival_us).max(0) as f64 / 1e6;
                lock(&self.metrics).queue.observe(queue_s);
            }
            budget -= num_new;
            work.prefill_tokens += u64::from(num_new);
            work.context_tokens += u64::from(computed + num_new);
            self.running.push(seq);
        }
        work
    }

    /// Applies the planned step, which ended at simulated time `now_us`: advances every
    /// scheduled sequence, emits tokens, finishes sequences.
    pub(crate) fn complete(&mut self, now_us: i64) {
        let metrics = Arc::clone(&self.metrics);
        let mut m = Some(lock(&metrics));
        let mut i = 0;
        while i < self.running.len() {
            let done = {
                let block_size = self.block_size;
                let prefix_caching = self.prefix_caching;
                let s = &mut self.running[i];
                if s.sched_new == 0 {
                    None
                } else {
                    let before = s.computed;
                    s.computed += s.sched_new;
                    s.sched_new = 0;
                    if prefix_caching {
                        register_blocks(&mut self.prefix, s, before, block_size);
                    }
                    if s.computed < s.num_tokens() {
                        None
                    } else {
                        Some(emit_token(s, now_us, self.max_model_len, m.as_deref_mut()))
                    }
                }
            };
            match done {
                Some(Some(reason)) => {
                    let seq = self.running.remove(i);
                    self.finish(seq, reason, now_us, &mut m);
                }
                _ => i += 1,
            }
        }
        if let Some(m) = m.as_deref_mut() {
            m.num_requests_running = self.running.len() as u64;
            m.num_requests_waiting = self.waiting.len() as u64;
            m.kv_cache_usage = f64::from(self.used_blocks()) / f64::from(self.kv_blocks);
            m.num_preemptions_total = self.preemptions_total;
        }
    }

    fn finish(
        &mut self,
        mut seq: Seq,
        reason: FinishReason,
        now_us: i64,
        m: &mut Option<std::sync::MutexGuard<'_, MetricsState>>,
    ) {
        self.release(&mut seq);
        let mut local = None;
        let m = match m.as_deref_mut() {
            Some(m) => m,
            None => local.insert(lock(&self.metrics)),
        };
        match reason {
            FinishReason::Length => m.success_length_total += 1,
            FinishReason::Stop => m.success_stop_total += 1,
            FinishReason::Abort | FinishReason::Error => m.success_abort_total += 1,
        }
        if reason != FinishReason::Abort {
            m.e2e
                .observe((now_us - seq.req.arrival_us).max(0) as f64 / 1e6);
        }
        let itl = summarize(&mut seq.gaps_us);
        self.finished.push(TruthRow {
            request_id: std::mem::take(&mut seq.req.request_id),
            endpoint: seq.req.endpoint,
            arrival_us: seq.req.arrival_us,
            handler_us: seq.req.handler_us,
            admitted_us: seq.admitted_us,
            first_token_us: seq.first_token_us,
            sent: seq.req.sent.take(),
            finish_us: now_us,
            prompt_tokens: seq.req.prompt_tokens,
            output_tokens: seq.generated,
            preemptions: seq.preemptions,
            finish_reason: reason,
            itl,
        });
    }

    /// Aborts everything (shutdown).
    pub(crate) fn abort_all(&mut self, now_us: i64) {
        let seqs: Vec<Seq> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        let mut m = None;
        for seq in seqs {
            self.finish(seq, FinishReason::Abort, now_us, &mut m);
        }
    }

    /// Records a request answered with an injected error (it never reached the batch).
    pub(crate) fn record_error(&mut self, row: TruthRow) {
        self.finished.push(row);
    }

    /// Finished requests since the last call.
    pub(crate) fn take_finished(&mut self) -> Vec<TruthRow> {
        std::mem::take(&mut self.finished)
    }
}

/// Marks the sequence's prompt blocks completed by this step as cached (when no identical
/// block is cached yet), turning private blocks into shared ones.
fn register_blocks(prefix: &mut PrefixCache, s: &mut Seq, before: u32, block_size: u32) {
    let prompt_full = s.req.prompt_tokens / block_size;
    let done_full = (s.computed / block_size).min(prompt_full);
    let first = (before / block_size).max(s.shared.len() as u32);
    for b in first..done_full {
        let Some(hash) = s.req.prefix_hashes.get(b as usize).copied() else {
            break;
        };
        // Only a contiguous chain of shared blocks is useful for lookups.
        if s.shared.len() as u32 != b || prefix.refs.contains_key(&hash) || s.private_blocks == 0 {
            break;
        }
        prefix.refs.insert(hash, 1);
        s.private_blocks -= 1;
        s.shared.push(hash);
    }
}

/// Emits one generated token; returns the finish reason when it was the last.
fn emit_token(
    s: &mut Seq,
    now_us: i64,
    max_model_len: u32,
    m: Option<&mut MetricsState>,
) -> Option<FinishReason> {
    s.generated += 1;
    let reason = if s.generated >= s.req.max_tokens || s.num_tokens() >= max_model_len {
        Some(FinishReason::Length)
    } else if s.req.eos_at == Some(s.generated) {
        Some(FinishReason::Stop)
    } else {
        None
    };
    if let Some(m) = m {
        m.generation_tokens_total += 1;
        if s.first_token_us.is_none() {
            m.prompt_tokens_total += u64::from(s.req.prompt_tokens);
            m.ttft
                .observe((now_us - s.req.arrival_us).max(0) as f64 / 1e6);
        } else {
            m.itl
                .observe((now_us - s.last_token_us).max(0) as f64 / 1e6);
        }
    }
    match s.first_token_us {
        None => s.first_token_us = Some(now_us),
        Some(_) => s
            .gaps_us
            .push((now_us - s.last_token_us).clamp(0, i64::from(u32::MAX)) as u32),
    }
    s.last_token_us = now_us;
    let event = match reason {
        None => SeqEvent::Token,
        Some(reason) => SeqEvent::Last(Finish {
            reason,
            prompt_tokens: s.req.prompt_tokens,
            output_tokens: s.generated,
        }),
    };
    if s.req.tx.send(event).is_err() {
        return Some(FinishReason::Abort);
    }
    reason
}

/// Count, mean, p50, p99 and max of a request's inter-token gaps.
fn summarize(gaps_us: &mut [u32]) -> Option<retrace_traces::GapSummary> {
    if gaps_us.is_empty() {
        return None;
    }
    gaps_us.sort_unstable();
    let n = gaps_us.len();
    let at = |q: f64| u64::from(gaps_us[((q * (n - 1) as f64).round() as usize).min(n - 1)]);
    let sum: u64 = gaps_us.iter().map(|g| u64::from(*g)).sum();
    Some(retrace_traces::GapSummary {
        count: n as u32,
        mean_us: sum / n as u64,
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: u64::from(gaps_us[n - 1]),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sched(kv_blocks: u32, max_num_seqs: u32, prefix_caching: bool) -> Scheduler {
        let config = SimConfig {
            kv_blocks,
            block_size: 4,
            max_num_seqs,
            max_num_batched_tokens: 64,
            max_model_len: 64,
            prefix_caching,
            ..SimConfig::default()
        };
        Scheduler::new(&config, Arc::new(Mutex::new(MetricsState::default())))
    }

    fn req(
        id: &str,
        prompt: u32,
        max_tokens: u32,
    ) -> (NewRequest, mpsc::UnboundedReceiver<SeqEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ids: Vec<u32> = (0..prompt).collect();
        let prefix_hashes = ids
            .chunks_exact(4)
            .map(|c| u64::from(c[3]) + 1000)
            .collect();
        (
            NewRequest {
                request_id: id.to_string(),
                endpoint: "completions",
                arrival_us: 0,
                handler_us: 0,
                prompt_tokens: prompt,
                prefix_hashes,
                max_tokens,
                eos_at: None,
                tx,
                sent: None,
            },
            rx,
        )
    }

    /// Runs steps 1 ms apart until idle; returns the finished rows.
    fn drain(s: &mut Scheduler, mut now: i64, max_steps: u32) -> Vec<TruthRow> {
        let mut rows = Vec::new();
        for _ in 0..max_steps {
            if s.is_idle() {
                break;
            }
            s.plan(now);
            now += 1000;
            s.complete(now);
            rows.extend(s.take_finished());
        }
        rows
    }

    #[test]
    fn admits_while_blocks_last_then_queues_fcfs() {
        // 10 blocks of 4 tokens; each request needs ceil((8 + 1) / 4) = 3 blocks after
        // its first step, so 3 fit and the rest wait.
        let mut s = sched(10, 100, false);
        let mut rxs = Vec::new();
        for i in 0..5 {
            let (r, rx) = req(&format!("r{i}"), 8, 3);
            s.submit(r);
            rxs.push(rx);
        }
        s.plan(0);
        // Prefill of 8 tokens needs 2 blocks each: 5 × 2 = 10 fit.
        assert_eq!(s.num_running(), 5);
        s.complete(1000);
        // Decoding token 9 needs a third block: the youngest are preempted.
        s.plan(1000);
        assert!(s.preemptions_total >= 1, "preempted under KV pressure");
        assert!(s.num_running() <= 3);
        assert!(s.used_blocks() <= 10);
        s.complete(2000);
        let rows = drain(&mut s, 2000, 1000);
        assert_eq!(rows.len(), 5);
        assert!(rows
            .iter()
            .all(|r| r.output_tokens == 3 && r.finish_reason == FinishReason::Length));
        assert_eq!(
            rows.iter().map(|r| r.preemptions).sum::<u32>() as u64,
            s.preemptions_total
        );
        assert_eq!(s.used_blocks(), 0, "every block returned");
        for mut rx in rxs {
            let mut n = 0;
            while let Ok(e) = rx.try_recv() {
                n += 1;
                if n == 3 {
                    assert!(matches!(e, SeqEvent::Last(_)));
                }
            }
            assert_eq!(n, 3);
        }
    }

    #[test]
    fn max_num_seqs_and_token_budget_are_respected() {
        let mut s = sched(1000, 2, false);
        let mut rxs = Vec::new();
        for i in 0..4 {
            let (r, rx) = req(&format!("r{i}"), 40, 2);
            s.submit(r);
            rxs.push(rx);
        }
        let work = s.plan(0);
        assert_eq!(s.num_running(), 2);
        assert_eq!(s.num_waiting(), 2);
        // 64-token budget: the first prompt whole, 24 tokens of the second (chunked).
        assert_eq!(work.prefill_tokens, 64);
        s.complete(1000);
        let rows = drain(&mut s, 1000, 100);
        assert_eq!(rows.len(), 4);
        // FCFS: admission order follows arrival order.
        let mut admitted: Vec<_> = rows
            .iter()
            .map(|r| (r.admitted_us, r.request_id.clone()))
            .collect();
        admitted.sort();
        let order: Vec<_> = admitted.into_iter().map(|(_, id)| id).collect();
        assert_eq!(order, ["r0", "r1", "r2", "r3"]);
        assert_eq!(s.preemptions_total, 0);
    }

    #[test]
    fn prefix_cache_reuses_prompt_blocks() {
        let mut s = sched(100, 10, true);
        let (a, _rxa) = req("a", 16, 2);
        s.submit(a);
        let first = s.plan(0);
        assert_eq!(first.prefill_tokens, 16);
        s.complete(1000);
        let _ = drain(&mut s, 1000, 10);
        // Same prompt again: 3 of its 4 full blocks come from the cache (at least one
        // token is always computed).
        let (b, _rxb) = req("b", 16, 2);
        s.submit(b);
        let second = s.plan(10_000);
        assert_eq!(second.prefill_tokens, 4);
        // Without prefix caching the whole prompt is recomputed.
        let mut plain = sched(100, 10, false);
        let (c, _rxc) = req("c", 16, 2);
        plain.submit(c);
        plain.plan(0);
        plain.complete(1000);
        let _ = drain(&mut plain, 1000, 10);
        let (d, _rxd) = req("d", 16, 2);
        plain.submit(d);
        assert_eq!(plain.plan(10_000).prefill_tokens, 16);
    }

    #[test]
    fn client_gone_aborts_and_frees_blocks() {
        let mut s = sched(100, 10, false);
        let (r, rx) = req("gone", 8, 50);
        s.submit(r);
        s.plan(0);
        s.complete(1000);
        drop(rx);
        let rows = drain(&mut s, 1000, 10);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].finish_reason, FinishReason::Abort);
        assert_eq!(s.used_blocks(), 0);
    }

    #[test]
    fn gap_summary() {
        let mut gaps = vec![30, 10, 20, 1000];
        let g = summarize(&mut gaps).unwrap();
        assert_eq!((g.count, g.mean_us, g.max_us), (4, 265, 1000));
        assert!(summarize(&mut []).is_none());
    }
}
