//! Shared test parts: vendor stand-ins on 127.0.0.1:0, a relay started from TOML text,
//! and a small HTTP client. Every wait here is bounded.
#![allow(dead_code)]
// Stand-ins stamp real arrival times: the relay under test runs in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod binary;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use playrelay::{config, RelayOptions, RunningRelay};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub const FIXTURE: &str = include_str!("../fixtures/sessions.ndjson");

/// One request a stand-in received, with the status it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
    /// When the request arrived (before any `After`/`Hang`/`UntilOpen` wait).
    pub arrived: std::time::Instant,
}

/// What a stand-in answers to its n-th request (0-based).
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    WithHeaders(u16, Vec<(&'static str, String)>),
    After(Duration, u16),
    /// A status with this body.
    Body(u16, &'static str),
    /// Accept the request and never answer.
    Hang,
    /// Hold the answer until the gate reads `true`, then answer with the status.
    UntilOpen(tokio::sync::watch::Receiver<bool>, u16),
}

type Plan = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

pub struct StandIn {
    pub addr: SocketAddr,
    pub recorded: Arc<Mutex<Vec<Recorded>>>,
    count: Arc<AtomicUsize>,
}

impl StandIn {
    pub async fn ok() -> StandIn {
        StandIn::start(|_| Reply::Status(200)).await
    }

    pub async fn start(plan: impl Fn(usize) -> Reply + Send + Sync + 'static) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let plan: Plan = Arc::new(plan);
        let state = (recorded.clone(), count.clone(), plan);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (recorded, count, plan) = state.clone();
                async move {
                    let arrived = std::time::Instant::now();
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let reply = plan(n);
                    let mut reply_body = "{}";
                    let (status, extra) = match reply {
                        Reply::Status(s) => (s, Vec::new()),
                        Reply::Body(s, b) => {
                            reply_body = b;
                            (s, Vec::new())
                        }
                        Reply::WithHeaders(s, h) => (s, h),
                        Reply::After(delay, s) => {
                            tokio::time::sleep(delay).await;
                            (s, Vec::new())
                        }
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            (200, Vec::new())
                        }
                        Reply::UntilOpen(mut gate, s) => {
                            let _ = gate.wait_for(|open| *open).await;
                            (s, Vec::new())
                        }
                    };
                    recorded.lock().expect("lock").push(Recorded {
                        method,
                        uri,
                        headers,
                        body,
                        status,
                        arrived,
                    });
                    let mut response: Response =
                        (StatusCode::from_u16(status).expect("status"), reply_body).into_response();
                    for (name, value) in extra {
                        response
                            .headers_mut()
                            .insert(name, value.parse().expect("header value"));
                    }
                    response
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            addr,
            recorded,
            count,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }

    /// Every event in every 2xx-answered request, in arrival order (JSON array or NDJSON bodies).
    pub fn delivered_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        for request in self
            .requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
        {
            events.extend(body_events(&request.body));
        }
        events
    }

    /// Waits until `n` events were delivered, at most `within`.
    pub async fn wait_for_events(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let events = self.delivered_events();
            if events.len() >= n || tokio::time::Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn body_events(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(other) => vec![other],
        Err(_) => body
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("NDJSON line"))
            .collect(),
    }
}

/// Starts a relay from TOML text on 127.0.0.1:0 (the file's `listen` is ignored).
pub async fn start_relay(toml: &str) -> RunningRelay {
    start_relay_with(toml, RelayOptions::default()).await
}

pub async fn start_relay_with(toml: &str, options: RelayOptions) -> RunningRelay {
    // Dead letters go to a fresh directory unless the test names one.
    let toml = if toml.contains("dead_letter_dir") {
        toml.to_string()
    } else {
        let dir = tempfile::Builder::new()
            .prefix("playrelay-test-")
            .tempdir()
            .expect("tempdir")
            .keep();
        toml.replacen(
            "[server]",
            &format!(
                "[server]\ndead_letter_dir = {:?}",
                dir.display().to_string()
            ),
            1,
        )
    };
    let toml = with_test_spool(&toml);
    let config = config::load_str(&toml, Path::new("test.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    playrelay::start(config, listener, options)
        .await
        .expect("relay starts")
}

/// Gives a test config without `[spool]` a disk spool of its own: beside its dead-letter
/// directory (so a reloaded copy of the same text names the same spool), else fresh.
pub fn with_test_spool(toml: &str) -> String {
    if toml.contains("[spool]") {
        return toml.to_string();
    }
    let beside_dead_letters = toml.lines().find_map(|line| {
        let value = line.trim().strip_prefix("dead_letter_dir")?.trim();
        let value = value.strip_prefix('=')?.trim().trim_matches('"');
        Some(format!("{value}.spool"))
    });
    let dir = beside_dead_letters.unwrap_or_else(|| {
        tempfile::Builder::new()
            .prefix("playrelay-spool-")
            .tempdir()
            .expect("tempdir")
            .keep()
            .display()
            .to_string()
    });
    format!("[spool]\ndir = {dir:?}\n{toml}")
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends one request to the relay and reads its JSON answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("relay answers within 10 s")
        .expect("relay answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn post_ndjson(addr: SocketAddr, body: impl Into<Bytes>) -> Answer {
    send(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "application/x-ndjson")],
        body,
    )
    .await
}

pub async fn post_json(addr: SocketAddr, body: impl Into<Bytes>) -> Answer {
    send(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

pub fn fixture_events() -> Vec<Value> {
    FIXTURE
        .lines()
        .map(|line| serde_json::from_str(line).expect("fixture line"))
        .collect()
}

/// Removes `received_at` after checking it is an RFC 3339 time.
/// The event as the client sent it: the keys the relay adds to what it forwards
/// (`received_at`, and `schema` when the client left it out) checked and removed.
pub fn without_received_at(mut event: Value) -> Value {
    if let Some(map) = event.as_object_mut() {
        assert_eq!(map.remove("schema"), Some(Value::from("player-event/1")));
    }
    let stamp = event
        .as_object_mut()
        .and_then(|m| m.remove("received_at"))
        .expect("received_at is stamped");
    assert!(
        stamp
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.len() == 24),
        "received_at {stamp}"
    );
    event
}

/// Reads one metric sample (full name with labels) from the relay's exposition. Panics
/// when the sample is not there: a renamed metric must not pass as `0`.
pub fn metric(text: &str, sample: &str) -> f64 {
    find_metric(text, sample)
        .unwrap_or_else(|| panic!("no metric sample {sample} in the exposition:\n{text}"))
}

fn find_metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// One destination's accounting terms from the exposition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accounts {
    pub received: f64,
    pub sent: f64,
    pub dead_lettered: f64,
    pub dropped: f64,
    pub queued: f64,
    pub in_flight: f64,
}

impl Accounts {
    /// Panics when the destination has no metrics (a misspelt name must not balance 0 = 0).
    pub fn read(text: &str, destination: &str) -> Accounts {
        let label = format!("{{destination=\"{destination}\"}}");
        let get = |name: &str| metric(text, &format!("playrelay_destination_{name}{label}"));
        let dropped_prefix =
            format!("playrelay_destination_events_dropped_total{{destination=\"{destination}\",");
        let dropped = text
            .lines()
            .filter(|l| l.starts_with(&dropped_prefix))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        Accounts {
            received: get("events_received_total"),
            sent: get("events_sent_total"),
            dead_lettered: get("events_dead_lettered_total"),
            dropped,
            queued: get("queue_depth"),
            in_flight: get("events_in_flight"),
        }
    }

    /// received = delivered + dead_lettered + dropped + queued + in_flight
    pub fn assert_balanced(&self) {
        let settled = self.sent + self.dead_lettered + self.dropped + self.queued + self.in_flight;
        assert_eq!(
            self.received, settled,
            "accounting does not balance: {self:?}"
        );
    }
}

/// Dead-letter records of a destination, parsed. Panics when the file is missing: a
/// test expecting none says so with [`assert_no_dead_letters`].
pub fn dead_letters(dir: &Path, destination: &str) -> Vec<Value> {
    let path = dir.join(format!("{destination}.ndjson"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the dead letters {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("dead-letter line is JSON"))
        .collect()
}

/// Nothing was dead-lettered: the destination's dead-letter file was never written (the
/// directory itself must exist, so a wrong directory does not pass).
pub fn assert_no_dead_letters(dir: &Path, destination: &str) {
    assert!(dir.is_dir(), "no dead-letter directory {}", dir.display());
    let path = dir.join(format!("{destination}.ndjson"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        assert!(
            text.is_empty(),
            "{} holds dead letters:\n{text}",
            path.display()
        );
    }
}

/// Polls `condition` until it holds, at most `within`; panics naming `what` otherwise.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A port on 127.0.0.1 that nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// A vendor that reads each request and closes the connection halfway through its answer.
pub async fn half_answering_vendor() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 1 << 20];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ok\":")
                    .await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// How many times each `event_id` occurs.
pub fn id_counts(events: &[Value]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for event in events {
        *counts
            .entry(event["event_id"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// The `i`-th event id of batch `prefix`: a UUID, as player-event/1 asks.
pub fn id(prefix: &str, i: usize) -> String {
    let batch = xxhash_rust::xxh3::xxh3_64(prefix.as_bytes()) as u32;
    format!("{batch:08x}-0000-4000-8000-{i:012x}")
}

/// `n` fixture events with fresh ids `id(prefix, i)`.
pub fn events(prefix: &str, n: usize) -> Vec<Value> {
    let fixture = fixture_events();
    (0..n)
        .map(|i| {
            let mut event = fixture[i % fixture.len()].clone();
            event["event_id"] = serde_json::json!(id(prefix, i));
            event
        })
        .collect()
}

pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}
