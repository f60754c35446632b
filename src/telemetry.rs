//! Logs (tracing) and metrics (Prometheus text format). Metric names follow one
//! vocabulary: `playrelay_<what>_total` for counts, a `destination` label per destination.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's log subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationStatusLabel {
    pub destination: String,
    /// An HTTP status, or `timeout` / `connect_error` / `error` when there was none.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationReasonLabel {
    pub destination: String,
    pub reason: String,
}

/// Every metric of the relay, registered once; handed out by reference, never global.
pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_accepted: Counter,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub ingest_requests: Family<StatusLabel, Counter>,
    pub events_unrouted: Counter,
    pub route_sampled_out: Family<RouteLabel, Counter>,
    pub dest_received: Family<DestinationLabel, Counter>,
    pub dest_sent: Family<DestinationLabel, Counter>,
    pub dest_failed: Family<DestinationLabel, Counter>,
    pub dest_dropped: Family<DestinationReasonLabel, Counter>,
    pub dest_queue_depth: Family<DestinationLabel, Gauge>,
    pub dest_in_flight: Family<DestinationLabel, Gauge>,
    pub dest_requests: Family<DestinationLabel, Counter>,
    pub dest_dead_lettered: Family<DestinationLabel, Counter>,
    pub dest_retries: Family<DestinationLabel, Counter>,
    pub dest_responses: Family<DestinationStatusLabel, Counter>,
    pub dest_request_duration: Family<DestinationLabel, Histogram, fn() -> Histogram>,
    pub dest_breaker_state: Family<DestinationLabel, Gauge>,
    /// Requests a destination may have in flight now (the adaptive limit, or the pinned one).
    pub dest_concurrency_limit: Family<DestinationLabel, Gauge>,
    /// The destination's average round trip, as the concurrency limit judges it.
    pub dest_rtt_seconds: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
    pub dest_findings: Family<DestinationLabel, Counter>,
    /// Parts of events a translator left out to fit a vendor limit (GA4's 25 params).
    pub dest_dropped_params: Family<DestinationReasonLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub config_last_reload_success: Gauge,
    pub config_last_reload_timestamp: Gauge,
    pub config_restart_required: Gauge,
    /// Ingest requests refused before their body was read, by reason.
    pub ingest_refused: Family<ReasonLabel, Counter>,
    pub ingest_open_connections: Gauge,
    /// Connections closed on a failed TLS handshake or a client too slow to send headers.
    pub ingest_connection_errors: Family<ReasonLabel, Counter>,
    pub spool: SpoolMetrics,
    /// `playrelay_qoe_*`: fleet QoE from session summaries.
    pub qoe: crate::qoe::QoeMetrics,
}

