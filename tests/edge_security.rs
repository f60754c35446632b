//! The edge: ingest keys, CORS, rate limits, slow clients, TLS, hostile input, and the
//! per-destination privacy rules, against the real relay on 127.0.0.1.
// Timeouts of real sockets against the real server run in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB_KEY: &str = "web-key-0123456789abcdef";
const TV_KEY: &str = "tv-key-0123456789abcdef";
const WEB_ORIGIN: &str = "https://player.example.com";

fn event(n: usize) -> Value {
    json!({
        "event_id": format!("0190f6d2-7c3a-7b1e-9a1e-{n:012}"),
        "type": "playback.paused",
        "timestamp": "2026-01-15T10:20:30.123Z",
        "session": {"id": "s1"},
        "user": {"anonymous_id": "a-1"},
    })
}

fn events(range: std::ops::Range<usize>) -> String {
    Value::Array(range.map(event).collect()).to_string()
}

/// Two keyed sources, each with its own webhook; `extra_server` goes into [server].
fn two_sources(web: &StandIn, tv: &StandIn, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}

[sources.web]
keys = ["{WEB_KEY}"]
allowed_origins = ["{WEB_ORIGIN}"]

[sources.tv]
keys = ["{TV_KEY}"]

[destinations.web_hook]
type = "webhook"
endpoint = "{}"
batch = {{ max_wait_ms = 10 }}

[destinations.tv_hook]
type = "webhook"
endpoint = "{}"
batch = {{ max_wait_ms = 10 }}

[[routes]]
name = "web"
match = {{ sources = ["web"] }}
to = ["web_hook"]

[[routes]]
name = "tv"
match = {{ sources = ["tv"], types = ["playback.*"] }}
to = ["tv_hook"]
"#,
        web.url("/web"),
        tv.url("/tv")
    )
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    match send(addr, "GET", "/metrics", &[], "").await.body {
        Value::String(text) => text,
        other => panic!("metrics: {other}"),
    }
}

fn json_post<'a>(extra: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    headers
}

#[tokio::test]
async fn wrong_and_missing_keys_get_401_and_nothing_reaches_a_destination() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;

    let missing = send(addr, "POST", "/v1/events", &json_post(&[]), events(0..1)).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing.body["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("missing ingest key"),
        "{}",
        missing.body
    );
    let wrong_key = "web-key-0123456789abcdeX";
    let bearer = format!("Bearer {wrong_key}");
    let wrong = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer)]),
        events(0..1),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, json!({"error": "unknown ingest key"}));
    let wrong_query = send(
        addr,
        "POST",
        &format!("/v1/events?key={wrong_key}"),
        &json_post(&[]),
        events(0..1),
    )
    .await;
    assert_eq!(wrong_query.status, 401);

    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"unauthorized\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&text, "playrelay_ingest_requests_total{status=\"401\"}"),
        3.0
    );
    assert!(!text.contains(wrong_key) && !text.contains(WEB_KEY));

    // The right key, by each of the three ways, is accepted.
    let bearer = format!("Bearer {WEB_KEY}");
    for (path, headers) in [
        (
            "/v1/events".to_string(),
            json_post(&[("authorization", bearer.as_str())]),
        ),
        (
            "/v1/events".to_string(),
            json_post(&[("x-playrelay-key", WEB_KEY)]),
        ),
        (format!("/v1/events?key={WEB_KEY}"), json_post(&[])),
    ] {
        let answer = send(addr, "POST", &path, &headers, events(0..1)).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 3);
    assert!(tv.requests().is_empty());
}

#[tokio::test]
async fn a_key_for_another_source_posts_as_that_source_and_keeps_to_its_origins() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let bearer = format!("Bearer {TV_KEY}");
    // Event fields cannot steer a request: these are forwarded, not followed.
    let mut sneaky = event(1);
    sneaky["endpoint"] = json!(web.url("/web"));
    sneaky["destination"] = json!("web_hook");
    sneaky["source"] = json!("web");
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer)]),
        sneaky.to_string(),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The tv key from the web player's origin: tv allows no browser origin.
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer), ("origin", WEB_ORIGIN)]),
        events(2..3),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.body,
        json!({"error": "origin \"https://player.example.com\" is not allowed to post as source \"tv\""})
    );
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"origin_not_allowed\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    let delivered = tv.delivered_events();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["event_id"], sneaky["event_id"]);
    assert!(web.requests().is_empty(), "the web route took a tv event");
    assert!(tv.requests().iter().all(|r| r.uri.path() == "/tv"));
}

