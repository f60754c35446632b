//! `type = "webhook"`: the events as they came (plus `received_at`, `schema` and
//! `source`), batched as a JSON array (optionally in an envelope) or NDJSON, to any
//! URL; with a batch id header, optionally signed (Stripe-style), gzipped, or reduced
//! to a flat selection of fields.

use super::secrets::{is_secret_name, url_secrets};
use super::vendors::{self, ConfigProblem, Vendor, VendorConfig, VendorDefaults};
use super::{
    BatchLimits, BuildError, EventNames, Refusal, Translate, Translation, VendorRequest,
    VendorResponse, Verdict,
};
use crate::event::{Event, Rfc3339Millis};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write as _;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    #[default]
    JsonArray,
    Ndjson,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    #[default]
    Post,
    Put,
    Patch,
}

/// Keys of `[destinations.NAME]` for `type = "webhook"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub endpoint: String,
    #[serde(default)]
    pub method: WebhookMethod,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub encoding: BodyEncoding,
    /// Statuses that are retried, on top of none: when set, replaces the default rule
    /// (408, 429, 5xx) for non-2xx answers.
    #[serde(default)]
    pub retry_statuses: Option<Vec<u16>>,
    /// Wrap each request's events as `{"batch_id", "sent_at", "events": [...]}`
    /// (`encoding = "json_array"` only).
    #[serde(default)]
    pub envelope: bool,
    /// Sign each request: `X-Playrelay-Signature: t=<unix seconds>,v1=<hex
    /// HMAC-SHA-256 of "<t>.<body>">`, the body before any gzip.
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Send each event as a flat object of these keys only, each the value at a JSON
    /// pointer (RFC 6901) into the event as it would be sent, or null.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, String>>,
}

/// Batches of 500 events and 512 KB, under the common 1 MB body limit of web servers;
/// the user's own server: 128 requests in flight, raise it with `max_concurrency`.
pub static VENDOR: Vendor = Vendor {
    type_name: "webhook",
    defaults: VendorDefaults {
        batch: BatchLimits {
            max_events: 500,
            max_bytes: 512 * 1024,
        },
        max_concurrency: 128,
        rate_limit: None,
    },
    parse: vendors::parse::<WebhookConfig>,
    example: r#"endpoint = "https://collect.example.com/events""#,
};

impl VendorConfig for WebhookConfig {
    fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        vendors::boxed(WebhookTranslator::new(self, names, properties, limits))
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        configured_secrets(self)
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Err(message) = check_http_url(&self.endpoint) {
            problems.push(ConfigProblem::new("endpoint", message));
        }
        // Each bad `fields` entry at its own line: found by its pointer's text.
        for (key, pointer) in self.fields.iter().flatten() {
            if let Some(problem) = field_problem(key, pointer) {
                problems.push(ConfigProblem {
                    key: format!("fields.{key}"),
                    message: problem,
                    near: Some(toml::Value::String(pointer.clone()).to_string()),
                });
            }
        }
        for (header, value) in &self.headers {
            if HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems.push(ConfigProblem::new(
                    "headers",
                    format!("{header:?} is not a valid header name"),
                ));
            } else if HeaderValue::from_str(value).is_err() {
                problems.push(ConfigProblem::new(
                    "headers",
                    format!("the value of {header} is not a valid header value"),
                ));
            }
        }
        problems
    }
}

fn check_http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        )),
    }
}

/// The header with the request's batch id; the same events give the same id.
pub const BATCH_ID_HEADER: &str = "x-playrelay-batch-id";
/// The batch id again, under the name of the IETF idempotency-key draft.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The Stripe-style signature header (`t=…,v1=…`).
pub const SIGNATURE_HEADER: &str = "x-playrelay-signature";

pub struct WebhookTranslator {
    method: Method,
    url: String,
    headers: HeaderMap,
    encoding: BodyEncoding,
    names: EventNames,
    pass_properties: bool,
    limits: BatchLimits,
    retry_statuses: Option<Vec<u16>>,
    secrets: Vec<String>,
    envelope: bool,
    signing_key: Option<Hmac<Sha256>>,
    gzip: bool,
    fields: Option<Vec<(String, String)>>,
}

