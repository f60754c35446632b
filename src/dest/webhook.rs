//! `type = "webhook"`: the events as they came (plus `received_at`), batched as a JSON
//! array or NDJSON, to any URL.

use super::secrets::{is_secret_name, url_secrets};
use super::{
    BatchLimits, EventNames, Refusal, Translate, Translation, VendorRequest, VendorResponse,
    Verdict,
};
use crate::event::Event;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};
use serde::Deserialize;
use std::collections::BTreeMap;
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
}

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
}

/// Errors building a webhook from a config already checked by `config::validate`.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("headers.{0}: not a valid header name")]
    HeaderName(String),
    #[error("headers.{0}: not a valid header value")]
    HeaderValue(String),
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
        })
    }

    fn request(&self, body: Vec<u8>, events: Vec<usize>) -> VendorRequest {
        VendorRequest {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: Bytes::from(body),
            events,
        }
    }
}

/// About what the next request's body will take: the events as sent plus
/// `received_at`, up to the limits. Allocating the full `max_bytes` (512 KB by default)
/// for every batch cost more than the copying itself.
fn estimated_body(events: &[&Event], limits: BatchLimits) -> usize {
    let bytes: usize = events
        .iter()
        .take(limits.max_events)
        .map(|e| e.raw_json().len() + 48)
        .sum();
    (bytes + 2).min(limits.max_bytes.saturating_add(1))
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
    out
}

impl Translate for WebhookTranslator {
    fn translate(&self, events: &[&Event], _sent_at: OffsetDateTime) -> Translation {
        let mut translation = Translation::default();
        let (open, sep, close): (&[u8], &[u8], &[u8]) = match self.encoding {
            BodyEncoding::JsonArray => (b"[", b",", b"]"),
            BodyEncoding::Ndjson => (b"", b"", b""),
        };
        let mut body = Vec::new();
        let mut in_body = Vec::new();
        let mut item = Vec::with_capacity(1024);
        for (index, event) in events.iter().enumerate() {
            item.clear();
            if let Err(unnamed) =
                encode_passthrough(event, &self.names, self.pass_properties, &mut item)
            {
                translation
                    .refused
                    .push(Refusal::unnamed(index, event.event_type(), unnamed, ""));
                continue;
            }
            if self.encoding == BodyEncoding::Ndjson {
                item.push(b'\n');
            }
            let framing = open.len() + close.len();
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
            let extra = if in_body.is_empty() { 0 } else { sep.len() };
            let full_by_bytes =
                body.len() + extra + item.len() + close.len() > self.limits.max_bytes;
            if !in_body.is_empty() && (full_by_bytes || in_body.len() >= self.limits.max_events) {
                body.extend_from_slice(close);
                let full = std::mem::take(&mut body);
                translation
                    .requests
                    .push(self.request(full, std::mem::take(&mut in_body)));
            }
            if in_body.is_empty() {
                body.reserve(estimated_body(&events[index..], self.limits));
                body.extend_from_slice(open);
            } else {
                body.extend_from_slice(sep);
            }
            body.extend_from_slice(&item);
            in_body.push(index);
        }
        if !in_body.is_empty() {
            body.extend_from_slice(close);
            translation.requests.push(self.request(body, in_body));
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

/// The event as the client sent it, with `received_at`, the destination's name for its
/// type, and without `properties` unless they pass through.
pub fn encode_passthrough(
    event: &Event,
    names: &EventNames,
    pass_properties: bool,
    out: &mut Vec<u8>,
) -> Result<(), super::names::Unnamed> {
    let name = names.resolve_passthrough(event.event_type())?;
    let renamed = name != event.event_type();
    let strip_properties = !pass_properties && event.body.properties.is_some();
    if !renamed && !strip_properties {
        event.write_json(out);
        return Ok(());
    }
    let mut value = event.to_json_value();
    if let Some(map) = value.as_object_mut() {
        if renamed {
            map.insert("type".into(), serde_json::Value::String(name.to_string()));
        }
        if strip_properties {
            map.remove("properties");
        }
    }
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &value);
    Ok(())
}
