//! Every destination type in one place: its config, its `type` name, how its
//! translator is built and which secrets its config holds. A new vendor is its own file
//! plus an arm in each match here and its defaults in `config::VENDORS`.

use super::file::FileConfig;
use super::ga4::{Ga4Config, Ga4Translator};
use super::segment::{SegmentConfig, SegmentTranslator};
use super::tealium::{TealiumConfig, TealiumTranslator};
use super::webhook::{self, WebhookConfig, WebhookTranslator};
use super::{BatchLimits, BuildError, EventNames, Translate};

/// A destination's own keys, by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum DestinationKind {
    Webhook(WebhookConfig),
    File(FileConfig),
    Segment(SegmentConfig),
    Ga4(Ga4Config),
    Tealium(TealiumConfig),
}

impl DestinationKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            DestinationKind::Webhook(_) => "webhook",
            DestinationKind::File(_) => "file",
            DestinationKind::Segment(_) => "segment",
            DestinationKind::Ga4(_) => "ga4",
            DestinationKind::Tealium(_) => "tealium",
        }
    }

    /// The translator of an HTTP destination; a file has none.
    pub fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        Ok(match self {
            DestinationKind::Webhook(c) => {
                Box::new(WebhookTranslator::new(c, names, properties, limits)?)
            }
            DestinationKind::Segment(c) => {
                Box::new(SegmentTranslator::new(c, names, properties, limits)?)
            }
            DestinationKind::Ga4(c) => Box::new(Ga4Translator::new(c, names, properties, limits)?),
            DestinationKind::Tealium(c) => {
                Box::new(TealiumTranslator::new(c, names, properties, limits)?)
            }
            DestinationKind::File(_) => return Err(BuildError::NotHttp("file")),
        })
    }

    /// The secrets the config holds, each with the key that holds it, for the length
    /// check at config load (see [`super::MIN_SECRET_CHARS`]).
    pub fn secrets(&self) -> Vec<(&'static str, String)> {
        match self {
            DestinationKind::Segment(c) => vec![("write_key", c.write_key.clone())],
            DestinationKind::Ga4(c) => vec![("api_secret", c.api_secret.clone())],
            DestinationKind::Webhook(c) => webhook::configured_secrets(c),
            DestinationKind::Tealium(_) | DestinationKind::File(_) => Vec::new(),
        }
    }
}
