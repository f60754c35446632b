//! The `file` destination's I/O: NDJSON appended to a local file, flushed per batch.

use crate::dest::file::encode_lines;
use crate::dest::{EventNames, Refusal};
use crate::event::Event;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

pub struct FileSink {
    path: PathBuf,
    names: EventNames,
    pass_properties: bool,
    file: Option<tokio::fs::File>,
}

impl FileSink {
    pub fn new(path: &Path, names: EventNames, pass_properties: bool) -> FileSink {
        FileSink {
            path: path.to_path_buf(),
            names,
            pass_properties,
            file: None,
        }
    }

    /// Appends the batch. Returns the indices written, or the indices that failed and why.
    pub async fn write(
        &mut self,
        events: &[&Event],
    ) -> (
        Result<Vec<usize>, (Vec<usize>, std::io::Error)>,
        Vec<Refusal>,
    ) {
        let (body, written, refused) = encode_lines(events, &self.names, self.pass_properties);
        if written.is_empty() {
            return (Ok(written), refused);
        }
        let result = self.append(&body).await;
        if result.is_err() {
            // Reopen next time: the file may have been moved or its disk freed.
            self.file = None;
        }
        (
            result.map(|()| written.clone()).map_err(|e| (written, e)),
            refused,
        )
    }

    async fn append(&mut self, body: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent).await?;
            }
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(body).await?;
        file.flush().await
    }
}
