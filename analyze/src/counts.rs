//! Histogram counts in HDR's exact bucket layout, recorded without HDR's per-record bounds
//! checks, resizing and min/max upkeep; turned into a real [`Histogram`] once, at the end.
//!
//! The hot loop records ~13 values per row: through `Histogram::record` that was a quarter
//! of the analysis. Here a record is an index computation and one add. The histogram built
//! by [`Counts::into_hist`] is equal (`==`: same counts, total, min and max as HDR reports
//! them) to one recorded value by value, because HDR only ever reports bucket-equivalent
//! values (`min`, `max`, quantiles, mean) and recording a bucket's lowest value lands in
//! the same bucket.

use hdrhistogram::{Counter, Histogram};

/// Values at or above this go to a real histogram (far beyond any latency in µs; keeps the
/// counts vector bounded however absurd an input value is).
const FAST_LIMIT: u64 = 1 << 40;

/// A counter cell: `u32` for the many per-window histograms, `u64` elsewhere.
pub(crate) trait Cell: Copy + Default + Counter {
    /// Adds `n`, saturating as HDR does.
    fn add_n(&mut self, n: u64);
    /// `n` as a counter, saturated.
    fn of(n: u64) -> Self;
}

impl Cell for u32 {
    #[inline]
    fn add_n(&mut self, n: u64) {
        *self = self.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn of(n: u64) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Cell for u64 {
    #[inline]
    fn add_n(&mut self, n: u64) {
        *self = self.saturating_add(n);
    }
    fn of(n: u64) -> u64 {
        n
    }
}

/// Records `v` `n` times into two counts of the same layout (a window's and its level's):
/// the bucket index is computed once.
#[inline(always)]
pub(crate) fn record_pair<A: Cell, B: Cell, const M: u32>(
    a: &mut Counts<A, M>,
    make_a: fn() -> Histogram<A>,
    b: &mut Counts<B, M>,
    make_b: fn() -> Histogram<B>,
    v: u64,
    n: u64,
) {
    if v < FAST_LIMIT {
        let i = Counts::<A, M>::index(v);
        if let (Some(x), Some(y)) = (a.counts.get_mut(i), b.counts.get_mut(i)) {
            x.add_n(n);
            y.add_n(n);
            return;
        }
    }
    a.record_rare(v, n, make_a);
    b.record_rare(v, n, make_b);
}

/// Counts of a histogram with lowest discernible value 1 and `2^(M+1)` sub-buckets per
/// bucket (`M` = 7 for 2 significant figures, 10 for 3).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts<C: Cell, const M: u32> {
    counts: Vec<C>,
    /// Values at or past [`FAST_LIMIT`], recorded the ordinary way.
    slow: Option<Histogram<C>>,
}

/// 2 significant figures.
pub(crate) const SIG2: u32 = 7;
/// 3 significant figures.
pub(crate) const SIG3: u32 = 10;

impl<C: Cell, const M: u32> Counts<C, M> {
    /// HDR's `index_for` for unit magnitude 0.
    #[inline(always)]
    fn index(v: u64) -> usize {
        let mask = (1u64 << (M + 1)) - 1;
        let bucket = (63 - M) - (v | mask).leading_zeros();
        let sub = v >> bucket;
        (((bucket + 1) << M) as usize) + sub as usize - (1usize << M)
    }

    /// HDR's `value_for`: the lowest value of the bucket at `index`.
    fn value(index: usize) -> u64 {
        let half = 1usize << M;
        let mut bucket = (index >> M) as i64 - 1;
        let mut sub = (index & (half - 1)) + half;
        if bucket < 0 {
            sub -= half;
            bucket = 0;
        }
        (sub as u64) << bucket
    }

    /// Records `v` `n` times (`n` > 0).
    #[inline(always)]
    pub(crate) fn record_n(&mut self, v: u64, n: u64, make: fn() -> Histogram<C>) {
        if v < FAST_LIMIT {
            if let Some(c) = self.counts.get_mut(Self::index(v)) {
                c.add_n(n);
                return;
            }
        }
        self.record_rare(v, n, make);
    }

    /// Records a value that needs more cells, or a real histogram: out of the hot loops.
    #[cold]
    #[inline(never)]
    fn record_rare(&mut self, v: u64, n: u64, make: fn() -> Histogram<C>) {
        if v < FAST_LIMIT {
            self.cell(Self::index(v)).add_n(n);
        } else {
            let h = self.slow.get_or_insert_with(make);
            // HDR with auto-resize records any u64; a failure would be dropped as before.
            let _ = h.record_n(v, C::of(n));
        }
    }