/// Errors building a webhook from a config already checked by its `validate`.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("headers.{0}: not a valid header name")]
    HeaderName(String),
    #[error("headers.{0}: not a valid header value")]
    HeaderValue(String),
    #[error("envelope: needs encoding = \"json_array\" (an NDJSON body has no envelope)")]
    EnvelopeNdjson,
    #[error("signing_secret: must not be empty")]
    EmptySigningSecret,
    #[error("fields.{key}: {problem}")]
    Field { key: String, problem: String },
}

/// What is wrong with a `fields` entry (its output key and its JSON pointer), if
/// anything: a pointer is `""` (the whole event) or `/`-separated tokens in which `~`
/// is only `~0` or `~1` (RFC 6901).
fn field_problem(key: &str, pointer: &str) -> Option<String> {
    if key.is_empty() {
        return Some("the output key must not be empty".into());
    }
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Some(format!(
            "{pointer:?} is not a JSON pointer: it must start with / (e.g. \"/playback/position_ms\")"
        ));
    }
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0') | Some(b'1')) {
            return Some(format!(
                "{pointer:?} is not a JSON pointer: ~ must be written ~0 and / inside a key ~1"
            ));
        }
    }
    None
}

impl WebhookTranslator {
    pub fn new(
        config: &WebhookConfig,
        names: EventNames,
        pass_properties: bool,
        limits: BatchLimits,
    ) -> Result<Self, WebhookError> {
        let mut headers = HeaderMap::new();
        let content_type = match config.encoding {
            BodyEncoding::JsonArray => "application/json",
            BodyEncoding::Ndjson => "application/x-ndjson",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if config.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if config.envelope && config.encoding == BodyEncoding::Ndjson {
            return Err(WebhookError::EnvelopeNdjson);
        }
        let mut secrets = Vec::new();
        for (name, value) in &config.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| WebhookError::HeaderName(name.clone()))?;
            let mut header_value = HeaderValue::from_str(value)
                .map_err(|_| WebhookError::HeaderValue(name.clone()))?;
            // Headers named like secrets carry tokens: never shown, never indexed by
            // HTTP/2 header compression. Others (`X-Team`) show as they are.
            let secret = is_secret_name(name);
            header_value.set_sensitive(secret);
            headers.insert(header_name, header_value);
            if secret {
                secrets.push(value.clone());
                if let Some((_, token)) = value.split_once(' ') {
                    secrets.push(token.to_string());
                }
            }
        }
        secrets.extend(url_secrets(&config.endpoint).into_iter().map(|(_, v)| v));
        let signing_key = match &config.signing_secret {
            Some(secret) if secret.is_empty() => return Err(WebhookError::EmptySigningSecret),
            Some(secret) => {
                secrets.push(secret.clone());
                // HMAC takes a key of any length.
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()
            }
            None => None,
        };
        let fields = match &config.fields {
            Some(fields) => {
                for (key, pointer) in fields {
                    if let Some(problem) = field_problem(key, pointer) {
                        return Err(WebhookError::Field {
                            key: key.clone(),
                            problem,
                        });
                    }
                }
                Some(fields.iter().map(|(k, p)| (k.clone(), p.clone())).collect())
            }
            None => None,
        };
        let method = match config.method {
            WebhookMethod::Post => Method::POST,
            WebhookMethod::Put => Method::PUT,
            WebhookMethod::Patch => Method::PATCH,
        };
        Ok(WebhookTranslator {
            method,
            url: config.endpoint.clone(),
            headers,
            encoding: config.encoding,
            names,
            pass_properties,
            limits,
            retry_statuses: config.retry_statuses.clone(),
            secrets,
            envelope: config.envelope,
            signing_key,
            gzip: config.gzip,
            fields,
        })
    }

    /// One request from the encoded events of a chunk: framing, batch id, signature,
    /// gzip.
    fn request(
        &self,
        items: &[(usize, Vec<u8>)],
        events: &[&Event],
        sent_at: OffsetDateTime,
    ) -> VendorRequest {
        let batch_id = batch_id(items.iter().map(|(i, _)| events[*i].event_id()));
        let (open, sep, close) = self.framing(&batch_id, sent_at);
        let size: usize = items.iter().map(|(_, item)| item.len() + sep.len()).sum();
        let mut body = Vec::with_capacity(open.len() + size + close.len());
        body.extend_from_slice(open.as_bytes());
        for (n, (_, item)) in items.iter().enumerate() {
            if n > 0 {
                body.extend_from_slice(sep);
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(close);
        let mut headers = self.headers.clone();
        if let Ok(value) = HeaderValue::from_str(&batch_id) {
            headers.insert(BATCH_ID_HEADER, value.clone());
            headers.insert(IDEMPOTENCY_HEADER, value);
        }
        if let Some(key) = &self.signing_key {
            let signature = sign(key, sent_at.unix_timestamp(), &body);
            if let Ok(mut value) = HeaderValue::from_str(&signature) {
                value.set_sensitive(false);
                headers.insert(SIGNATURE_HEADER, value);
            }
        }
        let body = if self.gzip {
            let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
            // Writing into a Vec cannot fail.
            let _ = gz.write_all(&body);
            gz.finish().unwrap_or(body)
        } else {
            body
        };
        VendorRequest {
            method: self.method.clone(),
            url: self.url.clone(),
            headers,
            body: Bytes::from(body),
            events: items.iter().map(|(i, _)| *i).collect(),
        }
    }

    /// What goes before, between and after the events.
    fn framing(
        &self,
        batch_id: &str,
        sent_at: OffsetDateTime,
    ) -> (String, &'static [u8], &'static [u8]) {
        match (self.encoding, self.envelope) {
            (BodyEncoding::Ndjson, _) => (String::new(), b"", b""),
            (BodyEncoding::JsonArray, false) => ("[".into(), b",", b"]"),
            (BodyEncoding::JsonArray, true) => (
                format!(
                    "{{\"batch_id\":\"{batch_id}\",\"sent_at\":\"{}\",\"events\":[",
                    Rfc3339Millis(sent_at)
                ),
                b",",
                b"]}",
            ),
        }
    }

    /// One event as this webhook sends it: as the client sent it plus `received_at`,
    /// `schema` and `source` (or the `fields` selection of that), NDJSON-terminated.
    fn encode(&self, event: &Event, out: &mut Vec<u8>) -> Result<(), super::names::Unnamed> {
        match &self.fields {
            None => encode_passthrough(event, &self.names, self.pass_properties, out)?,
            Some(fields) => {
                let mut full = Vec::with_capacity(event.raw_json().len() + 96);
                encode_passthrough(event, &self.names, self.pass_properties, &mut full)?;
                let value: Value = serde_json::from_slice(&full).unwrap_or(Value::Null);
                let mut flat = Map::new();
                for (key, pointer) in fields {
                    let picked = value.pointer(pointer).cloned().unwrap_or(Value::Null);
                    flat.insert(key.clone(), picked);
                }
                // Serializing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &flat);
            }
        }
        if self.encoding == BodyEncoding::Ndjson {
            out.push(b'\n');
        }
        Ok(())
    }
}

/// The batch id of a request: the first 16 bytes of SHA-256 over its event ids, in
/// hex. The same events always give the same id, so a receiver can drop a retry or a
/// replay it has already taken.
pub fn batch_id<'a>(event_ids: impl Iterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for id in event_ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`.
pub fn sign(key: &Hmac<Sha256>, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_seconds},v1={hex}")
}
/// The secrets in a webhook's config, with the key holding each: header values named
/// like secrets (the token after a scheme such as `Bearer`), the endpoint's
/// credentials and secret-named query values.
pub fn configured_secrets(config: &WebhookConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, value) in &config.headers {
        if is_secret_name(name) {
            let token = value.split_once(' ').map_or(value.as_str(), |(_, t)| t);
            out.push(("headers", token.trim().to_string()));
        }
    }
    for (_, value) in url_secrets(&config.endpoint) {
        out.push(("endpoint", value));
    }
    if let Some(secret) = &config.signing_secret {
        out.push(("signing_secret", secret.clone()));
    }
    out
}

