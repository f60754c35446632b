//! How long a viewer watched between two events a destination sends, for GA4's
//! `engagement_time_msec` ("the milliseconds elapsed since the preceding event").
//!
//! Heartbeats never reach GA4 (they are not sent there), so the time between two GA4
//! events of a session is measured from the events themselves: their times on the
//! relay's clock (device skew corrected) and whether the player was playing after the
//! earlier one. A translator keeps one [`EngagementClock`] for the events it has sent,
//! so the measure spans batches; it is bounded in sessions and forgets ended ones.

use crate::event::{Event, PlaybackState};
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};

/// At most this much is credited to one event: GA4 ends a session after 30 minutes
/// without events, so a longer gap is not one stretch of engagement it would count.
pub const MAX_ENGAGEMENT: Duration = Duration::minutes(30);
/// Sessions remembered at once; when full, those idle for [`MAX_ENGAGEMENT`] go first.
pub const MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Last {
    at: OffsetDateTime,
    watching: bool,
}

/// Per session: the time of the last event sent and whether playback went on after it.
#[derive(Debug, Default)]
pub struct EngagementClock {
    sessions: HashMap<String, Last>,
}

impl EngagementClock {
    /// Milliseconds watched since the session's previous event sent, at least 1:
    /// the time between the two (at most [`MAX_ENGAGEMENT`]) when the player was
    /// playing after the previous one, else 1 (paused, buffering, seeking). The
    /// session's first event: the startup time when it has one (the viewer waited
    /// for the first frame), else 1. GA4 shows users in Realtime only with a
    /// positive value.
    pub fn engagement_msec(&self, event: &Event, at: OffsetDateTime) -> u64 {
        let msec = match self.sessions.get(&event.body.session.id) {
            Some(last) if last.watching => {
                let gap = (at - last.at).clamp(Duration::ZERO, MAX_ENGAGEMENT);
                u64::try_from(gap.whole_milliseconds()).unwrap_or(0)
            }
            Some(_) => 0,
            None => event
                .body
                .data
                .as_ref()
                .and_then(|d| d.startup_ms)
                .unwrap_or(0)
                .min(MAX_ENGAGEMENT.whole_milliseconds() as u64),
        };
        msec.max(1)
    }

    /// Records that `event` was sent at `at`. A session that ended is forgotten.
    pub fn sent(&mut self, event: &Event, at: OffsetDateTime) {
        let id = &event.body.session.id;
        if ends_session(event) {
            self.sessions.remove(id);
            return;
        }
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(id) {
            self.sessions
                .retain(|_, last| at - last.at < MAX_ENGAGEMENT);
            if self.sessions.len() >= MAX_SESSIONS {
                self.sessions.clear();
            }
        }
        let last = Last {
            at,
            watching: watching_after(event),
        };
        match self.sessions.get_mut(id) {
            // Events out of order do not move the clock back.
            Some(previous) if previous.at > at => {}
            Some(previous) => *previous = last,
            None => {
                self.sessions.insert(id.clone(), last);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

fn ends_session(event: &Event) -> bool {
    match event.event_type() {
        "playback.completed" | "playback.exited" => true,
        "playback.error" => event
            .body
            .error
            .as_ref()
            .is_none_or(|e| e.fatal != Some(false)),
        _ => false,
    }
}

/// Whether the player goes on playing after this event: its `playback.state` when it
/// has one, else what the type says.
fn watching_after(event: &Event) -> bool {
    if let Some(state) = event.body.playback.as_ref().and_then(|p| p.state) {
        return state == PlaybackState::Playing;
    }
    let ty = event.event_type();
    matches!(
        ty,
        "playback.started"
            | "playback.resumed"
            | "playback.rebuffer_ended"
            | "playback.seek_ended"
            | "playback.milestone"
            | "playback.heartbeat"
            | "playback.rate_changed"
            | "quality.changed"
            | "volume.changed"
            | "presentation.changed"
    ) || (ty.starts_with("ad.") && ty != "ad.error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(ty: &str, state: &str, at: &str, extra: &str) -> Event {
        let text = format!(
            r#"{{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"{ty}","timestamp":"{at}","session":{{"id":"s1"}},"user":{{"anonymous_id":"a-1"}},"playback":{{"state":"{state}"}}{extra}}}"#
        );
        let raw: Box<RawValue> = serde_json::from_str(&text).expect("json");
        Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid")
    }

    #[test]
    fn playing_time_counts_paused_time_does_not_and_gaps_are_capped() {
        let mut clock = EngagementClock::default();
        let started = event(
            "playback.started",
            "playing",
            "2026-01-01T10:00:00Z",
            r#","data":{"startup_ms":900}"#,
        );
        assert_eq!(clock.engagement_msec(&started, started.timestamp), 900);
        clock.sent(&started, started.timestamp);
        let paused = event("playback.paused", "paused", "2026-01-01T10:00:40Z", "");
        assert_eq!(clock.engagement_msec(&paused, paused.timestamp), 40_000);
        clock.sent(&paused, paused.timestamp);
        let resumed = event("playback.resumed", "playing", "2026-01-01T10:05:00Z", "");
        assert_eq!(clock.engagement_msec(&resumed, resumed.timestamp), 1);
        clock.sent(&resumed, resumed.timestamp);
        let late = event("playback.milestone", "playing", "2026-01-01T12:00:00Z", "");
        assert_eq!(
            clock.engagement_msec(&late, late.timestamp),
            MAX_ENGAGEMENT.whole_milliseconds() as u64
        );
        let done = event("playback.completed", "ended", "2026-01-01T12:00:01Z", "");
        clock.sent(&done, done.timestamp);
        assert!(clock.is_empty());
    }
}
