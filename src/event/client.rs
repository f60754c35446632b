//! What the relay knows about the request an event came in, stamped on each event at
//! ingest like `received_at`: the viewer's address and the client's send time.

use super::Event;
use http::{HeaderMap, Uri};
use std::net::IpAddr;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The request header with the client's send time.
pub const SENT_AT_HEADER: &str = "x-sent-at";
/// The query parameter with the client's send time, for `sendBeacon`, which cannot set
/// headers (as `?key=` does for the ingest key).
pub const SENT_AT_QUERY: &str = "sent_at";

/// Stamps every event of one request with the client's address and send time.
pub fn stamp_client(events: &mut [Event], ip: Option<IpAddr>, headers: &HeaderMap, uri: &Uri) {
    let sent_at = client_sent_at(headers, uri);
    for event in events {
        event.client_ip = ip;
        event.client_sent_at = sent_at;
    }
}

/// The client's send time: RFC 3339 or Unix epoch milliseconds (`Date.now()`), from
/// `X-Sent-At`, else `?sent_at=`. A value that is neither is ignored: the events are
/// then taken as they are, with no skew correction.
pub fn client_sent_at(headers: &HeaderMap, uri: &Uri) -> Option<OffsetDateTime> {
    if let Some(value) = headers.get(SENT_AT_HEADER) {
        return value.to_str().ok().and_then(parse_sent_at);
    }
    uri.query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == SENT_AT_QUERY)
            .then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
            .and_then(|v| parse_sent_at(&v))
    })
}

fn parse_sent_at(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    if let Ok(millis) = text.parse::<i64>() {
        return OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok();
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_query_in_rfc3339_or_epoch_millis() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/v1/events?key=k&sent_at=2026-01-15T10%3A20%3A30.000Z"
            .parse()
            .expect("uri");
        let from_query = client_sent_at(&headers, &uri).expect("query");
        assert_eq!(from_query.unix_timestamp(), 1_768_472_430);
        headers.insert(SENT_AT_HEADER, "1768472431000".parse().expect("value"));
        let from_header = client_sent_at(&headers, &uri).expect("header");
        assert_eq!(from_header.unix_timestamp(), 1_768_472_431);
        headers.insert(SENT_AT_HEADER, "yesterday".parse().expect("value"));
        assert_eq!(client_sent_at(&headers, &uri), None);
    }
}
