//! The HTTP front door: `POST /v1/events` plus health, readiness and metrics.

mod body;

use crate::event::{parse_body, BodyError, BodyLimits, Rejection};
use crate::route::Decision;
use crate::Relay;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// The relay's HTTP routes; tests can drive it without a socket.
pub fn app(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(relay)
}

#[derive(serde::Serialize)]
struct Accepted {
    accepted: usize,
    rejected: Vec<Rejection>,
}

async fn ingest(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let response = match ingest_inner(&relay, &headers, body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err((status, message)) => error(status, &message),
    };
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
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Accepted, (StatusCode, String)> {
    // One snapshot for the whole request: limits and routing from the same config.
    let routing = relay.routing.load_full();
    let server = &routing.server;
    let format = body::format(headers)?;
    let bytes = body::read(headers, body, server).await?;
    let received_at = (relay.clock)();
    let limits = BodyLimits {
        max_events: server.max_events_per_request,
    };
    let parsed = parse_body(&bytes, format, limits, received_at).map_err(|e| match e {
        BodyError::TooManyEvents { .. } => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        _ => (StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    let metrics = &relay.metrics;
    let total = (parsed.events.len() + parsed.rejected.len()) as u64;
    metrics.events_received.inc_by(total);
    metrics.events_accepted.inc_by(parsed.events.len() as u64);
    for rejection in &parsed.rejected {
        metrics.reject(rejection.reason);
    }
    if !parsed.rejected.is_empty() {
        tracing::debug!(rejected = parsed.rejected.len(), first = %parsed.rejected[0].error, "events rejected");
    }
    let accepted = parsed.events.len();
    let mut decision = Decision::default();
    for event in parsed.events {
        routing.table.decide(&event, &mut decision);
        for route in &decision.sampled_out {
            routing.route_sampled_out[*route].inc();
        }
        if decision.destinations.is_empty() {
            metrics.events_unrouted.inc();
            continue;
        }
        let event = Arc::new(event);
        for index in &decision.destinations {
            routing.destinations[*index].offer(event.clone());
        }
    }
    Ok(Accepted {
        accepted,
        rejected: parsed.rejected,
    })
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

async fn readyz(State(relay): State<Arc<Relay>>) -> Response {
    let state = relay.readiness();
    let status = if state == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "status": state });
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
