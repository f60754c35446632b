//! Changing the routing while the relay runs. A new config is validated off to the
//! side; a valid one is swapped in atomically. Destinations whose settings did not
//! change keep their queue, connections, batches and breaker; changed ones are rebuilt
//! and their queued events move to the new worker; removed ones drain what they hold;
//! new ones start. A change that needs a restart is reported, never silently ignored.

use crate::config::{self, Config, ConfigErrors, ServerConfig};
use crate::deliver::DestinationConfig;
use crate::deliver::{self, Destination, HttpClient};
use crate::event::format_rfc3339;
use crate::ingest::config::RequestLimits;
use crate::ingest::Edge;
use crate::route::RouteTable;
use crate::spool::{DiskSpool, JetStreamSpool, Spool};
use crate::telemetry::{Metrics, RouteLabel};
use crate::{Clock, Relay, Routing, StartError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// False when the new config was refused and the old one kept.
    pub applied: bool,
    pub at: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub rebuilt: Vec<String>,
    pub kept: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub restart_required: Vec<String>,
    pub errors: Vec<String>,
}

/// The last reload's outcome, for `/readyz` and `/metrics`.
#[derive(Default)]
pub struct StatusCell(Mutex<Option<ReloadOutcome>>);

impl StatusCell {
    pub fn get(&self) -> Option<ReloadOutcome> {
        match self.0.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, outcome: ReloadOutcome) {
        match self.0.lock() {
            Ok(mut guard) => *guard = Some(outcome),
            Err(poisoned) => *poisoned.into_inner() = Some(outcome),
        }
    }
}

struct Slot {
    config: DestinationConfig,
    destination: Arc<Destination>,
    worker: deliver::Worker,
}

struct State {
    config: Config,
    client: HttpClient,
    slots: BTreeMap<String, Slot>,
    /// Workers of replaced or removed destinations, still draining.
    retiring: Vec<JoinHandle<()>>,
}

/// Owns the destinations' workers; one reload at a time.
pub struct Controller {
    relay: Arc<Relay>,
    abandon: watch::Receiver<bool>,
    state: tokio::sync::Mutex<Option<State>>,
}

