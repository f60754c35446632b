//! CORS for browser players: a preflight (`OPTIONS`) is answered for origins a source
//! allows, and answers to allowed origins carry `Access-Control-Allow-Origin`.
//! `navigator.sendBeacon` posts `text/plain` without a preflight; its origin is still
//! checked against the source's list.

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Request headers a cross-origin player may send.
pub const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "authorization",
    super::auth::KEY_HEADER,
];

/// The preflight's verdict, given whether the origin is allowed.
pub fn preflight(
    headers: &HeaderMap,
    origin: &HeaderValue,
    allowed: bool,
) -> Result<Response, String> {
    let origin_text = origin.to_str().unwrap_or("?");
    if !allowed {
        return Err(format!("origin {origin_text:?} is not allowed"));
    }
    let method = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !method.eq_ignore_ascii_case("POST") {
        return Err(format!(
            "method {method:?} is not allowed: events are POSTed"
        ));
    }
    let requested = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for name in requested
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if !ALLOWED_HEADERS.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "request header {name:?} is not allowed (allowed: {})",
                ALLOWED_HEADERS.join(", ")
            ));
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "content-type, content-encoding, authorization, x-playrelay-key, x-sent-at",
        ),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    vary(h);
    Ok(response)
}

/// An `OPTIONS` that is not a CORS preflight.
pub fn options() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    response
}

/// Marks an answer as readable by `origin`.
pub fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
    vary(headers);
}

fn vary(headers: &mut HeaderMap) {
    headers.insert(
        VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
}
