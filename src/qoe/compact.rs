//! The compact forms open sessions are kept in, so that one costs under a kilobyte
//! even when it shares nothing with other sessions (docs/qoe.md, "Costs"):
//!
//! - [`Facts`]: a session's facts in 24 bytes each instead of a [`Fact`]'s 32;
//! - [`pack`] / [`unpack`]: envelope texts with their object keys as single bytes;
//! - [`SeededHash`]: the hash of the session table and the envelope interner.
//!
//! All of them are exact: what comes out is what went in, bit for bit.

use super::metrics::{Fact, FactList, Kind};
use std::hash::{BuildHasher, Hasher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A fact in 24 bytes: its time relative to the session's first fact's, and its
/// bitrate as an index in the session's table of bitrates, beside kind and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    id: u64,
    /// `at_ms` less the session's base time.
    at: i32,
    sequence: u32,
    span_ms: u32,
    run: u16,
    /// Kind (5 bits), flags (4 bits), then the bitrate's index (7 bits).
    tag: u16,
}

const KIND_BITS: u32 = 5;
const FLAG_BITS: u32 = 4;
/// Distinct bitrates a packed session can have (an ABR ladder has a dozen or so).
const MAX_RATES: usize = 1 << (16 - KIND_BITS - FLAG_BITS);

/// An open session's facts in arrival order, as [`super::metrics::insert`] keeps them.
///
/// Packed (24 bytes a fact) while every fact fits: its time within ±24 days of the
/// first fact's, at most 128 distinct bitrates, known flags. The first fact that does
/// not fit turns the whole session into plain [`Fact`]s: never an approximation.
#[derive(Debug, Clone)]
pub struct Facts(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Packed {
        /// `at_ms` of the first fact.
        base: i64,
        items: Vec<Packed>,
        /// The bitrates facts refer to, by index.
        rates: Box<[u32]>,
    },
    Wide(Vec<Fact>),
}

impl Default for Facts {
    fn default() -> Self {
        Facts::new()
    }
}

impl Facts {
    pub fn new() -> Facts {
        Facts(Repr::Packed {
            base: 0,
            items: Vec::new(),
            rates: Box::new([]),
        })
    }

    /// Whether the facts are packed (for tests and the benchmark).
    pub fn is_packed(&self) -> bool {
        matches!(self.0, Repr::Packed { .. })
    }

    /// The facts as plain [`Fact`]s, in arrival order.
    pub fn to_vec(&self) -> Vec<Fact> {
        match &self.0 {
            Repr::Packed { base, items, rates } => {
                items.iter().map(|p| unpacked(*base, rates, p)).collect()
            }
            Repr::Wide(facts) => facts.clone(),
        }
    }

    /// Heap bytes: (held by facts, spare room for more).
    pub fn heap_bytes(&self) -> (usize, usize) {
        match &self.0 {
            Repr::Packed { items, rates, .. } => (
                items.len() * std::mem::size_of::<Packed>() + rates.len() * 4,
                (items.capacity() - items.len()) * std::mem::size_of::<Packed>(),
            ),
            Repr::Wide(facts) => (
                facts.len() * std::mem::size_of::<Fact>(),
                (facts.capacity() - facts.len()) * std::mem::size_of::<Fact>(),
            ),
        }
    }

    /// Every fact as a plain one, from now on.
    fn widen(&mut self) -> &mut Vec<Fact> {
        if let Repr::Packed { .. } = self.0 {
            self.0 = Repr::Wide(self.to_vec());
        }
        match &mut self.0 {
            Repr::Wide(facts) => facts,
            Repr::Packed { .. } => unreachable!("widened above"),
        }
    }
}

fn unpacked(base: i64, rates: &[u32], p: &Packed) -> Fact {
    let kind_mask = (1u16 << KIND_BITS) - 1;
    let flag_mask = (1u16 << FLAG_BITS) - 1;
    Fact {
        id: p.id,
        at_ms: base + i64::from(p.at),
        sequence: p.sequence,
        bitrate_bps: rates
            .get(usize::from(p.tag >> (KIND_BITS + FLAG_BITS)))
            .copied()
            .unwrap_or(0),
        run: p.run,
        span_ms: p.span_ms,
        // Only kinds that came from a `Kind` are ever packed.
        kind: Kind::from_u8((p.tag & kind_mask) as u8).unwrap_or(Kind::Other),
        flags: ((p.tag >> KIND_BITS) & flag_mask) as u8,
    }
}