impl Controller {
    pub(crate) async fn start(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Clock,
        abandon: watch::Receiver<bool>,
    ) -> Result<(Arc<Controller>, Arc<Relay>), StartError> {
        let client = HttpClient::new(config.server.tls_roots, config.max_in_flight())?;
        let spool = match config.spool.backend {
            crate::spool::Backend::Disk => Some(Spool::Disk(Arc::new(DiskSpool::open(
                &config.spool,
                metrics.clone(),
                clock.clone(),
            )?))),
            crate::spool::Backend::JetStream => Some(Spool::JetStream(Arc::new(
                JetStreamSpool::open(&config.spool, metrics.clone()).await?,
            ))),
            crate::spool::Backend::Memory => None,
        };
        let mut slots = BTreeMap::new();
        for (name, destination) in &config.destinations {
            slots.insert(
                name.clone(),
                start_slot(
                    destination,
                    &config.server,
                    &client,
                    &metrics,
                    &clock,
                    &abandon,
                    spool.as_ref(),
                )
                .await?,
            );
        }
        let routed = slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.destination.clone()))
            .collect();
        let routing = build_routing(&config, &routed, Arc::new(edge(&config)), &metrics)?;
        let relay = Arc::new(Relay::new(metrics, clock, routing, spool));
        relay.qoe.configure(&config.qoe);
        let controller = Arc::new(Controller {
            relay: relay.clone(),
            abandon,
            state: tokio::sync::Mutex::new(Some(State {
                config,
                client,
                slots,
                retiring: Vec::new(),
            })),
        });
        Ok((controller, relay))
    }

    /// Closes every queue and returns the workers to wait for.
    pub(crate) async fn close(&self) -> Vec<JoinHandle<()>> {
        let current = self.relay.routing.load();
        self.relay.routing.store(Arc::new(Routing {
            server: current.server.clone(),
            requests: current.requests,
            edge: current.edge.clone(),
            table: RouteTable::empty(),
            destinations: Vec::new(),
            route_sampled_out: Vec::new(),
        }));
        let Some(state) = self.state.lock().await.take() else {
            return Vec::new();
        };
        let mut workers = state.retiring;
        for (_, slot) in state.slots {
            drop(slot.destination);
            workers.push(slot.worker.handle);
        }
        workers
    }

    async fn apply(&self, new: Config) -> ReloadOutcome {
        let metrics = &self.relay.metrics;
        let mut outcome = ReloadOutcome {
            at: format_rfc3339((self.relay.clock)()),
            ..ReloadOutcome::default()
        };
        let mut guard = self.state.lock().await;
        let Some(state) = guard.as_mut() else {
            outcome.errors.push("the relay is shutting down".into());
            return outcome;
        };
        outcome.restart_required = restart_only_changes(&state.config.server, &new.server);
        if state.config.spool != new.spool {
            outcome
                .restart_required
                .push("spool: the spool opened at start stays in use until a restart".to_string());
        }
        // Settings every destination depends on: a change rebuilds them all.
        let shared_changed = new.server.dead_letter_dir != state.config.server.dead_letter_dir
            || new.server.dry_run_dir != state.config.server.dry_run_dir
            || new.server.tls_roots != state.config.server.tls_roots
            || new.server.hash_salt != state.config.server.hash_salt;
        let client = if new.server.tls_roots != state.config.server.tls_roots {
            match HttpClient::new(new.server.tls_roots, new.max_in_flight()) {
                Ok(client) => client,
                Err(error) => {
                    outcome.errors.push(error.to_string());
                    return self.refused(outcome);
                }
            }
        } else {
            state.client.clone()
        };
        // Start what is new or changed first; nothing is swapped until all of it started.
        let mut started = BTreeMap::new();
        let mut routed = BTreeMap::new();
        for (name, config) in &new.destinations {
            let old = state.slots.get(name);
            if let Some(old) = old.filter(|old| old.config == *config && !shared_changed) {
                routed.insert(name.clone(), old.destination.clone());
                outcome.kept.push(name.clone());
                continue;
            }
            match start_slot(
                config,
                &new.server,
                &client,
                metrics,
                &self.relay.clock,
                &self.abandon,
                self.relay.spool.as_ref(),
            )
            .await
            {
                Ok(slot) => {
                    if old.is_some() {
                        outcome.rebuilt.push(name.clone());
                    } else {
                        outcome.added.push(name.clone());
                    }
                    routed.insert(name.clone(), slot.destination.clone());
                    started.insert(name.clone(), slot);
                }
                Err(error) => outcome.errors.push(error.to_string()),
            }
        }
        // Keys, origins and limiters are rebuilt only when their settings changed, so a
        // reload does not hand every client a fresh rate-limit allowance.
        let edge = if edge_settings_changed(&state.config, &new) {
            Arc::new(edge(&new))
        } else {
            self.relay.routing.load().edge.clone()
        };
        let routing = match build_routing(&new, &routed, edge, metrics) {
            Ok(routing) if outcome.errors.is_empty() => routing,
            // Dropping `started` closes the new queues: their workers end at once.
            Ok(_) => return self.refused(outcome),
            Err(error) => {
                outcome.errors.push(error.to_string());
                return self.refused(outcome);
            }
        };
        // The swap: requests that loaded the old routing finish with it.
        self.relay.routing.store(Arc::new(routing));
        self.relay.qoe.configure(&new.qoe);
        let mut slots = started;
        for (name, old) in std::mem::take(&mut state.slots) {
            if outcome.kept.contains(&name) {
                slots.insert(name, old);
            } else if let Some(successor) = slots.get(&name) {
                // Rebuilt: the old worker hands its queue to the new destination.
                let _ = old.worker.handover.send(successor.destination.clone());
                state.retiring.push(old.worker.handle);
            } else {
                // Removed: its queue closes once the old routing is gone; it drains.
                outcome.removed.push(name);
                state.retiring.push(old.worker.handle);
            }
        }
        state.retiring.retain(|handle| !handle.is_finished());
        for name in &outcome.removed {
            self.retire_from_spool(name, &new.server).await;
        }
        state.slots = slots;
        state.client = client;
        state.config = new;
        outcome.applied = true;
        self.record(&outcome);
        tracing::info!(
            added = ?outcome.added, removed = ?outcome.removed, rebuilt = ?outcome.rebuilt,
            kept = outcome.kept.len(), "config reloaded"
        );
        for restart in &outcome.restart_required {
            tracing::warn!(setting = %restart, "config change needs a restart to take effect");
        }
        outcome
    }

    /// Destinations in the spool that the config no longer has (removed while the relay
    /// was down): what they were owed goes to their dead-letter files.
    /// (The JetStream spool leaves other consumers alone: another relay of the fleet
    /// may still have that destination.)
    pub(crate) async fn retire_unconfigured(&self) {
        let Some(spool) = self.relay.spool.as_ref().and_then(Spool::disk) else {
            return;
        };
        let guard = self.state.lock().await;
        let Some(state) = guard.as_ref() else {
            return;
        };
        let server = state.config.server.clone();
        let gone: Vec<String> = spool
            .cursor_names()
            .into_iter()
            .filter(|name| !state.config.destinations.contains_key(name))
            .collect();
        drop(guard);
        for name in gone {
            self.retire_from_spool(&name, &server).await;
        }
    }

    /// A removed destination's backlog on disk is dead-lettered with reason `removed`
    /// (replayable), and the spool stops keeping records for it.
    async fn retire_from_spool(&self, name: &str, server: &ServerConfig) {
        if let Some(js) = self.relay.spool.as_ref().and_then(Spool::jetstream) {
            if let Some(lease) = js.retired(name) {
                tokio::spawn(retire_consumer(
                    js.clone(),
                    lease,
                    server.dead_letter_dir.join(format!("{name}.ndjson")),
                    self.relay.metrics.clone(),
                    self.relay.clock.clone(),
                ));
            }
            return;
        }
        let Some(spool) = self.relay.spool.as_ref().and_then(Spool::disk) else {
            return;
        };
        let owed = spool.take_recovered(name);
        if owed.events > 0 {
            // Owed from before a restart and never started this run: count it in now.
            let metrics = self.relay.metrics.destination(name);
            metrics.received.inc_by(owed.events);
            metrics.queue_depth.inc_by(owed.events as i64);
        }
        match spool.retire(name) {
            Ok(events) if events.is_empty() => {}
            Ok(events) => {
                let path = server.dead_letter_dir.join(format!("{name}.ndjson"));
                tracing::warn!(destination = %name, events = events.len(), file = %path.display(), "destination removed: its backlog goes to the dead-letter file");
                deliver::dead_letter_removed(
                    name,
                    path,
                    &self.relay.metrics,
                    &events,
                    (self.relay.clock)(),
                )
                .await;
            }
            Err(error) => {
                tracing::error!(destination = %name, %error, "cannot read a removed destination's backlog from the spool")
            }
        }
    }

    fn refused(&self, mut outcome: ReloadOutcome) -> ReloadOutcome {
        outcome.applied = false;
        for error in &outcome.errors {
            tracing::error!(%error, "config reload refused: the old config stays");
        }
        self.record(&outcome);
        outcome
    }

    fn record(&self, outcome: &ReloadOutcome) {
        let metrics = &self.relay.metrics;
        let result = if outcome.applied { "success" } else { "failed" };
        metrics.config_reload(result, !outcome.restart_required.is_empty());
        self.relay.reload_status.set(outcome.clone());
    }
}

