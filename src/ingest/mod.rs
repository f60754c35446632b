//! The HTTP front door: `POST /v1/events` plus health, readiness and metrics.
//!
//! A request passes, in order: the cap on requests in flight (`503`), the client's rate
//! limit (`429`), its key (`401`), its origin (`403`), its key's rate limit (`429`), the
//! body's type, size, read time and shape (`415`, `413`, `408`, `400`); then its events
//! are validated one by one and routed.

pub mod auth;
mod body;
pub mod config;
pub mod cors;
pub mod limits;
pub mod serve;
pub mod tls;

use self::config::{Cidr, IngestRateLimit, SourceConfig};
use crate::event::{parse_body, BodyError, BodyLimits, Event, Rejection};
use crate::route::Decision;
use crate::spool::{Routed, Spool, SpoolError};
use crate::{Relay, Routing};
use auth::{Identity, Sources};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CONNECTION, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limits::Clients;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Who may post and how fast: built once from the config at start.
pub struct Edge {
    pub sources: Sources,
    pub clients: Clients,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Edge {
    /// From `[sources]` and the edge's own `[server]` keys.
    pub fn new(
        sources: &BTreeMap<String, SourceConfig>,
        per_client_rate_limit: Option<IngestRateLimit>,
        trusted_proxies: Vec<Cidr>,
        max_in_flight_requests: usize,
    ) -> Edge {
        Edge {
            sources: Sources::new(sources),
            clients: Clients::new(per_client_rate_limit, trusted_proxies),
            in_flight: Arc::new(Semaphore::new(max_in_flight_requests)),
            max_in_flight: max_in_flight_requests,
        }
    }

    /// Waits until no request holds an in-flight slot, and keeps them all.
    pub async fn quiesce(&self) {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        if let Ok(permits) = self.in_flight.acquire_many(all).await {
            permits.forget();
        }
    }
}

/// The relay's HTTP routes on the edge listener; tests can drive it without a socket.
/// `/metrics` is here only when no `admin_listen` is configured.
pub fn app(relay: Arc<Relay>) -> Router {
    let mut router = Router::new()
        .route("/v1/events", post(ingest).options(preflight))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if relay.routing.load().server.admin_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(relay)
}

/// The admin listener's routes: metrics, health and readiness, no ingest.
pub fn admin_app(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(relay)
}

#[derive(serde::Serialize)]
struct Accepted {
    accepted: usize,
    rejected: Vec<Rejection>,
}

/// A request refused before or while its body was read.
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
    /// The `reason` of `playrelay_ingest_refused_total`, for access and limit refusals.
    reason: Option<&'static str>,
    retry_after: Option<u64>,
    close: bool,
}

