//! The issuance record on disk: the worker's append-only, hash-chained audit log
//! (`fleetpki_core::record` is its format). Lines are appended under an exclusive lock (a
//! one-shot drain and the service may share a file) and made durable with one fsync per commit,
//! before the worker sends anything they describe. The batches a drain keeps in flight commit
//! through [`GroupCommit`]: one fsync for the lines of all the batches that waited for it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleetpki_core::record::{chain_line, next_prev};
use fleetpki_core::worker::AuditRecord;

/// How much of the record's end is read at a time to find the start of its last line (lines are
/// usually under 4 KiB; a longer one is read in more steps).
const TAIL_BYTES: u64 = 64 * 1024;

/// Cloned for every batch of a group commit that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot write the issuance record {path}: {source}")]
pub struct RecordError {
    path: String,
    #[source]
    source: Arc<std::io::Error>,
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
            record.sync_dir().map_err(|e| record.error(e))?;
        }
        Ok(record)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: std::io::Error) -> RecordError {
        RecordError {
            path: self.path.display().to_string(),
            source: Arc::new(source),
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
        // Moved away meanwhile (a log rotation): the new file's directory entry is synced too.
        let recreated = !self.path.exists();
        let mut file = self.open_file().map_err(|e| self.error(e))?;
        file.lock().map_err(|e| self.error(e))?;
        let written = self.append_locked(&mut file, records, time);
        let _ = file.unlock();
        let written = written.map_err(|e| self.error(e))?;
        if recreated {
            self.sync_dir().map_err(|e| self.error(e))?;
        }
        Ok(written)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
            None => Ok(()),
        }
    }

    /// The record's end, from the start of its last line (whole lines only, whatever their
    /// length), for [`next_prev`].
    fn tail(file: &mut File) -> std::io::Result<Vec<u8>> {
        let len = file.metadata()?.len();
        let mut start = len;
        let mut tail = Vec::new();
        loop {
            let from = start.saturating_sub(TAIL_BYTES);
            let mut chunk = Vec::new();
            file.seek(SeekFrom::Start(from))?;
            file.take(start - from).read_to_end(&mut chunk)?;
            chunk.extend_from_slice(&tail);
            tail = chunk;
            start = from;
            // The newline before the last line is in hand (the final byte's does not count).
            let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
            if start == 0 || body.contains(&b'\n') {
                return Ok(tail);
            }
        }
    }

    fn append_locked(
        &self,
        file: &mut File,
        records: &[AuditRecord],
        time: &str,
    ) -> std::io::Result<Vec<String>> {
        let mut tail = Self::tail(file)?;
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

/// The commits of the batches in flight, grouped: while one commit (append and fsync) runs on a
/// blocking thread, the lines of the batches that come meanwhile wait, and go together in the
/// next one. Each batch goes on only once its own lines are durable, as with a commit of its
/// own; the runtime's thread keeps serving the other batches' SQS calls during the fsync.
pub struct GroupCommit {
    record: IssuanceRecord,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    waiting: Vec<Waiter>,
    /// A commit's caller is writing groups (it goes on until nothing waits).
    leading: bool,
}

struct Waiter {
    records: Vec<AuditRecord>,
    done: tokio::sync::oneshot::Sender<Result<Vec<String>, RecordError>>,
}

impl GroupCommit {
    pub fn new(record: IssuanceRecord) -> GroupCommit {
        GroupCommit {
            record,
            state: Mutex::new(GroupState::default()),
        }
    }

    /// Makes `records` durable, stamped with `clock()` when their group is written; returns
    /// their lines. The first caller with nothing being written writes its group and every
    /// group that gathers meanwhile. Not to be cancelled (a batch's processing never is).
    pub async fn commit(
        &self,
        records: Vec<AuditRecord>,
        clock: fn() -> String,
    ) -> Result<Vec<String>, RecordError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        let lead = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.waiting.push(Waiter { records, done });
            !std::mem::replace(&mut state.leading, true)
        };
        if lead {
            loop {
                let mut group = {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.waiting.is_empty() {
                        state.leading = false;
                        break;
                    }
                    std::mem::take(&mut state.waiting)
                };
                let counts: Vec<usize> = group.iter().map(|w| w.records.len()).collect();
                let all: Vec<AuditRecord> = group
                    .iter_mut()
                    .flat_map(|w| std::mem::take(&mut w.records))
                    .collect();
                let record = self.record.clone();
                let written = tokio::task::spawn_blocking(move || record.commit(&all, &clock()))
                    .await
                    .unwrap_or_else(|e| Err(self.record.error(std::io::Error::other(e))));
                match written {
                    Ok(lines) => {
                        let mut lines = lines.into_iter();
                        for (waiter, count) in group.into_iter().zip(counts) {
                            let _ = waiter.done.send(Ok(lines.by_ref().take(count).collect()));
                        }
                    }
                    Err(e) => {
                        for waiter in group {
                            let _ = waiter.done.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        committed.await.unwrap_or_else(|_| {
            Err(self.record.error(std::io::Error::other(
                "the commit of these lines was abandoned",
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(reason: String) -> AuditRecord {
        AuditRecord {
            message_id: "m".into(),
            request_id: None,
            instance_id: Some("i-1".into()),
            sender_id: None,
            decision: "rejected",
            reason_code: Some("instance_id_mismatch"),
            reason: Some(reason),
            signer: "file",
            signer_ref: None,
            serial: None,
            not_after: None,
            csr_sha256: None,
            certificate_sha256: None,
            idempotency_token: None,
        }
    }

    #[test]
    fn lines_longer_than_the_tail_window_keep_the_chain_whole() {
        let dir = std::env::temp_dir().join(format!("fleetpki-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let record = IssuanceRecord::open(&dir.join("issuance.jsonl")).unwrap();
        // An attacker-sized reason: three times the window.
        record
            .commit(&[line("x".repeat(3 * TAIL_BYTES as usize))], "t")
            .unwrap();
        record.commit(&[line("short".into())], "t").unwrap();
        record
            .commit(
                &[line("y".repeat(TAIL_BYTES as usize)), line("z".into())],
                "t",
            )
            .unwrap();
        let text = std::fs::read_to_string(dir.join("issuance.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert_eq!(fleetpki_core::record::verify(&text), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
