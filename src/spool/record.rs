//! How a spooled event is laid out on disk: a checksum, the relay's own fields, the
//! destinations it was routed to, then the JSON the client sent.
//!
//! `crc32 | version | received_at (unix ns) | n | n × destination id | source |
//! client ip | client send time | json`

use crate::event::Event;
use time::OffsetDateTime;

const VERSION: u8 = 1;
const HEAD: usize = 4 + 1 + 8 + 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("record fields overrun its length")]
    Overrun,
    #[error("received_at out of range")]
    Time,
    #[error("event text is not UTF-8")]
    Utf8,
    #[error("event no longer validates: {0}")]
    Event(String),
}

/// Encodes `event` for the destinations `ids`, appending to `out`.
pub fn encode(event: &Event, ids: &[u16], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    let nanos = event.received_at.unix_timestamp_nanos() as i64;
    out.extend_from_slice(&nanos.to_be_bytes());
    // A route table has far fewer than 256 destinations per event; more are cut here
    // only if the config allowed it, which `Spool::cursor` refuses.
    out.push(ids.len().min(u8::MAX as usize) as u8);
    for id in ids.iter().take(u8::MAX as usize) {
        out.extend_from_slice(&id.to_be_bytes());
    }
    let source = event.source.as_deref().unwrap_or("");
    let source_len = source.len().min(u16::MAX as usize);
    out.extend_from_slice(&(source_len as u16).to_be_bytes());
    out.extend_from_slice(&source.as_bytes()[..source_len]);
    match event.client_ip {
        None => out.push(0),
        Some(std::net::IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(std::net::IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    match event.client_sent_at {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&(at.unix_timestamp_nanos() as i64).to_be_bytes());
        }
    }
    out.extend_from_slice(event.raw_json().as_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The part of a record needed to route and count it, without parsing the event.
#[derive(Debug, PartialEq)]
pub struct Header<'a> {
    pub destinations: Vec<u16>,
    received_at_ns: i64,
    source: &'a str,
    client_ip: Option<std::net::IpAddr>,
    client_sent_at_ns: Option<i64>,
    json: &'a [u8],
}

impl Header<'_> {
    pub fn routes_to(&self, id: u16) -> bool {
        self.destinations.contains(&id)
    }

    pub fn received_at(&self) -> Result<OffsetDateTime, RecordError> {
        OffsetDateTime::from_unix_timestamp_nanos(self.received_at_ns as i128)
            .map_err(|_| RecordError::Time)
    }

    /// The event as ingest accepted it, parsed and validated again.
    pub fn event(&self) -> Result<Event, RecordError> {
        let text = std::str::from_utf8(self.json).map_err(|_| RecordError::Utf8)?;
        let mut event = Event::restore(text, self.received_at()?)
            .map_err(|e| RecordError::Event(e.to_string()))?;
        if !self.source.is_empty() {
            event.source = Some(self.source.into());
        }
        event.client_ip = self.client_ip;
        event.client_sent_at = match self.client_sent_at_ns {
            Some(ns) => Some(
                OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
                    .map_err(|_| RecordError::Time)?,
            ),
            None => None,
        };
        Ok(event)
    }
}

/// Checks the checksum and reads the header.
pub fn decode(bytes: &[u8]) -> Result<Header<'_>, RecordError> {
    if bytes.len() < HEAD {
        return Err(RecordError::Short(bytes.len()));
    }
    let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if crc32fast::hash(&bytes[4..]) != stored {
        return Err(RecordError::Checksum);
    }
    if bytes[4] != VERSION {
        return Err(RecordError::Version(bytes[4]));
    }
    let mut nanos = [0u8; 8];
    nanos.copy_from_slice(&bytes[5..13]);
    let n = bytes[13] as usize;
    let mut at = HEAD;
    let ids_end = at + 2 * n;
    if bytes.len() < ids_end + 2 {
        return Err(RecordError::Overrun);
    }
    let destinations = bytes[at..ids_end]
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    at = ids_end;
    let source_len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
    at += 2;
    if bytes.len() < at + source_len {
        return Err(RecordError::Overrun);
    }
    let source = std::str::from_utf8(&bytes[at..at + source_len]).map_err(|_| RecordError::Utf8)?;
    at += source_len;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], RecordError> {
        let field = bytes.get(*at..*at + n).ok_or(RecordError::Overrun)?;
        *at += n;
        Ok(field)
    };
    let client_ip = match take(&mut at, 1)?[0] {
        4 => {
            let o: [u8; 4] = take(&mut at, 4)?
                .try_into()
                .map_err(|_| RecordError::Overrun)?;
            Some(std::net::IpAddr::from(o))
        }
        6 => {
            let o: [u8; 16] = take(&mut at, 16)?
                .try_into()
                .map_err(|_| RecordError::Overrun)?;
            Some(std::net::IpAddr::from(o))
        }
        _ => None,
    };
    let client_sent_at_ns = match take(&mut at, 1)?[0] {
        1 => {
            let n: [u8; 8] = take(&mut at, 8)?
                .try_into()
                .map_err(|_| RecordError::Overrun)?;
            Some(i64::from_be_bytes(n))
        }
        _ => None,
    };
    Ok(Header {
        destinations,
        received_at_ns: i64::from_be_bytes(nanos),
        source,
        client_ip,
        client_sent_at_ns,
        json: &bytes[at..],
    })
}

/// The first fixture event at spool position `seq`: what the spool's unit tests store.
#[cfg(test)]
pub(crate) fn fixture_event(seq: u64) -> Event {
    let text = include_str!("../../tests/fixtures/sessions.ndjson")
        .lines()
        .next()
        .expect("a fixture event");
    let mut event = Event::restore(text, OffsetDateTime::UNIX_EPOCH).expect("valid");
    event.spool_seq = seq;
    event
}

/// The encoded record of [`fixture_event`], routed to destination id `seq as u16`.
#[cfg(test)]
pub(crate) fn fixture_record(seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&fixture_event(seq), &[seq as u16], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn event() -> Event {
        let text = include_str!("../../tests/fixtures/sessions.ndjson")
            .lines()
            .next()
            .expect("a fixture event");
        let mut event =
            Event::restore(text, datetime!(2026-01-01 00:00:01.5 UTC)).expect("valid event");
        event.source = Some("web".into());
        event.client_ip = Some("2001:db8::7".parse().expect("ip"));
        event.client_sent_at = Some(datetime!(2026-01-01 00:00:00.25 UTC));
        event
    }

    #[test]
    fn a_record_round_trips_with_its_destinations_source_and_time() {
        let event = event();
        let mut bytes = Vec::new();
        encode(&event, &[3, 7], &mut bytes);
        let header = decode(&bytes).expect("decodes");
        assert_eq!(header.destinations, vec![3, 7]);
        assert!(header.routes_to(7) && !header.routes_to(4));
        let back = header.event().expect("event");
        assert_eq!(back.raw_json(), event.raw_json());
        assert_eq!(back.received_at, event.received_at);
        assert_eq!(back.source.as_deref(), Some("web"));
        assert_eq!(back.client_ip, event.client_ip);
        assert_eq!(back.client_sent_at, event.client_sent_at);
    }

    #[test]
    fn a_flipped_bit_or_a_cut_record_is_refused() {
        let mut bytes = Vec::new();
        encode(&event(), &[1], &mut bytes);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x10;
        assert_eq!(decode(&flipped), Err(RecordError::Checksum));
        assert_eq!(decode(&bytes[..6]), Err(RecordError::Short(6)));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(RecordError::Checksum)
        );
    }
}
