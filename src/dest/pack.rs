//! The toolkit the JSON vendors (Segment, GA4, Tealium) build requests with: one value
//! type for the fields of an encoded event, the unit conversions they share, and the
//! [`Packer`] that splits encoded events into request bodies under a vendor's limits.
//!
//! A vendor encodes each event into a *unit* (one JSON object, or a few comma-separated
//! ones: Segment's completion sends two items), refuses the units that cannot fit a
//! request alone ([`Limits::fits_alone`]), and pushes the rest through a packer per
//! request group (one per client for GA4, per visitor for Tealium, one for Segment).

use super::VendorRequest;
use crate::event::{PodPosition, Rfc3339Millis};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{HeaderMap, Method};
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write as _;
use std::ops::Range;

/// A field value, borrowed from the event where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Str(&'a str),
    Text(String),
    U(u64),
    F(f64),
    B(bool),
    Null,
    Strs(&'a [String]),
    Time(Rfc3339Millis),
    /// A number from the event's custom properties, as it came.
    Num(&'a serde_json::Number),
}

impl Serialize for Val<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Str(v) => s.serialize_str(v),
            Val::Text(v) => s.serialize_str(v),
            Val::U(v) => s.serialize_u64(*v),
            Val::F(v) => s.serialize_f64(*v),
            Val::B(v) => s.serialize_bool(*v),
            Val::Null => s.serialize_unit(),
            Val::Strs(v) => v.serialize(s),
            Val::Time(v) => v.serialize(s),
            Val::Num(v) => v.serialize(s),
        }
    }
}

/// An event's vendor fields in the order they are written.
pub type Fields<'a> = Vec<(&'static str, Val<'a>)>;

/// Whole seconds from milliseconds, floored.
pub fn seconds(ms: u64) -> u64 {
    ms / 1000
}

/// kbps from bits per second, floored.
pub fn kbps(bps: u64) -> u64 {
    bps / 1000
}

/// Volume 0.0–1.0 as 0–100, rounded; 0 when muted; `None` when neither is known.
pub fn sound(volume: Option<f64>, muted: Option<bool>) -> Option<u64> {
    if muted == Some(true) {
        return Some(0);
    }
    volume.map(|v| (v.clamp(0.0, 1.0) * 100.0).round() as u64)
}

/// An ad pod's position as the video specs write it.
pub fn ad_type(position: PodPosition) -> &'static str {
    match position {
        PodPosition::Preroll => "pre-roll",
        PodPosition::Midroll => "mid-roll",
        PodPosition::Postroll => "post-roll",
    }
}

/// The base URL an `endpoint` override gives (its trailing `/` dropped), or why it
/// gives none: it must be an http:// or https:// URL with a host that the HTTP client
/// takes, and have no query or fragment, as the vendor's path is appended to it.
pub fn endpoint_base(endpoint: &str) -> Result<&str, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    let host = uri.host().is_some_and(|h| !h.is_empty());
    if !matches!(uri.scheme_str(), Some("http" | "https")) || !host {
        return Err(format!("{endpoint:?} is not an http:// or https:// URL"));
    }
    if endpoint.contains(['?', '#']) {
        return Err(format!(
            "{endpoint:?} has a query or fragment: the vendor's path is appended to it"
        ));
    }
    Ok(endpoint.trim_end_matches('/'))
}

/// `url` if the HTTP client can send to it. Only an `endpoint` override can make it
/// otherwise (a URL too long); the message leaves the URL out, as it may hold secrets.
pub fn sendable(url: String) -> Result<String, String> {
    match http::Uri::try_from(url.as_str()) {
        Ok(_) => Ok(url),
        Err(e) => Err(format!("makes a request URL the HTTP client refuses: {e}")),
    }
}

/// What one request may carry: the vendor's caps, lowered by the destination's `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events per request.
    pub max_events: usize,
    /// JSON items per request, where a vendor counts those rather than events
    /// (Segment's 2,500: a completion is two); `usize::MAX` when it does not.
    pub max_items: usize,
    /// Body bytes, before any compression.
    pub max_bytes: usize,
}

impl Limits {
    /// Whether a unit of `unit` bytes makes a body within `max_bytes` on its own, framed
    /// by `open` and `close` bytes.
    pub fn fits_alone(&self, open: usize, unit: usize, close: usize) -> bool {
        open + unit + close <= self.max_bytes
    }
}