impl Refusal {
    /// What the client is told.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            reason: None,
            retry_after: None,
            close: false,
        }
    }

    fn shutting_down() -> Refusal {
        Refusal {
            retry_after: Some(1),
            close: true,
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the relay is shutting down: retry, or send to another relay",
            )
            .counted("shutting_down")
        }
    }

    fn counted(mut self, reason: &'static str) -> Refusal {
        self.reason = Some(reason);
        self
    }

    fn rate_limited(reason: &'static str, who: &str, wait: Duration) -> Refusal {
        let seconds = limits::retry_after_secs(wait);
        Refusal {
            retry_after: Some(seconds),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{who} is over its rate limit: retry in {seconds} s"),
            )
            .counted(reason)
        }
    }

    fn into_response(self, relay: &Relay) -> Response {
        if let Some(reason) = self.reason {
            relay.metrics.refuse(reason);
        }
        let mut response = error(self.status, &self.message);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<(StatusCode, String)> for Refusal {
    fn from((status, message): (StatusCode, String)) -> Refusal {
        Refusal::new(status, message)
    }
}

fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn ingest(State(relay): State<Arc<Relay>>, request: Request) -> Response {
    let origin = request.headers().get(ORIGIN).cloned();
    // One snapshot for the whole request: limits, keys and routing from the same config.
    let routing = relay.routing.load_full();
    let mut identity = None;
    let mut response = match ingest_inner(&relay, &routing, request, &mut identity).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(refusal) => refusal.into_response(&relay),
    };
    // Answers are readable by an origin the request's source allows (any source's,
    // when the request was refused before its source was known).
    if let Some(origin) = origin.as_ref() {
        let text = origin.to_str().unwrap_or("");
        let allowed = match identity.and_then(|i| routing.edge.sources.source(i)) {
            Some(source) => source.allows_origin(text),
            None => routing.edge.sources.any_allows_origin(text),
        };
        if allowed {
            cors::allow(response.headers_mut(), origin);
        }
    }
    relay
        .metrics
        .ingest_requests
        .get_or_create(&crate::telemetry::StatusLabel {
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn ingest_inner(
    relay: &Relay,
    routing: &Routing,
    request: Request,
    identity_out: &mut Option<Identity>,
) -> Result<Accepted, Refusal> {
    let edge = &routing.edge;
    if relay.ingest_closed() {
        return Err(Refusal::shutting_down());
    }
    let Ok(_in_flight) = edge.in_flight.clone().try_acquire_owned() else {
        return Err(Refusal {
            retry_after: Some(1),
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the relay is handling too many requests: retry in 1 s",
            )
            .counted("overloaded")
        });
    };
    // Checked again while holding the slot: shutdown holds every slot to prove no request
    // is between this check and its queues.
    if relay.ingest_closed() {
        return Err(Refusal::shutting_down());
    }
    let client = edge.clients.client_ip(peer(&request), request.headers());
    if let Err(wait) = edge.clients.check(client) {
        return Err(Refusal::rate_limited(
            "rate_limited_client",
            "this client",
            wait,
        ));
    }
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let key = auth::presented_key(headers, &parts.uri);
    let identity = edge
        .sources
        .identify(key.as_deref())
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, e.message()).counted("unauthorized"))?;
    *identity_out = Some(identity);
    let source = edge.sources.source(identity);
    if let (Some(source), Some(origin)) = (source, headers.get(ORIGIN)) {
        let origin = origin.to_str().unwrap_or("?");
        if !source.allows_origin(origin) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "origin {origin:?} is not allowed to post as source {:?}",
                    &*source.name
                ),
            )
            .counted("origin_not_allowed"));
        }
    }
    if let Err(wait) = edge.sources.check_rate(identity) {
        return Err(Refusal::rate_limited(
            "rate_limited_source",
            "this key",
            wait,
        ));
    }
    let requests = &routing.requests;
    let format = body::format(headers)?;
    let read_timeout = Duration::from_millis(requests.body_read_timeout_ms);
    let bytes = match tokio::time::timeout(read_timeout, body::read(headers, body, requests)).await
    {
        Ok(read) => read?,
        Err(_) => {
            return Err(Refusal {
                close: true,
                ..Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within server.body_read_timeout_ms ({} ms)",
                        requests.body_read_timeout_ms
                    ),
                )
                .counted("body_timeout")
            })
        }
    };
    let format = format.unwrap_or_else(|| body::sniff(&bytes));
    let received_at = (relay.clock)();
    let limits = BodyLimits {
        max_events: requests.max_events_per_request,
        json: requests.json,
    };
    let mut parsed = parse_body(&bytes, format, limits, received_at).map_err(|e| match e {
        BodyError::TooManyEvents { .. } => {
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).counted("limit_exceeded")
        }
        BodyError::Limit { .. } => {
            Refusal::new(StatusCode::BAD_REQUEST, e.to_string()).counted("limit_exceeded")
        }
        _ => Refusal::new(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    crate::event::stamp_client(&mut parsed.events, client, headers, &parts.uri);
    let metrics = &relay.metrics;
    let total = (parsed.events.len() + parsed.rejected.len()) as u64;
    metrics.events_received.inc_by(total);
    for rejection in &parsed.rejected {
        metrics.reject(rejection.reason);
    }
    if !parsed.rejected.is_empty() {
        tracing::debug!(rejected = parsed.rejected.len(), first = %parsed.rejected[0].error, "events rejected");
    }
    let accepted = parsed.events.len();
    // Stamped in place: an event is over a kilobyte, and moving each into a new Vec
    // showed in profiles.
    if let Some(source) = source {
        for event in &mut parsed.events {
            event.source = Some(source.name.clone());
        }
    }
    // Seen before the spool answers: should it refuse, the client's retry carries
    // the same event ids, which the sessionizer counts once. One lock per request.
    relay.qoe.observe_all(&parsed.events);
    accept(relay, routing, parsed.events).await?;
    // Accepted means routed and, with the disk spool, durable.
    metrics.events_accepted.inc_by(accepted as u64);
    Ok(Accepted {
        accepted,
        rejected: parsed.rejected,
    })
}

/// Routes accepted events and hands them on: into the disk spool (awaited: they are
/// durable before the caller answers) or, with the memory spool, straight into the
/// destinations' queues. The one way in for clients' events and for the relay's own
/// (`session.summary`, see `crate::qoe`).
pub(crate) async fn accept(
    relay: &Relay,
    routing: &Routing,
    events: Vec<Event>,
) -> Result<(), Refusal> {
    let mut decision = Decision::default();
    let mut spooled = Vec::with_capacity(if relay.spool.is_some() {
        events.len()
    } else {
        0
    });
    for event in events {
        routing.table.decide(&event, &mut decision);
        for route in &decision.sampled_out {
            routing.route_sampled_out[*route].inc();
        }
        if decision.destinations.is_empty() {
            relay.metrics.events_unrouted.inc();
            continue;
        }
        if relay.spool.is_some() {
            let to = decision
                .destinations
                .iter()
                .map(|index| routing.destinations[*index].clone())
                .collect();
            spooled.push(Routed { event, to });
            continue;
        }
        let event = Arc::new(event);
        for index in &decision.destinations {
            routing.destinations[*index].offer(event.clone());
        }
    }
    match (&relay.spool, spooled.is_empty()) {
        (Some(spool), false) => spool_events(spool, spooled).await,
        _ => Ok(()),
    }
}

/// The `2xx` waits for this: the events are on disk, or the client hears why not and
/// retries. Nothing is written when a destination they go to refuses more backlog.
async fn spool_events(spool: &Spool, events: Vec<Routed>) -> Result<(), Refusal> {
    let blocked = events
        .iter()
        .flat_map(|routed| routed.to.iter())
        .find(|destination| destination.blocked());
    if let Some(destination) = blocked {
        return Err(Refusal {
            retry_after: Some(1),
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "destination {:?} is behind: its backlog passed queue.max_bytes (when_full = \"block\"); retry later",
                    destination.name
                ),
            )
            .counted("backlog_full")
        });
    }
    spool.append(events).await.map_err(|error| {
        let reason = match error {
            SpoolError::Full { .. } | SpoolError::StreamFull(_) => "spool_full",
            _ => "spool_unavailable",
        };
        Refusal {
            retry_after: Some(1),
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("events not accepted: {error}; retry later"),
            )
            .counted(reason)
        }
    })
}

