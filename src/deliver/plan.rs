//! What a destination makes of a batch, without sending anything: its privacy rules
//! (consent, `drop_fields`, `hash_fields`, `ip`), the types it never sends, then its
//! translator (or the file's NDJSON encoding). The worker, `playrelay translate`, the
//! dry run and `playrelay test` all call [`Planner::plan`], so what they show is what
//! the relay does.

use super::DestinationConfig;
use crate::dest::file::{encode_lines, FileConfig};
use crate::dest::{
    BatchLimits, BuildError, EventNames, NameOverride, Note, Refusal, Secret, Translate,
    VendorRequest,
};
use crate::event::{Event, EventType};
use crate::privacy::Policy;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;

/// How a destination's events become bytes.
pub enum Encoder {
    /// A vendor or webhook translator: events become HTTP requests.
    Http(Box<dyn Translate>),
    /// `type = "file"`: events become NDJSON lines.
    File {
        names: EventNames,
        pass_properties: bool,
    },
}

impl Encoder {
    fn sends_type(&self, event_type: &str) -> bool {
        match self {
            Encoder::Http(translator) => translator.sends_type(event_type),
            Encoder::File { names, .. } => names.resolve_passthrough(event_type).is_ok(),
        }
    }
}

/// One destination's planning rules, built once from its config.
pub struct Planner {
    name: String,
    privacy: Option<Policy>,
    /// Known types the destination only drops, with the reason (`disabled`, `unmapped`).
    skipped: HashMap<EventType, &'static str>,
    encoder: Encoder,
}

/// What is sent. Indices are into the events given to [`Planner::plan`].
pub enum Output {
    Requests(Vec<VendorRequest>),
    Lines { body: Vec<u8>, events: Vec<usize> },
}

/// A batch, planned: every input index ends up either in the output or in exactly one
/// entry of `left_out`; `notes` say what sent events lost on the way.
pub struct Plan {
    pub output: Output,
    /// Dropped (consent, privacy, disabled, unmapped, …) or refused (dead-lettered).
    pub left_out: Vec<Refusal>,
    pub notes: Vec<Note>,
}

impl Planner {
    pub fn new(config: &DestinationConfig, hash_salt: Option<&Secret>) -> Result<Self, BuildError> {
        let kind = &config.kind;
        let encoder = match kind.config::<FileConfig>() {
            Some(_) => Encoder::File {
                names: EventNames::new(config.common.events.clone()),
                pass_properties: config.common.properties,
            },
            None => Encoder::Http(kind.translator(
                EventNames::new(config.common.events.clone()),
                config.common.properties,
                BatchLimits {
                    max_events: config.common.batch.max_events,
                    max_bytes: config.common.batch.max_bytes,
                },
            )?),
        };
        let skipped = EventType::ALL
            .into_iter()
            .filter(|ty| !encoder.sends_type(ty.as_str()))
            .map(|ty| {
                let disabled =
                    config.common.events.get(ty.as_str()) == Some(&NameOverride::Enabled(false));
                (ty, if disabled { "disabled" } else { "unmapped" })
            })
            .collect();
        Ok(Planner {
            name: config.name.clone(),
            privacy: Policy::new(&config.common.privacy(), hash_salt),
            skipped,
            encoder,
        })
    }

    /// A planner for `translator` alone: no privacy rules, nothing skipped.
    #[cfg(test)]
    pub(crate) fn with_translator(name: &str, translator: Box<dyn Translate>) -> Planner {
        Planner {
            name: name.to_string(),
            privacy: None,
            skipped: HashMap::new(),
            encoder: Encoder::Http(translator),
        }
    }