/// One finished request body and the input indices of the events it carries.
#[derive(Debug)]
pub struct Packed {
    pub body: Vec<u8>,
    pub events: Vec<usize>,
    units: Range<usize>,
}

impl Packed {
    /// The units as written, between the body's opening and its close.
    pub fn units(&self) -> &[u8] {
        &self.body[self.units.clone()]
    }
}

/// Fills request bodies `open` + units joined by `,` + `close`, starting the next body
/// when a unit does not fit beside those already in, by events, items or bytes. A unit
/// always goes into an empty body: the vendor refuses beforehand what cannot fit alone.
pub struct Packer<'c> {
    limits: Limits,
    close: &'c [u8],
    body: Vec<u8>,
    /// Where the units start in `body`.
    units_at: usize,
    events: Vec<usize>,
    items: usize,
}

impl<'c> Packer<'c> {
    pub fn new(limits: Limits, close: &'c [u8]) -> Self {
        Packer {
            limits,
            close,
            body: Vec::new(),
            units_at: 0,
            events: Vec::new(),
            items: 0,
        }
    }

    /// Whether a unit fits beside what the body already holds.
    fn fits(&self, unit: usize, items: usize) -> bool {
        self.events.len() < self.limits.max_events
            && self.items + items <= self.limits.max_items
            && self.body.len() + 1 + unit + self.close.len() <= self.limits.max_bytes
    }

