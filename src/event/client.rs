//! What the relay knows about the request an event came in, stamped on each event at
//! ingest like `received_at`: the viewer's address and the client's send time (the
//! `X-Sent-At` header, the `sent_at` query parameter, or the event's `sent_at` field).

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

/// Stamps every event of one request with the client's address and send time (the
/// request's, else the event's own `sent_at`).
pub fn stamp_client(events: &mut [Event], ip: Option<IpAddr>, headers: &HeaderMap, uri: &Uri) {
    let sent_at = client_sent_at(headers, uri);
    for event in events {
        event.client_ip = ip;
        event.client_sent_at = sent_at.or_else(|| {
            event
                .body
                .sent_at
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        });
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

    #[test]
    fn an_absurd_send_time_does_not_overflow() {
        let text = r#"{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"playback.paused","timestamp":"9999-12-31T23:59:59Z","session":{"id":"s1"},"user":{"anonymous_id":"a-1"}}"#;
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).expect("json");
        let received = OffsetDateTime::parse("2026-01-15T10:20:31Z", &Rfc3339).expect("time");
        let mut events = vec![Event::from_json(&raw, received).expect("valid")];
        let mut headers = HeaderMap::new();
        headers.insert(
            SENT_AT_HEADER,
            "0000-01-01T00:00:00Z".parse().expect("value"),
        );
        stamp_client(&mut events, None, &headers, &Uri::from_static("/"));
        assert!(events[0].client_sent_at.is_some());
        assert_eq!(events[0].corrected_timestamp(), received);
    }

    #[test]
    fn an_events_own_sent_at_is_taken_when_the_request_gives_none() {
        let text = r#"{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"playback.paused","timestamp":"2026-01-15T10:25:30.000Z","sent_at":"2026-01-15T10:25:31.000Z","session":{"id":"s1"},"user":{"anonymous_id":"a-1"}}"#;
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).expect("json");
        let received = OffsetDateTime::parse("2026-01-15T10:20:31Z", &Rfc3339).expect("time");
        let mut events = vec![Event::from_json(&raw, received).expect("valid")];
        let uri = Uri::from_static("/v1/events");
        stamp_client(&mut events, None, &HeaderMap::new(), &uri);
        // The device clock is 5 minutes fast: the event happened at 10:20:30.
        assert_eq!(
            events[0].corrected_timestamp(),
            OffsetDateTime::parse("2026-01-15T10:20:30Z", &Rfc3339).expect("time")
        );
    }
}
