//! Delivery: each destination has its own bounded queue and worker, so a slow or
//! failing vendor never holds up another destination or the ingest response.
//!
//! queue (`Destination::offer`) → batch (`batch.rs`) → plan (`plan.rs`: privacy,
//! skipped types, translate with `crate::dest`) →
//! per request: breaker (`breaker.rs`) → rate limit (`rate_limit.rs`) → concurrency
//! → send with timeout (`http.rs`) → retry (`retry.rs`) → delivered or dead letter
//! (`dead_letter.rs`). A file's lines are appended (`append.rs`) instead of sent.
//!
//! Accounting, per destination, at every moment:
//! `received = sent + dead_lettered + dropped + queue_depth + in_flight`.
//!
//! Files, one per step: `destination.rs` (what routing offers events to), `worker.rs`
//! (start, the worker loop, what a destination's tasks share), `queue.rs`, `batch.rs`,
//! `plan.rs`, `dispatch.rs` (a planned batch into requests), `attempt.rs` (one request
//! to its settled end), `breaker.rs`, `rate_limit.rs`, `concurrency.rs`, `http.rs`,
//! `retry.rs`, `dead_letter.rs`.

mod append;
mod attempt;
mod batch;
mod breaker;
mod concurrency;
pub mod dead_letter;
mod destination;
mod dispatch;
pub mod http;
pub mod plan;
mod queue;
mod rate_limit;
pub mod retry;
mod worker;

pub use self::batch::BatchConfig;
pub use self::breaker::BreakerConfig;
pub use self::concurrency::{ConcurrencySetting, Gauges as ConcurrencyGauges};
pub use self::queue::Settle;
pub use self::rate_limit::RateLimitConfig;
pub use self::retry::RetryConfig;

pub use self::breaker::state_name as breaker_state_name;
pub(crate) use self::destination::COMMON_KEYS;
pub use self::destination::{
    Destination, DestinationCommon, DestinationConfig, QueueConfig, WhenFull,
};
pub use self::http::{HttpClient, SendError, TlsRoots};
pub use self::plan::{Plan, Planner};
pub use self::worker::{dead_letter_removed, start, BuildError, Environment, Worker};

use self::worker::Stack;
