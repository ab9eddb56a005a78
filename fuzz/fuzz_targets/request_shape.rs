//! The proxy's request-shape extractor: the request body (parse, include_usage rewrite,
//! prefix hashes, token estimate) and a response through the observer, as one row.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let path = match selector % 4 {
        0 => "/v1/chat/completions",
        1 => "/v1/completions",
        2 => "/v1/chat/completions/?x=1",
        _ => "/v1/models",
    };
    // A 0xFF byte separates the request body from the response (absent: no response).
    let (body, response) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let _ = retrace_proxy::fuzzing::request_shape(path, body, response);
});