    /// The reason events of this type are never sent here, if they are not.
    pub fn skips(&self, event: &Event) -> Option<&'static str> {
        if self.skipped.is_empty() {
            return None;
        }
        self.skipped.get(&event.known_type()?).copied()
    }

    /// Contract types the destination never sends, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = (EventType, &'static str)> + '_ {
        self.skipped.iter().map(|(ty, reason)| (*ty, *reason))
    }

    /// The translator, for reading the vendor's answers; `None` for a file.
    pub fn translator(&self) -> Option<&dyn Translate> {
        match &self.encoder {
            Encoder::Http(translator) => Some(translator.as_ref()),
            Encoder::File { .. } => None,
        }
    }

    /// Values never to be shown (`***` in output, dry-run files, logs, dead letters).
    pub fn secrets(&self) -> Vec<String> {
        match &self.encoder {
            Encoder::Http(translator) => translator.secrets(),
            Encoder::File { .. } => Vec::new(),
        }
    }

    /// Plans a batch. No I/O: `sent_at` is the send time the translator stamps.
    pub fn plan(&self, events: &[&Event], sent_at: OffsetDateTime) -> Plan {
        let mut left_out = Vec::new();
        // Types never sent here go first, as the relay leaves them out when they are
        // routed, before they are queued.
        let mut kept: Vec<usize> = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.skips(event) {
                Some(reason) => left_out.push(Refusal::dropped(
                    index,
                    reason,
                    format!(
                        "{} is {reason} for destination {}",
                        event.event_type(),
                        self.name
                    ),
                )),
                None => kept.push(index),
            }
        }
        // The privacy rules: what the destination may see, index for index with `kept`.
        let mut rewritten: Vec<Arc<Event>> = Vec::new();
        if let Some(policy) = &self.privacy {
            let mut allowed = Vec::with_capacity(kept.len());
            for index in kept {
                let event = events[index];
                if !policy.consents(event) {
                    left_out.push(Refusal::dropped(index, "consent", ""));
                    continue;
                }
                if !policy.rewrites() {
                    allowed.push(index);
                    continue;
                }
                match policy.apply(event) {
                    Ok(view) => {
                        rewritten.push(Arc::new(view));
                        allowed.push(index);
                    }
                    Err(error) => {
                        left_out.push(Refusal::dropped(index, "privacy", error.to_string()))
                    }
                }
            }
            kept = allowed;
        }
        let view: Vec<&Event> = if rewritten.is_empty() {
            kept.iter().map(|i| events[*i]).collect()
        } else {
            rewritten.iter().map(|e| e.as_ref()).collect()
        };
        let (output, refused, mut notes) = match &self.encoder {
            Encoder::Http(translator) => {
                let mut translation = translator.translate(&view, sent_at);
                for request in &mut translation.requests {
                    for index in &mut request.events {
                        *index = kept[*index];
                    }
                }
                (
                    Output::Requests(translation.requests),
                    translation.refused,
                    translation.notes,
                )
            }
            Encoder::File {
                names,
                pass_properties,
            } => {
                let (body, written, refused) = encode_lines(&view, names, *pass_properties);
                let written = written.into_iter().map(|i| kept[i]).collect();
                (
                    Output::Lines {
                        body,
                        events: written,
                    },
                    refused,
                    Vec::new(),
                )
            }
        };
        for mut refusal in refused {
            refusal.index = kept[refusal.index];
            left_out.push(refusal);
        }
        for note in &mut notes {
            note.index = kept[note.index];
        }
        left_out.sort_by_key(|r| r.index);
        Plan {
            output,
            left_out,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn event(ty: &str, id_tail: u8, extra: &str) -> Event {
        let json = format!(
            r#"{{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b{id_tail:02x}","type":"{ty}","timestamp":"2026-01-15T10:20:30.123Z","session":{{"id":"s1"}},"user":{{"anonymous_id":"a-1"}}{extra}}}"#
        );
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&json).expect("json");
        Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid")
    }

    fn planner(destination: &str) -> Planner {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{destination}\n[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"d\"]\n"
        );
        let config = config::load_str(&toml, Path::new("t.toml"), &|_| None).expect("config");
        Planner::new(&config.destinations["d"], None).expect("planner")
    }

    #[test]
    fn every_event_is_sent_or_left_out_with_its_input_index() {
        let planner = planner(
            "[destinations.d]\ntype = \"webhook\"\nendpoint = \"http://127.0.0.1:9/\"\nconsent = \"analytics\"\ndrop_fields = [\"properties.email\"]\nevents = { \"volume.changed\" = false }",
        );
        let events = [
            event(
                "playback.paused",
                1,
                r#","context":{"consent":{"analytics":false}}"#,
            ),
            event("volume.changed", 2, ""),
            event(
                "playback.paused",
                3,
                r#","properties":{"email":"a@b.c","keep":1}"#,
            ),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let plan = planner.plan(&refs, OffsetDateTime::UNIX_EPOCH);
        let left: Vec<(usize, &str)> = plan.left_out.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(left, vec![(0, "consent"), (1, "disabled")]);
        let Output::Requests(requests) = plan.output else {
            panic!("a webhook sends requests");
        };
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].events, vec![2]);
        let body = String::from_utf8_lossy(&requests[0].body);
        assert!(!body.contains("a@b.c"), "{body}");
        assert!(body.contains("\"keep\":1"), "{body}");
    }

    #[test]
    fn a_file_gets_the_lines_of_what_it_may_see() {
        let planner = planner(
            "[destinations.d]\ntype = \"file\"\npath = \"out.ndjson\"\nconsent = \"advertising\"\nhash_fields = []\ndrop_fields = [\"properties\"]",
        );
        let events = [
            event("playback.paused", 1, r#","properties":{"x":1}"#),
            event(
                "playback.paused",
                2,
                r#","context":{"consent":{"advertising":false}}"#,
            ),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let plan = planner.plan(&refs, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(plan.left_out.len(), 1);
        assert_eq!(
            (plan.left_out[0].index, plan.left_out[0].reason),
            (1, "consent")
        );
        let Output::Lines { body, events } = plan.output else {
            panic!("a file writes lines");
        };
        assert_eq!(events, vec![0]);
        let line = String::from_utf8_lossy(&body);
        assert_eq!(line.lines().count(), 1);
        assert!(!line.contains("properties"), "{line}");
    }
}
