//! Reading an ingest body: content type, size cap, gzip with a cap on what it inflates to.

use super::config::RequestLimits;
use crate::event::BodyFormat;
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use std::io::Read;

type Refusal = (StatusCode, String);

/// The body's format from its `Content-Type`; `None` for `text/plain` (what
/// `navigator.sendBeacon` sends for a string), decided from the bytes by [`sniff`].
pub fn format(headers: &HeaderMap) -> Result<Option<BodyFormat>, Refusal> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported("missing Content-Type"));
    };
    let value = value.to_str().unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Some(BodyFormat::Json)),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Some(BodyFormat::Ndjson)),
        "text/plain" => Ok(None),
        _ => Err(unsupported(&format!("Content-Type {value:?}"))),
    }
}

/// A `text/plain` body: one JSON value (an event or an array) is JSON; several
/// values, one per line, are NDJSON.
pub fn sniff(bytes: &[u8]) -> BodyFormat {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return BodyFormat::Json;
    }
    let mut values =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    match (values.next(), values.next()) {
        (Some(Ok(_)), Some(_)) => BodyFormat::Ndjson,
        _ => BodyFormat::Json,
    }
}

fn unsupported(what: &str) -> Refusal {
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("{what} is not supported: send application/json (an event or an array), application/x-ndjson or text/plain"),
    )
}

pub async fn read(
    headers: &HeaderMap,
    body: axum::body::Body,
    limits: &RequestLimits,
) -> Result<Bytes, Refusal> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {} bytes", limits.max_body_bytes),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            ))
        }
    };
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") | Some("") => Ok(bytes),
        Some("gzip") | Some("x-gzip") => gunzip(&bytes, limits.max_decompressed_bytes),
        Some(other) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported: use gzip or none"),
        )),
    }
}

fn gunzip(compressed: &[u8], max_bytes: usize) -> Result<Bytes, Refusal> {
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::with_capacity((compressed.len() * 4).min(max_bytes));
    // One byte past the cap tells "exactly at the cap" from "over it".
    match decoder.take(max_bytes as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > max_bytes => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body inflates to more than {max_bytes} bytes"),
        )),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("body is not valid gzip: {e}"),
        )),
    }
}