#[tokio::test]
async fn preflight_answers_an_allowed_origin_and_refuses_another() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let allowed = send(
        addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("origin", WEB_ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(allowed.status, 204);
    let h = &allowed.headers;
    assert_eq!(h["access-control-allow-origin"], WEB_ORIGIN);
    assert!(h["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("authorization"));
    assert!(h["vary"].to_str().expect("ascii").contains("origin"));

    let refused = send(
        addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body,
        json!({"error": "origin \"https://evil.example\" is not allowed"})
    );
    assert!(refused.headers.get("access-control-allow-origin").is_none());
    // An allowed origin with the tv key in the URL: tv allows no origin.
    let other_source = send(
        addr,
        "OPTIONS",
        &format!("/v1/events?key={TV_KEY}"),
        &[
            ("origin", WEB_ORIGIN),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(other_source.status, 403);
    // The real request from the allowed origin can read its answer.
    let post = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[
            ("authorization", &format!("Bearer {WEB_KEY}")),
            ("origin", WEB_ORIGIN),
        ]),
        events(0..1),
    )
    .await;
    assert_eq!(post.status, 202);
    assert_eq!(post.headers["access-control-allow-origin"], WEB_ORIGIN);
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(&text, "playrelay_ingest_refused_total{reason=\"cors\"}"),
        2.0
    );
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 1);
}

#[tokio::test]
async fn send_beacon_text_plain_with_key_in_the_query_is_accepted() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let path = format!("/v1/events?key={WEB_KEY}");
    let beacon = [
        ("content-type", "text/plain;charset=UTF-8"),
        ("origin", WEB_ORIGIN),
    ];
    let array = send(addr, "POST", &path, &beacon, events(0..2)).await;
    assert_eq!(array.status, 202, "{}", array.body);
    assert_eq!(array.body, json!({"accepted": 2, "rejected": []}));
    assert_eq!(array.headers["access-control-allow-origin"], WEB_ORIGIN);
    let ndjson = format!("{}\n{}\n", event(2), event(3));
    let lines = send(addr, "POST", &path, &beacon, ndjson).await;
    assert_eq!(lines.body, json!({"accepted": 2, "rejected": []}));
    let single = send(
        addr,
        "POST",
        &path,
        &beacon,
        serde_json::to_string_pretty(&event(4)).expect("json"),
    )
    .await;
    assert_eq!(single.body, json!({"accepted": 1, "rejected": []}));
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 5);
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_while_another_client_is_unaffected() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "trusted_proxies = [\"127.0.0.1/32\"]\nper_client_rate_limit = { requests_per_second = 1, burst = 2 }";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    let post = |xff: &'static str, n: usize| async move {
        let headers = [
            ("content-type", "application/json"),
            ("x-playrelay-key", WEB_KEY),
            ("x-forwarded-for", xff),
        ];
        send(addr, "POST", "/v1/events", &headers, events(n..n + 1)).await
    };
    assert_eq!(post("203.0.113.5", 0).await.status, 202);
    assert_eq!(post("203.0.113.5", 1).await.status, 202);
    let limited = post("203.0.113.5", 2).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(
        limited.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("rate limit"),
        "{}",
        limited.body
    );
    // Another client behind the same proxy has its own budget.
    assert_eq!(post("198.51.100.7", 3).await.status, 202);
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"rate_limited_client\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    let ids: Vec<Value> = web
        .delivered_events()
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the refused request's event must not be delivered"
    );
    assert!(!ids.contains(&event(2)["event_id"]));
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_while_other_keys_are_unaffected() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let toml = two_sources(&web, &tv, "").replace(
        &format!("keys = [\"{TV_KEY}\"]"),
        &format!("keys = [\"{TV_KEY}\"]\nrate_limit = {{ requests_per_second = 1, burst = 1 }}"),
    );
    let relay = start_relay(&toml).await;
    let addr = relay.local_addr;
    let tv_post = json_post(&[("x-playrelay-key", TV_KEY)]);
    assert_eq!(
        send(addr, "POST", "/v1/events", &tv_post, events(0..1))
            .await
            .status,
        202
    );
    let limited = send(addr, "POST", "/v1/events", &tv_post, events(1..2)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "1");
    let web_post = json_post(&[("x-playrelay-key", WEB_KEY)]);
    assert_eq!(
        send(addr, "POST", "/v1/events", &web_post, events(2..3))
            .await
            .status,
        202
    );
    relay.shutdown().await;
    assert_eq!(tv.delivered_events().len(), 1);
    assert_eq!(web.delivered_events().len(), 1);
}

#[tokio::test]
async fn a_slow_loris_client_is_cut_off_and_a_slow_body_gets_408() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "header_read_timeout_ms = 300\nbody_read_timeout_ms = 300";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;

    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: relay\r\n")
        .await
        .expect("write");
    let mut closed = false;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if socket
            .write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(
        closed,
        "the relay kept a slow-loris connection open for {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "cut off only after {elapsed:?}"
    );

    // Headers in time, then a body that never finishes.
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nX-Playrelay-Key: {WEB_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"event_id\":"
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to a stalled body within 3 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_ms"), "{answer}");
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    assert!(web.requests().is_empty());
}

