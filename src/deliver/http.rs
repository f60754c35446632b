//! The outbound HTTP client: one pooled hyper client with rustls (ring), HTTP/1.1 and
//! HTTP/2 by ALPN, shared by every destination.

use crate::dest::{VendorRequest, VendorResponse};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Where outbound TLS gets its trusted roots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots, built in: works in a scratch container.
    #[default]
    Webpki,
    /// The operating system's store.
    System,
}

/// The fewest idle connections kept per host.
const MIN_IDLE_PER_HOST: usize = 16;

/// How much of a vendor's answer is kept (for findings, logs and dead letters).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("reading the answer failed: {0}")]
    Body(String),
    #[error("invalid request: {0}")]
    Build(String),
}

impl SendError {
    /// The `status` label of `destination_responses` when there was no answer.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::Timeout(_) => "timeout",
            SendError::Connect(_) => "connect_error",
            _ => "error",
        }
    }

    /// Whether sending again may help. A request that could not even be built never
    /// reached the vendor and would fail the same way again: not retried, and not held
    /// against the vendor's breaker.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Timeout(_)
            | SendError::Connect(_)
            | SendError::Request(_)
            | SendError::Body(_) => true,
            SendError::Build(_) => false,
        }
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up outbound TLS: {0}")]
pub struct TlsSetupError(String);

impl HttpClient {
    /// `idle_per_host`: connections kept open per vendor host between requests; sized
    /// to the most requests a destination may have in flight, so a steady load at the
    /// concurrency limit reuses its connections instead of opening new ones.
    pub fn new(roots: TlsRoots, idle_per_host: usize) -> Result<HttpClient, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match roots {
            TlsRoots::Webpki => builder
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| TlsSetupError(e.to_string()))?,
            TlsRoots::System => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| TlsSetupError(e.to_string()))?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle_per_host.max(MIN_IDLE_PER_HOST))
            .build(connector);
        Ok(HttpClient { client })
    }

    /// Sends one request and reads the answer, all within `timeout_ms`.
    pub async fn send(
        &self,
        request: &VendorRequest,
        timeout_ms: u64,
    ) -> Result<VendorResponse, SendError> {
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(request.url.as_str());
        if let Some(headers) = builder.headers_mut() {
            headers.extend(request.headers.clone());
        }
        let outgoing = builder
            .body(Full::new(request.body.clone()))
            .map_err(|e| SendError::Build(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(outgoing).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(error_chain(&e))
                } else {
                    SendError::Request(error_chain(&e))
                }
            })?;
            let (parts, body) = response.into_parts();
            // Keep the start of a large answer; the rest is drained, not stored.
            let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Bytes::new(),
                Err(e) => return Err(SendError::Body(e.to_string())),
            };
            Ok(VendorResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout_ms)),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_not_retryable() {
        let client = HttpClient::new(TlsRoots::Webpki, 1).expect("client");
        let request = VendorRequest {
            method: Method::POST,
            url: "http://127.0.0.1:9/v1/<batch>".into(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            events: vec![0],
        };
        let error = client.send(&request, 1000).await.expect_err("not a URI");
        assert!(matches!(error, SendError::Build(_)), "{error}");
        assert!(!error.retryable());
        for passing in [
            SendError::Timeout(1),
            SendError::Connect("refused".into()),
            SendError::Request("reset".into()),
            SendError::Body("cut short".into()),
        ] {
            assert!(passing.retryable(), "{passing}");
        }
    }
}
