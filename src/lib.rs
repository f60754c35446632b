//! playrelay: one normalized player event stream in, many analytics vendors out.
//!
//! The path of an event: `ingest` (HTTP) → `event` (parse, validate) → `route` →
//! `deliver` (per-destination queue, batch, send) with `dest` translating for each
//! vendor → `telemetry` (metrics, logs). `reload` swaps the routing while it runs.
#![forbid(unsafe_code)]

pub mod cases;
pub mod config;
pub mod deliver;
pub mod dest;
pub mod event;
pub mod ingest;
pub mod preview;
pub mod privacy;
pub mod qoe;
pub mod reload;
pub mod replay;
pub mod route;
pub mod spool;
pub mod telemetry;

use arc_swap::ArcSwap;
use config::{Config, ServerConfig};
use deliver::Destination;
use prometheus_client::metrics::counter::Counter;
use reload::{Controller, Reloader};
use route::RouteTable;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use telemetry::Metrics;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Wall-clock source, injectable so tests can fix `received_at` and send times.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub fn system_clock() -> Clock {
    // The one place the wall clock is read; everything else is handed this `Clock`.
    #[allow(clippy::disallowed_methods)]
    Arc::new(OffsetDateTime::now_utc)
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
/// Draining, and ingest refuses new events: the queues are being closed.
const CLOSED: u8 = 3;

/// State shared by every ingest request.
pub struct Relay {
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Read as one snapshot per request, so a request is routed by one table.
    pub routing: ArcSwap<Routing>,
    pub reload_status: reload::StatusCell,
    /// The disk or JetStream spool; `None` with `backend = "memory"`.
    pub spool: Option<spool::Spool>,
    /// Per-session QoE beside the event path (`[qoe]`); kept across reloads.
    pub qoe: qoe::Qoe,
    state: AtomicU8,
}

impl Relay {
    pub fn readiness(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            READY => "ready",
            DRAINING | CLOSED => "draining",
            _ => "starting",
        }
    }

    /// True once shutdown has closed ingest: no event may be accepted any more.
    pub fn ingest_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }
}

/// What a request needs from the config: limits, the routing table and the
/// destinations it points at, by index. Swapped whole on reload.
pub struct Routing {
    pub server: ServerConfig,
    /// What one ingest request may be (body size, read timeout, events, JSON depth).
    pub requests: ingest::config::RequestLimits,
    /// Ingest keys, origins, per-client limits and the in-flight cap.
    pub edge: Arc<ingest::Edge>,
    pub table: RouteTable,
    pub destinations: Vec<Arc<Destination>>,
    pub route_sampled_out: Vec<Counter>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] deliver::http::TlsSetupError),
    #[error(transparent)]
    Destination(#[from] deliver::BuildError),
    #[error(transparent)]
    Route(#[from] route::RouteError),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    IngestTls(#[from] ingest::tls::TlsError),
    #[error("cannot listen on server.admin_listen: {0}")]
    AdminListen(std::io::Error),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// Knobs that are not config: what tests and embedders inject.
#[derive(Clone)]
pub struct RelayOptions {
    pub clock: Clock,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            clock: system_clock(),
        }
    }
}

/// A started relay; [`RunningRelay::shutdown`] stops it in order.
pub struct RunningRelay {
    pub local_addr: SocketAddr,
    pub relay: Arc<Relay>,
    controller: Arc<Controller>,
    server: JoinHandle<std::io::Result<()>>,
    stop_accepting: oneshot::Sender<()>,
    /// Where `/metrics` is served when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<(JoinHandle<std::io::Result<()>>, oneshot::Sender<()>)>,
    abandon: watch::Sender<bool>,
}

/// What shutdown found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// False when the drain timeout ran out and what was left was dead-lettered.
    pub drained: bool,
}