#[tokio::test]
async fn tls_ingest_with_a_test_certificate_speaks_http2() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write key");
    let server = format!(
        "tls = {{ cert_file = {:?}, key_file = {:?} }}",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let relay = start_relay(&two_sources(&web, &tv, &server)).await;
    let port = relay.local_addr.port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let request = http::Request::post(format!("https://localhost:{port}/v1/events"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {WEB_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(events(0..2))))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answer in time")
        .expect("TLS request");
    assert_eq!(response.status(), 202);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        json!({"accepted": 2, "rejected": []})
    );

    // Plain HTTP to the TLS port gets no answer.
    let mut socket = tokio::net::TcpStream::connect(relay.local_addr)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("alive"));
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 2);
}

#[tokio::test]
async fn metrics_live_on_the_admin_listener_only_when_it_is_set() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "admin_listen = \"127.0.0.1:0\"")).await;
    let admin = relay.admin_addr.expect("admin listener");
    assert_eq!(
        send(relay.local_addr, "GET", "/metrics", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        send(relay.local_addr, "GET", "/healthz", &[], "")
            .await
            .status,
        200
    );
    let text = metrics_text(admin).await;
    assert!(text.contains("playrelay_events_received_total"), "{text}");
    assert_eq!(
        send(admin, "POST", "/v1/events", &json_post(&[]), events(0..1))
            .await
            .status,
        404
    );
    relay.shutdown().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn hostile_input_gets_a_clean_4xx_and_nothing_is_delivered() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "json = { max_depth = 8, max_string_bytes = 1024, max_fields = 64, max_array_items = 100 }\nmax_events_per_request = 50";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    let with = |extra: Value| {
        let mut e = event(1);
        if let (Value::Object(m), Value::Object(x)) = (&mut e, extra) {
            m.extend(x);
        }
        e.to_string()
    };
    let deep = format!("{}{}{}", "{\"a\":".repeat(20), "1", "}".repeat(20));
    let many_fields: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("f{i}"), json!(i))).collect();
    let mut invalid_utf8 = with(json!({"properties": {"x": "AB"}})).into_bytes();
    let at = invalid_utf8
        .windows(2)
        .position(|w| w == b"AB")
        .expect("marker");
    invalid_utf8[at] = 0xff;
    let duplicate = with(json!({})).replacen("\"type\":", "\"type\":\"ad.started\",\"type\":", 1);
    let huge_tiny_array = format!("[{}]", vec!["0"; 200_000].join(","));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "deep nesting",
            with(json!({"properties": serde_json::from_str::<Value>(&deep).expect("deep")}))
                .into_bytes(),
            400,
            "max_depth",
        ),
        (
            "long string",
            with(json!({"properties": {"x": "y".repeat(5000)}})).into_bytes(),
            400,
            "max_string_bytes",
        ),
        (
            "too many fields",
            with(json!({"properties": many_fields})).into_bytes(),
            400,
            "max_fields",
        ),
        (
            "huge nested array",
            with(json!({"properties": {"x": vec![0; 5000]}})).into_bytes(),
            400,
            "max_array_items",
        ),
        (
            "huge array of tiny events",
            huge_tiny_array.into_bytes(),
            413,
            "more than 50 events",
        ),
        (
            "too many events",
            events(0..51).into_bytes(),
            413,
            "more than 50 events",
        ),
        (
            "duplicate keys",
            duplicate.into_bytes(),
            400,
            "duplicate key \"type\"",
        ),
        ("invalid utf-8", invalid_utf8, 400, "not valid JSON"),
        (
            "number out of range",
            with(json!({}))
                .replacen("{", "{\"big\":1e999,", 1)
                .into_bytes(),
            400,
            "number out of range",
        ),
        (
            "recursion bomb",
            "[".repeat(100_000).into_bytes(),
            400,
            "max_depth",
        ),
    ];
    let key = [
        ("x-playrelay-key", WEB_KEY),
        ("content-type", "application/json"),
    ];
    for (name, body, status, needle) in cases {
        let answer = send(addr, "POST", "/v1/events", &key, body).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{name}: {error}");
    }
    // A number too big for its typed field rejects that event only.
    let negative = with(json!({"playback": {"position_ms": -1}}));
    let answer = send(addr, "POST", "/v1/events", &key, negative).await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["accepted"], 0);
    assert!(answer.body["rejected"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .starts_with("playback.position_ms"));
    // A gzip bomb: 1 KB-ish that inflates past the cap.
    let bomb = gzip(&vec![b' '; 9 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &[key[0], key[1], ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("inflates"));
    // Headers larger than max_header_bytes (default 16 KiB).
    let big = "x".repeat(40_000);
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &[key[0], key[1], ("x-big", &big)],
        events(0..1),
    )
    .await;
    assert_eq!(answer.status, 431);

    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"limit_exceeded\"}"
        ),
        9.0
    );
    relay.shutdown().await;
    assert!(
        web.requests().is_empty(),
        "hostile input reached a destination"
    );
}

