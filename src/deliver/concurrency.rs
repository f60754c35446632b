//! How many requests a destination keeps in flight: a fixed number, or (the default) a
//! limit that follows the vendor, in the manner of TCP congestion control and Vector's
//! adaptive request concurrency (AIMD on the round trip and on back-pressure).
//!
//! The adaptive limit starts at [`INITIAL_LIMIT`] and is judged once per window, a window
//! being one average round trip of answers:
//! - it grows while the window's mean round trip stays near the long-run average and the
//!   limit was actually reached (a limit nobody uses is not raised): doubling at first
//!   ("slow start", so a burst is carried within a few round trips), then by about
//!   √limit per window once it has had to back off;
//! - it halves at once on back-pressure (429, 503, a timeout), then waits one average
//!   round trip before it judges again, so a volley of 429s answering requests sent
//!   before the cut counts once;
//! - it halves when the window's round trip is more than twice the average (the vendor
//!   is queueing our requests); a window well under the average (the vendor got
//!   faster again) becomes the average at once;
//! - it never passes `max_concurrency` and never goes below 1.
//!
//! The rate limit (`rate_limit.rs`) stays the hard ceiling on what is sent per second.

use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where an adaptive limit starts: the old fixed default.
pub const INITIAL_LIMIT: usize = 4;
/// A window's mean round trip up to this multiple of the average still counts as "near".
const NEAR: f64 = 1.5;
/// A window's mean round trip beyond this multiple of the average means the vendor is queueing.
const RISE: f64 = 2.0;
/// Weight of the newest window in the long-run average.
const EWMA_WEIGHT: f64 = 0.2;
/// The shortest window, so localhost round trips of microseconds are still averaged.
const MIN_WINDOW: Duration = Duration::from_millis(5);

/// What one attempt says about the vendor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer that was not back-pressure, after this round trip.
    Answered(Duration),
    /// 429, 503 or a timeout: the vendor wants less.
    BackPressure,
}

/// The gauges the limit and the average round trip are exported to.
#[derive(Clone, Default)]
pub struct Gauges {
    pub limit: Gauge,
    pub rtt_seconds: Gauge<f64, AtomicU64>,
}

struct State {
    limit: usize,
    in_flight: usize,
    /// Whether `in_flight` reached `limit` during the current window.
    reached: bool,
    slow_start: bool,
    window_start: Instant,
    window_sum: Duration,
    window_count: u32,
    /// The long-run average round trip, in seconds.
    average: Option<f64>,
    /// No judgement before this (after a cut).
    hold_until: Option<Instant>,
}

/// A destination's request slots.
pub struct Concurrency {
    state: Mutex<State>,
    released: Notify,
    adaptive: bool,
    max: usize,
    gauges: Gauges,
}

/// One request slot, given back when dropped.
pub struct Permit {
    owner: Arc<Concurrency>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.lock().in_flight -= 1;
        self.owner.released.notify_one();
    }
}

impl Concurrency {
    /// A fixed number of slots.
    pub fn fixed(n: usize, gauges: Gauges) -> Arc<Concurrency> {
        Concurrency::new(n.max(1), false, n.max(1), gauges)
    }

    /// A limit that follows the vendor, between 1 and `max`.
    pub fn adaptive(max: usize, gauges: Gauges) -> Arc<Concurrency> {
        let max = max.max(1);
        Concurrency::new(INITIAL_LIMIT.min(max), true, max, gauges)
    }

