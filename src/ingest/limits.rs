//! Per-client rate limits, keyed by the client's address, and the client address
//! itself: the peer, or what `X-Forwarded-For` says when the peer is a trusted proxy.

use super::config::{canonical, Cidr, IngestRateLimit};
use axum::http::HeaderMap;
use governor::DefaultKeyedRateLimiter;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Past this many tracked clients, idle ones are forgotten (checked every 4096 requests).
const MAX_TRACKED: usize = 100_000;

pub struct Clients {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<Cidr>,
    checks: AtomicU64,
}

impl Clients {
    pub fn new(limit: Option<IngestRateLimit>, trusted: Vec<Cidr>) -> Clients {
        Clients {
            limiter: limit.map(|l| DefaultKeyedRateLimiter::keyed(super::auth::quota(l))),
            trusted,
            checks: AtomicU64::new(0),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?.ip());
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }

    /// `Err(wait)` when the client is over its limit.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.limiter, client) else {
            return Ok(());
        };
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
            && limiter.len() > MAX_TRACKED
        {
            limiter.retain_recent();
        }
        limiter.check_key(&rate_key(ip)).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }
}

/// IPv6 clients are limited per /64: one host usually holds the whole block.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // `1.2.3.4:5678` or `[::1]:5678`
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis() as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().expect("value"));
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let clients = Clients::new(None, vec!["10.0.0.0/8".parse().expect("cidr")]);
        let proxy: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let stranger: SocketAddr = "198.51.100.9:4000".parse().expect("addr");
        let h = headers("203.0.113.1, 198.51.100.2, 10.0.0.7");
        assert_eq!(
            clients.client_ip(Some(proxy), &h),
            Some("198.51.100.2".parse().expect("ip"))
        );
        assert_eq!(
            clients.client_ip(Some(stranger), &h),
            Some("198.51.100.9".parse().expect("ip"))
        );
        assert_eq!(
            clients.client_ip(Some(proxy), &headers("garbage")),
            Some("10.0.0.5".parse().expect("ip"))
        );
        assert_eq!(
            clients.client_ip(Some(proxy), &HeaderMap::new()),
            Some(proxy.ip())
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