fn privacy_config(hook: &StandIn, dead_letters: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = {:?}
hash_salt = "a-salt-of-at-least-16-bytes"

[destinations.ads]
type = "webhook"
endpoint = "{}"
batch = {{ max_wait_ms = 10 }}
consent = "advertising"
drop_fields = ["properties.email"]
hash_fields = ["user.user_id"]
ip = "anonymize"

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["ads"]
"#,
        dead_letters.display().to_string(),
        hook.url("/ads")
    )
}

#[tokio::test]
async fn consent_false_is_not_sent_and_is_counted_as_dropped() {
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&privacy_config(&hook, dir.path())).await;
    let with_consent = |n: usize, consent: Value| {
        let mut e = event(n);
        e["context"] = json!({"consent": consent});
        e
    };
    let body = Value::Array(vec![
        with_consent(0, json!({"advertising": false, "analytics": true})),
        with_consent(1, json!({"advertising": true})),
        event(2),
        with_consent(3, json!({"analytics": false})),
    ]);
    let answer = post_json(relay.local_addr, body.to_string()).await;
    assert_eq!(answer.body, json!({"accepted": 4, "rejected": []}));
    let delivered = hook.wait_for_events(3, Duration::from_secs(5)).await;
    let text = metrics_text(relay.local_addr).await;
    relay.shutdown().await;
    let ids: Vec<&str> = delivered
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&event(0)["event_id"].as_str().expect("id")));
    assert_eq!(
        metric(
            &text,
            "playrelay_destination_events_dropped_total{destination=\"ads\",reason=\"consent\"}"
        ),
        1.0
    );
    Accounts::read(&text, "ads").assert_balanced();
}

#[tokio::test]
async fn hashed_dropped_and_anonymized_fields_never_reach_the_destination() {
    use hmac::Mac;
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&privacy_config(&hook, dir.path())).await;
    let mut e = event(7);
    e["user"] = json!({"user_id": "alice@example.com"});
    e["properties"] = json!({"email": "alice@example.com", "plan": "gold"});
    e["context"] = json!({"ip": "203.0.113.77"});
    let answer = post_json(relay.local_addr, e.to_string()).await;
    assert_eq!(answer.body, json!({"accepted": 1, "rejected": []}));
    let delivered = hook.wait_for_events(1, Duration::from_secs(5)).await;
    relay.shutdown().await;
    assert_eq!(delivered.len(), 1);
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(b"a-salt-of-at-least-16-bytes").expect("key");
    mac.update(b"alice@example.com");
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let got = &delivered[0];
    assert_eq!(got["user"]["user_id"], expected);
    assert!(got["properties"].get("email").is_none());
    assert_eq!(got["properties"]["plan"], "gold");
    assert_eq!(got["context"]["ip"], "203.0.113.0");
    let raw: Vec<u8> = hook
        .requests()
        .iter()
        .flat_map(|r| r.body.to_vec())
        .collect();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("alice") && !raw.contains("203.0.113.77") && !raw.contains("a-salt"),
        "{raw}"
    );
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_503_with_retry_after() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "max_in_flight_requests = 1\nbody_read_timeout_ms = 2000";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    // One request holds the only slot while its body trickles in.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nX-Playrelay-Key: {WEB_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    // Wait until it holds the slot: a keyless probe is refused 401 (after the slot check,
    // delivering nothing) while the slot is free, and 503 once it is taken.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = send(addr, "POST", "/v1/events", &json_post(&[]), events(0..1)).await;
        if probe.status == 503 {
            break;
        }
        assert_eq!(probe.status, 401, "{}", probe.body);
        assert!(
            Instant::now() < deadline,
            "the slow request never held the slot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("x-playrelay-key", WEB_KEY)]),
        events(0..1),
    )
    .await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.headers["retry-after"], "1");
    assert!(busy.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("too many requests"));
    drop(slow);
    // The slot is free again once the slow request is gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let answer = send(
            addr,
            "POST",
            "/v1/events",
            &json_post(&[("x-playrelay-key", WEB_KEY)]),
            events(1..2),
        )
        .await;
        if answer.status != 503 || Instant::now() > deadline {
            break answer.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 202);
    let text = metrics_text(addr).await;
    assert!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"overloaded\"}"
        ) >= 1.0
    );
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 1);
}