    /// Adds the unit of input event `index`, holding `items` JSON items. When it does
    /// not fit, the body so far is finished and returned, and the unit starts the next
    /// one, which `open` begins (reserving room and writing the body's opening).
    pub fn push(
        &mut self,
        index: usize,
        unit: &[u8],
        items: usize,
        open: impl FnOnce(&mut Vec<u8>),
    ) -> Option<Packed> {
        let full = if !self.events.is_empty() && !self.fits(unit.len(), items) {
            self.finish()
        } else {
            None
        };
        if self.events.is_empty() {
            open(&mut self.body);
            self.units_at = self.body.len();
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(unit);
        self.events.push(index);
        self.items += items;
        full
    }

    /// Closes and returns the body being filled, if it holds anything.
    pub fn finish(&mut self) -> Option<Packed> {
        if self.events.is_empty() {
            return None;
        }
        let units = self.units_at..self.body.len();
        self.body.extend_from_slice(self.close);
        self.items = 0;
        Some(Packed {
            body: std::mem::take(&mut self.body),
            events: std::mem::take(&mut self.events),
            units,
        })
    }
}

/// Units sorted by what the events of one request must share (GA4's client and
/// context, Tealium's visitor), groups in the order of their first event.
pub struct Groups<K, T> {
    groups: Vec<(K, Vec<T>)>,
    slot: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone, T> Groups<K, T> {
    pub fn new() -> Self {
        Groups {
            groups: Vec::new(),
            slot: HashMap::new(),
        }
    }

    pub fn push(&mut self, key: K, unit: T) {
        let slot = match self.slot.get(&key) {
            Some(slot) => *slot,
            None => {
                self.groups.push((key.clone(), Vec::new()));
                self.slot.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.groups[slot].1.push(unit);
    }

    pub fn into_groups(self) -> impl Iterator<Item = (K, Vec<T>)> {
        self.groups.into_iter()
    }
}

impl<K: Hash + Eq + Clone, T> Default for Groups<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A POST of `body`, gzipped when `gzip` (the headers then already say so).
pub fn post(
    url: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    events: Vec<usize>,
    gzip: bool,
) -> VendorRequest {
    let body = if gzip {
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&body);
        gz.finish().unwrap_or(body)
    } else {
        body
    };
    VendorRequest {
        method: Method::POST,
        url: url.to_string(),
        headers: headers.clone(),
        body: Bytes::from(body),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_floored_seconds_kbps_and_percent() {
        assert_eq!(seconds(1999), 1);
        assert_eq!(seconds(0), 0);
        assert_eq!(kbps(2_445_999), 2445);
        assert_eq!(sound(Some(0.555), Some(false)), Some(56));
        assert_eq!(sound(Some(1.0), Some(true)), Some(0));
        assert_eq!(sound(None, Some(true)), Some(0));
        assert_eq!(sound(None, None), None);
        assert_eq!(ad_type(PodPosition::Midroll), "mid-roll");
    }

    fn pack(limits: Limits, units: &[(&str, usize)]) -> Vec<(String, Vec<usize>)> {
        let mut packer = Packer::new(limits, b"]}");
        let mut out = Vec::new();
        let mut take =
            |p: Packed| out.push((String::from_utf8_lossy(&p.body).into_owned(), p.events));
        for (index, (unit, items)) in units.iter().enumerate() {
            if let Some(p) = packer.push(index, unit.as_bytes(), *items, |b| {
                b.extend_from_slice(b"{\"e\":[")
            }) {
                take(p);
            }
        }
        if let Some(p) = packer.finish() {
            take(p);
        }
        out
    }

    #[test]
    fn bodies_split_at_exactly_the_byte_limit() {
        // `{"e":[` + `{"a":1}` + `,` + `{"b":2}` + `]}` is 23 bytes.
        let units = [("{\"a\":1}", 1), ("{\"b\":2}", 1), ("{\"c\":3}", 1)];
        let limits = |max_bytes| Limits {
            max_events: 10,
            max_items: usize::MAX,
            max_bytes,
        };
        let two = pack(limits(23), &units);
        assert_eq!(
            two,
            vec![
                ("{\"e\":[{\"a\":1},{\"b\":2}]}".to_string(), vec![0, 1]),
                ("{\"e\":[{\"c\":3}]}".to_string(), vec![2]),
            ]
        );
        assert_eq!(pack(limits(22), &units).len(), 3);
        assert!(limits(15).fits_alone(6, 7, 2));
        assert!(!limits(14).fits_alone(6, 7, 2));
    }

    #[test]
    fn events_and_items_are_capped_apart() {
        let units = [("1", 2), ("2", 1), ("3", 1), ("4", 2)];
        let by_items = Limits {
            max_events: 10,
            max_items: 3,
            max_bytes: 1000,
        };
        let events: Vec<Vec<usize>> = pack(by_items, &units).into_iter().map(|p| p.1).collect();
        assert_eq!(events, vec![vec![0, 1], vec![2, 3]]);
        let by_events = Limits {
            max_events: 3,
            ..by_items
        };
        let by_events = Limits {
            max_items: usize::MAX,
            ..by_events
        };
        let events: Vec<Vec<usize>> = pack(by_events, &units).into_iter().map(|p| p.1).collect();
        assert_eq!(events, vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn endpoints_are_urls_the_client_can_send_to() {
        assert_eq!(
            endpoint_base("http://127.0.0.1:9/"),
            Ok("http://127.0.0.1:9")
        );
        assert_eq!(
            endpoint_base("https://proxy.example/segment"),
            Ok("https://proxy.example/segment")
        );
        let refused = |endpoint: &str| endpoint_base(endpoint).expect_err(endpoint);
        assert_eq!(
            refused("ftp://x"),
            "\"ftp://x\" is not an http:// or https:// URL"
        );
        assert!(refused("http://127.0.0.1:9/v1/<batch>").contains("is not a URL"));
        assert!(refused("http://a b/").contains("is not a URL"));
        assert!(refused("http:///path").contains("not"));
        assert!(refused("127.0.0.1:9").contains("not"));
        assert!(refused("http://h/?key=1").contains("query or fragment"));
        assert!(sendable("http://h/v1/batch".into()).is_ok());
        let long = format!("http://h/{}", "a".repeat(70_000));
        let error = sendable(long).expect_err("too long");
        assert!(!error.contains("aaaa"), "{error}");
    }

    #[test]
    fn groups_keep_the_order_of_their_first_unit() {
        let mut groups = Groups::new();
        for (key, unit) in [("b", 0), ("a", 1), ("b", 2), ("c", 3), ("a", 4)] {
            groups.push(key, unit);
        }
        let sorted: Vec<(&str, Vec<i32>)> = groups.into_groups().collect();
        assert_eq!(
            sorted,
            vec![("b", vec![0, 2]), ("a", vec![1, 4]), ("c", vec![3])]
        );
    }

    #[test]
    fn a_unit_too_big_for_any_body_still_goes_alone() {
        let limits = Limits {
            max_events: 10,
            max_items: usize::MAX,
            max_bytes: 10,
        };
        let mut packer = Packer::new(limits, b"]");
        assert!(packer
            .push(0, b"0123456789abc", 1, |b| b.push(b'['))
            .is_none());
        let packed = packer.finish().expect("one body");
        assert_eq!(packed.units(), b"0123456789abc");
        assert_eq!(packed.events, vec![0]);
        assert!(packer.finish().is_none());
    }
}
