//! Destinations: one file per vendor, each a pure translator from normalized events to
//! the vendor's HTTP requests, plus how to read the vendor's answer. No I/O here: the
//! delivery layer (`crate::deliver`) sends what these functions build.

pub mod engagement;
pub mod file;
pub mod ga4;
pub mod names;
pub mod pack;
pub mod secrets;
pub mod segment;
pub mod tealium;
pub mod vendors;
pub mod webhook;

pub use names::{EventNames, NameOverride};
pub use secrets::{redact, redact_url, Secret, MIN_SECRET_CHARS};
pub use vendors::{ConfigProblem, DestinationKind, Vendor, VendorConfig, VENDORS};

use crate::event::Event;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use time::OffsetDateTime;

/// The destination's `batch` settings, which translators must also respect when they
/// split a batch into vendor requests (on top of the vendor's own caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// One request a destination wants sent.
#[derive(Debug, Clone)]
pub struct VendorRequest {
    pub method: Method,
    /// The full URL, secrets included (GA4 puts its api_secret in the query).
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Indices, into the slice given to [`Translate::translate`], of the events it carries.
    pub events: Vec<usize>,
}

/// What happens to an event a translator will not put in any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Left out on purpose (unmapped type, disabled in config): counted as dropped.
    Dropped,
    /// Cannot be sent as it is (too big, too old, no identity): dead-lettered.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub disposition: Disposition,
    /// A short metric label: `unmapped`, `disabled`, `oversize`, `too_old`, `missing_client_id`, …
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    pub fn dropped(index: usize, reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            index,
            disposition: Disposition::Dropped,
            reason,
            detail: detail.into(),
        }
    }

    /// A type the destination leaves out; `vendor` names it in the detail ("" for none).
    pub fn unnamed(index: usize, event_type: &str, unnamed: names::Unnamed, vendor: &str) -> Self {
        let reason = unnamed.reason();
        let detail = if vendor.is_empty() {
            format!("{event_type} is {reason}")
        } else {
            format!("{event_type} is {reason} for {vendor}")
        };
        Refusal::dropped(index, reason, detail)
    }

    /// `dropped` or `refused (dead-lettered)`, as `translate` and `test` say it.
    pub fn what(&self) -> &'static str {
        match self.disposition {
            Disposition::Dropped => "dropped",
            Disposition::Refused => "refused (dead-lettered)",
        }
    }

    pub fn refused(index: usize, reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            index,
            disposition: Disposition::Refused,
            reason,
            detail: detail.into(),
        }
    }
}

/// Something left out of an event that was still sent (GA4's params past 25): the
/// event is delivered, and what it lost is counted and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub index: usize,
    /// A short metric label: `params_cut`.
    pub reason: &'static str,
    /// How many things were left out (params), for `dropped_params_total`.
    pub count: usize,
    pub detail: String,
}

/// The result of translating a batch: every input index ends up in exactly one request
/// or in exactly one refusal; `notes` say what sent events lost on the way.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub requests: Vec<VendorRequest>,
    pub refused: Vec<Refusal>,
    pub notes: Vec<Note>,
}

/// What the vendor's answer means for the events of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// A passing failure: send again later.
    Retry,
    /// The vendor called the request bad: sending it again cannot help.
    Reject,
}

