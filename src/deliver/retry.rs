//! When to try a request again: exponential backoff with full jitter, bounded in attempts
//! and total time, and never sooner than the vendor asked (`Retry-After`,
//! `X-RateLimit-Reset`).

use http::HeaderMap;
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// Longest wait a vendor can ask for; a longer ask is a misconfigured vendor, not a plan.
const MAX_VENDOR_WAIT: Duration = Duration::from_secs(3600);

pub struct Backoff {
    config: RetryConfig,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(config: RetryConfig, seed: u64) -> Backoff {
        Backoff {
            config,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The wait before attempt `attempt + 1`, or `None` when no retry is left: attempts
    /// used up, or the wait would end past `max_elapsed_ms` from the first attempt.
    pub fn next_wait(
        &mut self,
        attempt: u32,
        elapsed: Duration,
        vendor_asked: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.config.max_attempts {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .config
            .initial_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.config.max_backoff_ms);
        // Full jitter: anywhere in [0, ceiling], so retries from many relays spread out.
        let jittered = Duration::from_millis(self.rng.u64(0..=ceiling));
        let wait = match vendor_asked {
            Some(asked) => jittered.max(asked.min(MAX_VENDOR_WAIT)),
            None => jittered,
        };
        let budget = Duration::from_millis(self.config.max_elapsed_ms);
        (elapsed + wait <= budget).then_some(wait)
    }
}

/// What the vendor asked for: `Retry-After` (seconds or an HTTP date), else
/// `X-RateLimit-Reset` (seconds to wait, or a Unix time when it is that large).
pub fn vendor_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(value) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    // A value past what a Duration or a SystemTime holds (`1e300`, found by fuzzing) is
    // a vendor's nonsense: wait the longest, and the retry budget decides the rest.
    let seconds = Duration::try_from_secs_f64(reset).unwrap_or(Duration::MAX);
    // Unix times are past 1e9; anything smaller is a number of seconds.
    if reset > 1e9 {
        Some(match SystemTime::UNIX_EPOCH.checked_add(seconds) {
            Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        })
    } else {
        Some(seconds)
    }
}

/// Exponential backoff with full jitter, bounded in attempts and in total time.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first one included.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// From the first attempt; no retry starts after this.
    #[serde(default = "defaults::max_elapsed_ms")]
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: defaults::max_attempts(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_elapsed_ms: defaults::max_elapsed_ms(),
        }
    }
}

mod defaults {
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn initial_backoff_ms() -> u64 {
        200
    }
    pub fn max_backoff_ms() -> u64 {
        30_000
    }
    pub fn max_elapsed_ms() -> u64 {
        120_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            initial_backoff_ms: 100,
            max_backoff_ms: 250,
            max_elapsed_ms: 10_000,
        }
    }

    #[test]
    fn absurd_reset_values_wait_long_instead_of_panicking() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for value in ["1e300", "1.8e19", "99999999999999999999"] {
            let mut headers = HeaderMap::new();
            headers.insert("x-ratelimit-reset", value.parse().expect("header"));
            let wait = vendor_wait(&headers, now).expect("a wait");
            assert!(wait > Duration::from_secs(86_400), "{value}: {wait:?}");
        }
    }

    #[test]
    fn waits_grow_are_capped_and_jittered_then_stop() {
        let mut backoff = Backoff::new(config(), 7);
        for _ in 0..100 {
            let first = backoff.next_wait(1, Duration::ZERO, None).expect("retry");
            assert!(first <= Duration::from_millis(100));
            let third = backoff.next_wait(3, Duration::ZERO, None).expect("retry");
            assert!(third <= Duration::from_millis(250));
        }
        assert_eq!(backoff.next_wait(4, Duration::ZERO, None), None);
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff.next_wait(2, Duration::ZERO, None))
            .collect();
        assert!(spread.len() > 5, "full jitter spreads waits");
    }

    #[test]
    fn vendor_waits_are_honoured_within_the_elapsed_budget() {
        let mut backoff = Backoff::new(config(), 7);
        let asked = Some(Duration::from_secs(2));
        assert_eq!(
            backoff.next_wait(1, Duration::ZERO, asked),
            Some(Duration::from_secs(2))
        );
        assert_eq!(backoff.next_wait(1, Duration::from_secs(9), asked), None);
    }

    #[test]
    fn retry_after_and_rate_limit_reset_are_read() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3".parse().expect("header"));
        assert_eq!(vendor_wait(&headers, now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert("retry-after", later.parse().expect("header"));
        assert_eq!(vendor_wait(&headers, now), Some(Duration::from_secs(90)));
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", "1800000005".parse().expect("header"));
        assert_eq!(vendor_wait(&headers, now), Some(Duration::from_secs(5)));
        headers.insert("x-ratelimit-reset", "2".parse().expect("header"));
        assert_eq!(vendor_wait(&headers, now), Some(Duration::from_secs(2)));
        assert_eq!(vendor_wait(&HeaderMap::new(), now), None);
    }
}