impl Translate for WebhookTranslator {
    fn translate(&self, events: &[&Event], sent_at: OffsetDateTime) -> Translation {
        let mut translation = Translation::default();
        // The framing's size does not depend on the batch id's value, only its length.
        let (open, sep, close) = self.framing(&batch_id(std::iter::empty()), sent_at);
        let framing = open.len() + close.len();
        let mut chunk: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut chunk_bytes = framing;
        for (index, event) in events.iter().enumerate() {
            let mut item = Vec::with_capacity(event.raw_json().len() + 96);
            if let Err(unnamed) = self.encode(event, &mut item) {
                translation
                    .refused
                    .push(Refusal::unnamed(index, event.event_type(), unnamed, ""));
                continue;
            }
            if item.len() + framing > self.limits.max_bytes {
                translation.refused.push(Refusal::refused(
                    index,
                    "oversize",
                    format!(
                        "event is {} bytes, over the batch limit of {} bytes",
                        item.len(),
                        self.limits.max_bytes
                    ),
                ));
                continue;
            }
            let extra = if chunk.is_empty() { 0 } else { sep.len() };
            let full = chunk_bytes + extra + item.len() > self.limits.max_bytes
                || chunk.len() >= self.limits.max_events;
            if !chunk.is_empty() && full {
                translation
                    .requests
                    .push(self.request(&chunk, events, sent_at));
                chunk.clear();
                chunk_bytes = framing;
            }
            chunk_bytes += if chunk.is_empty() { 0 } else { sep.len() } + item.len();
            chunk.push((index, item));
        }
        if !chunk.is_empty() {
            translation
                .requests
                .push(self.request(&chunk, events, sent_at));
        }
        translation
    }