    /// Records `v` once.
    #[inline(always)]
    pub(crate) fn record(&mut self, v: u64, make: fn() -> Histogram<C>) {
        self.record_n(v, 1, make);
    }

    /// The cell of bucket `i`, growing the counts to hold it.
    #[inline(always)]
    fn cell(&mut self, i: usize) -> &mut C {
        if i >= self.counts.len() {
            self.counts.resize(i + 1, C::default());
        }
        &mut self.counts[i]
    }

    /// Whether anything was recorded.
    pub(crate) fn is_used(&self) -> bool {
        !self.counts.is_empty() || self.slow.is_some()
    }

    /// Adds another's counts.
    pub(crate) fn merge(&mut self, other: Counts<C, M>) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), C::default());
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            a.add_n(b.as_u64());
        }
        match (self.slow.as_mut(), other.slow) {
            (_, None) => {}
            (None, Some(b)) => self.slow = Some(b),
            (Some(a), Some(b)) => {
                let _ = a.add(&b);
            }
        }
    }

    /// Adds the counts into `h` (built by the same `make` as the records used).
    pub(crate) fn add_into(self, h: &mut Histogram<C>) {
        for (i, c) in self.counts.into_iter().enumerate() {
            if c.as_u64() > 0 {
                let _ = h.record_n(Self::value(i), c);
            }
        }
        if let Some(s) = self.slow {
            let _ = h.add(&s);
        }
    }

    /// The histogram, or `None` when nothing was recorded.
    pub(crate) fn into_hist(self, make: fn() -> Histogram<C>) -> Option<Histogram<C>> {
        if !self.is_used() {
            return None;
        }
        let mut h = make();
        self.add_into(&mut h);
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h2() -> Histogram<u32> {
        let mut h = Histogram::new_with_bounds(1, 1 << 26, 2).unwrap();
        h.auto(true);
        h
    }

    fn h3() -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 1 << 26, 3).unwrap();
        h.auto(true);
        h
    }

    /// A deterministic spread of values over every magnitude, including 0, bucket edges
    /// and values past the fast limit.
    fn values() -> Vec<u64> {
        let mut v = vec![
            0, 1, 2, 127, 128, 255, 256, 257, 1023, 1024, 2047, 2048, 2049,
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bits = x % 64;
            v.push(x >> (63 - bits));
        }
        for p in 0..64 {
            v.push(1u64 << p);
            v.push((1u64 << p).saturating_sub(1));
        }
        v.push(u64::MAX);
        v
    }

    #[test]
    fn the_index_is_hdr_bucket_layout() {
        for v in values().into_iter().filter(|&v| v < FAST_LIMIT) {
            let i = Counts::<u32, SIG2>::index(v);
            let low = Counts::<u32, SIG2>::value(i);
            assert_eq!(low, h2().lowest_equivalent(v), "2 figures, {v}");
            let i = Counts::<u64, SIG3>::index(v);
            let low = Counts::<u64, SIG3>::value(i);
            assert_eq!(low, h3().lowest_equivalent(v), "3 figures, {v}");
        }
    }

    #[test]
    fn counts_give_the_same_histogram_as_recording_directly() {
        let mut direct2 = h2();
        let mut direct3 = h3();
        let mut c2 = Counts::<u32, SIG2>::default();
        let mut c3 = Counts::<u64, SIG3>::default();
        for (k, v) in values().into_iter().enumerate() {
            let n = (k % 3 + 1) as u64;
            let _ = direct2.record_n(v, n as u32);
            let _ = direct3.record_n(v, n);
            c2.record_n(v, n, h2);
            c3.record_n(v, n, h3);
        }
        let built2 = c2.into_hist(h2).unwrap();
        let built3 = c3.into_hist(h3).unwrap();
        assert!(built2 == direct2);
        assert!(built3 == direct3);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(built3.value_at_quantile(q), direct3.value_at_quantile(q));
        }
        assert_eq!(built3.max(), direct3.max());
        assert_eq!(built3.min(), direct3.min());
        assert_eq!(built3.mean(), direct3.mean());
    }

    #[test]
    fn merged_counts_equal_one_histogram_of_everything() {
        let vals = values();
        let (a, b) = vals.split_at(vals.len() / 3);
        let mut ca = Counts::<u64, SIG3>::default();
        let mut cb = Counts::<u64, SIG3>::default();
        let mut direct = h3();
        for &v in a {
            ca.record(v, h3);
            let _ = direct.record(v);
        }
        for &v in b {
            cb.record(v, h3);
            let _ = direct.record(v);
        }
        ca.merge(cb);
        assert!(ca.into_hist(h3).unwrap() == direct);
        assert!(Counts::<u64, SIG3>::default().into_hist(h3).is_none());
    }
}
