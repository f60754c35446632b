//! Per-destination event naming: each vendor has a default table from `player-event/1`
//! types to its own names; the `events` table in routes.toml renames or disables types.

use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;

/// One entry of a destination's `events` table: a new name, or `false` to drop the type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NameOverride {
    Rename(String),
    Enabled(bool),
}

#[derive(Debug, Clone, Default)]
pub struct EventNames {
    overrides: HashMap<String, NameOverride>,
}

/// Why a type gets no name at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnamed {
    /// The vendor has no counterpart and the config gives none: `dropped{reason="unmapped"}`.
    Unmapped,
    /// The config turned the type off: `dropped{reason="disabled"}`.
    Disabled,
}

impl Unnamed {
    pub fn reason(self) -> &'static str {
        match self {
            Unnamed::Unmapped => "unmapped",
            Unnamed::Disabled => "disabled",
        }
    }
}

impl EventNames {
    pub fn new(overrides: HashMap<String, NameOverride>) -> Self {
        EventNames { overrides }
    }

    /// The vendor name of `event_type`: the config's override, else the vendor default.
    pub fn resolve<'a>(
        &'a self,
        event_type: &str,
        default: Option<&'static str>,
    ) -> Result<Cow<'a, str>, Unnamed> {
        if self.overrides.is_empty() {
            // The usual config: no hashing per event.
            return default.map(Cow::Borrowed).ok_or(Unnamed::Unmapped);
        }
        match self.overrides.get(event_type) {
            Some(NameOverride::Rename(name)) => Ok(Cow::Borrowed(name.as_str())),
            Some(NameOverride::Enabled(false)) => Err(Unnamed::Disabled),
            Some(NameOverride::Enabled(true)) | None => {
                default.map(Cow::Borrowed).ok_or(Unnamed::Unmapped)
            }
        }
    }

    /// [`EventNames::resolve`], and for an unmapped `custom.<name>` type the name
    /// `custom` makes of `<name>` (vendors send custom events under their own name).
    pub fn resolve_custom<'a>(
        &'a self,
        event_type: &'a str,
        default: Option<&'static str>,
        custom: impl FnOnce(&'a str) -> Cow<'a, str>,
    ) -> Result<Cow<'a, str>, Unnamed> {
        match self.resolve(event_type, default) {
            Err(Unnamed::Unmapped) => match event_type.strip_prefix("custom.") {
                Some(name) => Ok(custom(name)),
                None => Err(Unnamed::Unmapped),
            },
            other => other,
        }
    }

    /// For pass-through destinations, where every type keeps its own name by default.
    pub fn resolve_passthrough<'a>(&'a self, event_type: &'a str) -> Result<&'a str, Unnamed> {
        if self.overrides.is_empty() {
            return Ok(event_type);
        }
        match self.overrides.get(event_type) {
            Some(NameOverride::Rename(name)) => Ok(name.as_str()),
            Some(NameOverride::Enabled(false)) => Err(Unnamed::Disabled),
            _ => Ok(event_type),
        }
    }

    pub fn overrides(&self) -> impl Iterator<Item = (&String, &NameOverride)> {
        self.overrides.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_defaults() {
        let names = EventNames::new(HashMap::from([
            ("playback.heartbeat".into(), NameOverride::Enabled(false)),
            (
                "playback.error".into(),
                NameOverride::Rename("video_failure".into()),
            ),
        ]));
        assert_eq!(
            names.resolve("playback.heartbeat", Some("x")),
            Err(Unnamed::Disabled)
        );
        assert_eq!(
            names.resolve("playback.error", None).as_deref(),
            Ok("video_failure")
        );
        assert_eq!(names.resolve("ad.clicked", None), Err(Unnamed::Unmapped));
        assert_eq!(names.resolve_passthrough("ad.clicked"), Ok("ad.clicked"));
        let upper = |name: &str| Cow::Owned(name.to_uppercase());
        assert_eq!(
            names
                .resolve_custom("custom.chapter", None, upper)
                .as_deref(),
            Ok("CHAPTER")
        );
        assert_eq!(
            names.resolve_custom("ad.clicked", None, upper),
            Err(Unnamed::Unmapped)
        );
    }
}
