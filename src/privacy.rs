//! Per-destination privacy rules, as pure functions over events: consent, fields left
//! out, fields replaced by a keyed hash, and what happens to the client's IP address.
//!
//! The delivery worker applies them to every batch before it is translated, so
//! pass-through destinations (webhook, file) and vendor translators see the same
//! transformed event. Dead-letter files keep the event as it was received, so `replay`
//! applies the rules exactly once.

use crate::dest::Secret;
use crate::event::{Event, EventError};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::net::IpAddr;

/// A destination's privacy keys (`consent`, `drop_fields`, `hash_fields`, `ip`); the
/// key of `hash_fields` is the server's `hash_salt`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Events whose `context.consent.<category>` is `false` are not sent.
    #[serde(default)]
    pub consent: Option<ConsentCategory>,
    /// Dotted paths removed from events before they are sent.
    #[serde(default)]
    pub drop_fields: Vec<String>,
    /// Dotted paths replaced by their keyed SHA-256 before sending.
    #[serde(default)]
    pub hash_fields: Vec<String>,
    /// What happens to `context.ip`.
    #[serde(default)]
    pub ip: IpPolicy,
}

/// `consent = "analytics" | "advertising"` on a destination.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsentCategory {
    Analytics,
    Advertising,
}

/// `ip = "keep" | "anonymize" | "drop"` on a destination: what happens to `context.ip`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IpPolicy {
    #[default]
    Keep,
    /// Last IPv4 octet, last 80 bits of IPv6 set to zero.
    Anonymize,
    Drop,
}

/// Fields the privacy rules may not remove or rewrite: without them an event is not
/// an event (or the relay owns them).
pub const PROTECTED_FIELDS: &[&str] = &[
    "schema",
    "event_id",
    "type",
    "timestamp",
    "session",
    "session.id",
    "user",
    "received_at",
];

/// One destination's rules, compiled.
#[derive(Clone)]
pub struct Policy {
    consent: Option<ConsentCategory>,
    drop: Vec<Vec<String>>,
    hash: Vec<Vec<String>>,
    ip: IpPolicy,
    key: Option<Hmac<Sha256>>,
}

/// Why an event could not be rewritten; the event is then not sent (`dropped{reason="privacy"}`).
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("the event is no longer valid after the privacy rules: {0}")]
    Invalid(#[from] EventError),
    #[error("the event's JSON cannot be rebuilt: {0}")]
    Json(#[from] serde_json::Error),
}

impl Policy {
    /// The rules of a destination; `None` when it has none, so the worker skips the step.
    pub fn new(common: &PrivacyConfig, salt: Option<&Secret>) -> Option<Policy> {
        let rewrites = !common.drop_fields.is_empty()
            || !common.hash_fields.is_empty()
            || common.ip != IpPolicy::Keep;
        if common.consent.is_none() && !rewrites {
            return None;
        }
        let split = |paths: &[String]| -> Vec<Vec<String>> {
            paths
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect()
        };
        Some(Policy {
            consent: common.consent,
            drop: split(&common.drop_fields),
            hash: split(&common.hash_fields),
            ip: common.ip,
            // HMAC takes keys of any length; the config insists on at least 16 bytes.
            key: salt.and_then(|s| Hmac::<Sha256>::new_from_slice(s.expose().as_bytes()).ok()),
        })
    }

    /// False when the event's `context.consent.<category>` is `false`. An event that
    /// says nothing about the category is sent.
    pub fn consents(&self, event: &Event) -> bool {
        let Some(category) = self.consent else {
            return true;
        };
        let consent = event.body.context.as_ref().and_then(|c| c.consent.as_ref());
        let given = match category {
            ConsentCategory::Analytics => consent.and_then(|c| c.analytics),
            ConsentCategory::Advertising => consent.and_then(|c| c.advertising),
        };
        given != Some(false)
    }

    /// True when events must be rewritten (not only filtered).
    pub fn rewrites(&self) -> bool {
        !self.drop.is_empty() || !self.hash.is_empty() || self.ip != IpPolicy::Keep
    }

    /// The event as this destination may see it: typed view and raw JSON both rebuilt
    /// from the rewritten JSON, `received_at` and source kept.
    pub fn apply(&self, event: &Event) -> Result<Event, PrivacyError> {
        if !self.rewrites() {
            return Ok(event.clone());
        }
        let Value::Object(mut map) = serde_json::from_str::<Value>(event.raw_json())? else {
            return Err(PrivacyError::Invalid(EventError::NotAnObject));
        };
        for path in &self.drop {
            remove(&mut map, path);
        }
        if let Some(key) = &self.key {
            for path in &self.hash {
                if let Some(value) = find_mut(&mut map, path) {
                    hash_value(key, value);
                }
            }
        }
        let context_ip = ["context".to_string(), "ip".to_string()];
        match self.ip {
            IpPolicy::Keep => {}
            IpPolicy::Drop => remove(&mut map, &context_ip),
            IpPolicy::Anonymize => {
                if let Some(value) = find_mut(&mut map, &context_ip) {
                    match value.as_str().and_then(anonymize_ip) {
                        Some(anonymized) => *value = Value::String(anonymized),
                        // Not an address we can cut: leave none rather than pass it on.
                        None => remove(&mut map, &context_ip),
                    }
                }
            }
        }
        let text = serde_json::to_string(&map)?;
        let raw = serde_json::value::RawValue::from_string(text)?;
        let mut rebuilt = Event::from_json(&raw, event.received_at)?;
        rebuilt.source = event.source.clone();
        rebuilt.client_sent_at = event.client_sent_at;
        rebuilt.client_ip = match self.ip {
            IpPolicy::Keep => event.client_ip,
            IpPolicy::Drop => None,
            IpPolicy::Anonymize => event
                .client_ip
                .and_then(|ip| anonymize_ip(&ip.to_string()))
                .and_then(|text| text.parse().ok()),
        };
        Ok(rebuilt)
    }
}

fn find_mut<'a>(map: &'a mut Map<String, Value>, path: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let value = map.get_mut(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Value::Object(inner) => find_mut(inner, rest),
        _ => None,
    }
}

