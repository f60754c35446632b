//! End-to-end load benchmark: the release relay as its own process, local vendor
//! stand-ins that count what they receive, and a load generator, all on 127.0.0.1 and
//! all bounded in time. `cargo bench --bench load -- [--quick] [--duration S]
//! [--scenarios 1,2,3,4] [--json out.json]`; see docs/performance.md.
//!
//! Everything but the relay lives in this one process (stand-ins and load generator
//! share a tokio runtime), so the relay's peak RSS and CPU seconds are its own, read
//! from /proc.
// A load benchmark measures real elapsed time and stamps real wall-clock times.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// The report is one large `json!`.
#![recursion_limit = "256"]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use memchr::memmem;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};

const FIXTURE: &str = include_str!("../tests/fixtures/sessions.ndjson");
/// The relay under test: the release build of this checkout, unless `--relay PATH`
/// names another binary (e.g. an older build, for before/after figures).
const RELAY: &str = env!("CARGO_BIN_EXE_playrelay");

fn relay_binary() -> String {
    std::env::var("PLAYRELAY_BENCH_RELAY").unwrap_or_else(|_| RELAY.to_string())
}
/// Placeholders written into the template, patched per request.
const ID_PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";
const TS_PLACEHOLDER: &str = "2000-01-01T00:00:00.000Z";
/// Concurrency of every destination (requests in flight), the same in every scenario.
const CONCURRENCY: usize = 16;
/// Rate limits set far above anything reachable here, so the vendor defaults (Tealium
/// 100 events/s, Segment 1000 requests/s) do not cap the benchmark.
const NO_RATE_LIMIT: &str =
    "rate_limit = { events_per_second = 1000000000, requests_per_second = 1000000000 }";

// ---------------------------------------------------------------------------------------
// Vendors and what the stand-ins count

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segment,
    Ga4,
    Tealium,
    Webhook,
}

const KINDS: [Kind; 4] = [Kind::Segment, Kind::Ga4, Kind::Tealium, Kind::Webhook];

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Segment => "segment",
            Kind::Ga4 => "ga4",
            Kind::Tealium => "tealium",
            Kind::Webhook => "webhook",
        }
    }

    /// How many items the vendor's translator makes of this type with the default
    /// names: 0 for those dropped on purpose as `unmapped`; a Segment
    /// `playback.completed` also makes a `Video Content Completed` (the Video Spec).
    fn items(self, event_type: &str) -> u64 {
        let n = u64::from(self.maps(event_type));
        match self {
            Kind::Segment if event_type == "playback.completed" => 2 * n,
            _ => n,
        }
    }

    fn maps(self, event_type: &str) -> bool {
        use playrelay::dest::{ga4, segment, tealium};
        let custom = event_type.starts_with("custom.");
        match self {
            Kind::Segment => segment::default_name(event_type).is_some(),
            Kind::Ga4 => ga4::default_name(event_type).is_some() || custom,
            Kind::Tealium => tealium::default_name(event_type).is_some() || custom,
            Kind::Webhook => true,
        }
    }

    /// `defaults`: only the endpoint (and `queue` if given) is set; everything else is
    /// what the relay ships with.
    fn toml(
        self,
        name: &str,
        base: &str,
        hang: bool,
        queue: Option<usize>,
        defaults: bool,
    ) -> String {
        let own = match self {
            Kind::Segment => format!("type = \"segment\"\nwrite_key = \"bench-write-key\"\nendpoint = \"{base}\""),
            Kind::Ga4 => format!(
                "type = \"ga4\"\nmeasurement_id = \"G-BENCH\"\napi_secret = \"bench-api-secret\"\nendpoint = \"{base}\""
            ),
            Kind::Tealium => format!(
                "type = \"tealium\"\naccount = \"bench\"\nprofile = \"main\"\nendpoint = \"{base}\""
            ),
            Kind::Webhook => format!("type = \"webhook\"\nendpoint = \"{base}/events\""),
        };
        // A hung vendor gets the default timeout; nothing else differs.
        let _ = hang;
        let queue = queue
            .map(|n| format!("queue = {{ max_events = {n} }}\n"))
            .unwrap_or_default();
        if defaults {
            return format!("[destinations.{name}]\n{own}\n{queue}\n");
        }
        format!(
            "[destinations.{name}]\n{own}\nconcurrency = {CONCURRENCY}\n{NO_RATE_LIMIT}\n{queue}\n"
        )
    }

    /// (what marks one event in a body, how many of those marks are not events, where
    /// each event's timestamp starts).
    fn markers(self) -> (&'static str, u64, &'static str) {
        match self {
            Kind::Segment => ("\"messageId\":\"", 0, "\"timestamp\":\""),
            // The request carries its first event's timestamp_micros, then each event its own.
            Kind::Ga4 => ("\"timestamp_micros\":", 1, "\"timestamp_micros\":"),
            Kind::Tealium => ("\"tealium_event\":", 0, "\"event_timestamp\":\""),
            Kind::Webhook => ("\"event_id\":\"", 0, "\"timestamp\":\""),
        }
    }
}

