//! The simulated clock: simulated time = start wall clock + real elapsed × speedup.
//!
//! Built on `tokio::time::Instant` so that tests can freeze and advance it with
//! `tokio::time::pause()`.

use std::time::Duration;

use tokio::time::Instant;

/// Simulated clock (cheap to copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimClock {
    start_wall_us: i64,
    start: Instant,
    speedup: f64,
}

impl SimClock {
    /// Starts a clock now.
    pub(crate) fn start(speedup: f64) -> SimClock {
        let start_wall_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        SimClock {
            start_wall_us,
            start: Instant::now(),
            speedup,
        }
    }

    /// Current simulated time, UTC µs.
    pub(crate) fn now_us(&self) -> i64 {
        self.at_us(Instant::now())
    }

    /// Simulated time at real instant `at`, UTC µs.
    pub(crate) fn at_us(&self, at: Instant) -> i64 {
        let real = at.saturating_duration_since(self.start).as_secs_f64() * 1e6;
        self.start_wall_us + (real * self.speedup) as i64
    }

    /// Simulated µs since the clock started.
    pub(crate) fn elapsed_sim_us(&self) -> i64 {
        self.now_us() - self.start_wall_us
    }

    /// Real duration that a simulated duration of `sim_us` takes.
    pub(crate) fn real(&self, sim_us: f64) -> Duration {
        Duration::from_secs_f64((sim_us / self.speedup).max(0.0) / 1e6)
    }
}
