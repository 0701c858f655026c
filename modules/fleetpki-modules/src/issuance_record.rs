//! The issuance record on disk: the worker's append-only, hash-chained audit log
//! (`fleetpki_core::record` is its format). Lines are appended under an exclusive lock (a
//! one-shot drain and the service may share a file) and made durable with one fsync per commit,
//! before the worker sends anything they describe.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fleetpki_core::record::{chain_line, next_prev};
use fleetpki_core::worker::AuditRecord;

/// How much of the record's end is read to find the last line (lines are under 4 KiB).
const TAIL_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the issuance record {path}: {source}")]
pub struct RecordError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// An issuance record file.
#[derive(Debug, Clone)]
pub struct IssuanceRecord {
    path: PathBuf,
}

impl IssuanceRecord {
    /// The record at `path`, created (mode 0600) if missing: a worker that cannot write its
    /// record fails before it takes a request.
    pub fn open(path: &Path) -> Result<IssuanceRecord, RecordError> {
        let record = IssuanceRecord {
            path: path.to_path_buf(),
        };
        let existed = path.exists();
        record.open_file().map_err(|e| record.error(e))?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| record.error(e))?;
            }
        }
        Ok(record)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: std::io::Error) -> RecordError {
        RecordError {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn open_file(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            // A symlink planted at the record's path is not followed.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
    }

    /// Appends `records`, stamped with `time`, chained to the record's last line, and makes
    /// them durable (one fsync). Returns the lines written.
    pub fn commit(&self, records: &[AuditRecord], time: &str) -> Result<Vec<String>, RecordError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut file = self.open_file().map_err(|e| self.error(e))?;
        file.lock().map_err(|e| self.error(e))?;
        let written = self.append_locked(&mut file, records, time);
        let _ = file.unlock();
        written.map_err(|e| self.error(e))
    }

    fn append_locked(
        &self,
        file: &mut File,
        records: &[AuditRecord],
        time: &str,
    ) -> std::io::Result<Vec<String>> {
        let len = file.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.take(TAIL_BYTES).read_to_end(&mut tail)?;
        let mut text = String::new();
        // A line cut short by a crash mid-write is ended, so the next line starts on its own
        // (verification reports the cut line).
        if !tail.is_empty() && !tail.ends_with(b"\n") {
            text.push('\n');
            tail.push(b'\n');
        }
        let mut prev = next_prev(&tail);
        let mut lines = Vec::with_capacity(records.len());
        for record in records {
            let (line, hash) = chain_line(record.to_json_value(time), &prev);
            text.push_str(&line);
            text.push('\n');
            lines.push(line);
            prev = hash;
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        Ok(lines)
    }
}
