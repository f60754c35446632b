//! The sending side of a destination: what routing offers events to. It never waits:
//! an event is queued, waits on disk in the spool, or is dead-lettered or dropped and
//! counted. And a destination's settings: its own keys by type, and the keys every
//! type takes.

use super::dead_letter::Reason;
use super::{BatchConfig, BreakerConfig, ConcurrencySetting, RateLimitConfig, RetryConfig};
use crate::dest::{
    BuildError, ConfigProblem, DestinationKind, EventNames, NameOverride, Translate,
};
use crate::event::{Event, EventType};
use crate::privacy::{ConsentCategory, IpPolicy, PrivacyConfig};
use crate::spool::{Cursor, Lease};
use crate::telemetry::DestinationMetrics;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The sending side of a destination: what routing hands events to.
pub struct Destination {
    pub name: String,
    pub(super) queue: mpsc::Sender<Arc<Event>>,
    pub(super) overflow: Option<mpsc::Sender<Arc<Event>>>,
    pub metrics: Arc<DestinationMetrics>,
    /// `critical = true`: the relay is not ready while this destination cannot deliver.
    pub critical: bool,
    /// Types the destination would only drop, with their `dropped{reason}` counter:
    /// left out here rather than queued, batched and translated for nothing.
    pub(super) skipped_types: HashMap<EventType, Counter>,
    /// Its place in the disk spool and its reader's generation; `None` with the
    /// memory spool.
    pub(super) cursor: Option<Arc<Cursor>>,
    pub(super) generation: u64,
    pub(super) when_full: WhenFull,
    /// Its JetStream consumer, with the JetStream spool.
    pub(super) lease: Option<Arc<Lease>>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        // No more live events: the reader drains the disk backlog and closes the window.
        if let Some(cursor) = &self.cursor {
            cursor.close(self.generation);
        }
        // The reader stops pulling; the window drains.
        if let Some(lease) = &self.lease {
            lease.close(self.generation);
        }
    }
}

impl Destination {
    /// The id spooled records carry for this destination.
    pub fn spool_id(&self) -> Option<u16> {
        self.cursor.as_ref().map(|c| c.id)
    }

    /// A type this destination would only drop (unmapped, disabled): its spooled records
    /// do not name the destination, so a reader that is behind never reads them back
    /// (nor counts them owed after a restart) only to drop them. `offer_spooled` still
    /// counts each as received and dropped.
    pub fn leaves_out(&self, event: &Event) -> bool {
        self.dropped_for_type(event).is_some()
    }

    /// The counter of the reason this destination drops `event` for its type, if it does.
    fn dropped_for_type(&self, event: &Event) -> Option<&Counter> {
        if self.skipped_types.is_empty() {
            return None;
        }
        self.skipped_types.get(&event.known_type()?)
    }

    /// `when_full = "block"` and the backlog on disk is past `queue.max_bytes`: ingest
    /// refuses events routed here until it shrinks.
    pub fn blocked(&self) -> bool {
        self.when_full == WhenFull::Block && self.cursor.as_ref().is_some_and(|c| c.over_budget())
    }

    /// Counts an event of a type this destination would only drop (received, dropped
    /// with its reason) and says so: the JetStream spool never publishes those.
    pub fn skip_counted(&self, event: &Event) -> bool {
        match self.dropped_for_type(event) {
            Some(dropped) => {
                self.metrics.received.inc();
                dropped.inc();
                true
            }
            None => false,
        }
    }

    /// A spooled event, just made durable: into the window if the destination keeps up,
    /// else it waits on disk for the destination's reader. Never waits.
    pub fn offer_spooled(&self, event: Arc<Event>, bytes: u64) {
        self.metrics.received.inc();
        if let Some(dropped) = self.dropped_for_type(&event) {
            dropped.inc();
            return;
        }
        if self.cursor.as_ref().is_some_and(|c| c.is_removed()) {
            // Routed by a table from before the destination was removed: its worker
            // still drains the window; past that the event has nowhere to wait.
            if self.queue.try_send(event).is_ok() {
                self.metrics.queue_depth.inc();
            } else {
                self.metrics.dropped(Reason::Removed.as_str(), 1);
            }
            return;
        }
        self.metrics.queue_depth.inc();
        match &self.cursor {
            Some(cursor) => cursor.offer_live(event.spool_seq, event, bytes, &self.queue),
            // Not spooled after all (a destination started without a cursor).
            None => {
                if self.queue.try_send(event).is_err() {
                    self.metrics.queue_depth.dec();
                    self.metrics.dropped(Reason::QueueFull.as_str(), 1);
                }
            }
        }
    }