/// `fact` packed against `base` and `rates` (a new bitrate is added to `rates`), or
/// `None` when it does not fit.
fn packed(base: i64, rates: &mut Box<[u32]>, fact: &Fact) -> Option<Packed> {
    let at = i32::try_from(fact.at_ms.checked_sub(base)?).ok()?;
    if u32::from(fact.flags) >= 1 << FLAG_BITS || (fact.kind as u32) >= 1 << KIND_BITS {
        return None;
    }
    let rate = match rates.iter().position(|r| *r == fact.bitrate_bps) {
        Some(i) => i,
        None if rates.len() < MAX_RATES => {
            let mut more = std::mem::take(rates).into_vec();
            more.push(fact.bitrate_bps);
            *rates = more.into_boxed_slice();
            rates.len() - 1
        }
        None => return None,
    };
    Some(Packed {
        id: fact.id,
        at,
        sequence: fact.sequence,
        span_ms: fact.span_ms,
        run: fact.run,
        tag: fact.kind as u16
            | u16::from(fact.flags) << KIND_BITS
            | (rate as u16) << (KIND_BITS + FLAG_BITS),
    })
}

impl FactList for Facts {
    fn len(&self) -> usize {
        match &self.0 {
            Repr::Packed { items, .. } => items.len(),
            Repr::Wide(facts) => facts.len(),
        }
    }

    fn get(&self, i: usize) -> Fact {
        match &self.0 {
            Repr::Packed { base, items, rates } => unpacked(*base, rates, &items[i]),
            Repr::Wide(facts) => facts[i],
        }
    }

    fn scan(&self, fact: &Fact) -> Option<Option<usize>> {
        match &self.0 {
            Repr::Packed { items, .. } => {
                super::metrics::scan(items, |p| (p.id, p.sequence, p.run), fact)
            }
            Repr::Wide(facts) => facts.scan(fact),
        }
    }

    fn fold(&mut self, i: usize, run: u16, span_ms: u32) {
        match &mut self.0 {
            Repr::Packed { items, .. } => {
                items[i].run = run;
                items[i].span_ms = span_ms;
            }
            Repr::Wide(facts) => facts.fold(i, run, span_ms),
        }
    }

    fn push(&mut self, fact: Fact) {
        if let Repr::Packed { base, items, rates } = &mut self.0 {
            if items.is_empty() {
                *base = fact.at_ms;
            }
            if let Some(p) = packed(*base, rates, &fact) {
                if items.len() == items.capacity() {
                    // Grow by an eighth: an open session's memory is the relay's, and
                    // the copies this costs are a few hundred bytes now and then.
                    items.reserve_exact(items.len() / 8 + 2);
                }
                items.push(p);
                return;
            }
        }
        FactList::push(self.widen(), fact);
    }
}

impl From<Vec<Fact>> for Facts {
    fn from(facts: Vec<Fact>) -> Facts {
        let mut out = Facts::new();
        if let Repr::Packed { items, .. } = &mut out.0 {
            items.reserve_exact(facts.len());
        }
        for fact in facts {
            out.push(fact);
        }
        out
    }
}

/// What stands for one byte in packed text: the object keys of the envelope's parts
/// (`session`, `user`, `content`, `context` in `player-event/1`, as `"key":`) and a few
/// common values. A few short keys are left out: there are only 44 free bytes.
const TOKENS: [&str; 44] = [
    "\"player_session_id\":",
    "\"app_session_id\":",
    "\"user_id\":",
    "\"anonymous_id\":",
    "\"asset_id\":",
    "\"title\":",
    "\"description\":",
    "\"program\":",
    "\"season\":",
    "\"episode\":",
    "\"genre\":",
    "\"publisher\":",
    "\"channel\":",
    "\"provider\":",
    "\"keywords\":",
    "\"airdate\":",
    "\"duration_ms\":",
    "\"stream_type\":",
    "\"url\":",
    "\"streaming_format\":",
    "\"language\":",
    "\"custom\":",
    "\"player\":",
    "\"device\":",
    "\"user_agent\":",
    "\"locale\":",
    "\"consent\":",
    "\"ga_client_id\":",
    "\"firebase_app_instance_id\":",
    "\"name\":",
    "\"version\":",
    "\"platform\":",
    "\"manufacturer\":",
    "\"model\":",
    "\"os_name\":",
    "\"os_version\":",
    "\"referrer\":",
    "\"analytics\":",
    "\"advertising\":",
    // Values: after a key, and at the start of a string.
    "null",
    "true",
    "false",
    "\"https://",
    "\"Mozilla/5.0 (",
];
const NULL: usize = 39;
const HTTPS: usize = 42;
const MOZILLA: usize = 43;