fn remove(map: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let target = if parents.is_empty() {
        Some(map)
    } else {
        match find_mut(map, parents) {
            Some(Value::Object(inner)) => Some(inner),
            _ => None,
        }
    };
    if let Some(target) = target {
        target.remove(last);
    }
}

/// Strings are hashed as their characters, other values as their JSON text; `null`
/// stays `null`. The result is always a lowercase hex string.
fn hash_value(key: &Hmac<Sha256>, value: &mut Value) {
    let input = match &mut *value {
        Value::Null => return,
        Value::String(s) => std::mem::take(s),
        other => other.to_string(),
    };
    *value = Value::String(keyed_hash(key, input.as_bytes()));
}

/// HMAC-SHA-256 of `input`, as 64 lowercase hex digits.
pub fn keyed_hash(key: &Hmac<Sha256>, input: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(input);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The last IPv4 octet or the last 80 bits of an IPv6 address set to zero.
pub fn anonymize_ip(text: &str) -> Option<String> {
    let ip: IpAddr = text.trim().parse().ok()?;
    Some(match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).to_string()
        }
        IpAddr::V6(v6) => {
            let kept = u128::from(v6) & (u128::MAX << 80);
            std::net::Ipv6Addr::from(kept).to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::OffsetDateTime;

    fn event(extra: Value) -> Event {
        let mut value = json!({
            "event_id": "0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55",
            "type": "playback.paused",
            "timestamp": "2026-01-15T10:20:30.123Z",
            "session": {"id": "s1"},
            "user": {"user_id": "alice@example.com", "anonymous_id": "a-1"},
        });
        if let (Value::Object(map), Value::Object(more)) = (&mut value, extra) {
            map.extend(more);
        }
        let raw = serde_json::value::RawValue::from_string(value.to_string()).expect("raw");
        let mut event = Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid");
        event.source = Some("web".into());
        event
    }

    fn common(text: &str) -> PrivacyConfig {
        toml::from_str(text).expect("privacy keys")
    }

    const SALT: &str = "0123456789abcdef-salt";

    #[test]
    fn consent_false_refuses_and_absent_consent_sends() {
        let policy = Policy::new(&common("consent = \"advertising\""), None).expect("policy");
        let refused =
            event(json!({"context": {"consent": {"advertising": false, "analytics": true}}}));
        let given = event(json!({"context": {"consent": {"advertising": true}}}));
        let silent = event(json!({}));
        assert!(!policy.consents(&refused));
        assert!(policy.consents(&given));
        assert!(policy.consents(&silent));
        let analytics = Policy::new(&common("consent = \"analytics\""), None).expect("policy");
        assert!(analytics.consents(&refused));
    }

    #[test]
    fn drop_hash_and_ip_rewrite_both_views_of_the_event() {
        let salt = Secret::new(SALT);
        let policy = Policy::new(
            &common(
                "drop_fields = [\"properties.email\", \"content.url\"]\nhash_fields = [\"user.user_id\", \"properties.plan\"]\nip = \"anonymize\"",
            ),
            Some(&salt),
        )
        .expect("policy");
        let original = event(json!({
            "properties": {"email": "alice@example.com", "plan": 3, "keep": "yes"},
            "content": {"url": "https://cdn.example/a.m3u8?token=t", "title": "T"},
            "context": {"ip": "203.0.113.77"},
        }));
        let out = policy.apply(&original).expect("rewritten");
        let key = Hmac::<Sha256>::new_from_slice(SALT.as_bytes()).expect("key");
        let expected_user = keyed_hash(&key, b"alice@example.com");
        assert_eq!(
            out.body.user.user_id.as_deref(),
            Some(expected_user.as_str())
        );
        let json = out.to_json_value();
        assert_eq!(json["user"]["user_id"], expected_user);
        assert_eq!(json["properties"]["plan"], keyed_hash(&key, b"3"));
        assert_eq!(json["properties"]["keep"], "yes");
        assert!(json["properties"].get("email").is_none());
        assert!(json["content"].get("url").is_none());
        assert_eq!(json["content"]["title"], "T");
        assert_eq!(json["context"]["ip"], "203.0.113.0");
        assert_eq!(out.source.as_deref(), Some("web"));
        assert_eq!(out.received_at, original.received_at);
        assert!(!out.raw_json().contains("alice"), "{}", out.raw_json());
    }

    #[test]
    fn ip_drop_removes_and_anonymize_cuts_v6() {
        let policy = Policy::new(&common("ip = \"drop\""), None).expect("policy");
        let out = policy
            .apply(&event(
                json!({"context": {"ip": "203.0.113.77", "locale": "en"}}),
            ))
            .expect("ok");
        assert!(out.to_json_value()["context"].get("ip").is_none());
        assert_eq!(
            anonymize_ip("2001:db8:1234:5678:9abc:def0:1234:5678").as_deref(),
            Some("2001:db8:1234::")
        );
        assert_eq!(anonymize_ip("10.1.2.3").as_deref(), Some("10.1.2.0"));
        assert_eq!(anonymize_ip("not an ip"), None);
        let anonymize = Policy::new(&common("ip = \"anonymize\""), None).expect("policy");
        let out = anonymize
            .apply(&event(json!({"context": {"ip": "somewhere"}})))
            .expect("ok");
        assert!(out.to_json_value()["context"].get("ip").is_none());
    }

    #[test]
    fn the_relay_seen_address_follows_the_ip_rule_and_the_send_time_is_kept() {
        let mut seen = event(json!({"context": {"locale": "en"}}));
        seen.client_ip = Some("203.0.113.77".parse().expect("ip"));
        seen.client_sent_at = Some(time::OffsetDateTime::UNIX_EPOCH);
        let anonymize = Policy::new(&common("ip = \"anonymize\""), None).expect("policy");
        let out = anonymize.apply(&seen).expect("ok");
        assert_eq!(out.client_ip, Some("203.0.113.0".parse().expect("ip")));
        assert_eq!(out.client_sent_at, seen.client_sent_at);
        let drop = Policy::new(&common("ip = \"drop\""), None).expect("policy");
        assert_eq!(drop.apply(&seen).expect("ok").client_ip, None);
    }

    #[test]
    fn no_rules_means_no_policy() {
        assert!(Policy::new(&common(""), None).is_none());
    }
}