/// Listener settings are fixed when the relay starts; a reload reports their changes.
fn restart_only_changes(old: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let mut changes = Vec::new();
    if old.listen != new.listen {
        changes.push(format!(
            "server.listen ({} -> {}): still listening on {}",
            old.listen, new.listen, old.listen
        ));
    }
    let mut check = |changed: bool, key: &str| {
        if changed {
            changes.push(format!(
                "server.{key}: the old value stays in force until a restart"
            ));
        }
    };
    check(old.admin_listen != new.admin_listen, "admin_listen");
    check(old.tls != new.tls, "tls");
    check(
        old.max_connections != new.max_connections,
        "max_connections",
    );
    check(
        old.header_read_timeout_ms != new.header_read_timeout_ms,
        "header_read_timeout_ms",
    );
    check(
        old.max_header_bytes != new.max_header_bytes,
        "max_header_bytes",
    );
    changes
}

/// What one ingest request may be, as `[server]` says.
fn request_limits(server: &ServerConfig) -> RequestLimits {
    RequestLimits {
        max_body_bytes: server.max_body_bytes,
        max_decompressed_bytes: server.max_decompressed_bytes,
        body_read_timeout_ms: server.body_read_timeout_ms,
        max_events_per_request: server.max_events_per_request,
        json: server.json,
    }
}

