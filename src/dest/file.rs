//! `type = "file"`: events appended as NDJSON to a local file, exactly as a webhook
//! would carry them. Useful as a local sink, an audit trail, or a demo with no account.

use super::webhook::encode_passthrough;
use super::{EventNames, Refusal};
use crate::event::Event;
use serde::Deserialize;
use std::path::PathBuf;

/// Keys of `[destinations.NAME]` for `type = "file"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Relative paths are taken from the directory the relay runs in.
    pub path: PathBuf,
}

/// NDJSON lines for a batch, and what was left out.
pub fn encode_lines(
    events: &[&Event],
    names: &EventNames,
    pass_properties: bool,
) -> (Vec<u8>, Vec<usize>, Vec<Refusal>) {
    let mut body = Vec::with_capacity(events.len() * 1024);
    let mut written = Vec::with_capacity(events.len());
    let mut refused = Vec::new();
    for (index, event) in events.iter().enumerate() {
        match encode_passthrough(event, names, pass_properties, &mut body) {
            Ok(()) => {
                body.push(b'\n');
                written.push(index);
            }
            Err(unnamed) => refused.push(Refusal::unnamed(index, event.event_type(), unnamed, "")),
        }
    }
    (body, written, refused)
}
