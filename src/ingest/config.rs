//! Ingest's own settings: sources and their keys, inbound TLS, trusted proxies,
//! per-client rate limits. `crate::config` reads them from routes.toml and checks them.

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

impl IngestRateLimit {
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

#[cfg(test)]
mod tests {
    use super::*;

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