/// Starts the relay on `listener`: destinations first, then the HTTP server.
pub async fn start(
    config: Config,
    listener: TcpListener,
    options: RelayOptions,
) -> Result<RunningRelay, StartError> {
    let local_addr = listener.local_addr().map_err(StartError::Listener)?;
    let metrics = Arc::new(Metrics::new());
    let (abandon, abandon_rx) = watch::channel(false);
    let server_config = config.server.clone();
    let qoe_checkpoint = qoe::checkpoint_path(&config.qoe, &config.spool);
    let (controller, relay) = Controller::start(config, metrics, options.clock, abandon_rx).await?;
    controller.retire_unconfigured().await;
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    qoe::restore(&relay, qoe_checkpoint).await;
    qoe::spawn(&relay);
    let app = ingest::app(relay.clone());
    // Listener settings are read once: a reload reports changes to them as restart-only.
    let serve_options = ingest::serve::ServeOptions {
        max_connections: server_config.max_connections,
        header_read_timeout: Duration::from_millis(server_config.header_read_timeout_ms),
        max_header_bytes: server_config.max_header_bytes,
        tls: server_config
            .tls
            .as_ref()
            .map(ingest::tls::acceptor)
            .transpose()?,
        metrics: relay.metrics.clone(),
    };
    let (admin_addr, admin) = match server_config.admin_listen {
        Some(address) => {
            let admin_listener = TcpListener::bind(address)
                .await
                .map_err(StartError::AdminListen)?;
            let admin_addr = admin_listener
                .local_addr()
                .map_err(StartError::AdminListen)?;
            let (stop, stopped) = oneshot::channel::<()>();
            let options = ingest::serve::ServeOptions {
                tls: None,
                ..serve_options.clone()
            };
            let admin_app = ingest::admin_app(relay.clone());
            let handle = tokio::spawn(ingest::serve::serve(
                admin_listener,
                admin_app,
                options,
                async {
                    let _ = stopped.await;
                },
            ));
            tracing::info!(admin_listen = %admin_addr, "metrics served on the admin listener only");
            (Some(admin_addr), Some((handle, stop)))
        }
        None => (None, None),
    };
    let server = tokio::spawn(ingest::serve::serve(listener, app, serve_options, async {
        let _ = stopped.await;
    }));
    relay.state.store(READY, Ordering::Release);
    let routing = relay.routing.load();
    tracing::info!(listen = %local_addr, destinations = routing.destinations.len(), "relay ready");
    drop(routing);
    Ok(RunningRelay {
        local_addr,
        relay,
        controller,
        server,
        stop_accepting,
        admin_addr,
        admin,
        abandon,
    })
}

impl Relay {
    fn new(
        metrics: Arc<Metrics>,
        clock: Clock,
        routing: Routing,
        spool: Option<spool::Spool>,
    ) -> Relay {
        Relay {
            qoe: qoe::Qoe::new(metrics.qoe.clone()),
            metrics,
            clock,
            routing: ArcSwap::from_pointee(routing),
            reload_status: reload::StatusCell::default(),
            spool,
            state: AtomicU8::new(STARTING),
        }
    }
}

impl RunningRelay {
    /// A handle that applies new configs to this relay while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.controller.clone())
    }

    /// Shuts down in the order load balancers need: `/readyz` turns 503 while ingest
    /// keeps answering for `shutdown_grace_ms`; then ingest answers 503, the requests in
    /// flight finish, and the destinations get one `drain_timeout_ms` budget to send what
    /// they hold (what is left then is dead-lettered). Health and readiness keep answering
    /// on their listener throughout; the listeners close last.
    pub async fn shutdown(self) -> ShutdownReport {
        let server_config = self.relay.routing.load().server.clone();
        let grace = Duration::from_millis(server_config.shutdown_grace_ms);
        let drain = Duration::from_millis(server_config.drain_timeout_ms);
        self.relay.state.store(DRAINING, Ordering::Release);
        if !grace.is_zero() {
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: /readyz says draining, ingest answers for the grace period"
            );
            tokio::time::sleep(grace).await;
        }
        // One budget for everything from here: in-flight requests, then the queues.
        let deadline = tokio::time::Instant::now() + drain;
        self.relay.state.store(CLOSED, Ordering::Release);
        tracing::info!("shutting down: ingest closed, draining queues");
        // A request checks `ingest_closed` while holding an in-flight permit, so holding
        // every permit proves none is still between that check and its queues.
        let edge = self.relay.routing.load().edge.clone();
        if tokio::time::timeout_at(deadline, edge.quiesce())
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish in time");
        }
        // No event comes in any more: open sessions are summarized into the queues.
        qoe::close_all(&self.relay).await;
        // Dropping every sender closes the queues: workers finish what is queued.
        let workers = self.controller.close().await;
        let all = join_all(workers);
        tokio::pin!(all);
        let drained = match tokio::time::timeout_at(deadline, &mut all).await {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = drain.as_millis() as u64,
                    "drain timed out: dead-lettering what is left"
                );
                let _ = self.abandon.send(true);
                all.await;
                false
            }
        };
        // Every destination has settled what it could: save where each one is.
        if let Some(spool) = &self.relay.spool {
            spool.close().await;
        }
        // Ingest has refused events since the drain began: closing the listeners now
        // costs nothing; idle keep-alive connections get a moment to be told.
        let close_budget = Duration::from_secs(1);
        let _ = self.stop_accepting.send(());
        match tokio::time::timeout(close_budget, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => tracing::debug!("connections still open at exit were cut"),
        }
        if let Some((admin, stop)) = self.admin {
            let _ = stop.send(());
            let _ = tokio::time::timeout(close_budget, admin).await;
        }
        tracing::info!(drained, "relay stopped");
        ShutdownReport { drained }
    }
}

async fn join_all(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        if let Err(e) = handle.await {
            tracing::error!(error = %e, "destination worker failed");
        }
    }
}

/// Runs the relay until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    options: RelayOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport, StartError> {
    let running = start(config, listener, options).await?;
    shutdown.await;
    Ok(running.shutdown().await)
}
