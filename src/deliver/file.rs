//! The `file` destination's I/O: NDJSON appended to a local file, flushed per batch.

use super::append::AppendFile;
use crate::dest::file::encode_lines;
use crate::dest::{EventNames, Refusal};
use crate::event::Event;
use std::path::Path;

pub struct FileSink {
    names: EventNames,
    pass_properties: bool,
    file: AppendFile,
}

impl FileSink {
    pub fn new(path: &Path, names: EventNames, pass_properties: bool) -> FileSink {
        FileSink {
            names,
            pass_properties,
            file: AppendFile::new(path.to_path_buf()),
        }
    }

    /// False for event types this file leaves out (`events = { "x" = false }`).
    pub fn sends_type(&self, event_type: &str) -> bool {
        self.names.resolve_passthrough(event_type).is_ok()
    }

    /// Appends the batch. Returns the indices written, or the indices that failed and why.
    pub async fn write(
        &self,
        events: &[&Event],
    ) -> (
        Result<Vec<usize>, (Vec<usize>, std::io::Error)>,
        Vec<Refusal>,
    ) {
        let (body, written, refused) = encode_lines(events, &self.names, self.pass_properties);
        if written.is_empty() {
            return (Ok(written), refused);
        }
        let result = self.file.append(&body, false).await;
        (
            result.map(|()| written.clone()).map_err(|e| (written, e)),
            refused,
        )
    }
}