    fn new(limit: usize, adaptive: bool, max: usize, gauges: Gauges) -> Arc<Concurrency> {
        gauges.limit.set(limit as i64);
        Arc::new(Concurrency {
            state: Mutex::new(State {
                limit,
                in_flight: 0,
                reached: false,
                slow_start: true,
                window_start: Instant::now(),
                window_sum: Duration::ZERO,
                window_count: 0,
                average: None,
                hold_until: None,
            }),
            released: Notify::new(),
            adaptive,
            max,
            gauges,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds valid counts.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The most requests allowed in flight now.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// The long-run average round trip, once one is known.
    #[cfg(test)]
    pub fn average_rtt(&self) -> Option<Duration> {
        self.lock().average.map(Duration::from_secs_f64)
    }

    /// Waits for a free slot. Cancel-safe.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    if state.in_flight >= state.limit {
                        state.reached = true;
                    }
                    return Permit {
                        owner: self.clone(),
                    };
                }
                state.reached = true;
            }
            released.await;
        }
    }

    /// Takes in what an attempt said; moves the limit when a window is complete.
    pub fn record(&self, signal: Signal) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Signal::Answered(rtt) = signal {
            state.window_sum += rtt;
            state.window_count += 1;
        }
        if !self.adaptive {
            // A pinned limit still reports the round trip.
            if let Signal::Answered(rtt) = signal {
                let average = blend(state.average, rtt.as_secs_f64());
                state.average = Some(average);
                self.gauges.rtt_seconds.set(average);
            }
            return;
        }
        if state.hold_until.is_some_and(|until| now < until) {
            return;
        }
        let before = state.limit;
        match signal {
            Signal::BackPressure => {
                state.limit = (state.limit / 2).max(1);
                state.slow_start = false;
                let hold = state
                    .average
                    .map_or(MIN_WINDOW, Duration::from_secs_f64)
                    .max(MIN_WINDOW);
                state.hold_until = Some(now + hold);
                new_window(&mut state, now);
            }
            Signal::Answered(_) => {
                let span = state
                    .average
                    .map_or(Duration::ZERO, Duration::from_secs_f64)
                    .max(MIN_WINDOW);
                if now.duration_since(state.window_start) < span || state.window_count == 0 {
                    return;
                }
                let mean = (state.window_sum / state.window_count).as_secs_f64();
                match state.average {
                    Some(average) if mean > average * RISE => {
                        state.limit = (state.limit / 2).max(1);
                        state.slow_start = false;
                    }
                    Some(average) if mean > average * NEAR => {}
                    _ if state.reached => {
                        let grown = if state.slow_start {
                            state.limit * 2
                        } else {
                            state.limit + (state.limit as f64).sqrt().floor().max(1.0) as usize
                        };
                        state.limit = grown.min(self.max);
                    }
                    _ => {}
                }
                let average = match state.average {
                    // The vendor got faster: adopt its new pace at once, so windows
                    // (one average round trip) shrink back and the limit can climb.
                    Some(average) if mean * RISE < average => mean,
                    _ => blend(state.average, mean),
                };
                state.average = Some(average);
                self.gauges.rtt_seconds.set(average);
                new_window(&mut state, now);
            }
        }
        if state.limit != before {
            self.gauges.limit.set(state.limit as i64);
            if state.limit > before {
                drop(state);
                self.released.notify_waiters();
            }
        }
    }
}

fn blend(average: Option<f64>, sample: f64) -> f64 {
    match average {
        Some(average) => average * (1.0 - EWMA_WEIGHT) + sample * EWMA_WEIGHT,
        None => sample,
    }
}

fn new_window(state: &mut State, now: Instant) {
    state.window_start = now;
    state.window_sum = Duration::ZERO;
    state.window_count = 0;
    state.reached = state.in_flight >= state.limit;
}

/// `concurrency = "adaptive"` or `concurrency = N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConcurrencySetting {
    #[default]
    Adaptive,
    Fixed(usize),
}