/// The byte token `i` stands for: control characters, which JSON text never holds
/// unescaped, then bytes that are never in UTF-8. 0 marks text kept as it is.
fn code(i: usize) -> u8 {
    match i {
        0..=30 => i as u8 + 1,
        31 => 0xC0,
        32 => 0xC1,
        _ => 0xF5 + (i - 33) as u8,
    }
}

/// The token a byte stands for, if it is a code.
fn token(byte: u8) -> Option<&'static str> {
    let i = match byte {
        1..=31 => usize::from(byte) - 1,
        0xC0 => 31,
        0xC1 => 32,
        0xF5..=0xFF => usize::from(byte - 0xF5) + 33,
        _ => return None,
    };
    TOKENS.get(i).copied()
}

/// The token of the object key `key` (without its quotes), if it has one.
fn key_token(key: &[u8]) -> Option<usize> {
    Some(match key {
        b"player_session_id" => 0,
        b"app_session_id" => 1,
        b"user_id" => 2,
        b"anonymous_id" => 3,
        b"asset_id" => 4,
        b"title" => 5,
        b"description" => 6,
        b"program" => 7,
        b"season" => 8,
        b"episode" => 9,
        b"genre" => 10,
        b"publisher" => 11,
        b"channel" => 12,
        b"provider" => 13,
        b"keywords" => 14,
        b"airdate" => 15,
        b"duration_ms" => 16,
        b"stream_type" => 17,
        b"url" => 18,
        b"streaming_format" => 19,
        b"language" => 20,
        b"custom" => 21,
        b"player" => 22,
        b"device" => 23,
        b"user_agent" => 24,
        b"locale" => 25,
        b"consent" => 26,
        b"ga_client_id" => 27,
        b"firebase_app_instance_id" => 28,
        b"name" => 29,
        b"version" => 30,
        b"platform" => 31,
        b"manufacturer" => 32,
        b"model" => 33,
        b"os_name" => 34,
        b"os_version" => 35,
        b"referrer" => 36,
        b"analytics" => 37,
        b"advertising" => 38,
        _ => return None,
    })
}

/// Appends `text` packed: each token in [`TOKENS`] found (an object key, a `null`,
/// `true` or `false` after one, a string starting `https://` or `Mozilla/5.0 (`) as
/// its one-byte code. JSON text from serde_json has no control characters and, being
/// UTF-8, none of the other code bytes, so [`unpack`] gives `text` back exactly; any
/// other text is kept as it is behind a 0 byte.
pub fn pack(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    // Without an early exit, so that it runs on whole vectors of bytes.
    if bytes.iter().fold(false, |control, b| control | (*b < 0x20)) {
        out.push(0);
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(bytes.len());
    let (mut at, mut literal) = (0, 0);
    // Only quotes matter: memchr finds them a word at a time.
    while let Some(found) = memchr::memchr(b'"', &bytes[at..]) {
        let quote = at + found;
        let rest = &bytes[quote..];
        let value = match rest.get(1) {
            Some(b'h') => Some(HTTPS),
            Some(b'M') => Some(MOZILLA),
            _ => None,
        }
        .filter(|i| rest.starts_with(TOKENS[*i].as_bytes()));
        if let Some(i) = value {
            out.extend_from_slice(&bytes[literal..quote]);
            out.push(code(i));
            at = quote + TOKENS[i].len();
            literal = at;
            continue;
        }
        let Some(end) = memchr::memchr(b'"', &bytes[quote + 1..]).map(|e| quote + 1 + e) else {
            break;
        };
        let key = (bytes.get(end + 1) == Some(&b':'))
            .then(|| key_token(&bytes[quote + 1..end]))
            .flatten();
        let Some(i) = key else {
            // The closing quote of a value may open the next key.
            at = end;
            continue;
        };
        out.extend_from_slice(&bytes[literal..quote]);
        out.push(code(i));
        at = end + 2;
        let value = match bytes.get(at) {
            Some(b'n') => Some(NULL),
            Some(b't') => Some(NULL + 1),
            Some(b'f') => Some(NULL + 2),
            _ => None,
        }
        .filter(|v| bytes[at..].starts_with(TOKENS[*v].as_bytes()));
        if let Some(v) = value {
            out.push(code(v));
            at += TOKENS[v].len();
        }
        literal = at;
    }
    out.extend_from_slice(&bytes[literal..]);
}

/// Appends the text [`pack`] made of `packed`.
pub fn unpack(packed: &[u8], out: &mut String) {
    if let Some((0, raw)) = packed.split_first() {
        push_utf8(raw, out);
        return;
    }
    let mut literal = 0;
    for (i, byte) in packed.iter().enumerate() {
        if let Some(token) = token(*byte) {
            push_utf8(&packed[literal..i], out);
            out.push_str(token);
            literal = i + 1;
        }
    }
    push_utf8(&packed[literal..], out);
}

/// `pack`'s literal runs are whole UTF-8 (tokens are ASCII, so it splits text only
/// between characters); anything else would be a bug, shown rather than hidden.
fn push_utf8(bytes: &[u8], out: &mut String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push(char::REPLACEMENT_CHARACTER),
    }
}

