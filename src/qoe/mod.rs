//! QoE beside the event path: every accepted event is also observed here (one call in
//! ingest); sessions are kept open, bounded, and closed by their own end, idle time,
//! eviction or shutdown; each closed session becomes one `session.summary` event that
//! enters the relay through [`crate::ingest::accept`], like a client's event, and adds
//! to the fleet QoE metrics in `/metrics`. docs/qoe.md has the definitions.
//!
//! - [`metrics`]: the pure function from a session's events to its metrics;
//! - [`sessionizer`]: the open sessions and when they close;
//! - [`summary`]: the `session.summary` event.

pub mod checkpoint;
pub mod compact;
pub mod metrics;
pub mod sessionizer;
pub mod summary;

use crate::event::{Event, SessionEnd, SessionOutcome};
use crate::Relay;
use metrics::Fact;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sessionizer::{Closed, Limits, Observed, Sessionizer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `[qoe]` in routes.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QoeConfig {
    /// Off unless turned on: summaries are new events that count against vendor quotas.
    #[serde(default)]
    pub enabled: bool,
    /// Sessions open at once; beyond it the one closest to closing is summarized early.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    /// A session with no event for this long is closed.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// After a session's closing event, how long late events may still join it.
    #[serde(default = "defaults::end_grace_ms")]
    pub end_grace_ms: u64,
    /// How often open sessions are saved to [`QoeConfig::checkpoint_path`] (and at
    /// shutdown), so that a crash loses only the events since; 0: never.
    #[serde(default = "defaults::checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Where open sessions are saved. Default: beside the disk spool's directory,
    /// `<spool.dir>.qoe-sessions.bin`; none with the memory or JetStream spool unless
    /// set. Read at start (a change needs a restart).
    #[serde(default)]
    pub checkpoint_path: Option<PathBuf>,
}

impl Default for QoeConfig {
    fn default() -> Self {
        QoeConfig {
            enabled: false,
            max_sessions: defaults::max_sessions(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            end_grace_ms: defaults::end_grace_ms(),
            checkpoint_interval_ms: defaults::checkpoint_interval_ms(),
            checkpoint_path: None,
        }
    }
}

impl QoeConfig {
    /// What the types alone cannot check: each key at fault and what is wrong with it.
    /// The loader locates them in the file.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.max_sessions == 0 {
            problems.push(("max_sessions", "must be greater than 0"));
        }
        if self.idle_timeout_ms == 0 {
            problems.push(("idle_timeout_ms", "must be greater than 0"));
        }
        if self.end_grace_ms > self.idle_timeout_ms {
            problems.push(("end_grace_ms", "must be at most qoe.idle_timeout_ms"));
        }
        problems
    }
}

/// Where a relay with this config saves its open sessions, if anywhere.
pub fn checkpoint_path(qoe: &QoeConfig, spool: &crate::spool::SpoolConfig) -> Option<PathBuf> {
    if let Some(path) = &qoe.checkpoint_path {
        return Some(path.clone());
    }
    if spool.backend != crate::spool::Backend::Disk {
        return None;
    }
    // A sibling of the spool's directory, named after it: one relay per spool
    // directory, so one per checkpoint file too.
    let mut name = spool.dir.as_os_str().to_owned();
    name.push(".qoe-sessions.bin");
    Some(PathBuf::from(name))
}

impl QoeConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_sessions: self.max_sessions,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            end_grace: Duration::from_millis(self.end_grace_ms),
        }
    }
}