    /// Queues an event without waiting. When the queue is full the event is
    /// dead-lettered (`when_full = "dead_letter"`) or dropped, and counted either way.
    pub fn offer(&self, event: Arc<Event>) -> bool {
        self.metrics.received.inc();
        if let Some(dropped) = self.dropped_for_type(&event) {
            dropped.inc();
            return false;
        }
        match self.queue.try_send(event) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                match &self.overflow {
                    Some(overflow) => match overflow.try_send(event) {
                        Ok(()) => {
                            self.metrics.in_flight.inc();
                        }
                        Err(_) => self.metrics.dropped(Reason::QueueFull.as_str(), 1),
                    },
                    None => self.metrics.dropped(Reason::QueueFull.as_str(), 1),
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped("shutting_down", 1);
                false
            }
        }
    }

    /// Moves an already counted event from a replaced worker's queue into this one;
    /// waits for room rather than lose it.
    pub(super) async fn requeue(&self, event: Arc<Event>) {
        if self.queue.send(event).await.is_err() {
            // This worker is gone too: nothing can take the event any more.
            self.metrics.queue_depth.dec();
            self.metrics.dropped("reload_lost", 1);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    pub name: String,
    pub kind: DestinationKind,
    pub common: DestinationCommon,
}

impl DestinationConfig {
    /// The translator of an HTTP destination, with its common keys applied.
    pub fn translator(&self) -> Result<Box<dyn Translate>, BuildError> {
        self.kind.translator(
            EventNames::new(self.common.events.clone()),
            self.common.properties,
            self.common.batch.limits(),
        )
    }
}

impl DestinationCommon {
    /// What the types alone cannot check in the keys every destination takes; each
    /// problem names its key, which the loader locates.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.batch.max_events == 0 {
            problems.push(("batch.max_events", "must be greater than 0".to_string()));
        }
        if self.batch.max_bytes < 1024 {
            problems.push(("batch.max_bytes", "must be at least 1024".to_string()));
        }
        if self.queue.max_events == 0 {
            problems.push(("queue.max_events", "must be greater than 0".to_string()));
        }
        if self.queue.max_bytes == 0 {
            problems.push(("queue.max_bytes", "must be greater than 0".to_string()));
        }
        if self.timeout_ms == 0 {
            problems.push(("timeout_ms", "must be greater than 0".to_string()));
        }
        if self.concurrency == ConcurrencySetting::Fixed(0) {
            problems.push((
                "concurrency",
                "must be greater than 0, or \"adaptive\"".to_string(),
            ));
        }
        if self.max_concurrency == Some(0) {
            problems.push(("max_concurrency", "must be greater than 0".to_string()));
        }
        if let Some(limit) = &self.rate_limit {
            if limit.requests_per_second == Some(0)
                || limit.events_per_second == Some(0)
                || limit.burst == Some(0)
            {
                problems.push((
                    "rate_limit",
                    "rates and burst must be greater than 0 (leave a key out for no limit)"
                        .to_string(),
                ));
            }
        }
        if self.retry.max_attempts == 0 {
            problems.push((
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)".to_string(),
            ));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            problems.push((
                "retry.initial_backoff_ms",
                "must not exceed retry.max_backoff_ms".to_string(),
            ));
        }
        if self.breaker.failure_threshold == 0 || self.breaker.probe_interval_ms == 0 {
            problems.push((
                "breaker",
                "failure_threshold and probe_interval_ms must be greater than 0".to_string(),
            ));
        }
        for (event_type, _) in self.events.iter() {
            if EventType::parse(event_type).is_none() && !event_type.starts_with("custom.") {
                problems.push((
                    "events",
                    format!("{event_type:?} is not a player-event/1 type"),
                ));
            }
        }
        for (key, paths) in [
            ("drop_fields", &self.drop_fields),
            ("hash_fields", &self.hash_fields),
        ] {
            for path in paths {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    problems.push((key, format!("{path:?} is not a dotted field path")));
                } else if crate::privacy::PROTECTED_FIELDS.contains(&path.as_str()) {
                    problems.push((
                        key,
                        format!("{path:?} cannot be removed or rewritten: events need it"),
                    ));
                }
            }
        }
        problems
            .into_iter()
            .map(|(key, message)| ConfigProblem::new(key, message))
            .collect()
    }
}

