//! The SSE/JSON stream observer of `traces`: any bytes, cut into chunks anywhere, for each
//! endpoint kind; it must never panic and its counts must stay consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_traces::{Endpoint, StreamObserver};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let endpoint = match selector % 3 {
        0 => Endpoint::Chat,
        1 => Endpoint::Completions,
        _ => Endpoint::Other(String::new()),
    };
    let mut observer = StreamObserver::new(endpoint);
    if selector & 0x80 != 0 {
        observer = observer.capture_text(16);
    }
    // Chunk boundaries from the second byte: the same stream arrives cut differently.
    let step = 1 + usize::from(rest.first().copied().unwrap_or(0) % 17);
    let mut at_us = 0u64;
    for chunk in rest.chunks(step) {
        at_us += 1;
        observer.feed(chunk, at_us);
    }
    let _ = observer.finish(at_us + 1);
});
