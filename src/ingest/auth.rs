//! Ingest keys: which source a request comes from. Keys are compared as SHA-256
//! digests in constant time, every configured key each time, so neither the position
//! of a mismatch nor a key's length shows in the answer's timing.

use super::config::{IngestRateLimit, SourceConfig};
use axum::http::{header::AUTHORIZATION, HeaderMap, Uri};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The header a client may put its key in when it cannot use `Authorization`.
pub const KEY_HEADER: &str = "x-playrelay-key";

pub struct Source {
    pub name: Arc<str>,
    digests: Vec<[u8; 32]>,
    /// Lower-case origins, or `*`.
    pub allowed_origins: Vec<String>,
    /// One per key (one in all for a keyless source).
    limiters: Vec<DefaultDirectRateLimiter>,
}

impl Source {
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin_allowed(&self.allowed_origins, origin)
    }
}

pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A source, and which of its credentials (key index; 0 for a keyless source).
    Source { source: usize, credential: usize },
    /// No sources are configured: anyone may post.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
}

impl AuthError {
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing ingest key: send Authorization: Bearer <key>, an X-Playrelay-Key header or a key query parameter",
            AuthError::Unknown => "unknown ingest key",
        }
    }
}

pub struct Sources {
    pub sources: Vec<Source>,
    keyless: Option<usize>,
}

impl Sources {
    pub fn new(config: &BTreeMap<String, SourceConfig>) -> Sources {
        let mut sources = Vec::with_capacity(config.len());
        let mut keyless = None;
        for (i, (name, source)) in config.iter().enumerate() {
            if source.keys.is_empty() {
                keyless = Some(i);
            }
            let credentials = source.keys.len().max(1);
            sources.push(Source {
                name: Arc::from(name.as_str()),
                digests: source
                    .keys
                    .iter()
                    .map(|k| digest(k.expose().as_bytes()))
                    .collect(),
                allowed_origins: source.allowed_origins.clone(),
                limiters: source
                    .rate_limit
                    .map(|limit| (0..credentials).map(|_| limiter(limit)).collect())
                    .unwrap_or_default(),
            });
        }
        let summary: Vec<String> = sources
            .iter()
            .map(|s| format!("{} ({} keys)", s.name, s.digests.len()))
            .collect();
        if sources.is_empty() {
            tracing::warn!("ingest is open: no [sources] are configured, so anyone who reaches the listener can post events");
        } else if let Some(i) = keyless {
            tracing::warn!(source = %sources[i].name, "ingest is open for requests without a key: they are taken as this source");
        } else {
            tracing::info!(sources = %summary.join(", "), "ingest requires a key");
        }
        Sources { sources, keyless }
    }

    pub fn is_open(&self) -> bool {
        self.sources.is_empty()
    }

    /// The source a key belongs to; a request without a key goes to the keyless source.
    pub fn identify(&self, key: Option<&str>) -> Result<Identity, AuthError> {
        if self.sources.is_empty() {
            return Ok(Identity::Open);
        }
        let Some(key) = key else {
            return self
                .keyless
                .map(|source| Identity::Source {
                    source,
                    credential: 0,
                })
                .ok_or(AuthError::Missing);
        };
        let presented = digest(key.as_bytes());
        let mut found = subtle::Choice::from(0u8);
        let mut source_at = 0u32;
        let mut credential_at = 0u32;
        for (s, source) in self.sources.iter().enumerate() {
            for (k, stored) in source.digests.iter().enumerate() {
                let equal = presented.ct_eq(stored);
                found |= equal;
                source_at.conditional_assign(&(s as u32), equal);
                credential_at.conditional_assign(&(k as u32), equal);
            }
        }
        if bool::from(found) {
            Ok(Identity::Source {
                source: source_at as usize,
                credential: credential_at as usize,
            })
        } else {
            Err(AuthError::Unknown)
        }
    }