pub mod defaults {
    pub fn max_sessions() -> usize {
        100_000
    }
    /// 30 minutes, as Mux and GA4 close an idle view or session.
    pub fn idle_timeout_ms() -> u64 {
        30 * 60 * 1000
    }
    pub fn end_grace_ms() -> u64 {
        5_000
    }
    pub fn checkpoint_interval_ms() -> u64 {
        5_000
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QoeLabels {
    /// The ingest source's name (from the config), `none` without sources.
    pub source: String,
    pub stream_type: String,
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
    pub source: String,
    pub stream_type: String,
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndedByLabel {
    pub ended_by: String,
}

type Seconds = Counter<f64, AtomicU64>;

/// Fleet QoE: sums over summarized sessions, so ratios are ratios of sums in PromQL
/// (rebuffer % = rate(rebuffer_seconds) / rate(watched_seconds)). Labels are bounded:
/// source names come from the config, stream types and platforms from fixed lists.
/// Clones share their values.
#[derive(Clone)]
pub struct QoeMetrics {
    pub sessions: Family<OutcomeLabels, Counter>,
    pub ended: Family<EndedByLabel, Counter>,
    pub startup: Family<QoeLabels, Histogram, fn() -> Histogram>,
    pub watched: Family<QoeLabels, Seconds>,
    pub playing: Family<QoeLabels, Seconds>,
    pub rebuffering: Family<QoeLabels, Seconds>,
    pub rebuffers: Family<QoeLabels, Counter>,
    pub playback_failures: Family<QoeLabels, Counter>,
    pub open_sessions: Gauge,
    pub evicted: Counter,
    pub duplicates: Counter,
    pub summary_errors: Counter,
}

fn startup_histogram() -> Histogram {
    // 100 ms … ~51 s.
    Histogram::new(exponential_buckets(0.1, 2.0, 10))
}

impl Default for QoeMetrics {
    fn default() -> Self {
        QoeMetrics {
            sessions: Family::default(),
            ended: Family::default(),
            startup: Family::new_with_constructor(startup_histogram as fn() -> Histogram),
            watched: Family::default(),
            playing: Family::default(),
            rebuffering: Family::default(),
            rebuffers: Family::default(),
            playback_failures: Family::default(),
            open_sessions: Gauge::default(),
            evicted: Counter::default(),
            duplicates: Counter::default(),
            summary_errors: Counter::default(),
        }
    }
}

impl QoeMetrics {
    /// Registers under `playrelay_qoe_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("qoe");
        r.register(
            "sessions",
            "Sessions summarized, by outcome (started, start_failure, exit_before_start)",
            self.sessions.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions summarized, by what closed them",
            self.ended.clone(),
        );
        r.register(
            "startup_seconds",
            "Startup time of sessions that started (ad breaks excluded)",
            self.startup.clone(),
        );
        r.register(
            "watched_seconds",
            "Watch time of summarized sessions (request to last event, less pauses)",
            self.watched.clone(),
        );
        r.register(
            "playing_seconds",
            "Time spent playing (first frame to last event, less pauses, rebuffering and seeking)",
            self.playing.clone(),
        );
        r.register(
            "rebuffer_seconds",
            "Time spent rebuffering",
            self.rebuffering.clone(),
        );
        r.register("rebuffers", "Rebuffers", self.rebuffers.clone());
        r.register(
            "playback_failures",
            "Sessions with a fatal error after the first frame",
            self.playback_failures.clone(),
        );
        r.register(
            "open_sessions",
            "Sessions open in the sessionizer",
            self.open_sessions.clone(),
        );
        r.register(
            "sessions_evicted",
            "Sessions summarized early to stay within [qoe] max_sessions",
            self.evicted.clone(),
        );
        r.register(
            "duplicate_events",
            "Events a session already had (same event_id), left out of its metrics",
            self.duplicates.clone(),
        );
        r.register(
            "summary_errors",
            "Closed sessions whose summary could not be built (logged)",
            self.summary_errors.clone(),
        );
    }

    fn record(&self, m: &metrics::Metrics, envelope: &summary::Envelope) {
        let labels = QoeLabels {
            source: envelope.source.as_deref().unwrap_or("none").to_string(),
            stream_type: envelope.labels().stream_type.to_string(),
            platform: envelope.labels().platform.to_string(),
        };
        self.sessions
            .get_or_create(&OutcomeLabels {
                outcome: m.outcome.as_str().to_string(),
                source: labels.source.clone(),
                stream_type: labels.stream_type.clone(),
                platform: labels.platform.clone(),
            })
            .inc();
        self.ended
            .get_or_create(&EndedByLabel {
                ended_by: m.ended_by.as_str().to_string(),
            })
            .inc();
        if m.ended_by == SessionEnd::Evicted {
            self.evicted.inc();
        }
        if let (SessionOutcome::Started, Some(ms)) = (m.outcome, m.startup_ms) {
            self.startup
                .get_or_create(&labels)
                .observe(ms as f64 / 1000.0);
        }
        let seconds = |ms: u64| ms as f64 / 1000.0;
        self.watched
            .get_or_create(&labels)
            .inc_by(seconds(m.watched_ms));
        self.playing
            .get_or_create(&labels)
            .inc_by(seconds(m.playing_ms));
        self.rebuffering
            .get_or_create(&labels)
            .inc_by(seconds(m.rebuffer_ms));
        self.rebuffers
            .get_or_create(&labels)
            .inc_by(u64::from(m.rebuffer_count));
        if m.playback_failure {
            self.playback_failures.get_or_create(&labels).inc();
        } else {
            // The series exists from the first session, so failure rates read 0, not nothing.
            let _ = self.playback_failures.get_or_create(&labels);
        }
    }
}

struct State {
    sessions: Sessionizer,
    /// Set at shutdown: nothing more is observed.
    closed: bool,
}

/// The relay's QoE: off until [`Qoe::configure`] turns it on.
pub struct Qoe {
    enabled: AtomicBool,
    state: Mutex<State>,
    /// Held while closed sessions are summarized and handed on, so shutdown's
    /// [`close_all`] waits for the emitter instead of closing the queues under it.
    emitting: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    metrics: QoeMetrics,
    /// Where open sessions are saved; set once at start.
    checkpoint: OnceLock<PathBuf>,
    checkpoint_interval_ms: AtomicU64,
    /// Held while a checkpoint is made and written, so they reach the file in order.
    saving: tokio::sync::Mutex<Saving>,
}

#[derive(Default)]
struct Saving {
    /// The sessionizer's generation last written.
    generation: Option<u64>,
    /// The size of the last file, to size the next buffer.
    last_len: usize,
    /// The last write failed (warned once per streak of failures).
    failing: bool,
}

impl Qoe {
    /// Off, with the relay's metrics (see [`crate::telemetry::Metrics::qoe`]).
    pub fn new(metrics: QoeMetrics) -> Self {
        Qoe {
            enabled: AtomicBool::new(false),
            state: Mutex::new(State {
                sessions: Sessionizer::new(QoeConfig::default().limits()),
                closed: false,
            }),
            emitting: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            metrics,
            checkpoint: OnceLock::new(),
            checkpoint_interval_ms: AtomicU64::new(defaults::checkpoint_interval_ms()),
            saving: tokio::sync::Mutex::new(Saving::default()),
        }
    }
}

impl Qoe {
    pub fn metrics(&self) -> &QoeMetrics {
        &self.metrics
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the sessions consistent enough to go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `[qoe]`, at start and on every reload. Open sessions are kept: turning
    /// QoE off stops observing, and what is open closes on its own deadline.
    pub fn configure(&self, config: &QoeConfig) {
        self.enabled.store(config.enabled, Ordering::Release);
        self.checkpoint_interval_ms
            .store(config.checkpoint_interval_ms, Ordering::Relaxed);
        let mut state = self.state();
        state.sessions.set_limits(config.limits());
        if state.sessions.has_evicted() {
            self.wake.notify_one();
        }
        self.metrics.open_sessions.set(state.sessions.len() as i64);
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.state().sessions.len()
    }

    /// Heap bytes held for open sessions, approximately (benchmarks, capacity planning).
    pub fn approximate_bytes(&self) -> usize {
        self.state().sessions.approximate_bytes()
    }

    /// Where those bytes go, by part.
    pub fn memory(&self) -> sessionizer::MemoryUse {
        self.state().sessions.memory()
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Adds an accepted event to its session. Cheap when QoE is off.
    pub fn observe(&self, event: &Event) {
        self.observe_all(std::slice::from_ref(event));
    }

    /// Adds a request's accepted events to their sessions, under one lock. The facts
    /// are made before the lock is taken. Cheap when QoE is off.
    pub fn observe_all(&self, events: &[Event]) {
        if !self.enabled() {
            return;
        }
        let observed = |e: &&Event| e.event_type() != summary::SUMMARY_TYPE;
        // One event (a beacon's request) needs no list: its fact stays on the stack.
        if let [event] = events {
            if observed(&event) {
                self.observe_facts([(event, Fact::of(event))]);
            }
            return;
        }
        let mut facts = Vec::with_capacity(events.len());
        facts.extend(events.iter().filter(observed).map(|e| (e, Fact::of(e))));
        if !facts.is_empty() {
            self.observe_facts(facts);
        }
    }

    /// [`Qoe::observe_all`] of events and their facts, under one lock.
    fn observe_facts<'a>(&self, facts: impl IntoIterator<Item = (&'a Event, Fact)>) {
        let now = Instant::now();
        let mut state = self.state();
        if state.closed {
            return;
        }
        state.sessions.take_sooner();
        let (mut duplicates, mut opened) = (0u64, false);
        for (event, fact) in facts {
            match state.sessions.observe(event, fact, now) {
                Observed::Duplicate => duplicates += 1,
                Observed::Opened => opened = true,
                Observed::Closing | Observed::Added => {}
            }
        }
        // The emitter sleeps until the earliest deadline: wake it when that moved up
        // (or evicted sessions wait).
        let wake = state.sessions.take_sooner() | state.sessions.has_evicted();
        if opened {
            self.metrics.open_sessions.set(state.sessions.len() as i64);
        }
        drop(state);
        if duplicates > 0 {
            self.metrics.duplicates.inc_by(duplicates);
        }
        if wake {
            self.wake.notify_one();
        }
    }

    async fn emitting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.emitting.lock().await
    }

    fn take_expired(&self, now: Instant) -> Vec<Closed> {
        let mut state = self.state();
        let closed = state.sessions.expire(now);
        self.metrics.open_sessions.set(state.sessions.len() as i64);
        closed
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.state().sessions.next_deadline()
    }

    fn is_closed(&self) -> bool {
        self.state().closed
    }
}

impl Qoe {
    /// Saves the open sessions to the checkpoint file, unless nothing changed since the
    /// last save (`force` saves anyway) or QoE has closed (shutdown's own save forces).
    /// Errors are logged: a failing disk must not stop the relay.
    async fn save(&self, saved_at: time::OffsetDateTime, force: bool) {
        let Some(path) = self.checkpoint.get() else {
            return;
        };
        let mut saving = self.saving.lock().await;
        let (bytes, generation, sessions) = {
            let state = self.state();
            let generation = state.sessions.generation();
            if !force && (state.closed || saving.generation == Some(generation)) {
                return;
            }
            let mut out = Vec::with_capacity(saving.last_len + 4096);
            let millis = saved_at.unix_timestamp_nanos() / 1_000_000;
            checkpoint::begin(&mut out, i64::try_from(millis).unwrap_or(0));
            let n = state.sessions.save(Instant::now(), &mut out);
            drop(state);
            checkpoint::finish(&mut out, n);
            (out, generation, n)
        };
        if sessions == 0 && !path.exists() {
            // Nothing to save and nothing to replace: a relay with QoE off leaves no file.
            saving.generation = Some(generation);
            return;
        }
        let len = bytes.len();
        let target = path.clone();
        let written =
            tokio::task::spawn_blocking(move || checkpoint::write_atomically(&target, &bytes))
                .await;
        match written {
            Ok(Ok(())) => {
                if saving.failing {
                    tracing::info!(path = %path.display(), "QoE checkpoint written again");
                }
                saving.generation = Some(generation);
                saving.last_len = len;
                saving.failing = false;
                tracing::debug!(sessions, bytes = len, "QoE sessions checkpointed");
            }
            Ok(Err(error)) => {
                if !saving.failing {
                    tracing::warn!(%error, "cannot checkpoint the open QoE sessions; a crash would lose them");
                }
                saving.failing = true;
            }
            Err(error) => {
                tracing::warn!(%error, "QoE checkpoint task failed");
                saving.failing = true;
            }
        }
    }
}

fn wall_now(relay: &Relay) -> time::OffsetDateTime {
    (relay.clock)()
}

/// Opens the sessions saved at `path` by an earlier run (a crash, or a restart), each
/// closing when it would have, counted from the file's time by the relay's clock; and
/// makes `path` this run's checkpoint file. A file that cannot be used is moved aside
/// with a warning: it never stops the start. Call before ingest opens.
pub async fn restore(relay: &Relay, path: Option<PathBuf>) {
    let Some(path) = path else {
        return;
    };
    if relay.qoe.checkpoint.set(path.clone()).is_err() {
        return;
    }
    let target = path.clone();
    let read = tokio::task::spawn_blocking(move || checkpoint::read(&target)).await;
    let bytes = match read {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::warn!(%error, "QoE checkpoint not read: starting without its sessions");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "QoE checkpoint not read");
            return;
        }
    };
    let now_ms = wall_now(relay).unix_timestamp_nanos() / 1_000_000;
    let restored = checkpoint::open(&bytes).and_then(|mut contents| {
        let down = u64::try_from(now_ms - i128::from(contents.saved_at_ms)).unwrap_or(0);
        let mut state = relay.qoe.state();
        let restored = state
            .sessions
            .restore(
                &mut contents.reader,
                contents.sessions,
                Instant::now(),
                Duration::from_millis(down),
            )
            .filter(|_| contents.reader.is_done());
        relay
            .qoe
            .metrics
            .open_sessions
            .set(state.sessions.len() as i64);
        restored.ok_or(checkpoint::CheckpointError::Malformed("sessions"))
    });
    match restored {
        Ok(n) => {
            tracing::info!(sessions = n, path = %path.display(), "QoE sessions restored from the checkpoint");
            relay.qoe.wake.notify_one();
        }
        Err(error) => {
            let aside = checkpoint::set_aside(&path);
            match aside {
                Ok(aside) => {
                    tracing::warn!(%error, path = %path.display(), moved_to = %aside.display(), "QoE checkpoint unusable: moved aside, starting without it")
                }
                Err(io) => {
                    tracing::warn!(%error, path = %path.display(), move_error = %io, "QoE checkpoint unusable and not moved aside: starting without it")
                }
            }
        }
    }
}

