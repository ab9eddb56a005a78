//! The SSE event splitter: any bytes, in any chunking. The proxy forwards the raw events
//! it returns plus the remainder, so those must add up to the input byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_traces::sse::{is_usage_only, EventSplitter};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = 1 + usize::from(step % 23);
    let mut splitter = EventSplitter::new();
    let mut rebuilt = Vec::with_capacity(rest.len());
    for chunk in rest.chunks(step) {
        splitter.push_each(chunk, |raw, data| {
            rebuilt.extend_from_slice(raw);
            if let Some(data) = data {
                let _ = is_usage_only(data);
            }
        });
    }
    let _ = splitter.pending_data();
    rebuilt.extend_from_slice(splitter.remainder());
    assert_eq!(rebuilt, rest, "raw events + remainder == input");
});
