//! An append-only file opened on first use and reopened after an error (the file may
//! have been rotated or its disk freed). Shared by the file sink, dead letters and dry runs.

use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub struct AppendFile {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl AppendFile {
    pub fn new(path: PathBuf) -> AppendFile {
        AppendFile {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` in one write; with `durable`, also syncs them to disk.
    pub async fn append(&self, bytes: &[u8], durable: bool) -> std::io::Result<()> {
        let mut file = self.file.lock().await;
        if file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent).await?;
            }
            *file = Some(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .await?,
            );
        }
        let Some(handle) = file.as_mut() else {
            return Ok(());
        };
        let result = async {
            handle.write_all(bytes).await?;
            handle.flush().await?;
            if durable {
                handle.sync_data().await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            *file = None;
        }
        result
    }
}
