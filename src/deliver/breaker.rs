//! Fail fast: a destination whose vendor keeps failing stops sending, lets one probe
//! through every `probe_interval`, and resumes by itself when a probe succeeds. Its
//! queue keeps filling meanwhile, up to its capacity.

use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its result.
    Probing,
}

/// The name of a breaker state as its gauge encodes it, for `/readyz`.
pub fn state_name(gauge_value: i64) -> &'static str {
    match gauge_value {
        0 => "closed",
        1 => "open",
        _ => "half_open",
    }
}

pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    /// 0 closed, 1 open, 2 probing.
    gauge: Gauge,
}

impl Breaker {
    pub fn new(config: BreakerConfig, gauge: Gauge) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits until a request may be sent.
    pub async fn admit(&self) {
        loop {
            let wait = {
                let mut state = self.lock();
                match *state {
                    State::Closed { .. } => return,
                    State::Open { until } if Instant::now() >= until => {
                        *state = State::Probing;
                        self.gauge.set(2);
                        return;
                    }
                    State::Open { until } => until - Instant::now(),
                    State::Probing => Duration::from_millis(self.config.probe_interval_ms.min(100)),
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The vendor answered (even with a rejection): it is up.
    pub fn success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { failures: 0 }) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!("vendor answers again: breaker closed");
            }
            *state = State::Closed { failures: 0 };
            self.gauge.set(0);
        }
    }

    /// The request was never sent (it could not be built): says nothing of the vendor.
    /// A probe that was out hands its turn to the next request.
    pub fn release(&self) {
        let mut state = self.lock();
        if *state == State::Probing {
            *state = State::Open {
                until: Instant::now(),
            };
            self.gauge.set(1);
        }
    }

    /// A connection error, timeout or retryable status.
    pub fn failure(&self) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            _ => true,
        };
        if open {
            let was_closed = matches!(*state, State::Closed { .. });
            *state = State::Open {
                until: Instant::now() + Duration::from_millis(self.config.probe_interval_ms),
            };
            self.gauge.set(1);
            if was_closed {
                tracing::warn!(
                    probe_interval_ms = self.config.probe_interval_ms,
                    "vendor keeps failing: breaker open"
                );
            }
        }
    }
}

/// Fail fast: after `failure_threshold` failed attempts in a row the destination stops
/// sending and probes the vendor every `probe_interval_ms` until one succeeds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "defaults::probe_interval_ms")]
    pub probe_interval_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: defaults::failure_threshold(),
            probe_interval_ms: defaults::probe_interval_ms(),
        }
    }
}

mod defaults {
    pub fn failure_threshold() -> u32 {
        5
    }
    pub fn probe_interval_ms() -> u64 {
        5_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_then_closes() {
        let breaker = Breaker::new(
            BreakerConfig {
                failure_threshold: 2,
                probe_interval_ms: 1000,
            },
            Gauge::default(),
        );
        breaker.failure();
        breaker.admit().await; // still closed
        breaker.failure();
        let start = Instant::now();
        breaker.admit().await; // open: waits for the probe time
        assert!(start.elapsed() >= Duration::from_millis(1000));
        assert_eq!(breaker.gauge.get(), 2);
        breaker.failure(); // probe failed: open again
        assert_eq!(breaker.gauge.get(), 1);
        breaker.admit().await;
        breaker.success();
        assert_eq!(breaker.gauge.get(), 0);
        let start = Instant::now();
        breaker.admit().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