/// The disk spool: what it holds and what durability costs.
pub struct SpoolMetrics {
    pub bytes: Gauge,
    pub disk_bytes: Gauge,
    pub oldest_event_age_seconds: Gauge,
    pub commits: Counter,
    pub committed_events: Counter,
    pub commit_duration: Histogram,
    pub write_errors: Counter,
    pub corrupt_records: Counter,
    /// Opens that found the spool not closed cleanly.
    pub repairs: Counter,
    pub redelivered: Family<DestinationLabel, Counter>,
    pub recovered: Family<DestinationLabel, Counter>,
    pub backlog_bytes: Family<DestinationLabel, Gauge>,
    /// JetStream: 1 while the NATS connection is up.
    pub nats_connected: Gauge,
    /// JetStream: publishes the server found to be repeats (same event, same destination).
    pub duplicates: Counter,
    /// JetStream: the consumer's events not yet handed to any relay (fleet-wide).
    pub stream_pending: Family<DestinationLabel, Gauge>,
    /// JetStream: events handed to a relay and not yet acknowledged (fleet-wide).
    pub stream_ack_pending: Family<DestinationLabel, Gauge>,
    pub backlog_read: Family<DestinationLabel, Counter>,
    pub backlog_recalled: Family<DestinationLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("playrelay");
        let m = Metrics {
            events_received: Counter::default(),
            events_accepted: Counter::default(),
            events_rejected: Family::default(),
            ingest_requests: Family::default(),
            events_unrouted: Counter::default(),
            route_sampled_out: Family::default(),
            dest_received: Family::default(),
            dest_sent: Family::default(),
            dest_failed: Family::default(),
            dest_dropped: Family::default(),
            dest_queue_depth: Family::default(),
            dest_in_flight: Family::default(),
            dest_requests: Family::default(),
            dest_dead_lettered: Family::default(),
            dest_retries: Family::default(),
            dest_responses: Family::default(),
            dest_request_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            dest_breaker_state: Family::default(),
            dest_concurrency_limit: Family::default(),
            dest_rtt_seconds: Family::default(),
            dest_findings: Family::default(),
            dest_dropped_params: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_success: Gauge::default(),
            config_last_reload_timestamp: Gauge::default(),
            config_restart_required: Gauge::default(),
            ingest_refused: Family::default(),
            ingest_open_connections: Gauge::default(),
            ingest_connection_errors: Family::default(),
            spool: SpoolMetrics {
                bytes: Gauge::default(),
                disk_bytes: Gauge::default(),
                oldest_event_age_seconds: Gauge::default(),
                commits: Counter::default(),
                committed_events: Counter::default(),
                commit_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
                write_errors: Counter::default(),
                corrupt_records: Counter::default(),
                repairs: Counter::default(),
                redelivered: Family::default(),
                recovered: Family::default(),
                backlog_bytes: Family::default(),
                nats_connected: Gauge::default(),
                duplicates: Counter::default(),
                stream_pending: Family::default(),
                stream_ack_pending: Family::default(),
                backlog_read: Family::default(),
                backlog_recalled: Family::default(),
            },
            qoe: crate::qoe::QoeMetrics::default(),
            registry: Registry::default(),
        };
        // Both outcomes exist from the start: "no reload yet" reads 0, not a missing series.
        for result in ["success", "failed"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel {
                result: result.to_string(),
            });
        }
        m.qoe.register(&mut registry);
        registry.register(
            "events_received",
            "Events found in ingest request bodies",
            m.events_received.clone(),
        );
        registry.register(
            "events_accepted",
            "Events that passed validation",
            m.events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused by validation, by reason",
            m.events_rejected.clone(),
        );
        registry.register(
            "ingest_requests",
            "Ingest requests answered, by HTTP status",
            m.ingest_requests.clone(),
        );
        registry.register(
            "events_unrouted",
            "Accepted events that no route sent anywhere",
            m.events_unrouted.clone(),
        );
        registry.register(
            "route_sampled_out",
            "Events a route matched but left out by session sampling",
            m.route_sampled_out.clone(),
        );
        registry.register(
            "destination_events_received",
            "Events routed to a destination",
            m.dest_received.clone(),
        );
        registry.register(
            "destination_events_sent",
            "Events the destination's vendor accepted",
            m.dest_sent.clone(),
        );
        registry.register(
            "destination_events_failed",
            "Events whose delivery failed",
            m.dest_failed.clone(),
        );
        registry.register(
            "destination_events_dropped",
            "Events a destination left out, by reason",
            m.dest_dropped.clone(),
        );
        registry.register(
            "destination_queue_depth",
            "Events waiting in a destination's queue",
            m.dest_queue_depth.clone(),
        );
        registry.register(
            "destination_events_in_flight",
            "Events taken from the queue and not yet settled",
            m.dest_in_flight.clone(),
        );
        registry.register(
            "destination_requests",
            "Requests sent to a destination",
            m.dest_requests.clone(),
        );
        registry.register(
            "destination_events_dead_lettered",
            "Events written to the destination's dead-letter file",
            m.dest_dead_lettered.clone(),
        );
        registry.register(
            "destination_retries",
            "Requests sent again after a retryable failure",
            m.dest_retries.clone(),
        );
        registry.register(
            "destination_responses",
            "Vendor answers by status (or transport failure)",
            m.dest_responses.clone(),
        );
        registry.register(
            "destination_request_duration_seconds",
            "Time from sending a request to the end of the vendor's answer",
            m.dest_request_duration.clone(),
        );
        registry.register(
            "destination_breaker_state",
            "0 closed (sending), 1 open (failing fast), 2 probing",
            m.dest_breaker_state.clone(),
        );
        registry.register(
            "destination_concurrency_limit",
            "Requests the destination may have in flight now (adaptive or pinned)",
            m.dest_concurrency_limit.clone(),
        );
        registry.register(
            "destination_rtt_seconds",
            "Average vendor round trip the adaptive concurrency judges by",
            m.dest_rtt_seconds.clone(),
        );
        registry.register(
            "destination_vendor_findings",
            "Problems a vendor reported in successful answers (GA4 validationMessages)",
            m.dest_findings.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result (success, failed)",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 when the last reload applied, 0 when it was refused",
            m.config_last_reload_success.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt",
            m.config_last_reload_timestamp.clone(),
        );
        registry.register(
            "config_restart_required",
            "1 when an applied config holds changes that only a restart applies",
            m.config_restart_required.clone(),
        );
        registry.register(
            "ingest_refused",
            "Ingest requests refused by access rules and limits, by reason",
            m.ingest_refused.clone(),
        );
        registry.register(
            "ingest_open_connections",
            "Client connections open on the ingest listener",
            m.ingest_open_connections.clone(),
        );
        registry.register(
            "ingest_connection_errors",
            "Client connections closed on an error, by reason",
            m.ingest_connection_errors.clone(),
        );
        registry.register(
            "destination_dropped_params",
            "Event parameters a translator cut to fit a vendor limit, by reason (params_cut)",
            m.dest_dropped_params.clone(),
        );
        let spool = &m.spool;
        registry.register(
            "spool_bytes",
            "Bytes of events held in the spool",
            spool.bytes.clone(),
        );
        registry.register(
            "spool_disk_bytes",
            "Bytes the spool's files take on disk",
            spool.disk_bytes.clone(),
        );
        registry.register(
            "spool_oldest_event_age_seconds",
            "Age of the oldest event still in the spool",
            spool.oldest_event_age_seconds.clone(),
        );
        registry.register(
            "spool_commits",
            "Group commits (one fdatasync each)",
            spool.commits.clone(),
        );
        registry.register(
            "spool_committed_events",
            "Events made durable",
            spool.committed_events.clone(),
        );
        registry.register(
            "spool_commit_duration_seconds",
            "Time to write and sync one group commit",
            spool.commit_duration.clone(),
        );
        registry.register(
            "spool_write_errors",
            "Commits that failed (ingest answered 503 for their events)",
            spool.write_errors.clone(),
        );
        registry.register(
            "spool_corrupt_records",
            "Records that failed their checksum or no longer parse, set aside",
            spool.corrupt_records.clone(),
        );
        registry.register(
            "spool_repairs",
            "Starts that found the spool not closed cleanly (a crash, a power loss) and went back to its last complete commit",
            spool.repairs.clone(),
        );
        registry.register(
            "destination_redelivered",
            "Events sent again after a restart because they were in flight when the relay stopped",
            spool.redelivered.clone(),
        );
        registry.register(
            "destination_recovered",
            "Events found in the spool at start, still owed to the destination",
            spool.recovered.clone(),
        );
        registry.register(
            "destination_backlog_bytes",
            "Bytes of the destination's backlog on disk not yet read into memory",
            spool.backlog_bytes.clone(),
        );
        registry.register(
            "spool_nats_connected",
            "JetStream spool: 1 while the relay's NATS connection is up",
            spool.nats_connected.clone(),
        );
        registry.register(
            "spool_duplicates",
            "JetStream spool: publishes the server de-duplicated (a retried event)",
            spool.duplicates.clone(),
        );
        registry.register(
            "destination_stream_pending",
            "JetStream spool: the destination's events in the stream not yet handed to any relay",
            spool.stream_pending.clone(),
        );
        registry.register(
            "destination_stream_ack_pending",
            "JetStream spool: the destination's events handed to relays and not yet acknowledged",
            spool.stream_ack_pending.clone(),
        );
        registry.register(
            "destination_backlog_read",
            "Events a destination read back from the disk spool because it had fallen behind",
            spool.backlog_read.clone(),
        );
        registry.register(
            "destination_backlog_recalled",
            "Of the events read back, those still held in memory (by another destination or reader), so not parsed again",
            spool.backlog_recalled.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn destination(&self, name: &str) -> DestinationMetrics {
        let label = DestinationLabel {
            destination: name.to_string(),
        };
        DestinationMetrics {
            name: name.to_string(),
            received: self.dest_received.get_or_create(&label).clone(),
            sent: self.dest_sent.get_or_create(&label).clone(),
            failed: self.dest_failed.get_or_create(&label).clone(),
            queue_depth: self.dest_queue_depth.get_or_create(&label).clone(),
            in_flight: self.dest_in_flight.get_or_create(&label).clone(),
            requests: self.dest_requests.get_or_create(&label).clone(),
            dead_lettered: self.dest_dead_lettered.get_or_create(&label).clone(),
            retries: self.dest_retries.get_or_create(&label).clone(),
            request_duration: self.dest_request_duration.get_or_create(&label).clone(),
            breaker_state: self.dest_breaker_state.get_or_create(&label).clone(),
            concurrency: crate::deliver::ConcurrencyGauges {
                limit: self.dest_concurrency_limit.get_or_create(&label).clone(),
                rtt_seconds: self.dest_rtt_seconds.get_or_create(&label).clone(),
            },
            findings: self.dest_findings.get_or_create(&label).clone(),
            dropped_params: self.dest_dropped_params.clone(),
            responses: self.dest_responses.clone(),
            dropped: self.dest_dropped.clone(),
            dropped_cache: Mutex::default(),
            responses_cache: Mutex::default(),
            last_error: Mutex::default(),
        }
    }

    pub fn config_reload(&self, result: &str, restart_required: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
        self.config_last_reload_success
            .set(i64::from(result == "success"));
        // A stamp for the exposition only (no decision reads it), so it needs no injected clock.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.config_last_reload_timestamp.set(now);
        if result == "success" {
            self.config_restart_required
                .set(i64::from(restart_required));
        }
    }

    /// Counts an ingest request refused for `reason`.
    pub fn refuse(&self, reason: &str) {
        self.ingest_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn connection_error(&self, reason: &str) {
        self.ingest_connection_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn reject(&self, reason: &str) {
        self.events_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// One destination's counters, resolved once so the hot path only touches atomics.
pub struct DestinationMetrics {
    pub name: String,
    pub received: Counter,
    pub sent: Counter,
    pub failed: Counter,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub requests: Counter,
    pub dead_lettered: Counter,
    pub retries: Counter,
    pub request_duration: Histogram,
    pub breaker_state: Gauge,
    pub concurrency: crate::deliver::ConcurrencyGauges,
    pub findings: Counter,
    dropped_params: Family<DestinationReasonLabel, Counter>,
    responses: Family<DestinationStatusLabel, Counter>,
    dropped: Family<DestinationReasonLabel, Counter>,
    dropped_cache: Mutex<Vec<(&'static str, Counter)>>,
    /// The few statuses a vendor answers, resolved once: the family lookup allocates
    /// two label strings and takes a lock, and it ran for every response.
    responses_cache: Mutex<Vec<(Box<str>, Counter)>>,
    /// The latest failed attempt, for `/readyz`.
    last_error: Mutex<Option<LastError>>,
}

/// What went wrong with a destination's latest failed attempt, and when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    pub error: String,
    pub at: String,
}

impl DestinationMetrics {
    pub fn note_error(&self, error: String, at: String) {
        let mut last = match self.last_error.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *last = Some(LastError { error, at });
    }

    pub fn last_error(&self) -> Option<LastError> {
        match self.last_error.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn response(&self, status: &str) {
        let mut cache = match self.responses_cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, counter)) = cache.iter().find(|(s, _)| **s == *status) {
            counter.inc();
            return;
        }
        let counter = self
            .responses
            .get_or_create(&DestinationStatusLabel {
                destination: self.name.clone(),
                status: status.to_string(),
            })
            .clone();
        counter.inc();
        cache.push((status.into(), counter));
    }

    /// Parameters cut from events to fit a vendor limit.
    pub fn dropped_params(&self, reason: &str, count: u64) {
        self.dropped_params
            .get_or_create(&DestinationReasonLabel {
                destination: self.name.clone(),
                reason: reason.to_string(),
            })
            .inc_by(count);
    }

    pub fn dropped(&self, reason: &'static str, count: u64) {
        self.dropped_counter(reason).inc_by(count);
    }

    /// The `dropped{reason}` counter, for callers that count on a hot path.
    pub fn dropped_counter(&self, reason: &'static str) -> Counter {
        {
            let mut cache = match self.dropped_cache.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            match cache.iter().find(|(r, _)| *r == reason) {
                Some((_, counter)) => counter.clone(),
                None => {
                    let counter = self
                        .dropped
                        .get_or_create(&DestinationReasonLabel {
                            destination: self.name.clone(),
                            reason: reason.to_string(),
                        })
                        .clone();
                    cache.push((reason, counter.clone()));
                    counter
                }
            }
        }
    }
}
