//! Tiny deterministic randomness: SplitMix64. Per-request decisions (EOS position,
//! injected errors, resets, generated words) are pure functions of the seed and the
//! request, so runs repeat exactly.

/// SplitMix64's finaliser: a good 64-bit mix of `x`.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform number in [0, 1) from a mixed value.
pub(crate) fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}
