//! Any `X-Forwarded-For` from a trusted proxy: the client address is always found (the
//! proxy's own when the header is useless), and reading it never panics.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use playrelay::ingest::limits::Clients;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let trusted = vec!["127.0.0.0/8".parse().expect("cidr")];
    let clients = Clients::new(None, trusted);
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", value);
    let peer = "127.0.0.1:4000".parse().expect("peer");
    assert!(clients.client_ip(Some(peer), &headers).is_some());
});
