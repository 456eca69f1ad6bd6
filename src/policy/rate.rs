//! Per-client request rates: a token bucket per identity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets keyed by client identity.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Takes one request from `identity`'s bucket (`per_minute` sustained, `burst` extra).
    /// Returns how long to wait when the bucket is empty.
    pub fn take(&self, identity: &str, per_minute: u32, burst: u32) -> Result<(), Duration> {
        self.take_at(identity, per_minute, burst, Instant::now())
    }

    fn take_at(
        &self,
        identity: &str,
        per_minute: u32,
        burst: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let capacity = f64::from(burst.max(1));
        let per_second = f64::from(per_minute) / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take_at("a", 60, 3, start).unwrap();
        }
        let wait = limiter.take_at("a", 60, 3, start).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        limiter.take_at("b", 60, 3, start).unwrap();
        limiter
            .take_at("a", 60, 3, start + Duration::from_secs(1))
            .unwrap();
        assert!(
            limiter
                .take_at("a", 60, 3, start + Duration::from_secs(1))
                .is_err()
        );
    }
}
