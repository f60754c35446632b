//! Ingest's own settings: sources and their keys, inbound TLS, trusted proxies,
//! per-client rate limits, and the checks only ingest knows how to make;
//! `crate::config` reads them from routes.toml and places each error.

use crate::dest::Secret;
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::path::PathBuf;

/// `[sources.NAME]`: who may post events, from where, and how fast.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Ingest keys; a request presenting one of them is from this source. Empty: the
    /// source takes requests that present no key (at most one source may).
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// Browser origins (`https://player.example.com`) allowed to post; `"*"` for any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Requests per second per key (for a keyless source: for all its traffic).
    #[serde(default)]
    pub rate_limit: Option<IngestRateLimit>,
}

/// A steady rate with a burst allowance, for ingest.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IngestRateLimit {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// What is wrong with one of ingest's values; the loader adds file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestConfigError {
    #[error("an ingest key must be at least {MIN_KEY_CHARS} characters")]
    ShortKey,
    #[error("{0:?} is not an origin: write scheme://host[:port], no path (or \"*\")")]
    Origin(String),
    #[error("requests_per_second and burst must be greater than 0")]
    ZeroRate,
}

/// The shortest ingest key taken, in bytes: a shorter one is too easy to guess.
pub const MIN_KEY_CHARS: usize = 16;

/// Whether `key` may be an ingest key.
pub fn check_key(key: &str) -> Result<(), IngestConfigError> {
    if key.len() < MIN_KEY_CHARS {
        return Err(IngestConfigError::ShortKey);
    }
    Ok(())
}

impl IngestRateLimit {
    /// A zero rate or burst would refuse everything: leave the limit out instead.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        if self.requests_per_second == 0 || self.burst == Some(0) {
            return Err(IngestConfigError::ZeroRate);
        }
        Ok(())
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second).max(1)
    }
}

/// `[server.tls]`: serve ingest over HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let network = canonical(network);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: prefix must be 0-{max}")),
            },
        };
        Ok(Cidr { network, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, lower case, no path. `*`: any.
pub fn normalize_origin(origin: &str) -> Result<String, IngestConfigError> {
    if origin == "*" {
        return Ok(origin.to_string());
    }
    let bad = || IngestConfigError::Origin(origin.to_string());
    let uri: http::Uri = origin.parse().map_err(|_| bad())?;
    let scheme = uri.scheme_str().ok_or_else(bad)?;
    let authority = uri.authority().ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https")
        || origin.ends_with('/')
        || uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        || authority.as_str().contains('@')
    {
        return Err(bad());
    }
    Ok(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keys_and_rates_are_checked_where_ingest_uses_them() {
        assert_eq!(
            normalize_origin("HTTPS://Player.Example.com:8443").as_deref(),
            Ok("https://player.example.com:8443")
        );
        assert_eq!(normalize_origin("*").as_deref(), Ok("*"));
        for bad in [
            "player.example.com",
            "https://a.example/",
            "https://a.example/x",
            "ftp://a.example",
            "https://u@a.example",
        ] {
            assert_eq!(
                normalize_origin(bad),
                Err(IngestConfigError::Origin(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            check_key("0123456789abcde"),
            Err(IngestConfigError::ShortKey)
        );
        assert_eq!(check_key("0123456789abcdef"), Ok(()));
        let limit = |requests_per_second, burst| IngestRateLimit {
            requests_per_second,
            burst,
        };
        assert_eq!(limit(0, None).validate(), Err(IngestConfigError::ZeroRate));
        assert_eq!(
            limit(5, Some(0)).validate(),
            Err(IngestConfigError::ZeroRate)
        );
        assert_eq!(limit(5, None).validate(), Ok(()));
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let block: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(block.contains("10.1.200.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        let one: Cidr = "127.0.0.1".parse().expect("single");
        assert!(one.contains("::ffff:127.0.0.1".parse().expect("mapped")));
        let v6: Cidr = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8:1::9".parse().expect("ip")));
        assert!(!v6.contains("10.1.0.1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten".parse::<Cidr>().is_err());
    }
}

/// What one ingest request may be, from `[server]`: read from the routing snapshot on
/// each request, so a reload applies to the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub body_read_timeout_ms: u64,
    pub max_events_per_request: usize,
    pub json: crate::event::JsonLimits,
}
