//! A token bucket: the one rate limit for log lines a plugin can cause (its output, its faults).

use std::time::Instant;

/// Allows `burst` events at once, then `per_second` on average.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
    burst: f64,
    per_second: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(burst: f64, per_second: f64) -> Self {
        TokenBucket {
            tokens: burst,
            refilled: Instant::now(),
            burst,
            per_second,
        }
    }

    /// Whether one more event may happen at `now` (and takes its token if so).
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(3.0, 2.0);
        let t = Instant::now();
        assert_eq!((0..5).filter(|_| b.take(t)).count(), 3);
        assert!(b.take(t + Duration::from_millis(500)));
        assert!(!b.take(t + Duration::from_millis(500)));
        assert_eq!(
            (0..10)
                .filter(|_| b.take(t + Duration::from_secs(100)))
                .count(),
            3,
            "refills to the burst, not beyond"
        );
    }
}