/// The edge (keys, origins, client limits, in-flight cap) a config asks for.
fn edge(config: &Config) -> Edge {
    Edge::new(
        &config.sources,
        config.server.per_client_rate_limit,
        config.server.trusted_proxies.clone(),
        config.server.max_in_flight_requests,
    )
}

fn edge_settings_changed(old: &Config, new: &Config) -> bool {
    old.sources != new.sources
        || old.server.per_client_rate_limit != new.server.per_client_rate_limit
        || old.server.trusted_proxies != new.server.trusted_proxies
        || old.server.max_in_flight_requests != new.server.max_in_flight_requests
}

/// A removed destination's JetStream consumer: once its reader stopped (and handed back
/// its last pull), what the consumer still has goes to the dead-letter file with reason
/// `removed` (replayable), and the consumer is deleted. What the old worker holds is
/// its to settle, as with the disk spool.
async fn retire_consumer(
    js: Arc<JetStreamSpool>,
    lease: Arc<crate::spool::Lease>,
    path: std::path::PathBuf,
    metrics: Arc<Metrics>,
    clock: Clock,
) {
    let name = lease.name.clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while lease.readers() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut owed = 0usize;
    loop {
        let pulled = match lease.pull(256, None).await {
            Ok(pulled) if pulled.is_empty() => break,
            Ok(pulled) => pulled,
            Err(error) => {
                tracing::error!(destination = %name, %error, "cannot read a removed destination's backlog from JetStream");
                return;
            }
        };
        let events: Vec<crate::event::Event> = pulled
            .into_iter()
            .filter_map(|p| match p {
                crate::spool::jetstream::Pulled::Event(event) => Some(*event),
                crate::spool::jetstream::Pulled::Corrupt(_) => None,
            })
            .collect();
        owed += events.len();
        {
            let metrics = metrics.destination(&name);
            metrics.received.inc_by(events.len() as u64);
            metrics.queue_depth.inc_by(events.len() as i64);
        }
        deliver::dead_letter_removed(&name, path.clone(), &metrics, &events, clock()).await;
        lease.settle(events.iter().map(|e| e.spool_seq));
    }
    if owed > 0 {
        tracing::warn!(destination = %name, events = owed, file = %path.display(), "destination removed: its backlog goes to the dead-letter file");
    }
    match js.delete_consumer(&name).await {
        Ok(()) => {
            tracing::info!(destination = %name, "destination removed: its JetStream consumer is deleted")
        }
        Err(error) => {
            tracing::error!(destination = %name, %error, "cannot delete a removed destination's consumer")
        }
    }
}

