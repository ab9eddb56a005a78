//! The Prometheus text parser of `replay` (scrapes of vLLM, SGLang, TGI, llama.cpp, sim):
//! any text; errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_replay::prom;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = prom::parse(&text);
    let _ = prom::detect_flavor(&parsed);
    let samples = prom::canonical_samples(&parsed);
    let _ = prom::headline(&samples);
});
