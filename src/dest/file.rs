//! `type = "file"`: events appended as NDJSON to a local file, exactly as a webhook
//! would carry them. Useful as a local sink, an audit trail, or a demo with no account.

use super::vendors::{self, ConfigProblem, Vendor, VendorConfig, VendorDefaults};
use super::webhook::encode_passthrough;
use super::{BatchLimits, BuildError, EventNames, Refusal, Translate};
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

/// Appends are local and in order: one writer, batches of 1,000 events or 1 MB.
pub static VENDOR: Vendor = Vendor {
    type_name: "file",
    defaults: VendorDefaults {
        batch: BatchLimits {
            max_events: 1000,
            max_bytes: 1 << 20,
        },
        max_concurrency: 1,
        rate_limit: None,
    },
    parse: vendors::parse::<FileConfig>,
    example: r#"path = "playrelay-out/events.ndjson""#,
};

impl VendorConfig for FileConfig {
    /// Delivery writes a file itself ([`encode_lines`]): there is no request to build.
    fn translator(
        &self,
        _names: EventNames,
        _properties: bool,
        _limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        Err(BuildError::NotHttp(VENDOR.type_name))
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        if self.path.as_os_str().is_empty() {
            vec![ConfigProblem::new("path", "must not be empty")]
        } else {
            Vec::new()
        }
    }
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