/// Latency histogram with 1 ms buckets up to 2 minutes.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..120_001).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record_ms(&self, ms: u64) {
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as f64);
            }
        }
        None
    }
}

struct StandIn {
    name: String,
    kind: Kind,
    addr: SocketAddr,
    hang: bool,
    events: AtomicU64,
    requests: AtomicU64,
    /// Nanoseconds since the harness epoch of the last request that carried events.
    last_ns: AtomicU64,
    latency: Histogram,
    epoch: Instant,
    /// How long every answer is held, and how much it varies (uniform, ±).
    hold: Duration,
    jitter: Duration,
    /// Between these times (ns since the epoch) every answer is held `SLOW` instead.
    slow_from_ns: AtomicU64,
    slow_to_ns: AtomicU64,
    /// Share of requests answered 429 with `Retry-After: 1` (their events not counted).
    refuse_share: f64,
    refused: AtomicU64,
    /// Events received by 5 s after the load's end.
    within_5s: AtomicU64,
}

/// What a slowing vendor holds each answer while slow.
const SLOW: Duration = Duration::from_secs(2);

/// How a stand-in answers, beyond counting.
#[derive(Debug, Clone, Copy, Default)]
struct Behaviour {
    hold: Duration,
    jitter: Duration,
    refuse_share: f64,
}