    pub fn source(&self, identity: Identity) -> Option<&Source> {
        match identity {
            Identity::Source { source, .. } => self.sources.get(source),
            Identity::Open => None,
        }
    }

    /// The per-key limit: `Err(wait)` when the credential is over it.
    pub fn check_rate(&self, identity: Identity) -> Result<(), std::time::Duration> {
        let Identity::Source { source, credential } = identity else {
            return Ok(());
        };
        let Some(limiter) = self
            .sources
            .get(source)
            .and_then(|s| s.limiters.get(credential))
        else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }

    /// Every origin some source allows: what a preflight without a key is judged by.
    pub fn any_allows_origin(&self, origin: &str) -> bool {
        self.sources.iter().any(|s| s.allows_origin(origin))
    }
}

pub fn limiter(limit: IngestRateLimit) -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota(limit))
}

pub fn quota(limit: IngestRateLimit) -> Quota {
    let rate = NonZeroU32::new(limit.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst()).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key a request presents: `Authorization: Bearer`, then `X-Playrelay-Key`, then
/// the `key` query parameter (for `navigator.sendBeacon`, which cannot set headers).
pub fn presented_key(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            return Some(value[7..].trim().to_string());
        }
    }
    if let Some(value) = headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_string());
    }
    query_key(uri)
}

pub fn query_key(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == "key").then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::Secret;

    fn sources(keyless: bool) -> Sources {
        let mut config = BTreeMap::new();
        config.insert(
            "tv".to_string(),
            SourceConfig {
                keys: vec![
                    Secret::new("tv-key-0123456789"),
                    Secret::new("tv-key-second-one"),
                ],
                allowed_origins: vec![],
                rate_limit: None,
            },
        );
        config.insert(
            "web".to_string(),
            SourceConfig {
                keys: if keyless {
                    vec![]
                } else {
                    vec![Secret::new("web-key-0123456789")]
                },
                allowed_origins: vec!["https://player.example".into()],
                rate_limit: None,
            },
        );
        Sources::new(&config)
    }

    #[test]
    fn keys_name_their_source_and_credential() {
        let s = sources(false);
        assert_eq!(
            s.identify(Some("tv-key-second-one")),
            Ok(Identity::Source {
                source: 0,
                credential: 1
            })
        );
        assert_eq!(
            s.identify(Some("web-key-0123456789")),
            Ok(Identity::Source {
                source: 1,
                credential: 0
            })
        );
        assert_eq!(
            s.identify(Some("web-key-012345678")),
            Err(AuthError::Unknown)
        );
        assert_eq!(s.identify(Some("")), Err(AuthError::Unknown));
        assert_eq!(s.identify(None), Err(AuthError::Missing));
        let open = sources(true);
        assert_eq!(
            open.identify(None),
            Ok(Identity::Source {
                source: 1,
                credential: 0
            })
        );
        assert_eq!(open.identify(Some("nope")), Err(AuthError::Unknown));
        assert_eq!(
            Sources::new(&BTreeMap::new()).identify(None),
            Ok(Identity::Open)
        );
    }

    #[test]
    fn keys_come_from_bearer_header_or_query() {
        let uri: Uri = "/v1/events?a=1&key=k%2B1+2".parse().expect("uri");
        assert_eq!(
            presented_key(&HeaderMap::new(), &uri).as_deref(),
            Some("k+1 2")
        );
        let mut headers = HeaderMap::new();
        headers.insert(KEY_HEADER, "from-header".parse().expect("value"));
        assert_eq!(
            presented_key(&headers, &uri).as_deref(),
            Some("from-header")
        );
        headers.insert(AUTHORIZATION, "Bearer from-bearer".parse().expect("value"));
        assert_eq!(
            presented_key(&headers, &uri).as_deref(),
            Some("from-bearer")
        );
        let plain: Uri = "/v1/events".parse().expect("uri");
        assert_eq!(presented_key(&HeaderMap::new(), &plain), None);
    }
}