impl<'de> Deserialize<'de> for ConcurrencySetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConcurrencySetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"adaptive\" or a number of requests")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "adaptive" => Ok(ConcurrencySetting::Adaptive),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                usize::try_from(v)
                    .map(ConcurrencySetting::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                usize::try_from(v)
                    .map(ConcurrencySetting::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, sleep};

    const RTT: Duration = Duration::from_millis(100);

    /// Keeps every slot busy for one round trip per step, answering `signal`.
    async fn round(c: &Arc<Concurrency>, signal: Signal) {
        let n = c.limit();
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(c.acquire().await);
        }
        advance(RTT).await;
        for permit in permits {
            c.record(signal);
            drop(permit);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grows_while_the_round_trip_holds_and_never_passes_the_cap() {
        let c = Concurrency::adaptive(100, Gauges::default());
        assert_eq!(c.limit(), INITIAL_LIMIT);
        let mut seen = vec![c.limit()];
        for _ in 0..12 {
            round(&c, Signal::Answered(RTT)).await;
            seen.push(c.limit());
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0]), "{seen:?}");
        assert!(seen.iter().all(|l| *l <= 100), "{seen:?}");
        assert_eq!(c.limit(), 100, "{seen:?}");
        // Within a few round trips, not tens: slow start doubles.
        assert!(seen[6] >= 64, "{seen:?}");
        let average = c.average_rtt().expect("an average");
        assert!(
            average.abs_diff(RTT) < Duration::from_micros(1),
            "{average:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_limit_is_not_raised() {
        let c = Concurrency::adaptive(100, Gauges::default());
        for _ in 0..10 {
            let permit = c.acquire().await;
            advance(RTT).await;
            c.record(Signal::Answered(RTT));
            drop(permit);
        }
        assert_eq!(c.limit(), INITIAL_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn halves_on_back_pressure_once_per_round_trip_and_stays_at_least_one() {
        let c = Concurrency::adaptive(100, Gauges::default());
        for _ in 0..5 {
            round(&c, Signal::Answered(RTT)).await;
        }
        let before = c.limit();
        assert!(before >= 64, "{before}");
        // A whole volley of 429s for the requests in flight: one cut.
        round(&c, Signal::BackPressure).await;
        assert_eq!(c.limit(), before / 2);
        // Later volleys cut again, down to 1 and never below.
        for _ in 0..12 {
            sleep(RTT).await;
            round(&c, Signal::BackPressure).await;
        }
        assert_eq!(c.limit(), 1);
        // After back-off growth is additive (about √limit per window), no longer doubling.
        round(&c, Signal::Answered(RTT)).await;
        round(&c, Signal::Answered(RTT)).await;
        assert!(c.limit() <= 3, "{}", c.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_vendor_that_slows_down_and_recovers() {
        let c = Concurrency::adaptive(100, Gauges::default());
        for _ in 0..6 {
            round(&c, Signal::Answered(RTT)).await;
        }
        let fast = c.limit();
        // 100 ms → 2 s: the limit comes down. (Answers here come all at once, so each
        // window holds the answers of the round before it.)
        let slow = Duration::from_secs(2);
        for _ in 0..3 {
            let n = c.limit();
            let mut permits = Vec::new();
            for _ in 0..n {
                permits.push(c.acquire().await);
            }
            advance(slow).await;
            for permit in permits {
                c.record(Signal::Answered(slow));
                drop(permit);
            }
        }
        let low = c.limit();
        assert!(low <= fast / 4, "{fast} → {low}");
        // Back to 100 ms: it climbs again.
        for _ in 0..30 {
            round(&c, Signal::Answered(RTT)).await;
        }
        assert!(c.limit() >= low * 3, "{low} → {}", c.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_limit_does_not_move_but_reports_the_round_trip() {
        let gauges = Gauges::default();
        let c = Concurrency::fixed(3, gauges.clone());
        round(&c, Signal::BackPressure).await;
        round(&c, Signal::Answered(RTT)).await;
        assert_eq!(c.limit(), 3);
        assert_eq!(gauges.limit.get(), 3);
        assert!((gauges.rtt_seconds.get() - 0.1).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_slots_as_they_are_released_or_added() {
        let c = Concurrency::adaptive(8, Gauges::default());
        let held: Vec<Permit> = {
            let mut v = Vec::new();
            for _ in 0..INITIAL_LIMIT {
                v.push(c.acquire().await);
            }
            v
        };
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await }
        });
        sleep(Duration::from_millis(1)).await;
        assert!(!waiter.is_finished());
        // Answers that grow the limit wake the waiter although no slot was released.
        advance(RTT).await;
        c.record(Signal::Answered(RTT));
        let extra = waiter.await.expect("waiter");
        assert_eq!(c.limit(), 8);
        drop(extra);
        drop(held);
        assert_eq!(c.lock().in_flight, 0);
    }
}