async fn start_slot(
    config: &DestinationConfig,
    server: &ServerConfig,
    client: &HttpClient,
    metrics: &Arc<Metrics>,
    clock: &Clock,
    abandon: &watch::Receiver<bool>,
    spool: Option<&Spool>,
) -> Result<Slot, StartError> {
    let cursor = match spool {
        Some(Spool::Disk(spool)) => {
            let cursor = spool.cursor(&config.name, config.common.queue.max_bytes)?;
            Some((cursor, spool.take_recovered(&config.name)))
        }
        _ => None,
    };
    let lease = match spool {
        Some(Spool::JetStream(js)) => Some(js.lease(&config.name).await?),
        _ => None,
    };
    let env = deliver::Environment {
        client: client.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        abandon: abandon.clone(),
        dead_letter_path: server
            .dead_letter_dir
            .join(format!("{}.ndjson", config.name)),
        dry_run_path: server.dry_run_dir.join(format!("{}.http", config.name)),
        hash_salt: server.hash_salt.clone(),
        cursor,
        lease,
    };
    let (destination, worker) = deliver::start(config, env)?;
    Ok(Slot {
        config: config.clone(),
        destination,
        worker,
    })
}

fn build_routing(
    config: &Config,
    routed: &BTreeMap<String, Arc<Destination>>,
    edge: Arc<Edge>,
    metrics: &Metrics,
) -> Result<Routing, crate::route::RouteError> {
    let mut index = HashMap::new();
    let mut destinations = Vec::with_capacity(routed.len());
    for (i, (name, destination)) in routed.iter().enumerate() {
        index.insert(name.clone(), i);
        destinations.push(destination.clone());
    }
    let table = RouteTable::new(&config.routes, &index)?;
    let route_sampled_out = table
        .route_names()
        .map(|route| {
            metrics
                .route_sampled_out
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone()
        })
        .collect();
    Ok(Routing {
        server: config.server.clone(),
        requests: request_limits(&config.server),
        edge,
        table,
        destinations,
        route_sampled_out,
    })
}

/// Applies configs to a running relay; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    controller: Arc<Controller>,
}

impl Reloader {
    pub(crate) fn new(controller: Arc<Controller>) -> Reloader {
        Reloader { controller }
    }

    /// Applies an already validated config.
    pub async fn apply(&self, config: Config) -> ReloadOutcome {
        self.controller.apply(config).await
    }

    /// Reads, validates and applies a file; an invalid file keeps the old config.
    pub async fn reload_file(&self, path: &Path) -> ReloadOutcome {
        let loaded = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || config::load_file(&path)).await
        };
        match loaded {
            Ok(Ok(config)) => self.apply(config).await,
            Ok(Err(errors)) => self.refuse(&errors),
            Err(error) => self.refuse(&ConfigErrors(vec![config::ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("reading the config failed: {error}"),
            }])),
        }
    }

    /// Records a config that did not validate.
    pub fn refuse(&self, errors: &ConfigErrors) -> ReloadOutcome {
        let outcome = ReloadOutcome {
            at: format_rfc3339((self.controller.relay.clock)()),
            errors: errors.0.iter().map(|e| e.to_string()).collect(),
            ..ReloadOutcome::default()
        };
        self.controller.refused(outcome)
    }
}

/// Reloads `path` when it changes: watched through its directory, so editors that write
/// a new file and rename it over the old one are seen too; bursts of changes within
/// `debounce` make one reload. Keep the returned watcher alive.
pub fn watch_file(
    path: &Path,
    reloader: Reloader,
    debounce: std::time::Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let path = std::path::absolute(path).map_err(notify::Error::io)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into());
    let file_name = path.file_name().map(|n| n.to_os_string());
    let (changed, mut changes) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
        {
            // A full channel already means "changed": nothing is lost.
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            loop {
                match tokio::time::timeout(debounce, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::info!(file = %path.display(), "config file changed: reloading");
            reloader.reload_file(&path).await;
        }
    });
    Ok(watcher)
}
