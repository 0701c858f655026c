//! The install layout on a node: a directory per certificate version, a `current` symlink the
//! service reads through (switched atomically, so key and certificate always change together),
//! and a `pending/` slot for the key and request waiting for their certificate.
//!
//! ```text
//! <root>/current -> versions/<serial>
//! <root>/versions/<serial>/{privkey,cert,chain,fullchain}.pem
//! <root>/pending/{privkey.pem,request.json}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::{Profile, ReplyMode};
use crate::PkiError;

pub const KEY_FILE: &str = "privkey.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CHAIN_FILE: &str = "chain.pem";
pub const FULLCHAIN_FILE: &str = "fullchain.pem";
pub const COMBINED_FILE: &str = "combined.pem";
const REQUEST_FILE: &str = "request.json";
const STAGED_CERT_FILE: &str = "cert.pem";
const STAGED_CHAIN_FILE: &str = "chain.pem";
/// Present while a forced rotation has not reached the CA yet (`force` during an outage).
const ROTATION_WANTED_FILE: &str = "rotation-wanted";
/// The node's last results (not secret), beside `current` and `pending`.
const STATE_FILE: &str = "state.json";

/// The environment variable of the test-only crash switch: `FLEETPKI_TEST_CRASH_AT=k` makes the
/// process abort at crash point k of the install, so tests can prove every interruption is safe.
pub const CRASH_AT_ENV: &str = "FLEETPKI_TEST_CRASH_AT";

/// Crash points of the install, in order.
pub const CRASH_POINTS: u32 = 6;

/// Aborts at crash point `k` when the test switch asks for it.
pub fn crash_point(k: u32) {
    if std::env::var(CRASH_AT_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        == Some(k)
    {
        eprintln!("fleetpki: test crash at point {k}");
        std::process::abort();
    }
}

/// Mode and ownership of a file we write (community.crypto's `mode`/`owner`/`group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePerms {
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl FilePerms {
    pub fn private(owner: Option<String>, group: Option<String>, mode: u32) -> Self {
        FilePerms { mode, owner, group }
    }
    /// Certificates are public: readable by all, owned like the key.
    pub fn public_like(key: &FilePerms) -> Self {
        FilePerms {
            mode: 0o644,
            owner: key.owner.clone(),
            group: key.group.clone(),
        }
    }
}

/// Parses an Ansible `mode` given as an octal string (`"0600"`, `"600"`) or integer.
pub fn parse_mode(value: &str) -> Option<u32> {
    let digits = value.trim().trim_start_matches("0o");
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// What the node asked for and is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub request_id: String,
    pub instance_id: String,
    /// `DNS:`/`IP:` names, sorted.
    pub names: Vec<String>,
    pub profile: Profile,
    pub reply_mode: ReplyMode,
    #[serde(default)]
    pub reply_queue_url: Option<String>,
    /// Unix seconds.
    pub submitted_at: i64,
}

impl PendingRequest {
    /// What `--diff` shows of the request waiting for its certificate.
    pub fn diff_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "request_id": self.request_id,
            "subject_alt_name": self.names,
            "certificate_profile": self.profile.as_str(),
        })
    }
}

/// What the node's runs found, kept by the layout in `state.json` so it outlives the pending
/// request (a refusal ends the request, and the report and metrics still say why).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The status of the last fetch that had a request to fetch: `installed`, `pending`,
    /// `refused`, `failed`, or `no_request` (a lost reply queue ended the request).
    #[serde(default)]
    pub last_result: Option<String>,
    /// Since when the last result holds (Unix seconds): the state is rewritten only when the
    /// result changes, so a run that changes nothing writes nothing.
    #[serde(default)]
    pub last_result_at: Option<i64>,
    /// The CA's last refusal of a request of this node.
    #[serde(default)]
    pub last_refusal: Option<RecordedRefusal>,
    /// `renew_before` as the last request used it (recorded when a request is sent): the
    /// installed certificate's renewal time.
    #[serde(default)]
    pub renew_before: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRefusal {
    pub request_id: String,
    pub reason_code: String,
    pub message: String,
    /// Unix seconds.
    pub at: i64,
}

