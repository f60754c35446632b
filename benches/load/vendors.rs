//! Vendors and what the stand-ins count.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use memchr::memmem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Concurrency of every destination (requests in flight), the same in every scenario.
pub(crate) const CONCURRENCY: usize = 16;
/// Rate limits set far above anything reachable here, so the vendor defaults (Tealium
/// 100 events/s, Segment 1000 requests/s) do not cap the benchmark.
const NO_RATE_LIMIT: &str =
    "rate_limit = { events_per_second = 1000000000, requests_per_second = 1000000000 }";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Segment,
    Ga4,
    Tealium,
    Webhook,
}

pub(crate) const KINDS: [Kind; 4] = [Kind::Segment, Kind::Ga4, Kind::Tealium, Kind::Webhook];

impl Kind {
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn items(self, event_type: &str) -> u64 {
        let n = u64::from(self.maps(event_type));
        match self {
            Kind::Segment if event_type == "playback.completed" => 2 * n,
            _ => n,
        }
    }

    pub(crate) fn maps(self, event_type: &str) -> bool {
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
    pub(crate) fn toml(
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
    pub(crate) fn markers(self) -> (&'static str, u64, &'static str) {
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
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<AtomicU64>,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: (0..120_001).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record_ms(&self, ms: u64) {
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
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

pub(crate) struct StandIn {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) hang: bool,
    pub(crate) events: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// Nanoseconds since the harness epoch of the last request that carried events.
    pub(crate) last_ns: AtomicU64,
    pub(crate) latency: Histogram,
    pub(crate) epoch: Instant,
    /// How long every answer is held, and how much it varies (uniform, ±).
    pub(crate) hold: Duration,
    pub(crate) jitter: Duration,
    /// Between these times (ns since the epoch) every answer is held `SLOW` instead.
    pub(crate) slow_from_ns: AtomicU64,
    pub(crate) slow_to_ns: AtomicU64,
    /// Share of requests answered 429 with `Retry-After: 1` (their events not counted).
    pub(crate) refuse_share: f64,
    pub(crate) refused: AtomicU64,
    /// Events received by 5 s after the load's end.
    pub(crate) within_5s: AtomicU64,
}

/// What a slowing vendor holds each answer while slow.
pub(crate) const SLOW: Duration = Duration::from_secs(2);

/// How a stand-in answers, beyond counting.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Behaviour {
    pub(crate) hold: Duration,
    pub(crate) jitter: Duration,
    pub(crate) refuse_share: f64,
}

impl StandIn {
    pub(crate) async fn start(
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
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    // hyper alone, no router: the stand-ins share the box with the relay,
                    // so every cycle they spend is one the relay does not get.
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        stand_in
    }

    async fn answer(&self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let (status, (header, value), text) = self.receive(&body).await;
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header, hyper::header::HeaderValue::from_static(value));
        response
    }

    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn receive(
        &self,
        body: &[u8],
    ) -> (
        hyper::StatusCode,
        (&'static str, &'static str),
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
                hyper::StatusCode::TOO_MANY_REQUESTS,
                ("retry-after", "1"),
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
        (hyper::StatusCode::OK, ("x-stand-in", "1"), "{}")
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn parse_int(s: &[u8]) -> u64 {
    s.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (the relay's and the generator's form) to Unix ms; 0 if
/// it is not that form.
pub(crate) fn parse_rfc3339_ms(s: &[u8]) -> u64 {
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