/// Keys every destination type takes, whatever its `type`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationCommon {
    /// Per event type: a new name, or `false` to leave the type out.
    #[serde(default)]
    pub events: HashMap<String, NameOverride>,
    /// Pass the event's custom `properties` through where the vendor allows.
    #[serde(default = "defaults::yes")]
    pub properties: bool,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    /// Time allowed for one request, from connect to the end of the answer.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once: `"adaptive"` (default) follows the vendor's round
    /// trip and back-pressure up to `max_concurrency`; a number pins it.
    #[serde(default)]
    pub concurrency: ConcurrencySetting,
    /// The most requests an adaptive limit may keep in flight; unset: the vendor's
    /// default (see [`crate::dest::vendors::VendorDefaults`]), filled in at load.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Unset: the vendor's documented default (see
    /// [`crate::dest::vendors::VendorDefaults`]), filled in at load.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Write the requests to `server.dry_run_dir/<name>.http` instead of sending them.
    #[serde(default)]
    pub dry_run: bool,
    /// When true, `/readyz` answers 503 while this destination's breaker is not closed.
    #[serde(default)]
    pub critical: bool,
    /// Events whose `context.consent.<category>` is `false` are not sent here.
    #[serde(default)]
    pub consent: Option<ConsentCategory>,
    /// Dotted paths removed from events before they are sent here.
    #[serde(default)]
    pub drop_fields: Vec<String>,
    /// Dotted paths replaced by their keyed SHA-256 (`server.hash_salt`) before sending.
    #[serde(default)]
    pub hash_fields: Vec<String>,
    /// What happens to `context.ip`.
    #[serde(default)]
    pub ip: IpPolicy,
}

/// The keys of [`DestinationCommon`], which are split off before the type's own keys are read.
pub(crate) const COMMON_KEYS: &[&str] = &[
    "events",
    "properties",
    "batch",
    "queue",
    "timeout_ms",
    "concurrency",
    "max_concurrency",
    "rate_limit",
    "retry",
    "breaker",
    "dry_run",
    "critical",
    "consent",
    "drop_fields",
    "hash_fields",
    "ip",
];

impl DestinationCommon {
    /// The most requests this destination may have in flight: the pinned number, or
    /// the adaptive limit's cap (the vendor's default once loaded).
    pub fn max_in_flight(&self) -> usize {
        match self.concurrency {
            ConcurrencySetting::Fixed(n) => n,
            ConcurrencySetting::Adaptive => self.max_concurrency.unwrap_or(1),
        }
    }
}

impl DestinationCommon {
    /// The privacy keys, for the privacy rules.
    pub fn privacy(&self) -> PrivacyConfig {
        PrivacyConfig {
            consent: self.consent,
            drop_fields: self.drop_fields.clone(),
            hash_fields: self.hash_fields.clone(),
            ip: self.ip,
        }
    }
}

/// `queue` in a destination's config: how much waits for it, and what happens past that.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Events held in memory for the destination: the whole queue with the memory
    /// spool, the window read ahead of the disk backlog with the disk spool.
    #[serde(default = "defaults::queue_max_events")]
    pub max_events: usize,
    /// The destination's backlog on disk (disk spool): past it, `when_full` decides.
    #[serde(default = "defaults::queue_max_bytes")]
    pub max_bytes: u64,
    /// What happens when the queue (memory) or the backlog (disk) is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Written to the dead-letter file, so it can be replayed.
    #[default]
    DeadLetter,
    /// Counted as `dropped{reason="queue_full"}` and gone.
    DropNewest,
    /// Disk spool: the oldest backlog is counted as `dropped{reason="backlog_full"}`.
    DropOldest,
    /// Disk spool: ingest answers 503 with `Retry-After` for events routed here.
    Block,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_events: defaults::queue_max_events(),
            max_bytes: defaults::queue_max_bytes(),
            when_full: WhenFull::default(),
        }
    }
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn timeout_ms() -> u64 {
        10_000
    }
    /// About 3 KB per queued event: 10,000 is ~30 MB for a destination that stalls.
    pub fn queue_max_events() -> usize {
        10_000
    }
    pub fn queue_max_bytes() -> u64 {
        256 << 20
    }
}