/// The installed key and certificate, as the service sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPair {
    pub key_pem: String,
    pub cert_pem: String,
}

/// Held while a run may change the layout; released on drop.
pub struct NodeLock {
    _lock: nix::fcntl::Flock<File>,
}

/// How long a run waits for another (Ansible or the renewal timer) to release the node's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |e| PkiError::io(path, e)
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io(path, e)),
    }
}

/// Applies owner and group (by name) to a path.
pub fn apply_ownership(path: &Path, perms: &FilePerms) -> Result<(), PkiError> {
    use nix::unistd::{Group, User};
    let fail = |what: String| PkiError::Io {
        path: path.into(),
        source: std::io::Error::other(what),
    };
    let uid = match &perms.owner {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| fail(format!("cannot look up user {name}: {e}")))?
                .ok_or_else(|| fail(format!("owner {name} does not exist on this host")))?
                .uid
                .as_raw(),
        ),
        None => None,
    };
    let gid = match &perms.group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|e| fail(format!("cannot look up group {name}: {e}")))?
                .ok_or_else(|| fail(format!("group {name} does not exist on this host")))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(io(path))?;
    }
    Ok(())
}

/// Writes a file atomically: a temp file in the same directory, created with the final mode (a
/// key is never readable by others, not even for an instant), synced, then renamed into place.
pub fn write_atomic(path: &Path, contents: &[u8], perms: &FilePerms) -> Result<(), PkiError> {
    let dir = path.parent().ok_or_else(|| PkiError::Layout {
        path: path.into(),
        detail: "no parent directory".into(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(perms.mode & 0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let result = (|| {
        file.write_all(contents).map_err(io(&tmp))?;
        apply_ownership(&tmp, perms)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(perms.mode)).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), PkiError> {
    match fs::create_dir(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            ensure_dir(path, mode)
        }
        Err(e) => Err(PkiError::io(path, e)),
    }
}

/// A directory of the layout under its root (`pending`, `versions`, a staging directory):
/// created if missing, and refused when it is a symbolic link or not a directory, so no key or
/// certificate is ever written through a link planted there.
fn ensure_own_dir(path: &Path, mode: u32) -> Result<(), PkiError> {
    ensure_dir(path, mode).or_else(|e| match fs::symlink_metadata(path) {
        Ok(_) => Ok(()), // judged below
        Err(_) => Err(e),
    })?;
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(PkiError::io(
            path,
            std::io::Error::other(
                "is a symbolic link or not a directory: the node's files are written only into real directories; remove it and run again",
            ),
        ));
    }
    Ok(())
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file of the installed pair, through `current/` (what services are configured with).
    pub fn current_path(&self, file: &str) -> PathBuf {
        self.root.join("current").join(file)
    }

    pub fn pending_key_path(&self) -> PathBuf {
        self.root.join("pending").join(KEY_FILE)
    }

    fn pending_request_path(&self) -> PathBuf {
        self.root.join("pending").join(REQUEST_FILE)
    }

    pub fn read_current(&self) -> Result<Option<InstalledPair>, PkiError> {
        let key = read_optional(&self.current_path(KEY_FILE))?;
        let cert = read_optional(&self.current_path(CERT_FILE))?;
        Ok(match (key, cert) {
            (Some(key_pem), Some(cert_pem)) => Some(InstalledPair { key_pem, cert_pem }),
            _ => None,
        })
    }

    pub fn read_pending_key(&self) -> Result<Option<String>, PkiError> {
        read_optional(&self.pending_key_path())
    }

    pub fn read_pending(&self) -> Result<Option<PendingRequest>, PkiError> {
        let path = self.pending_request_path();
        match read_optional(&path)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| PkiError::Layout {
                    path,
                    detail: format!(
                        "unreadable pending request ({e}); delete it to submit a new request"
                    ),
                }),
        }
    }

    fn ensure_pending_dir(&self) -> Result<PathBuf, PkiError> {
        ensure_dir(&self.root, 0o755)?;
        let dir = self.root.join("pending");
        ensure_own_dir(&dir, 0o700)?;
        Ok(dir)
    }

    pub fn write_pending_key(&self, key_pem: &str, perms: &FilePerms) -> Result<(), PkiError> {
        self.ensure_pending_dir()?;
        write_atomic(&self.pending_key_path(), key_pem.as_bytes(), perms)
    }

    pub fn write_pending(&self, request: &PendingRequest) -> Result<(), PkiError> {
        self.ensure_pending_dir()?;
        let text =
            serde_json::to_vec_pretty(request).map_err(|e| PkiError::Build(e.to_string()))?;
        write_atomic(
            &self.pending_request_path(),
            &text,
            &FilePerms::private(None, None, 0o600),
        )
    }

    /// Keeps a verified answer beside the pending key before its message is deleted, so an
    /// install interrupted after that point is completed by the next run without SQS.
    pub fn stage_answer(&self, cert_pem: &str, chain_pem: &str) -> Result<(), PkiError> {
        let dir = self.ensure_pending_dir()?;
        let perms = FilePerms::private(None, None, 0o600);
        write_atomic(&dir.join(STAGED_CHAIN_FILE), chain_pem.as_bytes(), &perms)?;
        write_atomic(&dir.join(STAGED_CERT_FILE), cert_pem.as_bytes(), &perms)
    }

    /// The staged answer, if a previous run got that far.
    pub fn read_staged(&self) -> Result<Option<(String, String)>, PkiError> {
        let dir = self.root.join("pending");
        let cert = read_optional(&dir.join(STAGED_CERT_FILE))?;
        let chain = read_optional(&dir.join(STAGED_CHAIN_FILE))?;
        Ok(cert.zip(chain))
    }

    /// Drops a staged answer (e.g. one that no longer verifies).
    pub fn clear_staged(&self) -> Result<(), PkiError> {
        for name in [STAGED_CERT_FILE, STAGED_CHAIN_FILE] {
            let path = self.root.join("pending").join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PkiError::io(path, e)),
            }
        }
        Ok(())
    }

    /// Takes the node's lock, shared by Ansible runs and the renewal timer, so two runs never
    /// interleave a swap. Waits up to `wait` for a run in progress to finish.
    pub fn lock(&self, wait: std::time::Duration) -> Result<NodeLock, PkiError> {
        use nix::fcntl::{Flock, FlockArg};
        ensure_dir(&self.root, 0o755)?;
        let path = self.root.join(".lock");
        let started = std::time::Instant::now();
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(NodeLock { _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err((_, errno)) => {
                    return Err(PkiError::Layout {
                        path,
                        detail: format!("another run holds the node's lock ({errno}); it is released when that run ends"),
                    })
                }
            }
        }
    }

    /// Removes a pending key left behind by an install interrupted after it switched `current`
    /// (the key is then the live one: it must not be reused as a "new" key). Returns whether it
    /// removed one.
    pub fn discard_pending_key_if_live(&self, live_key_pem: &str) -> Result<bool, PkiError> {
        match self.read_pending_key()? {
            Some(pending) if pending.trim() == live_key_pem.trim() => {
                let path = self.pending_key_path();
                fs::remove_file(&path).map_err(io(&path))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Remembers that a rotation was forced, until a request reaches the CA: a forced rotation
    /// that failed (the queue down) is retried by the next run, forced or not.
    pub fn mark_rotation_wanted(&self) -> Result<(), PkiError> {
        ensure_dir(&self.root, 0o755)?;
        let perms = FilePerms::private(None, None, 0o600);
        write_atomic(&self.root.join(ROTATION_WANTED_FILE), b"forced\n", &perms)
    }

    pub fn rotation_wanted(&self) -> bool {
        fs::symlink_metadata(self.root.join(ROTATION_WANTED_FILE)).is_ok()
    }

    /// A request was sent: the forced rotation is under way.
    pub fn clear_rotation_wanted(&self) -> Result<(), PkiError> {
        let path = self.root.join(ROTATION_WANTED_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PkiError::io(path, e)),
        }
    }

    /// Forgets the pending request (the key stays, so a retry can reuse it).
    /// The node's last results; none yet is the default state.
    pub fn read_state(&self) -> Result<NodeState, PkiError> {
        let path = self.root.join(STATE_FILE);
        match read_optional(&path)? {
            None => Ok(NodeState::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| PkiError::Layout {
                path,
                detail: format!(
                    "unreadable node state ({e}); delete it, the next run writes it again"
                ),
            }),
        }
    }

    /// Replaces the node's state (atomically, world-readable: it holds no secret).
    pub fn write_state(&self, state: &NodeState) -> Result<(), PkiError> {
        ensure_dir(&self.root, 0o755)?;
        let text = serde_json::to_vec_pretty(state).map_err(|e| PkiError::Build(e.to_string()))?;
        write_atomic(
            &self.root.join(STATE_FILE),
            &text,
            &FilePerms::private(None, None, 0o644),
        )
    }

    pub fn clear_pending_request(&self) -> Result<(), PkiError> {
        let path = self.pending_request_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PkiError::io(path, e)),
        }
    }

    /// Installs a verified pair as a new version and switches `current` to it in one rename.
    /// The pending slot is emptied afterwards; the previous version is kept for rollback.
    pub fn install(
        &self,
        serial_hex: &str,
        key_pem: &str,
        cert_pem: &str,
        chain_pem: &str,
        key_perms: &FilePerms,
    ) -> Result<PathBuf, PkiError> {
        if serial_hex.is_empty() || !serial_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PkiError::Layout {
                path: self.root.clone(),
                detail: format!("bad serial {serial_hex:?}"),
            });
        }
        ensure_dir(&self.root, 0o755)?;
        let versions = self.root.join("versions");
        ensure_own_dir(&versions, 0o755)?;
        self.remove_leftovers()?;
        let final_dir = versions.join(serial_hex);
        let target = Path::new("versions").join(serial_hex);
        if fs::read_link(self.root.join("current")).ok().as_deref() == Some(target.as_path()) {
            // An earlier run switched to this version and stopped before cleaning up.
            self.finish_install(serial_hex, None)?;
            return Ok(final_dir);
        }
        let staging = versions.join(format!(".{serial_hex}.tmp-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        ensure_own_dir(&staging, 0o755)?;
        let public = FilePerms::public_like(key_perms);
        let cert = ensure_newline(cert_pem);
        let chain = ensure_newline(chain_pem);
        write_atomic(&staging.join(KEY_FILE), key_pem.as_bytes(), key_perms)?;
        write_atomic(&staging.join(CERT_FILE), cert.as_bytes(), &public)?;
        write_atomic(&staging.join(CHAIN_FILE), chain.as_bytes(), &public)?;
        write_atomic(
            &staging.join(FULLCHAIN_FILE),
            format!("{cert}{chain}").as_bytes(),
            &public,
        )?;
        // For services that want key and certificate in one file (HAProxy and the like).
        write_atomic(
            &staging.join(COMBINED_FILE),
            format!("{}\n{cert}{chain}", key_pem.trim_end()).as_bytes(),
            key_perms,
        )?;
        apply_ownership(&staging, key_perms)?;
        crash_point(3);
        if final_dir.exists() {
            // Left by an interrupted earlier install of this same certificate.
            fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&versions)?;
        crash_point(4);

        let previous = fs::read_link(self.root.join("current")).ok();
        let link_tmp = self
            .root
            .join(format!(".current.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&link_tmp);
        symlink(&target, &link_tmp).map_err(io(&link_tmp))?;
        fs::rename(&link_tmp, self.root.join("current")).map_err(io(&self.root))?;
        sync_dir(&self.root)?;
        crash_point(5);
        self.finish_install(serial_hex, previous.as_deref())?;
        Ok(final_dir)
    }

    /// After the switch: empty the pending slot and prune old versions.
    fn finish_install(&self, serial_hex: &str, previous: Option<&Path>) -> Result<(), PkiError> {
        self.clear_staged()?;
        self.clear_pending_request()?;
        crash_point(6);
        let _ = fs::remove_file(self.pending_key_path());
        self.prune_versions(serial_hex, previous)
    }

    /// Keeps the current and the previous version; older ones go. When the previous one is not
    /// known (an interrupted run switched `current` already), the newest other version is kept.
    fn prune_versions(&self, current: &str, previous: Option<&Path>) -> Result<(), PkiError> {
        let versions = self.root.join("versions");
        let mut others: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&versions).map_err(io(&versions))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == current || name.starts_with('.') {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            others.push((modified, name, entry.path()));
        }
        let keep = match previous
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
        {
            Some(name) => Some(name),
            None => others
                .iter()
                .max_by_key(|(modified, _, _)| *modified)
                .map(|(_, name, _)| name.clone()),
        };
        for (_, name, path) in others {
            if Some(&name) != keep.as_ref() {
                fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Removes what an interrupted install left behind: staging directories (they hold a key
    /// copy) and temporary symlinks. Only called under the node's lock.
    fn remove_leftovers(&self) -> Result<(), PkiError> {
        for dir in [self.root.join("versions"), self.root.clone()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") {
                    let path = entry.path();
                    let removed = if path.is_dir() && !path.is_symlink() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    removed.map_err(io(&path))?;
                }
            }
        }
        Ok(())
    }
}

fn ensure_newline(pem: &str) -> String {
    let trimmed = pem.trim_end();
    format!("{trimmed}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fleetpki-layout-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn modes_parse_like_ansible() {
        assert_eq!(parse_mode("0600"), Some(0o600));
        assert_eq!(parse_mode("640"), Some(0o640));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("rw-"), None);
        assert_eq!(parse_mode("99"), None);
    }

    #[test]
    fn pending_and_versions_are_never_symbolic_links() {
        let root = temp_root("links");
        let elsewhere = temp_root("links-target");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        let layout = Layout::new(&root);
        let perms = FilePerms::private(None, None, 0o600);
        symlink(&elsewhere, root.join("pending")).unwrap();
        let err = layout.write_pending_key("key", &perms).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_file(root.join("pending")).unwrap();
        layout.write_pending_key("key", &perms).unwrap();

        symlink(&elsewhere, root.join("versions")).unwrap();
        let err = layout
            .install("0a", "key", "cert", "chain", &perms)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "written through the link"
        );
    }

    #[test]
    fn install_switches_current_and_keeps_one_previous_version() {
        let root = temp_root("install");
        let layout = Layout::new(&root);
        let perms = FilePerms::private(None, None, 0o600);
        for (i, serial) in ["0a", "0b", "0c"].iter().enumerate() {
            layout
                .write_pending_key(&format!("key{i}"), &perms)
                .unwrap();
            layout
                .install(
                    serial,
                    &format!("key{i}"),
                    &format!("cert{i}"),
                    "chain",
                    &perms,
                )
                .unwrap();
            let pair = layout.read_current().unwrap().unwrap();
            assert_eq!(pair.key_pem, format!("key{i}"));
            assert_eq!(pair.cert_pem, format!("cert{i}\n"));
        }
        assert_eq!(
            fs::read_link(root.join("current")).unwrap(),
            Path::new("versions/0c")
        );
        let mut kept: Vec<String> = fs::read_dir(root.join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["0b", "0c"]);
        let mode = fs::metadata(layout.current_path(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_to_string(layout.current_path(FULLCHAIN_FILE)).unwrap(),
            "cert2\nchain\n"
        );
        assert!(layout.read_pending_key().unwrap().is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pending_request_round_trips_and_clears() {
        let root = temp_root("pending");
        let layout = Layout::new(&root);
        assert!(layout.read_pending().unwrap().is_none());
        let request = PendingRequest {
            request_id: "r".into(),
            instance_id: "i-1".into(),
            names: vec!["DNS:a".into()],
            profile: Profile::Mtls,
            reply_mode: ReplyMode::PerNode,
            reply_queue_url: Some("http://q".into()),
            submitted_at: 5,
        };
        layout.write_pending(&request).unwrap();
        assert_eq!(layout.read_pending().unwrap(), Some(request));
        let mode = fs::metadata(root.join("pending"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        layout.clear_pending_request().unwrap();
        assert!(layout.read_pending().unwrap().is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