/// `OPTIONS /v1/events`: CORS preflight. Judged by the source of `?key=` when the URL
/// has one (sendBeacon-style URLs do), else by every source's allowed origins.
async fn preflight(State(relay): State<Arc<Relay>>, request: Request) -> Response {
    let routing = relay.routing.load_full();
    let edge = &routing.edge;
    let client = edge.clients.client_ip(peer(&request), request.headers());
    if let Err(wait) = edge.clients.check(client) {
        return Refusal::rate_limited("rate_limited_client", "this client", wait)
            .into_response(&relay);
    }
    let headers: &HeaderMap = request.headers();
    let Some(origin) = headers.get(ORIGIN) else {
        return cors::options();
    };
    let text = origin.to_str().unwrap_or("");
    let allowed = match auth::query_key(request.uri()) {
        Some(key) => match edge.sources.identify(Some(&key)) {
            Ok(identity) => edge
                .sources
                .source(identity)
                .is_some_and(|s| s.allows_origin(text)),
            Err(_) => false,
        },
        None => edge.sources.any_allows_origin(text),
    };
    match cors::preflight(headers, origin, allowed) {
        Ok(response) => response,
        Err(message) => Refusal::new(StatusCode::FORBIDDEN, message)
            .counted("cors")
            .into_response(&relay),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

/// Readiness as a delivery overview: 503 while starting or draining, or while a
/// `critical` destination's breaker is not closed; the body says which and why.
async fn readyz(State(relay): State<Arc<Relay>>) -> Response {
    let state = relay.readiness();
    let routing = relay.routing.load();
    let mut reasons: Vec<String> = Vec::new();
    if state != "ready" {
        reasons.push(format!("the relay is {state}"));
    }
    let destinations: Vec<serde_json::Value> = routing
        .destinations
        .iter()
        .map(|destination| {
            let metrics = &destination.metrics;
            let breaker = crate::deliver::breaker_state_name(metrics.breaker_state.get());
            let last_error = metrics.last_error();
            if destination.critical && breaker != "closed" {
                reasons.push(format!(
                    "critical destination {} cannot deliver: breaker {breaker}{}",
                    destination.name,
                    last_error
                        .as_ref()
                        .map(|e| format!(", last error at {}: {}", e.at, e.error))
                        .unwrap_or_default()
                ));
            }
            json!({
                "name": destination.name,
                "critical": destination.critical,
                "breaker": breaker,
                "backlog": metrics.queue_depth.get(),
                "in_flight": metrics.in_flight.get(),
                "last_error": last_error,
            })
        })
        .collect();
    let spool = match &relay.spool {
        Some(spool) => {
            let problem = spool.unhealthy();
            if let Some(problem) = &problem {
                reasons.push(format!("the spool cannot take events: {problem}"));
            }
            json!({
                "backend": spool.backend(),
                "bytes": relay.metrics.spool.bytes.get(),
                "oldest_event_age_seconds": relay.metrics.spool.oldest_event_age_seconds.get(),
                "error": problem,
            })
        }
        None => json!({ "backend": "memory" }),
    };
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let overall = if state != "ready" {
        state
    } else if ready {
        "ready"
    } else {
        "degraded"
    };
    let mut body = json!({
        "status": overall,
        "reasons": reasons,
        "spool": spool,
        "destinations": destinations,
    });
    if let Some(reload) = relay.reload_status.get() {
        body["last_reload"] = json!(reload);
    }
    (status, Json(body)).into_response()
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        relay.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such path; events go to POST /v1/events",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