/// The text [`pack`] made of `packed`.
pub fn unpacked_text(packed: &[u8]) -> String {
    let mut out = String::with_capacity(packed.len() * 2);
    unpack(packed, &mut out);
    out
}

/// xxh3 with a random seed, for tables keyed by what clients send (session ids,
/// envelope texts): a few times cheaper than std's SipHash on a 36-byte id, and the
/// seed keeps colliding keys from being chosen ahead of time.
#[derive(Debug, Clone, Copy)]
pub struct SeededHash(u64);

impl SeededHash {
    pub fn random() -> SeededHash {
        SeededHash(std::hash::RandomState::new().hash_one(0x716f_6532u64))
    }
}

impl BuildHasher for SeededHash {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            seed: self.0,
            hash: 0,
        }
    }
}

pub struct SeededHasher {
    seed: u64,
    hash: u64,
}

/// An odd constant: multiplying by it mixes a small write in and loses nothing.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for SeededHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.hash = xxh3_64_with_seed(bytes, self.seed ^ self.hash);
    }
    // `str` ends with a 0xff, slices start with their length: no xxh3 call for those.
    fn write_u8(&mut self, byte: u8) {
        self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(MIX);
    }
    fn write_usize(&mut self, n: usize) {
        self.hash = (self.hash ^ n as u64).wrapping_mul(MIX);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qoe::metrics::{insert, Inserted, DOWNSWITCH, FATAL, NO_SEQUENCE, PLAYING};

    #[test]
    fn a_packed_fact_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Packed>(), 24);
        assert!(std::mem::size_of::<Facts>() <= 48);
    }

    fn fact(i: u32, at_ms: i64, bitrate_bps: u32) -> Fact {
        Fact {
            id: u64::from(i) * 7919,
            at_ms,
            sequence: i,
            bitrate_bps,
            run: (i % 3) as u16,
            span_ms: i * 10,
            kind: Kind::ALL[i as usize % Kind::ALL.len()],
            flags: (i % 16) as u8,
        }
    }

    #[test]
    fn packed_facts_come_back_exactly() {
        let mut facts = Facts::new();
        let mut plain = Vec::new();
        for i in 0..200 {
            let f = fact(
                i,
                1_700_000_000_000 + i64::from(i) * 997 - 50_000,
                (i % 9) * 1_000,
            );
            facts.push(f);
            plain.push(f);
        }
        let mut f = fact(300, 1_700_000_000_000 - 2_000_000_000, 77);
        f.flags = FATAL | DOWNSWITCH;
        facts.push(f);
        plain.push(f);
        facts.fold(3, 9, 12_345);
        (plain[3].run, plain[3].span_ms) = (9, 12_345);
        assert!(facts.is_packed());
        assert_eq!(facts.to_vec(), plain);
        assert_eq!(Facts::from(plain.clone()).to_vec(), plain);
    }

    #[test]
    fn a_fact_that_does_not_pack_turns_the_session_plain_and_loses_nothing() {
        let far = 1_000 + i64::from(i32::MAX) + 1;
        let many_rates: Vec<Fact> = (0..130).map(|i| fact(i, 1_000, i * 10)).collect();
        let mut odd_flags = fact(1, 1_000, 0);
        odd_flags.flags = 0x80;
        let no_sequence = Fact {
            sequence: NO_SEQUENCE,
            ..fact(2, i64::MIN, u32::MAX)
        };
        for tail in [
            vec![fact(1, far, 5)],
            vec![fact(1, 1_000 - i64::from(i32::MAX) - 2, 5)],
            many_rates,
            vec![odd_flags],
            vec![no_sequence],
        ] {
            let mut facts = Facts::new();
            let mut plain = vec![fact(0, 1_000, 5)];
            facts.push(plain[0]);
            for f in &tail {
                facts.push(*f);
                plain.push(*f);
            }
            assert!(!facts.is_packed());
            assert_eq!(facts.to_vec(), plain);
            // And it goes on as a plain list.
            facts.push(fact(500, 0, 1));
            plain.push(fact(500, 0, 1));
            assert_eq!(facts.to_vec(), plain);
        }
    }

    #[test]
    fn inserting_into_packed_facts_does_what_it_does_to_a_vec() {
        let mut rng = fastrand::Rng::with_seed(14);
        for _ in 0..300 {
            let (mut packed, mut plain) = (Facts::new(), Vec::new());
            for _ in 0..rng.usize(1..60) {
                let sequence = rng.u32(0..40);
                let f = Fact {
                    id: u64::from(rng.u32(0..45)),
                    at_ms: 1_000_000 + i64::from(sequence) * 1_000 + rng.i64(-3..3),
                    sequence: if rng.u8(..) < 20 {
                        NO_SEQUENCE
                    } else {
                        sequence
                    },
                    bitrate_bps: rng.u32(0..3) * 500_000,
                    run: 0,
                    span_ms: 0,
                    kind: if rng.bool() {
                        Kind::Other
                    } else {
                        Kind::ALL[rng.usize(..Kind::ALL.len())]
                    },
                    flags: if rng.u8(..) < 200 { PLAYING } else { 0 },
                };
                let expected = insert(&mut plain, f);
                assert_eq!(insert(&mut packed, f), expected);
                if expected == Inserted::Pushed {
                    assert_eq!(packed.get(packed.len() - 1), f);
                }
            }
            assert!(packed.is_packed());
            assert_eq!(packed.to_vec(), plain);
        }
    }

    fn round_trip(text: &str) -> Vec<u8> {
        let mut packed = Vec::new();
        pack(text, &mut packed);
        assert_eq!(unpacked_text(&packed), text, "{packed:?}");
        packed
    }

    #[test]
    fn every_token_packs_to_one_byte_and_back() {
        for (i, t) in TOKENS.iter().enumerate() {
            assert_eq!(token(code(i)), Some(*t));
            let text = if i < NULL {
                format!("{{{t}1}}")
            } else if i < HTTPS {
                format!("{{\"name\":{t}}}")
            } else {
                format!("{{\"x\":{t}y\"}}")
            };
            let packed = round_trip(&text);
            assert!(packed.contains(&code(i)), "{t}: {packed:?}");
        }
        let codes: std::collections::HashSet<u8> = (0..TOKENS.len()).map(code).collect();
        assert_eq!(codes.len(), TOKENS.len());
        assert!(!codes.contains(&0));
        assert!(codes.iter().all(|c| *c < 0x20 || *c >= 0xC0));
    }

    #[test]
    fn envelope_texts_pack_smaller_and_any_text_comes_back() {
        let content = r#"{"asset_id":"3602037","title":"Ice Worlds","duration_ms":null,"stream_type":"live","url":"https://cdn.example.com/ice-worlds/master.m3u8","streaming_format":"hls","genre":"Documentary"}"#;
        let context = r#"{"player":{"name":"html5","version":"1.0","platform":"web"},"locale":"fr-FR","user_agent":"Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36","consent":{"analytics":true,"advertising":true}}"#;
        assert!(round_trip(content).len() < content.len() * 3 / 5);
        assert!(round_trip(context).len() < context.len() * 3 / 5);
        for text in [
            "",
            "\"",
            "\"\"",
            "{\"title\"",
            "{\"title\":",
            "{\"a\\\"title\":\"\\\"name\\\":\",\"name\":\"é\u{1F600}\"}",
            "\"name\":nulll,\"title\":truefalse\"https://\"Mozilla/5.0 (",
            "control \u{1} and \"name\": kept as they are",
            "\u{0}",
            "ünïcödé \"url\":\"https://ü\"",
        ] {
            round_trip(text);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces = [
            "\"",
            ":",
            ",",
            "{",
            "}",
            "name",
            "\"name\":",
            "null",
            "é",
            "\\\"",
            "https://",
            "\"https://",
            "x",
            "\u{7f}",
            "true",
            "\"Mozilla/5.0 (",
        ];
        for _ in 0..2_000 {
            let text: String = (0..rng.usize(0..30))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            round_trip(&text);
        }
    }

    #[test]
    fn the_seeded_hash_tells_keys_apart_and_differs_between_tables() {
        let (a, b) = (SeededHash::random(), SeededHash::random());
        assert_ne!(a.hash_one("session-1"), a.hash_one("session-2"));
        assert_eq!(a.hash_one("session-1"), a.hash_one("session-1"));
        assert_ne!(a.hash_one("session-1"), b.hash_one("session-1"));
    }
}