impl StandIn {
    async fn start(
        name: &str,
        kind: Kind,
        hang: bool,
        epoch: Instant,
        behaviour: Behaviour,
    ) -> Arc<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let stand_in = Arc::new(StandIn {
            name: name.to_string(),
            kind,
            addr: listener.local_addr().expect("stand-in address"),
            hang,
            events: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            latency: Histogram::new(),
            epoch,
            hold: behaviour.hold,
            jitter: behaviour.jitter,
            slow_from_ns: AtomicU64::new(u64::MAX),
            slow_to_ns: AtomicU64::new(u64::MAX),
            refuse_share: behaviour.refuse_share,
            refused: AtomicU64::new(0),
            within_5s: AtomicU64::new(u64::MAX),
        });
        let state = stand_in.clone();
        let app = axum::Router::new()
            .fallback(
                |axum::extract::State(s): axum::extract::State<Arc<StandIn>>, body: Bytes| async move {
                    s.receive(&body).await
                },
            )
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        stand_in
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn receive(
        &self,
        body: &[u8],
    ) -> (
        axum::http::StatusCode,
        [(&'static str, &'static str); 1],
        &'static str,
    ) {
        let n_request = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.hang {
            std::future::pending::<()>().await;
        }
        // A deterministic spread per request: jitter and which requests are refused.
        let roll = xxhash_rust::xxh3::xxh3_64(&n_request.to_le_bytes());
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        let hold = if (self.slow_from_ns.load(Ordering::Relaxed)
            ..self.slow_to_ns.load(Ordering::Relaxed))
            .contains(&now_ns)
        {
            SLOW
        } else if self.jitter.is_zero() {
            self.hold
        } else {
            let span = 2 * self.jitter.as_micros() as u64;
            (self.hold + Duration::from_micros(roll % (span + 1))).saturating_sub(self.jitter)
        };
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        if self.refuse_share > 0.0 && ((roll >> 32) % 1000) < (self.refuse_share * 1000.0) as u64 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "{}",
            );
        }
        let (mark, extra, ts_key) = self.kind.markers();
        let n = (memmem::find_iter(body, mark.as_bytes()).count() as u64).saturating_sub(extra);
        let now_ms = unix_ms();
        let mut timestamps = memmem::find_iter(body, ts_key.as_bytes());
        if self.kind == Kind::Ga4 {
            timestamps.next(); // the request's own, a copy of its first event's
        }
        for at in timestamps {
            let value = &body[at + ts_key.len()..];
            let sent_ms = if self.kind == Kind::Ga4 {
                parse_int(value) / 1000
            } else {
                parse_rfc3339_ms(value)
            };
            if let Some(sent) = Some(sent_ms).filter(|ms| *ms > 0) {
                self.latency.record_ms(now_ms.saturating_sub(sent));
            }
        }
        if n > 0 {
            self.events.fetch_add(n, Ordering::Relaxed);
            self.last_ns
                .fetch_max(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        (axum::http::StatusCode::OK, [("x-stand-in", "1")], "{}")
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn parse_int(s: &[u8]) -> u64 {
    s.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (the relay's and the generator's form) to Unix ms; 0 if
/// it is not that form.
fn parse_rfc3339_ms(s: &[u8]) -> u64 {
    if s.len() < 24 || s[4] != b'-' || s[10] != b'T' || s[19] != b'.' || s[23] != b'Z' {
        return 0;
    }
    let n = |r: std::ops::Range<usize>| parse_int(&s[r]) as i64;
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    (secs * 1000 + n(20..23)) as u64
}

// ---------------------------------------------------------------------------------------
// The generated load

struct Line {
    text: Vec<u8>,
    id_at: usize,
    ts_at: usize,
    items: [u64; 4],
}

/// The fixture's 708 events with `event_id` and `timestamp` as placeholders, patched on
/// every send: unique ids, and the send time as the event time (GA4 refuses events over
/// 72 h old, and the stand-ins read the send time back from it for end-to-end latency).
struct Template {
    lines: Vec<Line>,
}

impl Template {
    fn new() -> Template {
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
    fn write(&self, out: &mut Vec<u8>, i: usize, conn: u32, seq: u64, timestamp: &[u8]) {
        let line = &self.lines[i];
        let start = out.len();
        out.extend_from_slice(&line.text);
        let id = &mut out[start + line.id_at..start + line.id_at + 36];
        id[..8].copy_from_slice(format!("{conn:08x}").as_bytes());
        id[24..].copy_from_slice(format!("{:012x}", seq & 0xffff_ffff_ffff).as_bytes());
        out[start + line.ts_at..start + line.ts_at + 24].copy_from_slice(timestamp);
    }
}

fn now_rfc3339() -> String {
    playrelay::event::format_rfc3339(time::OffsetDateTime::now_utc())
}

#[derive(Clone, Copy)]
struct LoadSpec {
    connections: usize,
    duration: Duration,
    events_per_request: usize,
    /// Requests per second over all connections; `None` sends back to back.
    rate: Option<f64>,
}

#[derive(Default)]
struct LoadResult {
    requests: u64,
    failed_requests: u64,
    accepted: u64,
    /// Per vendor kind: how many accepted events it maps (what it must deliver).
    expected: [u64; 4],
    /// Ingest latency of every request, µs; from the scheduled send time when paced.
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

async fn run_load(addr: SocketAddr, spec: LoadSpec, template: Arc<Template>) -> LoadResult {
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

async fn connection(
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
            .body(Full::new(Bytes::copy_from_slice(&body)))
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

// ---------------------------------------------------------------------------------------
// The relay process

struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    clk_tck: f64,
}

impl RelayProcess {
    fn start(config: &Path, addr: SocketAddr, log: &Path) -> RelayProcess {
        let stderr = std::fs::File::create(log).expect("relay log");
        let child = Command::new(relay_binary())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the relay");
        let clk_tck = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        RelayProcess {
            child,
            addr,
            clk_tck,
        }
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("relay exited early: {status}");
                return false;
            }
            if let Ok(stream) = TcpStream::connect(self.addr).await {
                if let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await {
                    tokio::spawn(conn);
                    let request = hyper::Request::get(format!("http://{}/readyz", self.addr))
                        .header(hyper::header::HOST, "127.0.0.1")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    if let Ok(r) = sender.send_request(request).await {
                        if r.status() == 200 {
                            return true;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn get(&self, path: &str) -> Option<Bytes> {
        get_from(self.addr, path).await
    }
}

async fn get_from(addr: SocketAddr, path: &str) -> Option<Bytes> {
    {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let request = hyper::Request::get(format!("http://{addr}{path}"))
            .header(hyper::header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .ok()?
            .ok()?;
        Some(response.into_body().collect().await.ok()?.to_bytes())
    }
}

impl RelayProcess {
    /// Per destination, what the relay says it did not deliver: dead-lettered events
    /// and drops other than `unmapped` (which the expected counts already leave out).
    async fn losses(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let text = self.get("/metrics").await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let label = |line: &str, key: &str| {
            let start = line.find(&format!("{key}=\""))? + key.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_string())
        };
        let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for line in text.lines() {
            let what = if line.starts_with("playrelay_destination_events_dead_lettered_total{") {
                "dead_lettered".to_string()
            } else if line.starts_with("playrelay_destination_events_dropped_total{") {
                match label(line, "reason") {
                    Some(reason) if reason != "unmapped" => format!("dropped:{reason}"),
                    _ => continue,
                }
            } else {
                continue;
            };
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            if let (Some(destination), true) = (label(line, "destination"), value > 0) {
                out.entry(destination).or_default().push((what, value));
            }
        }
        out
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / self.clk_tck
    }

    /// Peak resident set size (VmHWM), MB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------
// Scenarios

struct Scenario {
    id: String,
    title: String,
    /// (destination kind, hung?) per destination.
    destinations: Vec<(Kind, bool)>,
    load: LoadSpec,
    /// `[spool] backend`: "disk" (the default) or "memory".
    spool: &'static str,
    special: Special,
}

/// Vendors that misbehave on purpose in a scenario.
#[derive(Debug, Clone, Copy, Default)]
struct Special {
    /// Slows from its round trip to `SLOW` from 30% to 60% of the load, then recovers.
    slow: Option<Kind>,
    /// Answers 429 (`Retry-After: 1`) to 30% of requests.
    refusing: Option<Kind>,
    /// Held to its rate limit: not waited for after the load; its backlog is reported.
    rate_limited: Option<Kind>,
    /// Room for a backlog of millions: `[spool] max_bytes` and the hung destination's
    /// `queue.max_bytes` raised to 4 GiB, so nothing is shed and the backlog is all on disk.
    big_backlog: bool,
}

const BIG_BACKLOG_BYTES: u64 = 4 << 30;

/// Options of the whole run.
#[derive(Debug, Clone, Copy)]
struct Options {
    vendor_latency: Duration,
    vendor_jitter: Duration,
    /// Shipped defaults: only the endpoints are set.
    defaults: bool,
}

struct DestinationReport {
    name: String,
    kind: Kind,
    hung: bool,
    expected: u64,
    delivered: u64,
    requests: u64,
    events_per_s: f64,
    e2e_p50_ms: Option<f64>,
    e2e_p99_ms: Option<f64>,
    /// From the relay's metrics: dead-lettered and dropped (not `unmapped`) events.
    losses: Vec<(String, u64)>,
    /// Events delivered by 5 s after the load's end.
    within_5s: u64,
    /// Requests the stand-in answered 429 on purpose.
    refused: u64,
    /// From the relay's metrics at the end: events still queued (on disk or in memory).
    backlog: u64,
    /// (seconds since the load started, adaptive limit, average round trip s).
    concurrency: Vec<(f64, f64, f64)>,
}

struct Report {
    id: String,
    title: String,
    load: LoadSpec,
    requests: u64,
    failed_requests: u64,
    accepted: u64,
    load_seconds: f64,
    accepted_per_s: f64,
    requests_per_s: f64,
    ingest_p50_ms: f64,
    ingest_p99_ms: f64,
    destinations: Vec<DestinationReport>,
    all_delivered: bool,
    drain_seconds: f64,
    peak_rss_mb: f64,
    cpu_seconds: f64,
    /// When the slowing vendor was slow, seconds since the load started.
    slow_window: Option<(f64, f64)>,
}

fn quantile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

/// Reads `metric{destination="…"} value` lines of one metric into a map.
fn per_destination(text: &str, metric: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{metric}{{destination=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

async fn run_scenario(
    scenario: &Scenario,
    template: Arc<Template>,
    settle: Duration,
    queue: Option<usize>,
    options: Options,
) -> Report {
    let epoch = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut stand_ins = Vec::new();
    let mut per_kind = [0usize; 4];
    for (kind, hang) in &scenario.destinations {
        per_kind[kind.index()] += 1;
        let name = format!("{}_{}", kind.name(), per_kind[kind.index()]);
        let behaviour = Behaviour {
            hold: options.vendor_latency,
            jitter: options.vendor_jitter,
            refuse_share: if scenario.special.refusing == Some(*kind) {
                0.3
            } else {
                0.0
            },
        };
        stand_ins.push(StandIn::start(&name, *kind, *hang, epoch, behaviour).await);
    }
    let addr = free_addr();
    let spool_budget = if scenario.special.big_backlog {
        format!("max_bytes = {BIG_BACKLOG_BYTES}\n")
    } else {
        String::new()
    };
    let mut toml = format!(
        "[spool]\nbackend = \"{}\"\ndir = \"{}\"\n{spool_budget}\n[server]\nlisten = \"{addr}\"\ndrain_timeout_ms = 1000\ndead_letter_dir = \"{}\"\ndry_run_dir = \"{}\"\n\n",
        scenario.spool,
        dir.path().join("spool").display(),
        dir.path().join("dead-letter").display(),
        dir.path().join("dry-run").display()
    );
    for s in &stand_ins {
        toml.push_str(
            &s.kind
                .toml(&s.name, &s.base(), s.hang, queue, options.defaults),
        );
        if scenario.special.big_backlog && s.hang && queue.is_none() {
            let _ = writeln!(toml, "queue = {{ max_bytes = {BIG_BACKLOG_BYTES} }}\n");
        }
    }
    let names: Vec<String> = stand_ins
        .iter()
        .map(|s| format!("\"{}\"", s.name))
        .collect();
    let _ = write!(
        toml,
        "[[routes]]\nname = \"everything\"\nmatch = {{ types = [\"*\"] }}\nto = [{}]\n",
        names.join(", ")
    );
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, &toml).expect("write routes.toml");
    let mut relay = RelayProcess::start(&config, addr, &dir.path().join("relay.log"));
    if !relay.wait_ready(Duration::from_secs(20)).await {
        let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
        relay.stop().await;
        panic!("the relay did not become ready:\n{log}\n{toml}");
    }
    let cpu_before = relay.cpu_seconds();
    let load_start = epoch.elapsed();
    if let Some(kind) = scenario.special.slow {
        let at =
            |share: f64| (load_start + scenario.load.duration.mul_f64(share)).as_nanos() as u64;
        for s in stand_ins.iter().filter(|s| s.kind == kind) {
            s.slow_from_ns.store(at(0.3), Ordering::Relaxed);
            s.slow_to_ns.store(at(0.6), Ordering::Relaxed);
        }
    }
    // The adaptive limit and round trip of every destination, every 200 ms.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let metrics_addr = relay.addr;
        tokio::spawn(async move {
            let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
            let started = Instant::now();
            while sampling.load(Ordering::Relaxed) {
                if let Some(text) = get_from(metrics_addr, "/metrics").await {
                    let text = String::from_utf8_lossy(&text);
                    let limits = per_destination(&text, "playrelay_destination_concurrency_limit");
                    let rtts = per_destination(&text, "playrelay_destination_rtt_seconds");
                    let t = started.elapsed().as_secs_f64();
                    for (name, limit) in limits {
                        let rtt = rtts.get(&name).copied().unwrap_or(0.0);
                        series.entry(name).or_default().push((t, limit, rtt));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            series
        })
    };
    let mut load = run_load(addr, scenario.load, template).await;
    let load_end = Instant::now();
    // Delivery: wait until every healthy stand-in has what it must get, or nothing has
    // arrived for 3 s, or the settle time is over.
    let deadline = load_end + settle;
    let mut last_total = 0;
    let mut last_progress = Instant::now();
    loop {
        if load_end.elapsed() >= Duration::from_secs(5) {
            for s in &stand_ins {
                let _ = s.within_5s.compare_exchange(
                    u64::MAX,
                    s.events.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        let done = stand_ins
            .iter()
            .filter(|s| !s.hang && scenario.special.rate_limited != Some(s.kind))
            .all(|s| s.events.load(Ordering::Relaxed) >= load.expected[s.kind.index()]);
        let total: u64 = stand_ins
            .iter()
            .map(|s| s.events.load(Ordering::Relaxed))
            .sum();
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        }
        // A refusing vendor's last requests may sit out several `Retry-After`s in a row.
        let quiet = if scenario.special.refusing.is_some() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(3)
        };
        if done || Instant::now() >= deadline || last_progress.elapsed() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = load_end.elapsed().as_secs_f64();
    let cpu_seconds = relay.cpu_seconds() - cpu_before;
    let peak_rss_mb = relay.peak_rss_mb();
    let mut losses = relay.losses().await;
    let backlogs = relay
        .get("/metrics")
        .await
        .map(|t| {
            per_destination(
                &String::from_utf8_lossy(&t),
                "playrelay_destination_queue_depth",
            )
        })
        .unwrap_or_default();
    sampling.store(false, Ordering::Relaxed);
    let mut series = sampler.await.unwrap_or_default();
    relay.stop().await;

    load.latencies_us.sort_unstable();
    let load_seconds = load.elapsed.as_secs_f64();
    let destinations: Vec<DestinationReport> = stand_ins
        .iter()
        .map(|s| {
            let delivered = s.events.load(Ordering::Relaxed);
            let last = Duration::from_nanos(s.last_ns.load(Ordering::Relaxed));
            let window = last.saturating_sub(load_start).as_secs_f64();
            DestinationReport {
                name: s.name.clone(),
                kind: s.kind,
                hung: s.hang,
                expected: load.expected[s.kind.index()],
                delivered,
                requests: s.requests.load(Ordering::Relaxed),
                events_per_s: if window > 0.0 {
                    delivered as f64 / window
                } else {
                    0.0
                },
                e2e_p50_ms: s.latency.quantile_ms(0.50),
                e2e_p99_ms: s.latency.quantile_ms(0.99),
                losses: losses.remove(&s.name).unwrap_or_default(),
                within_5s: match s.within_5s.load(Ordering::Relaxed) {
                    // Everything arrived before 5 s had passed.
                    u64::MAX => delivered,
                    n => n,
                },
                refused: s.refused.load(Ordering::Relaxed),
                backlog: backlogs.get(&s.name).copied().unwrap_or(0.0) as u64,
                concurrency: series.remove(&s.name).unwrap_or_default(),
            }
        })
        .collect();
    let all_delivered = destinations
        .iter()
        .filter(|d| !d.hung && scenario.special.rate_limited != Some(d.kind))
        .all(|d| d.delivered == d.expected);
    Report {
        id: scenario.id.clone(),
        title: scenario.title.clone(),
        load: scenario.load,
        requests: load.requests,
        failed_requests: load.failed_requests,
        accepted: load.accepted,
        load_seconds,
        accepted_per_s: load.accepted as f64 / load_seconds,
        requests_per_s: load.requests as f64 / load_seconds,
        ingest_p50_ms: quantile_us(&load.latencies_us, 0.50),
        ingest_p99_ms: quantile_us(&load.latencies_us, 0.99),
        destinations,
        all_delivered,
        drain_seconds,
        peak_rss_mb,
        cpu_seconds,
        slow_window: scenario.special.slow.map(|_| {
            let d = scenario.load.duration.as_secs_f64();
            (0.3 * d, 0.6 * d)
        }),
    }
}

fn scenarios(which: &[String], duration: Duration) -> Vec<Scenario> {
    let four: Vec<(Kind, bool)> = KINDS.iter().map(|k| (*k, false)).collect();
    let batches = LoadSpec {
        connections: 8,
        duration,
        events_per_request: 50,
        rate: None,
    };
    let browser = LoadSpec {
        connections: 64,
        duration,
        events_per_request: 1,
        rate: None,
    };
    let mut out = Vec::new();
    {
        out.push(Scenario {
            id: "1".into(),
            title: "full job: NDJSON x50 -> segment, ga4, tealium, webhook".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: batches,
        });
    }
    {
        out.push(Scenario {
            id: "1-memory".into(),
            title: "scenario 1 with the memory spool (the disk spool's baseline)".into(),
            spool: "memory",
            special: Special::default(),
            destinations: four.clone(),
            load: batches,
        });
    }
    {
        // Many clients at once, as at the edge: group commit covers more requests per
        // fdatasync than 8 connections can offer it.
        let many = LoadSpec {
            connections: 64,
            ..batches
        };
        out.push(Scenario {
            id: "5".into(),
            title: "scenario 1 from 64 connections, disk spool".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: many,
        });
        out.push(Scenario {
            id: "5-memory".into(),
            title: "scenario 1 from 64 connections, memory spool".into(),
            spool: "memory",
            special: Special::default(),
            destinations: four.clone(),
            load: many,
        });
        out.push(Scenario {
            id: "5-paced-50k".into(),
            title: "disk spool paced at 1,000 requests/s x 50 = 50,000 events/s, 64 connections"
                .into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: LoadSpec {
                rate: Some(1_000.0),
                ..many
            },
        });
    }
    {
        // The spool issue's memory figure: a hung vendor owed two million events, all on
        // disk, while the other destination stays current. Paced so the backlog grows
        // steadily; it runs its own 70 s, whatever --duration says.
        out.push(Scenario {
            id: "7-backlog-2m".into(),
            title: "a hung webhook owed 2M events (30,000 events/s for 70 s), segment current"
                .into(),
            spool: "disk",
            special: Special {
                big_backlog: true,
                ..Special::default()
            },
            destinations: vec![(Kind::Segment, false), (Kind::Webhook, true)],
            load: LoadSpec {
                duration: Duration::from_secs(70),
                rate: Some(600.0),
                ..batches
            },
        });
    }
    {
        out.push(Scenario {
            id: "1-paced".into(),
            title: "scenario 1 paced at 2,000 requests/s = the 100,000 events/s target".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: LoadSpec {
                rate: Some(2_000.0),
                ..batches
            },
        });
    }
    {
        let two = vec![(Kind::Segment, false), (Kind::Ga4, false)];
        out.push(Scenario {
            id: "2".into(),
            title: "browser: 1 event/request, 64 connections -> segment, ga4".into(),
            spool: "disk",
            special: Special::default(),
            destinations: two.clone(),
            load: browser,
        });
        out.push(Scenario {
            id: "2-paced".into(),
            title: "browser paced at 15,000 requests/s (half the 30k target)".into(),
            spool: "disk",
            special: Special::default(),
            destinations: two,
            load: LoadSpec {
                rate: Some(15_000.0),
                ..browser
            },
        });
    }
    {
        out.push(Scenario {
            id: "3".into(),
            title: "scenario 1 with the tealium stand-in never answering".into(),
            spool: "disk",
            special: Special::default(),
            destinations: KINDS.iter().map(|k| (*k, *k == Kind::Tealium)).collect(),
            load: batches,
        });
    }
    {
        out.push(Scenario {
            id: "3-paced".into(),
            title: "scenario 3 paced at 2,000 requests/s (100,000 events/s)".into(),
            spool: "disk",
            special: Special::default(),
            destinations: KINDS.iter().map(|k| (*k, *k == Kind::Tealium)).collect(),
            load: LoadSpec {
                rate: Some(2_000.0),
                ..batches
            },
        });
    }
    {
        for n in [1usize, 4, 16] {
            out.push(Scenario {
                id: format!("4-{n}"),
                title: format!("cost growth: scenario 1 with {n} destination(s)"),
                spool: "disk",
                special: Special::default(),
                destinations: (0..n).map(|i| (KINDS[i % 4], false)).collect(),
                load: batches,
            });
        }
    }
    {
        // Round-trip scenarios: meant for `--vendor-latency-ms 100 --vendor-jitter-ms 40
        // --defaults` (`--scenarios rt`).
        let three = vec![
            (Kind::Segment, false),
            (Kind::Ga4, false),
            (Kind::Webhook, false),
        ];
        out.push(Scenario {
            id: "rt-full".into(),
            title: "full job: NDJSON x50 -> segment, ga4, webhook".into(),
            spool: "disk",
            special: Special::default(),
            destinations: three.clone(),
            load: batches,
        });
        out.push(Scenario {
            id: "rt-full-memory".into(),
            title: "rt-full with the memory spool (ingest not bound by disk commits)".into(),
            spool: "memory",
            special: Special::default(),
            destinations: three.clone(),
            load: batches,
        });
        let mut four = three.clone();
        four.push((Kind::Tealium, false));
        out.push(Scenario {
            id: "rt-tealium".into(),
            title: "full job with tealium at its rate limit (backlog on disk)".into(),
            spool: "disk",
            special: Special {
                rate_limited: Some(Kind::Tealium),
                ..Special::default()
            },
            destinations: four,
            load: batches,
        });
        let paced = LoadSpec {
            rate: Some(1_000.0),
            ..batches
        };
        out.push(Scenario {
            id: "rt-slow".into(),
            title: "the webhook slows to 2 s from 30% to 60% of the load, paced at 50,000 events/s"
                .into(),
            spool: "disk",
            special: Special {
                slow: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three.clone(),
            load: paced,
        });
        out.push(Scenario {
            id: "rt-429".into(),
            title: "the webhook answers 429 (Retry-After: 1) to 30% of requests, paced at 50,000 events/s"
                .into(),
            spool: "disk",
            special: Special {
                refusing: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three.clone(),
            load: paced,
        });
        out.push(Scenario {
            id: "rt-429-10k".into(),
            title:
                "rt-429 paced at 10,000 events/s: a backlog that fits the webhook's 256 MB budget"
                    .into(),
            spool: "disk",
            special: Special {
                refusing: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three,
            load: LoadSpec {
                rate: Some(200.0),
                ..batches
            },
        });
    }
    // `--scenarios 1,2-paced` keeps "1" with its variants ("1-paced") and "2-paced".
    out.retain(|s| {
        which.is_empty()
            || which
                .iter()
                .any(|w| s.id == *w || s.id.starts_with(&format!("{w}-")))
    });
    out
}

// ---------------------------------------------------------------------------------------
// Output

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.1}"),
        _ => "-".into(),
    }
}

fn print_table(reports: &[Report], machine: &str) {
    println!("\n{machine}\n");
    println!(
        "| scenario | accepted ev/s | req/s | ingest p50/p99 ms | destination | delivered ev/s | delivered/expected | e2e p50/p99 ms | peak RSS MB | CPU s |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in reports {
        for (i, d) in r.destinations.iter().enumerate() {
            let head = if i == 0 {
                format!(
                    "| {} | {:.0} | {:.0} | {:.2} / {:.2} |",
                    r.id, r.accepted_per_s, r.requests_per_s, r.ingest_p50_ms, r.ingest_p99_ms
                )
            } else {
                "| | | | |".to_string()
            };
            let mut check = if d.hung {
                format!("{} / hung", d.delivered)
            } else if d.delivered == d.expected {
                format!("{} / {} ok", d.delivered, d.expected)
            } else {
                format!("{} / {} MISSING", d.delivered, d.expected)
            };
            if d.expected > 0 && !d.hung {
                let _ = write!(
                    check,
                    "; {:.1}% in 5 s",
                    100.0 * d.within_5s as f64 / d.expected as f64
                );
            }
            if d.backlog > 0 {
                let _ = write!(check, "; backlog {}", d.backlog);
            }
            if d.refused > 0 {
                let _ = write!(check, "; 429s {}", d.refused);
            }
            if let Some(peak) = d.concurrency.iter().map(|c| c.1).reduce(f64::max) {
                let _ = write!(check, "; limit ≤ {peak:.0}");
            }
            for (what, n) in &d.losses {
                let _ = write!(check, " ({what} {n})");
            }
            let tail = if i == 0 {
                format!("{:.1} | {:.2} |", r.peak_rss_mb, r.cpu_seconds)
            } else {
                " | |".to_string()
            };
            println!(
                "{head} {} | {:.0} | {check} | {} / {} | {tail}",
                d.name,
                d.events_per_s,
                fmt_ms(d.e2e_p50_ms),
                fmt_ms(d.e2e_p99_ms)
            );
        }
    }
    println!();
    for r in reports {
        println!(
            "scenario {}: {} — {} requests ({} failed), {} events accepted in {:.1} s, delivery finished {:.1} s after the load",
            r.id, r.title, r.requests, r.failed_requests, r.accepted, r.load_seconds, r.drain_seconds
        );
    }
}

fn report_json(reports: &[Report], machine: &str, options: Options) -> Value {
    json!({
        "machine": machine,
        "relay": relay_binary(),
        "destination_concurrency": if options.defaults { json!("shipped defaults") } else { json!(CONCURRENCY) },
        "vendor_latency_ms": options.vendor_latency.as_millis() as u64,
        "vendor_jitter_ms": options.vendor_jitter.as_millis() as u64,
        "scenarios": reports.iter().map(|r| json!({
            "id": r.id,
            "title": r.title,
            "connections": r.load.connections,
            "events_per_request": r.load.events_per_request,
            "paced_requests_per_second": r.load.rate,
            "load_seconds": r.load_seconds,
            "requests": r.requests,
            "failed_requests": r.failed_requests,
            "events_accepted": r.accepted,
            "accepted_events_per_second": r.accepted_per_s,
            "requests_per_second": r.requests_per_s,
            "ingest_latency_ms": {"p50": r.ingest_p50_ms, "p99": r.ingest_p99_ms},
            "all_delivered": r.all_delivered,
            "delivery_finished_after_load_seconds": r.drain_seconds,
            "relay_peak_rss_mb": r.peak_rss_mb,
            "relay_cpu_seconds": r.cpu_seconds,
            "slow_window_seconds": r.slow_window.map(|(a, b)| json!([a, b])),
            "relay_cpu_us_per_event": if r.accepted > 0 { r.cpu_seconds * 1e6 / r.accepted as f64 } else { 0.0 },
            "destinations": r.destinations.iter().map(|d| json!({
                "name": d.name,
                "type": d.kind.name(),
                "hung": d.hung,
                "expected_events": d.expected,
                "delivered_events": d.delivered,
                "requests_received": d.requests,
                "relay_losses": d.losses.iter().map(|(k, v)| json!({"what": k, "events": v})).collect::<Vec<_>>(),
                "delivered_events_per_second": d.events_per_s,
                "delivered_within_5s_of_load_end": d.within_5s,
                "delivered_share_within_5s": if d.expected > 0 { d.within_5s as f64 / d.expected as f64 } else { 1.0 },
                "refused_on_purpose_429": d.refused,
                "backlog_at_end": d.backlog,
                "concurrency_series": d.concurrency.iter().map(|(t, l, r)| json!([t, l, r])).collect::<Vec<_>>(),
                "e2e_latency_ms": {"p50": d.e2e_p50_ms, "p99": d.e2e_p99_ms},
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn machine_state() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}); before the run: {}",
        run("uptime", &[])
    )
}

struct Args {
    json: Option<PathBuf>,
    duration: Duration,
    settle: Duration,
    scenarios: Vec<String>,
    /// `queue.max_events` of every destination; unset keeps the default (100,000).
    queue: Option<usize>,
    options: Options,
}

fn parse_args() -> Args {
    let mut args = Args {
        json: None,
        duration: Duration::from_secs(10),
        settle: Duration::from_secs(30),
        scenarios: Vec::new(),
        queue: None,
        options: Options {
            vendor_latency: Duration::ZERO,
            vendor_jitter: Duration::ZERO,
            defaults: false,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = it.next().map(PathBuf::from),
            "--duration" => {
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
                args.duration = Duration::from_secs_f64(secs);
            }
            "--relay" => {
                if let Some(path) = it.next() {
                    std::env::set_var("PLAYRELAY_BENCH_RELAY", path);
                }
            }
            "--queue" => args.queue = it.next().and_then(|s| s.parse().ok()),
            "--vendor-latency-ms" => {
                let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                args.options.vendor_latency = Duration::from_millis(ms);
            }
            "--vendor-jitter-ms" => {
                let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                args.options.vendor_jitter = Duration::from_millis(ms);
            }
            "--defaults" => args.options.defaults = true,
            "--settle" => {
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(30.0);
                args.settle = Duration::from_secs_f64(secs);
            }
            "--quick" => args.duration = Duration::from_secs(3),
            "--scenarios" => {
                args.scenarios = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            // `cargo bench` passes --bench; filters and other flags are not ours.
            _ => {}
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let mut machine = machine_state();
    if let Some(n) = args.queue {
        let _ = write!(machine, "; every destination: queue.max_events = {n}");
    }
    let o = args.options;
    let _ = write!(
        machine,
        "; vendors answer in {} ± {} ms; {}",
        o.vendor_latency.as_millis(),
        o.vendor_jitter.as_millis(),
        if o.defaults {
            "shipped defaults (only endpoints set)".to_string()
        } else {
            format!("concurrency = {CONCURRENCY}, rate limits lifted")
        }
    );
    eprintln!("{machine}");
    eprintln!("relay: {}", relay_binary());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let template = Arc::new(Template::new());
    let mut reports = Vec::new();
    for scenario in scenarios(&args.scenarios, args.duration) {
        eprintln!("running scenario {}: {}", scenario.id, scenario.title);
        let report = runtime.block_on(run_scenario(
            &scenario,
            template.clone(),
            args.settle,
            args.queue,
            args.options,
        ));
        eprintln!(
            "  accepted {:.0} events/s, delivered {}",
            report.accepted_per_s,
            report
                .destinations
                .iter()
                .map(|d| format!("{} {:.0}/s", d.name, d.events_per_s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        reports.push(report);
    }
    print_table(&reports, &machine);
    if let Some(path) = &args.json {
        let value = report_json(&reports, &machine, args.options);
        let text = serde_json::to_string_pretty(&value).expect("json");
        std::fs::write(path, text).expect("write the JSON report");
        eprintln!("wrote {}", path.display());
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
}