/// The answer as the delivery layer read it.
#[derive(Debug, Clone)]
pub struct VendorResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub trait Translate: Send + Sync + 'static {
    /// Builds the requests for a batch. Nothing is read from the clock, the network or
    /// the disk: the send time is passed in. A translator may remember what it sent
    /// before (GA4's engagement clock, `engagement.rs`), so one destination keeps one
    /// translator for its life and `translate` uses one for its whole input.
    fn translate(&self, events: &[&Event], sent_at: OffsetDateTime) -> Translation;

    /// Whether events of this type can make a request at all, from the type alone
    /// (false: every one is `Dropped` as `unmapped` or `disabled`). Lets the router
    /// leave such events out of the destination's queue instead of queueing them only
    /// for the translator to drop them.
    fn sends_type(&self, _event_type: &str) -> bool {
        true
    }

    /// How to read the vendor's answer. The default is the common HTTP rule.
    fn classify(&self, response: &VendorResponse) -> Verdict {
        default_classify(response.status)
    }

    /// Findings a vendor reports in a successful answer (GA4's validation server).
    fn findings(&self, _response: &VendorResponse) -> Vec<String> {
        Vec::new()
    }

    /// Values that must never be shown: they are replaced by `***` in `translate`
    /// output, dry-run files, logs and dead letters.
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The reason a vendor states for refusing a request, from its `X-Error` header
/// (Tealium sends one with every 400; others may too).
pub fn stated_reason(response: &VendorResponse) -> Option<String> {
    response
        .headers
        .get("x-error")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// 2xx delivered; 408, 429 and 5xx retried; any other status is a rejection.
pub fn default_classify(status: StatusCode) -> Verdict {
    if status.is_success() {
        Verdict::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Verdict::Retry
    } else {
        Verdict::Reject
    }
}

/// Why a destination's translator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The vendor's own error (`WebhookError`, `SegmentError`, …), which names the key.
    #[error(transparent)]
    Vendor(Box<dyn std::error::Error + Send + Sync>),
    #[error("type: a {0} destination does not send HTTP requests")]
    NotHttp(&'static str),
}

impl BuildError {
    pub fn vendor(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        BuildError::Vendor(Box::new(error))
    }
}

/// A request as text: method and URL, headers, blank line, body; secrets as `***`,
/// found by position (query values, URL credentials, header values), never by
/// searching the text. What `playrelay translate` prints and `dry_run` writes.
pub fn render_request(request: &VendorRequest, secrets: &[String]) -> String {
    let mut out = format!(
        "{} {}\n",
        request.method,
        secrets::redact_url(&request.url, secrets)
    );
    for (name, value) in &request.headers {
        let shown = secrets::redact_header(name.as_str(), value, secrets);
        out.push_str(&format!("{name}: {shown}\n"));
    }
    out.push('\n');
    let gzipped = request
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = if gzipped {
        let mut plain = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&request.body[..]);
        match std::io::Read::read_to_end(&mut decoder, &mut plain) {
            Ok(_) => {
                out.push_str(&format!(
                    "# gzip body of {} bytes, shown decompressed\n",
                    request.body.len()
                ));
                plain
            }
            Err(_) => request.body.to_vec(),
        }
    } else {
        request.body.to_vec()
    };
    out.push_str(&secrets::redact_json_strings(
        &String::from_utf8_lossy(&body),
        secrets,
    ));
    out.push_str("\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    const FIXTURE: &str = include_str!("../../tests/fixtures/sessions.ndjson");

    /// `sends_type` must say exactly which events the translator drops for their type.
    #[test]
    fn sends_type_agrees_with_translate() {
        let toml = r#"
[server]
listen = "127.0.0.1:0"
[destinations.segment]
type = "segment"
write_key = "wk-12345678"
events = { "playback.heartbeat" = false }
[destinations.ga4]
type = "ga4"
measurement_id = "G-1"
api_secret = "api-secret-1"
events = { "session.started" = "video_session" }
[destinations.tealium]
type = "tealium"
account = "a"
profile = "p"
[destinations.webhook]
type = "webhook"
endpoint = "http://127.0.0.1:9/"
events = { "volume.changed" = false }
[[routes]]
name = "all"
match = { types = ["*"] }
to = ["segment", "ga4", "tealium", "webhook"]
"#;
        let config = config::load_str(toml, Path::new("t.toml"), &|_| None).expect("config");
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let mut events: Vec<Event> = FIXTURE
            .lines()
            .map(|line| {
                let raw: Box<serde_json::value::RawValue> =
                    serde_json::from_str(line).expect("json");
                Event::from_json(&raw, at).expect("valid")
            })
            .collect();
        let custom = r#"{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"custom.chapter","timestamp":"2026-01-15T10:20:30.123Z","session":{"id":"s1"},"user":{"anonymous_id":"a-1"}}"#;
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(custom).expect("json");
        events.push(Event::from_json(&raw, at).expect("valid"));
        for (name, destination) in &config.destinations {
            let translator = destination.translator().expect("translator");
            for event in &events {
                let translation = translator.translate(&[event], event.timestamp);
                let dropped = translation
                    .refused
                    .iter()
                    .any(|r| r.disposition == Disposition::Dropped);
                assert_eq!(
                    translator.sends_type(event.event_type()),
                    !dropped,
                    "{name}: {}",
                    event.event_type()
                );
            }
        }
    }
}
