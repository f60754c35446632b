//! Per-destination rate limits (governor): requests per second and events per second,
//! each with a burst allowance, applied before every attempt.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use std::num::NonZeroU32;

pub struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    events: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl RateLimits {
    pub fn new(config: Option<RateLimitConfig>) -> RateLimits {
        let Some(config) = config else {
            return RateLimits {
                requests: None,
                events: None,
            };
        };
        let limiter = |per_second: u32| {
            let rate = NonZeroU32::new(per_second)?;
            let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
            Some((
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                burst,
            ))
        };
        RateLimits {
            requests: config
                .requests_per_second
                .and_then(limiter)
                .map(|(limiter, _)| limiter),
            events: config.events_per_second.and_then(limiter),
        }
    }

    /// Waits until a request carrying `events` events may go.
    pub async fn admit(&self, events: usize) {
        if let Some(requests) = &self.requests {
            requests.until_ready().await;
        }
        if let Some((limiter, burst)) = &self.events {
            let mut left = events as u32;
            while left > 0 {
                // A request larger than the burst takes several bursts' worth of time.
                let chunk = left.min(burst.get());
                if let Some(n) = NonZeroU32::new(chunk) {
                    // Cannot fail: chunk never exceeds the burst.
                    let _ = limiter.until_n_ready(n).await;
                }
                left -= chunk;
            }
        }
    }
}

/// Limits on what the relay sends a destination, per second, with a burst allowance.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    #[serde(default)]
    pub events_per_second: Option<u32>,
    /// How far above the steady rate a burst may go; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl From<crate::dest::vendors::VendorRate> for RateLimitConfig {
    /// A vendor's documented rate, with the default burst.
    fn from(rate: crate::dest::vendors::VendorRate) -> Self {
        RateLimitConfig {
            requests_per_second: rate.requests_per_second,
            events_per_second: rate.events_per_second,
            burst: None,
        }
    }
}

#[cfg(test)]
// governor keeps its own real clock (paused tokio time does not reach it), so this test
// measures real time.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn events_per_second_spaces_requests_out() {
        let limits = RateLimits::new(Some(RateLimitConfig {
            requests_per_second: None,
            events_per_second: Some(100),
            burst: Some(10),
        }));
        let start = Instant::now();
        for _ in 0..3 {
            limits.admit(10).await;
        }
        // The first 10 are the burst; 20 more at 100/s take about 200 ms.
        assert!(start.elapsed().as_millis() >= 150, "{:?}", start.elapsed());
    }
}