/// Starts the task that summarizes sessions as they close, and the one that saves
/// them every `checkpoint_interval_ms` when a checkpoint file is set; both end with
/// the relay.
pub fn spawn(relay: &Arc<Relay>) -> JoinHandle<()> {
    if relay.qoe.checkpoint.get().is_some() {
        let weak: Weak<Relay> = Arc::downgrade(relay);
        tokio::spawn(async move {
            loop {
                let every = match weak.upgrade() {
                    Some(relay) if !relay.qoe.is_closed() => {
                        relay.qoe.checkpoint_interval_ms.load(Ordering::Relaxed)
                    }
                    _ => return,
                };
                // 0: off until a reload sets an interval; at least 100 ms apart.
                let off = every == 0;
                tokio::time::sleep(Duration::from_millis(if off {
                    1_000
                } else {
                    every.max(100)
                }))
                .await;
                if off {
                    continue;
                }
                let Some(relay) = weak.upgrade() else { return };
                relay.qoe.save(wall_now(&relay), false).await;
            }
        });
    }
    spawn_emitter(relay)
}

fn spawn_emitter(relay: &Arc<Relay>) -> JoinHandle<()> {
    let weak: Weak<Relay> = Arc::downgrade(relay);
    let wake = relay.qoe.wake.clone();
    tokio::spawn(async move {
        loop {
            let next = match weak.upgrade() {
                Some(relay) if !relay.qoe.is_closed() => relay.qoe.next_deadline(),
                _ => return,
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
            let Some(relay) = weak.upgrade() else { return };
            let _emitting = relay.qoe.emitting().await;
            let closed = relay.qoe.take_expired(Instant::now());
            emit(&relay, closed).await;
        }
    })
}

/// Summarizes every open session (`ended_by = "shutdown"` unless its own events closed
/// it) and stops observing. Called once ingest is closed and before the queues close,
/// so the summaries are delivered with the rest.
pub async fn close_all(relay: &Relay) {
    let _emitting = relay.qoe.emitting().await;
    let closed = {
        let mut state = relay.qoe.state();
        state.closed = true;
        let closed = state.sessions.drain();
        relay.qoe.metrics.open_sessions.set(0);
        closed
    };
    if !closed.is_empty() {
        tracing::info!(
            sessions = closed.len(),
            "summarizing the sessions open at shutdown"
        );
    }
    emit(relay, closed).await;
    // Their summaries are on their way: the checkpoint must not bring them back.
    relay.qoe.save(wall_now(relay), true).await;
    relay.qoe.wake.notify_one();
}

/// Summarizes closed sessions and hands the summaries to the relay's event path.
async fn emit(relay: &Relay, closed: Vec<Closed>) {
    if closed.is_empty() {
        return;
    }
    let routing = relay.routing.load_full();
    let summaries: Vec<Event> = closed
        .into_iter()
        .filter_map(|session| summarize(relay, session))
        .collect();
    let n = summaries.len();
    if let Err(refusal) = crate::ingest::accept(relay, &routing, summaries).await {
        // The spool could not take them (disk full, its budget, a blocked destination).
        relay.qoe.metrics.summary_errors.inc_by(n as u64);
        tracing::error!(summaries = n, error = %refusal.message(), "session summaries not accepted");
    }
}

fn summarize(relay: &Relay, session: Closed) -> Option<Event> {
    let session_id = session.session_id.clone();
    let (m, envelope, built) = summary_of(session, (relay.clock)());
    relay.qoe.metrics.record(&m, &envelope);
    match built {
        Ok(event) => Some(event),
        Err(error) => {
            relay.qoe.metrics.summary_errors.inc();
            tracing::warn!(session = %session_id, %error, "cannot build the session's summary");
            None
        }
    }
}

/// A closed session's metrics, envelope and summary event.
fn summary_of(
    session: Closed,
    received_at: time::OffsetDateTime,
) -> (
    metrics::Metrics,
    summary::Envelope,
    Result<Event, crate::event::EventError>,
) {
    let Closed {
        session_id,
        open,
        otherwise,
    } = session;
    let mut facts = open.facts;
    metrics::normalize(&mut facts);
    let m = metrics::compute_sorted(&facts, otherwise);
    let code = m
        .last_fatal
        .and_then(|id| open.fatal_codes.iter().find(|(i, _)| *i == id))
        .map(|(_, code)| &**code)
        .filter(|code| !code.is_empty());
    let built = summary::build(&session_id, &open.envelope, &facts, &m, code, received_at);
    (m, open.envelope, built)
}

/// The summaries of whole sessions given as events (any order, repeats allowed), as
/// the relay would send them, one per session, by session id. Sessions no event of
/// theirs closed get `ended_by = otherwise`. For tests, benchmarks and tools.
pub fn summarize_events(
    events: &[Event],
    otherwise: SessionEnd,
    received_at: time::OffsetDateTime,
) -> Vec<Event> {
    let limits = Limits {
        max_sessions: usize::MAX,
        idle_timeout: Duration::from_secs(3600),
        end_grace: Duration::from_secs(3600),
    };
    let mut sessions = Sessionizer::new(limits);
    // Only the order of the events matters here, not when they arrive.
    let now = Instant::now();
    for event in events
        .iter()
        .filter(|e| e.event_type() != summary::SUMMARY_TYPE)
    {
        sessions.observe(event, Fact::of(event), now);
    }
    let mut closed = sessions.drain();
    closed.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    closed
        .into_iter()
        .filter_map(|mut session| {
            session.otherwise = otherwise;
            summary_of(session, received_at).2.ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::QoeConfig;

    #[test]
    fn the_config_names_each_key_it_refuses() {
        assert!(QoeConfig::default().problems().is_empty());
        let bad = QoeConfig {
            max_sessions: 0,
            idle_timeout_ms: 0,
            end_grace_ms: 1,
            ..QoeConfig::default()
        };
        let keys: Vec<&str> = bad.problems().iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["max_sessions", "idle_timeout_ms", "end_grace_ms"]);
    }
}
