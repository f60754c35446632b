//! The edge: ingest keys, CORS, rate limits, slow clients, TLS, hostile input, and the
//! per-destination privacy rules, against the real relay on 127.0.0.1. One test binary,
//! one module per section.
// Timeouts of real sockets against the real server run in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[path = "../common/mod.rs"]
mod common;

mod hostile;
mod keys;
mod limits;
mod privacy;
mod tls;

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
