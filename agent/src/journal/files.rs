//! What every journal backend keeps outside its database: the owner-only directory, the
//! one-process lock, and the enrolment file.
//!
//! Layout of the journal directory (mode 0700 on Unix):
//!
//! ```text
//! lock             held (advisory, exclusive) while an agent has the journal open
//! enrolment.json   the device token: mode 0600, replaced atomically, never in the database
//! …                the backend's own files
//! ```
//!
//! - **Token storage**: the enrolment lives in its own file rather than in the database so
//!   that its permissions are the file's own (0600 from its first byte, checked and
//!   tightened on every read) rather than whatever the database gives its files, and so
//!   that forgetting it really deletes it instead of leaving it in a free page or an old
//!   log segment. It is written to a temp file, fsynced, renamed over the old one and the
//!   directory fsynced: a crash leaves the old or the new enrolment, never half of one.
//! - **One process**: an exclusive lock on `lock`, taken before the database opens, so
//!   that a second agent gets one clear error ("another daymeter-agent is probably
//!   running") whatever the backend; the database's own lock is a second guard.
//! - **Windows**: the directory's access list stands in for the Unix modes
//!   (`windows_acl`): the agent's account, LocalSystem and Administrators only, set at
//!   every start and inherited by every file in it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Enrolment, JournalError, Tracked};

const LOCK_FILE: &str = "lock";
const ENROLMENT_FILE: &str = "enrolment.json";
const ENROLMENT_TEMP: &str = "enrolment.json.tmp";
/// The key [`JournalError::Corrupt`] names for a damaged enrolment file.
const ENROLMENT_KEY: &str = "enrolment";

/// The journal directory, locked for this process while the value (or a clone) lives.
///
/// Clones share the lock: a migration (`journal/migrate.rs`) holds it from reading the
/// old backend to opening the new one, so no other process slips in between.
#[derive(Clone)]
pub(crate) struct JournalDir {
    dir: PathBuf,
    /// Serialises enrolment writers: they share one temp file name.
    enrolment_writer: Arc<Mutex<()>>,
    /// Held for the journal's lifetime; the lock goes with the last clone of the file.
    _lock: Arc<File>,
}

impl JournalDir {
    /// Creates `dir` owner-only if needed (tightening an existing one) and locks it.
    pub(crate) fn lock(dir: &Path) -> Result<Self, JournalError> {
        create_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        Ok(JournalDir {
            dir: dir.to_path_buf(),
            enrolment_writer: Arc::new(Mutex::new(())),
            _lock: Arc::new(lock),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes under the directory (the database's files plus the enrolment).
    pub(crate) fn size_on_disk(&self) -> Result<u64, JournalError> {
        dir_size(&self.dir).map_err(io_error(&self.dir))
    }

    pub(crate) fn enrolment(&self) -> Result<Option<Enrolment>, JournalError> {
        let path = self.dir.join(ENROLMENT_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        tighten(&path, 0o600)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                key: ENROLMENT_KEY.to_owned(),
                // serde_json's own message may quote the file's text, which holds the
                // token: only the kind of error and where it is.
                reason: format!(
                    "{} ({:?} error at line {} column {})",
                    path.display(),
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })
    }

    pub(crate) fn set_enrolment(&self, enrolment: Option<&Enrolment>) -> Result<(), JournalError> {
        let _writer = self
            .enrolment_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let path = self.dir.join(ENROLMENT_FILE);
        match enrolment {
            Some(enrolment) => {
                let bytes = serde_json::to_vec_pretty(enrolment).map_err(|e| {
                    JournalError::Storage(format!(
                        "cannot encode the enrolment: {:?}",
                        e.classify()
                    ))
                })?;
                self.write_private_atomically(&path, &bytes)
            }
            None => {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(source) => return Err(JournalError::Io { path, source }),
                }
                sync_dir(&self.dir)
            }
        }
    }

    /// Replaces `path` with `bytes` so that a crash at any point leaves the old content
    /// or the new, never a mix, and the file is owner-only from its first byte.
    fn write_private_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
        let temp = self.dir.join(ENROLMENT_TEMP);
        // A temp file left by a crash may carry other permissions: never reuse it.
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&temp)(e)),
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(io_error(&temp))?;
        file.write_all(bytes).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
        drop(file);
        fs::rename(&temp, path).map_err(io_error(path))?;
        sync_dir(&self.dir)
    }
}

/// Decodes one session record, checking that it is filed under its own id.
pub(crate) fn decode_session(key: &[u8], value: &[u8]) -> Result<Tracked, JournalError> {
    let Ok(key) = std::str::from_utf8(key) else {
        return Err(JournalError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "key is not UTF-8".to_owned(),
        });
    };
    let corrupt = |reason: String| JournalError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let tracked: Tracked = serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()))?;
    if tracked.session.id != key {
        return Err(corrupt(format!(
            "record carries session id {:?}",
            tracked.session.id
        )));
    }
    Ok(tracked)
}

/// Encodes a session record.
pub(crate) fn encode_session(tracked: &Tracked) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(tracked).map_err(|e| {
        JournalError::Storage(format!(
            "cannot encode session {} for the journal: {e}",
            tracked.session.id
        ))
    })
}

/// Decodes every record, skipping (with a warning naming it) one that does not decode
/// when `strict` is false, failing on it when true.
pub(crate) fn decode_all<K: AsRef<[u8]>, V: AsRef<[u8]>, E>(
    records: impl Iterator<Item = Result<(K, V), E>>,
    strict: bool,
    storage: impl Fn(E) -> JournalError,
) -> Result<Vec<Tracked>, JournalError> {
    let mut out = Vec::new();
    for record in records {
        let (key, value) = record.map_err(&storage)?;
        match decode_session(key.as_ref(), value.as_ref()) {
            Ok(tracked) => out.push(tracked),
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a journal record that does not decode");
            }
        }
    }
    Ok(out)
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` owner-only (its parents with the system's defaults: the data directory
/// also holds the status socket, which every local account may reach), or tightens an
/// existing one.
fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
            #[cfg(unix)]
            tighten(dir, 0o700)?;
        }
        Err(e) => return Err(io_error(dir)(e)),
    }
    // New or old: the list is set at every start (see `windows_acl`).
    #[cfg(windows)]
    super::windows_acl::make_private(dir).map_err(io_error(dir))?;
    Ok(())
}

/// Clears the permission bits of `path` beyond `mode` (Unix; elsewhere the service's
/// data directory carries the ACLs).
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> Result<(), JournalError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let current = meta.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{current:o}"),
            "journal file was open to other accounts; made owner-only"
        );
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode))
            .map_err(io_error(path))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> Result<(), JournalError> {
    Ok(())
}

/// Takes the journal's exclusive lock, or says who probably holds it.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::InUse {
            dir: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(source)) => Err(JournalError::Io { path, source }),
    }
}

/// Makes a rename or removal in `dir` durable (Unix; elsewhere the rename is as durable
/// as the system makes it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn dir_size(path: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
