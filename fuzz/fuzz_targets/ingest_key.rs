//! Any `Authorization`, `X-Playrelay-Key` header or query string: finding the presented
//! ingest key never panics.
#![no_main]

use http::{HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use playrelay::ingest::auth::{presented_key, query_key};

fuzz_target!(|data: &[u8]| {
    let empty = Uri::from_static("/v1/events");
    if let Ok(value) = HeaderValue::from_bytes(data) {
        for name in ["authorization", "x-playrelay-key"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            let _ = presented_key(&headers, &empty);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uri) = format!("/v1/events?{text}").parse::<Uri>() {
            let _ = query_key(&uri);
            let _ = presented_key(&HeaderMap::new(), &uri);
        }
    }
});