    fn classify(&self, response: &VendorResponse) -> Verdict {
        match &self.retry_statuses {
            Some(retry) if !response.status.is_success() => {
                if retry.contains(&response.status.as_u16()) {
                    Verdict::Retry
                } else {
                    Verdict::Reject
                }
            }
            _ => super::default_classify(response.status),
        }
    }

    fn secrets(&self) -> Vec<String> {
        self.secrets.clone()
    }

    fn sends_type(&self, event_type: &str) -> bool {
        self.names.resolve_passthrough(event_type).is_ok()
    }
}

/// The event as the client sent it, with `received_at`, `schema` (when the client left
/// it out) and `source` (the ingest source, when sources are configured), the
/// destination's name for its type, and without `properties` unless they pass through.
pub fn encode_passthrough(
    event: &Event,
    names: &EventNames,
    pass_properties: bool,
    out: &mut Vec<u8>,
) -> Result<(), super::names::Unnamed> {
    let name = names.resolve_passthrough(event.event_type())?;
    let renamed = name != event.event_type();
    let strip_properties = !pass_properties && event.body.properties.is_some();
    let add_schema = event.body.schema.is_none();
    // A client's own top-level `source` is replaced by the relay's (rare: slow path).
    let client_source = event.source.is_some() && event.raw_json().contains("\"source\"");
    if !renamed && !strip_properties && !client_source {
        let start = out.len();
        event.write_json(out);
        // `write_json` ends with the object's closing brace: the relay's keys go before it.
        if out.last() == Some(&b'}') && out.len() > start {
            out.pop();
            if add_schema {
                out.extend_from_slice(b",\"schema\":\"");
                out.extend_from_slice(crate::event::SCHEMA_VERSION.as_bytes());
                out.push(b'"');
            }
            if let Some(source) = &event.source {
                out.extend_from_slice(b",\"source\":");
                let _ = serde_json::to_writer(&mut *out, &**source);
            }
            out.push(b'}');
        }
        return Ok(());
    }
    let mut value = event.to_json_value();
    if let Some(map) = value.as_object_mut() {
        if renamed {
            map.insert("type".into(), Value::String(name.to_string()));
        }
        if strip_properties {
            map.remove("properties");
        }
        if add_schema {
            map.insert(
                "schema".into(),
                Value::String(crate::event::SCHEMA_VERSION.into()),
            );
        }
        if let Some(source) = &event.source {
            map.insert("source".into(), Value::String(source.to_string()));
        }
    }
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value Python's `hmac.new(b"k-12345678", b"1700000000.{}", sha256)` gives,
    /// as the verification snippet in docs/vendor-mappings.md computes it.
    #[test]
    fn signature_matches_an_independent_hmac() {
        let key = Hmac::<Sha256>::new_from_slice(b"k-12345678").expect("any key length");
        assert_eq!(
            sign(&key, 1_700_000_000, b"{}"),
            "t=1700000000,v1=25ece4a41bc3a4a4277c585a2fe4cc8df222e983aa57c21d9c78593c8af75c79"
        );
    }

    #[test]
    fn pointers_are_checked() {
        assert_eq!(field_problem("id", "/event_id"), None);
        assert_eq!(field_problem("all", ""), None);
        assert_eq!(field_problem("odd", "/a~1b~0c"), None);
        assert!(field_problem("x", "event_id").is_some());
        assert!(field_problem("x", "/a~2").is_some());
        assert!(field_problem("", "/a").is_some());
    }
}
