//! The generated load.

use crate::vendors::{parse_int, KINDS};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use memchr::memmem;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const FIXTURE: &str = include_str!("../../tests/fixtures/sessions.ndjson");
/// Placeholders written into the template, patched per request.
const ID_PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";
const TS_PLACEHOLDER: &str = "2000-01-01T00:00:00.000Z";

pub(crate) struct Line {
    pub(crate) text: Vec<u8>,
    pub(crate) id_at: usize,
    pub(crate) ts_at: usize,
    pub(crate) items: [u64; 4],
}

/// The fixture's 708 events with `event_id` and `timestamp` as placeholders, patched on
/// every send: unique ids, and the send time as the event time (GA4 refuses events over
/// 72 h old, and the stand-ins read the send time back from it for end-to-end latency).
pub(crate) struct Template {
    pub(crate) lines: Vec<Line>,
}

impl Template {
    pub(crate) fn new() -> Template {
        let lines = FIXTURE
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut value: Value = serde_json::from_str(l).expect("fixture is JSON");
                value["event_id"] = json!(ID_PLACEHOLDER);
                value["timestamp"] = json!(TS_PLACEHOLDER);
                let event_type = value["type"].as_str().unwrap_or("").to_string();
                let text = serde_json::to_vec(&value).expect("serialize");
                let find =
                    |what: &str| memmem::find(&text, what.as_bytes()).expect("placeholder present");
                Line {
                    id_at: find(ID_PLACEHOLDER),
                    ts_at: find(TS_PLACEHOLDER),
                    items: KINDS.map(|k| k.items(&event_type)),
                    text,
                }
            })
            .collect();
        Template { lines }
    }

    /// Appends line `i` with the event id made of `conn` and `seq`, and `timestamp`.
    pub(crate) fn write(&self, out: &mut Vec<u8>, i: usize, conn: u32, seq: u64, timestamp: &[u8]) {
        let line = &self.lines[i];
        let start = out.len();
        out.extend_from_slice(&line.text);
        let id = &mut out[start + line.id_at..start + line.id_at + 36];
        put_hex(&mut id[..8], u64::from(conn));
        put_hex(&mut id[24..], seq & 0xffff_ffff_ffff);
        out[start + line.ts_at..start + line.ts_at + 24].copy_from_slice(timestamp);
    }
}

/// `value` as lower-case hex filling `out`, zero-padded, as `{:0Nx}` writes it but
/// without allocating: the generator writes two per event.
fn put_hex(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

pub(crate) fn now_rfc3339() -> String {
    playrelay::event::format_rfc3339(time::OffsetDateTime::now_utc())
}

#[derive(Clone, Copy)]
pub(crate) struct LoadSpec {
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) events_per_request: usize,
    /// Requests per second over all connections; `None` sends back to back.
    pub(crate) rate: Option<f64>,
}

#[derive(Default)]
pub(crate) struct LoadResult {
    pub(crate) requests: u64,
    pub(crate) failed_requests: u64,
    pub(crate) accepted: u64,
    /// Per vendor kind: how many accepted events it maps (what it must deliver).
    pub(crate) expected: [u64; 4],
    /// Ingest latency of every request, µs; from the scheduled send time when paced.
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) elapsed: Duration,
}

pub(crate) async fn run_load(
    addr: SocketAddr,
    spec: LoadSpec,
    template: Arc<Template>,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for conn in 0..spec.connections {
        let template = template.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            connection(addr, conn as u32, spec, start, deadline, &template, &stop).await
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        match task.await {
            Ok(r) => {
                total.requests += r.requests;
                total.failed_requests += r.failed_requests;
                total.accepted += r.accepted;
                for k in 0..4 {
                    total.expected[k] += r.expected[k];
                }
                total.latencies_us.extend(r.latencies_us);
            }
            Err(e) => eprintln!("load connection failed: {e}"),
        }
    }
    total.elapsed = start.elapsed();
    total
}

pub(crate) async fn connection(
    addr: SocketAddr,
    conn: u32,
    spec: LoadSpec,
    start: Instant,
    deadline: Instant,
    template: &Template,
    stop: &AtomicBool,
) -> LoadResult {
    let mut result = LoadResult::default();
    let Ok(stream) = TcpStream::connect(addr).await else {
        result.failed_requests += 1;
        return result;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) = http1::handshake(TokioIo::new(stream)).await else {
        result.failed_requests += 1;
        return result;
    };
    tokio::spawn(connection);
    let lines = template.lines.len();
    let mut cursor = (conn as usize * 131) % lines;
    let mut seq: u64 = 0;
    let (content_type, per_request) = if spec.events_per_request == 1 {
        ("application/json", 1)
    } else {
        ("application/x-ndjson", spec.events_per_request)
    };
    // Paced: this connection's share of the rate, its first send staggered.
    let interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));
    let mut next_at = interval.map(|i| start + i.mul_f64(conn as f64 / spec.connections as f64));
    let uri = format!("http://{addr}/v1/events");
    let mut body = Vec::with_capacity(per_request * 1100);
    while !stop.load(Ordering::Relaxed) {
        let scheduled = match (&mut next_at, interval) {
            (Some(at), Some(i)) => {
                let this = *at;
                if this >= deadline {
                    break;
                }
                tokio::time::sleep_until(this.into()).await;
                *at += i;
                this
            }
            _ => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                now
            }
        };
        body.clear();
        let timestamp = now_rfc3339();
        let first = cursor;
        for k in 0..per_request {
            if k > 0 {
                body.push(b'\n');
            }
            template.write(&mut body, cursor, conn, seq, timestamp.as_bytes());
            seq += 1;
            cursor = (cursor + 1) % lines;
        }
        let request = hyper::Request::post(uri.as_str())
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, content_type)
            // Handed over, not copied: the next request gets a fresh buffer.
            .body(Full::new(Bytes::from(std::mem::replace(
                &mut body,
                Vec::with_capacity(per_request * 1100),
            ))))
            .expect("request");
        if sender.ready().await.is_err() {
            result.failed_requests += 1;
            break;
        }
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(b) => Some((status, b.to_bytes())),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        result.requests += 1;
        result
            .latencies_us
            .push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
        let Some((status, answer)) = outcome else {
            result.failed_requests += 1;
            break;
        };
        let accepted = memmem::find(&answer, b"\"accepted\":")
            .map(|i| parse_int(&answer[i + 11..]))
            .unwrap_or(0);
        if status.as_u16() != 202 || accepted != per_request as u64 {
            result.failed_requests += 1;
            result.accepted += accepted;
            continue;
        }
        result.accepted += accepted;
        for k in 0..per_request {
            let line = &template.lines[(first + k) % lines];
            for (v, items) in line.items.iter().enumerate() {
                result.expected[v] += *items;
            }
        }
    }
    result
}
