//! Enrollment rate limits per label and per client identity (`[labels.NAME.rate_limit]`),
//! refused with 429 and `Retry-After` (RFC 6585 §4). Token buckets in memory only: a restart
//! starts them full, so there is no state to corrupt and the limits live in the configuration
//! alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::{LabelConfig, RateLimit};
use crate::error::{Error, Result};

/// Buckets kept for identities before full ones are forgotten: one-time tokens make a new
/// identity per device, and a full bucket is the same as no bucket.
const MAX_IDENTITIES: usize = 10_000;

/// The rate limits of every label.
#[derive(Default)]
pub struct RateLimits {
    labels: HashMap<String, (RateLimit, Mutex<Buckets>)>,
}

#[derive(Default)]
struct Buckets {
    label: Option<Bucket>,
    identities: HashMap<String, Bucket>,
}

/// A token bucket: `rate` tokens a second, at most `rate` (one second's worth) held.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.at = now;
    }

    /// Seconds until a token is there (0 when one is).
    fn wait(&self, rate: u32) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / f64::from(rate)).ceil().max(1.0) as u64
        }
    }
}

impl RateLimits {
    /// The limits the labels configure.
    pub fn new<'a>(labels: impl Iterator<Item = &'a LabelConfig>) -> Self {
        Self {
            labels: labels
                .filter_map(|l| {
                    l.rate_limit
                        .filter(|r| r.per_label.is_some() || r.per_identity.is_some())
                        .map(|r| (l.name.clone(), (r, Mutex::new(Buckets::default()))))
                })
                .collect(),
        }
    }

    /// Whether `label` has a rate limit.
    pub fn limits(&self, label: &str) -> bool {
        self.labels.contains_key(label)
    }

    /// Takes one enrollment from `label`'s bucket and `identity`'s, or refuses with the seconds
    /// to wait. Both or neither: a refused request uses up nothing.
    pub fn take(&self, label: &str, identity: &str) -> Result<()> {
        let Some((limit, buckets)) = self.labels.get(label) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut b = buckets
            .lock()
            .map_err(|_| Error::Internal("rate limit lock poisoned".into()))?;
        let mut wait = 0;
        if let Some(rate) = limit.per_label {
            let bucket = b.label.get_or_insert_with(|| Bucket::full(rate, now));
            bucket.refill(rate, now);
            wait = wait.max(bucket.wait(rate));
        }
        if let Some(rate) = limit.per_identity {
            if b.identities.len() >= MAX_IDENTITIES {
                b.identities.retain(|_, bucket| {
                    bucket.refill(rate, now);
                    bucket.tokens < f64::from(rate)
                });
            }
            let bucket = b
                .identities
                .entry(identity.to_string())
                .or_insert_with(|| Bucket::full(rate, now));
            bucket.refill(rate, now);
            wait = wait.max(bucket.wait(rate));
        }
        if wait > 0 {
            return Err(Error::RateLimited {
                label: label.to_string(),
                retry_after: wait,
            });
        }
        if let Some(bucket) = b.label.as_mut() {
            bucket.tokens -= 1.0;
        }
        if limit.per_identity.is_some()
            && let Some(bucket) = b.identities.get_mut(identity)
        {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate_and_refuse_with_the_wait() {
        let now = Instant::now();
        let mut b = Bucket::full(2, now);
        b.tokens -= 2.0;
        assert_eq!(b.wait(2), 1);
        b.refill(2, now + std::time::Duration::from_millis(500));
        assert!((b.tokens - 1.0).abs() < 1e-9);
        assert_eq!(b.wait(2), 0);
        b.refill(2, now + std::time::Duration::from_secs(60));
        assert!(
            (b.tokens - 2.0).abs() < 1e-9,
            "never more than one second's worth"
        );
    }
}
