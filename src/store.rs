//! Durable state: the state directory, and the writer thread that makes a
//! change durable before the admin call that made it is answered.
//!
//! Layout: `<state-dir>/state.db`, an SQLite database in WAL mode with
//! `synchronous=FULL`: one row per instance (its section 4 object, its guest
//! state and, for a `pid` rule, the pid namespace it was registered with, as
//! one JSON document), the names of instances removed since the last start,
//! and the state's version. Each batch of changes is one transaction, so it
//! is all or nothing, and one fsync of the write-ahead log makes the whole
//! batch durable: many admin changes arriving together share that fsync
//! (group commit). A damaged database, or a row that does not decode, stops
//! the start with the file, the instance and the problem, rather than being
//! taken for "no instance". `<state-dir>/lock` is `flock`ed by the server
//! that owns the directory.
//!
//! Every transaction stamps what it writes with the next version, and
//! records removals, so that a successor that read the state while its
//! predecessor still served (a SIGHUP handoff) catches up on exactly the
//! changes made meanwhile ([`open`] with `since`).
//!
//! The release before this one kept `<state-dir>/instances/<name>.json`,
//! one file per instance. [`open`] moves such a directory into the database
//! in one transaction, then removes the files: a crash between the two
//! moves the same files again at the next start.
//!
//! The writer thread takes every job queued since its last pass, coalesces
//! jobs for the same instance, and commits them together, so a slow disk
//! delays the answers that wait for it, never the event loop. It reports
//! back through a channel and wakes the loop with a `mio::Waker`. Jobs
//! carry the loop's epoch: once a batch fails, the jobs of its epoch still
//! queued were built on it and fail unwritten, until the loop (which
//! abandons them) starts a new epoch.
//!
//! This module owns the files and the thread; which change produces which
//! job is `server`'s business.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::instance::{
    Config, Devices, GuestAccess, GuestState, InstanceSpec, InstanceType, ListenerSpec, MatchRule,
    valid_instance_name,
};
use crate::issuer::Secret;
use crate::limits::{DECODE_CHUNK, MAX_DECODE_THREADS, STATE_CACHE_KIB, STATE_CHECKPOINT_PAGES};
use crate::limits::{MAX_KEYS_FILE_BYTES, read_at_most};
use crate::log;

/// The version of the instance document format written by this build.
const FORMAT_VERSION: u32 = 1;

/// The database's schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// The database, inside the state directory.
pub const DB_FILE: &str = "state.db";

/// The per-instance directory of the release before the database.
pub const LEGACY_DIR: &str = "instances";

/// The tables, made on first use.
const SCHEMA: &str = "
    CREATE TABLE instances (
        name TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE removed (
        name TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('version', 0);
    PRAGMA user_version = 1;
";

/// One instance's stored document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredInstance {
    /// Always [`FORMAT_VERSION`] for documents this build writes.
    pub version: u32,
    /// The section 4 object, defaults filled in.
    pub instance: InstanceSpec,
    /// The guest's state (`Ready` survives restarts).
    pub state: GuestState,
    /// For a `pid` rule, the pid namespace inode recorded at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidns: Option<u64>,
}

impl StoredInstance {
    /// The bytes of an instance's stored document: compact JSON that leaves
    /// out what is the default (a `container`, guest access `root`, no
    /// config or devices, `cloud_init_id` equal to the name, `root_uid`
    /// as the rule implies), so that loading 65,536 instances parses as
    /// little as it can. [`StoredInstance::decode`] fills them back in;
    /// `location` is always written, since its default (the host name) can
    /// change.
    pub fn encode(instance: &InstanceSpec, state: GuestState, pidns: Option<u64>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Spec<'a> {
            name: &'a str,
            #[serde(rename = "type", skip_serializing_if = "is_container")]
            kind: InstanceType,
            #[serde(skip_serializing_if = "Option::is_none")]
            location: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cloud_init_id: Option<&'a str>,
            #[serde(rename = "match", skip_serializing_if = "MatchRule::is_own_listeners")]
            rule: &'a MatchRule,
            #[serde(skip_serializing_if = "<[ListenerSpec]>::is_empty")]
            listeners: &'a [ListenerSpec],
            #[serde(skip_serializing_if = "Option::is_none")]
            root_uid: Option<u32>,
            #[serde(skip_serializing_if = "is_root")]
            guest_access: GuestAccess,
            #[serde(skip_serializing_if = "Config::is_empty")]
            config: &'a Config,
            #[serde(skip_serializing_if = "Devices::is_empty")]
            devices: &'a Devices,
        }
        fn is_container(kind: &InstanceType) -> bool {
            *kind == InstanceType::Container
        }
        fn is_root(access: &GuestAccess) -> bool {
            *access == GuestAccess::Root
        }
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            instance: Spec<'a>,
            state: GuestState,
            #[serde(skip_serializing_if = "Option::is_none")]
            pidns: Option<u64>,
        }
        let spec = Spec {
            name: &instance.name,
            kind: instance.kind,
            location: instance.location.as_deref(),
            cloud_init_id: instance
                .cloud_init_id
                .as_deref()
                .filter(|id| *id != instance.name),
            rule: &instance.rule,
            listeners: &instance.listeners,
            root_uid: instance
                .root_uid
                .filter(|uid| *uid != instance.rule.default_root_uid()),
            guest_access: instance.guest_access,
            config: &instance.config,
            devices: &instance.devices,
        };
        serde_json::to_vec(&Borrowed {
            version: FORMAT_VERSION,
            instance: spec,
            state,
            pidns,
        })
        .unwrap_or_default()
    }

    /// Decodes a stored document, checking its format version; the error
    /// says what is wrong, for the caller to say where.
    fn decode(bytes: &[u8]) -> Result<StoredInstance, String> {
        if bytes.is_empty() {
            return Err(
                "empty (corrupt state; restore it from a backup or remove it to drop the instance)"
                    .into(),
            );
        }
        let stored: StoredInstance = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "corrupt state ({e}); restore it from a backup or remove it to drop the instance"
            )
        })?;
        if stored.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not {FORMAT_VERSION}, which this guestsock reads",
                stored.version
            ));
        }
        let mut stored = stored;
        let spec = &mut stored.instance;
        spec.cloud_init_id.get_or_insert_with(|| spec.name.clone());
        spec.root_uid.get_or_insert(spec.rule.default_root_uid());
        Ok(stored)
    }
}

/// A change to write: an instance's new document, or its removal.
#[derive(Debug)]
pub enum Job {
    /// Store this document for instance `name`.
    Write { name: String, bytes: Vec<u8> },
    /// Remove instance `name`.
    Remove { name: String },
    /// All of these in one transaction, whatever else is batched with them.
    Batch(Vec<Job>),
    /// Write the identity key file (`identity/keys.json`, mode 0600).
    Keys(Secret),
    /// Replace a public file (the JWKS for `--identity-jwks-file`, mode
    /// 0644) once the batch is durable. Not part of the state: a failure is
    /// logged and fails nothing, and the file is written again at start.
    Publish { path: PathBuf, bytes: Vec<u8> },
}

/// What one pass of the writer thread commits.
#[derive(Default)]
struct Batch {
    /// Instance name to its new document, or `None` for its removal.
    instances: BTreeMap<String, Option<Vec<u8>>>,
    /// The identity key file's new contents.
    keys: Option<Secret>,
    /// A public file to replace after the commit: the newest of each path.
    publish: BTreeMap<PathBuf, Vec<u8>>,
}

impl Job {
    /// Adds the job's changes to a batch: the newest change to a name wins.
    fn add_to(self, batch: &mut Batch) {
        match self {
            Job::Write { name, bytes } => {
                batch.instances.insert(name, Some(bytes));
            }
            Job::Remove { name } => {
                batch.instances.insert(name, None);
            }
            Job::Batch(jobs) => jobs.into_iter().for_each(|job| job.add_to(batch)),
            Job::Keys(secret) => batch.keys = Some(secret),
            Job::Publish { path, bytes } => {
                batch.publish.insert(path, bytes);
            }
        }
    }
}

/// What the writer thread reports for a batch: every job with a sequence
/// number up to `seq` is durable, or failed with `error`.
#[derive(Debug)]
pub struct Committed {
    /// The highest sequence number in the batch.
    pub seq: u64,
    /// The epoch the batch's jobs were submitted in ([`Writer::abandon`]).
    pub epoch: u64,
    /// Why the batch could not be made durable, if it could not. Nothing
    /// of a failed batch is on disk.
    pub error: Option<String>,
}

/// A job with its sequence number and the epoch it was submitted in.
type Queued = (u64, u64, Job);

/// Where read instances go, one by one, as they are decoded: the caller
/// registers each while the rest are still being read and decoded.
pub type Sink<'a> = &'a mut dyn FnMut(StoredInstance) -> Result<(), String>;

/// What was read from the state directory besides the instances.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Instances removed since the snapshot (empty for a full read).
    pub removed: Vec<String>,
    /// The state's version as read: a later read catches up from it.
    pub version: u64,
}

/// The open state directory: holds its lock for as long as it lives.
pub struct StateDir {
    db: Connection,
    path: PathBuf,
    /// `identity/`: the identity key file.
    identity_dir: PathBuf,
    /// The version of the last committed transaction.
    version: u64,
    /// `flock`ed: a second guestsock on the same directory is refused.
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

/// Opens (creating if needed, mode 0700) the state directory, takes its
/// lock, moves a per-instance directory of the previous release into the
/// database, and reads the instances: all of them, or with `since` (the
/// version of a [`snapshot`] taken earlier) only the changes made after it,
/// with the removals; each instance goes to `sink`. Fails, naming the file,
/// the instance and the problem, on anything it cannot read with certainty.
pub fn open(dir: &Path, since: Option<u64>, sink: Sink<'_>) -> Result<(StateDir, Loaded), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.join("lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            format!(
                "{} is in use by another guestsock ({e}); stop it or choose another --state-dir",
                dir.display()
            )
        })?;
    let path = dir.join(DB_FILE);
    let shown = path.display().to_string();
    let damaged = |e: rusqlite::Error| {
        format!("{shown}: {e} (damaged state; restore the state directory from a backup)")
    };
    // Made 0600 before SQLite opens it: SQLite creates a database with
    // 0644 less the umask, and gives its log and shared-memory files the
    // database's mode.
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let db = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(damaged)?;
    configure(&db).map_err(damaged)?;
    let schema: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(damaged)?;
    match schema {
        0 => db.execute_batch(SCHEMA).map_err(damaged)?,
        SCHEMA_VERSION => {}
        other => {
            return Err(format!(
                "{shown}: schema version {other} is not {SCHEMA_VERSION}, which this guestsock reads"
            ));
        }
    }
    // The database file's own directory entry, and the lock's, durable.
    fsync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let identity_dir = dir.join("identity");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&identity_dir)
        .map_err(|e| format!("cannot create {}: {e}", identity_dir.display()))?;
    let mut state = StateDir {
        version: read_version(&db).map_err(damaged)?,
        db,
        path,
        identity_dir,
        _lock: lock,
    };
    state.import_legacy(dir)?;
    let loaded = match since {
        None => read_all(&state.db, &shown, sink)?,
        Some(since) => state.changes_since(since, sink)?,
    };
    // Removals are kept only for a successor that read before them: the
    // next one reads after this point.
    state
        .db
        .execute("DELETE FROM removed", [])
        .map_err(damaged)?;
    Ok((state, loaded))
}

/// Reads the state without taking the directory's lock, while the server
/// that holds it may still be writing: the instances as of one committed
/// version, which [`open`] with `since` later brings up to date. `Ok(None)`
/// when there is nothing to read this way (no database yet, or the previous
/// release's layout, which only [`open`] converts).
pub fn snapshot(dir: &Path, sink: Sink<'_>) -> Result<Option<Loaded>, String> {
    let path = dir.join(DB_FILE);
    if dir.join(LEGACY_DIR).exists() || !path.exists() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let damaged = |e: rusqlite::Error| {
        format!("{shown}: {e} (damaged state; restore the state directory from a backup)")
    };
    let mut db = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(damaged)?;
    // One read transaction: the rows and the version agree.
    let tx = db.transaction().map_err(damaged)?;
    let loaded = read_all(&tx, &shown, sink)?;
    tx.finish().map_err(damaged)?;
    Ok(Some(loaded))
}

/// Every stored instance, for `guestsock dump`, without a server and
/// without taking the lock (a running server's state is read as of its
/// last commit). Reads the previous release's per-instance files where the
/// directory still has them.
pub fn dump(dir: &Path) -> Result<Vec<StoredInstance>, String> {
    if dir.join(LEGACY_DIR).exists() {
        return read_legacy(&dir.join(LEGACY_DIR), false);
    }
    if !dir.join(DB_FILE).exists() {
        return Err(format!(
            "{}: no guestsock state here (no {DB_FILE}); is this the --state-dir?",
            dir.display()
        ));
    }
    let mut loaded = Vec::new();
    snapshot(dir, &mut |stored| {
        loaded.push(stored);
        Ok(())
    })?;
    loaded.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
    Ok(loaded)
}

/// The settings every connection to the database uses.
fn configure(db: &Connection) -> rusqlite::Result<()> {
    // WAL: one append and one fsync per transaction; readers (a successor
    // taking a snapshot, `guestsock dump`) never block the writer.
    db.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the log is fsynced at every commit, so a commit is durable
    // (NORMAL would defer it to the next checkpoint).
    db.pragma_update(None, "synchronous", "FULL")?;
    db.pragma_update(None, "wal_autocheckpoint", STATE_CHECKPOINT_PAGES)?;
    // The log is cut back after a checkpoint, so that it cannot keep the
    // space of a large batch for ever.
    db.pragma_update(None, "journal_size_limit", STATE_CHECKPOINT_PAGES * 4096)?;
    db.pragma_update(None, "cache_size", -STATE_CACHE_KIB)?;
    db.pragma_update(None, "foreign_keys", false)?;
    Ok(())
}

fn read_version(db: &Connection) -> rusqlite::Result<u64> {
    db.query_row("SELECT value FROM meta WHERE key = 'version'", [], |row| {
        row.get::<_, i64>(0)
    })
    .map(|v| v.max(0) as u64)
}

/// Every instance row, decoded, to `sink`; returns the version they are as
/// of.
fn read_all(db: &Connection, shown: &str, sink: Sink<'_>) -> Result<Loaded, String> {
    let damaged = |e: rusqlite::Error| {
        format!("{shown}: {e} (damaged state; restore the state directory from a backup)")
    };
    let version = read_version(db).map_err(damaged)?;
    let mut query = db
        .prepare("SELECT name, body FROM instances")
        .map_err(damaged)?;
    stream_rows(query.query([]).map_err(damaged)?, shown, sink)?;
    Ok(Loaded {
        removed: Vec::new(),
        version,
    })
}

/// A `(name, body)` row, undecoded.
type Row = (String, Vec<u8>);

/// Reads the `(name, body)` rows of a query and hands each, decoded and
/// its name checked against its document, to `sink`.
///
/// Decoding is most of a cold start's work (65,536 instances), so it runs
/// on up to [`MAX_DECODE_THREADS`] threads while this one goes on reading
/// rows and hands the decoded ones to `sink` (which registers them) as
/// they come: reading, decoding and registering overlap.
fn stream_rows(mut rows: rusqlite::Rows<'_>, shown: &str, sink: Sink<'_>) -> Result<(), String> {
    let damaged = |e: rusqlite::Error| {
        format!("{shown}: {e} (damaged state; restore the state directory from a backup)")
    };
    let decode = |(name, body): &Row| -> Result<StoredInstance, String> {
        let stored = StoredInstance::decode(body)
            .map_err(|problem| format!("{shown}: instance {name:?}: {problem}"))?;
        if !valid_instance_name(name) || stored.instance.name != *name {
            return Err(format!(
                "{shown}: instance {name:?}: holds instance {:?}, which does not match its row",
                stored.instance.name
            ));
        }
        Ok(stored)
    };
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_DECODE_THREADS);
    let (raw_tx, raw_rx) = mpsc::sync_channel::<Vec<Row>>(threads * 2);
    let raw_rx = std::sync::Mutex::new(raw_rx);
    let (decoded_tx, decoded_rx) = mpsc::channel::<Result<Vec<StoredInstance>, String>>();
    thread::scope(|scope| {
        for _ in 0..threads {
            let (raw_rx, decoded_tx) = (&raw_rx, decoded_tx.clone());
            scope.spawn(move || {
                loop {
                    let chunk = match raw_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(chunk) = chunk else { return };
                    let decoded = chunk.iter().map(decode).collect();
                    if decoded_tx.send(decoded).is_err() {
                        return;
                    }
                }
            });
        }
        drop(decoded_tx);
        let mut deliver = |decoded: Result<Vec<StoredInstance>, String>| -> Result<(), String> {
            decoded?.into_iter().try_for_each(&mut *sink)
        };
        let mut chunk = Vec::with_capacity(DECODE_CHUNK);
        let read = (|| -> Result<(), String> {
            while let Some(row) = rows.next().map_err(damaged)? {
                let name: String = row.get(0).map_err(damaged)?;
                // Text or blob alike: what matters is whether it decodes.
                let body = row
                    .get_ref(1)
                    .and_then(|value| value.as_bytes().map_err(rusqlite::Error::from))
                    .map_err(damaged)?
                    .to_vec();
                chunk.push((name, body));
                if chunk.len() == DECODE_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(DECODE_CHUNK));
                    raw_tx
                        .send(full)
                        .map_err(|_| format!("{shown}: the decoding threads stopped"))?;
                    while let Ok(decoded) = decoded_rx.try_recv() {
                        deliver(decoded)?;
                    }
                }
            }
            if !chunk.is_empty() {
                raw_tx
                    .send(chunk)
                    .map_err(|_| format!("{shown}: the decoding threads stopped"))?;
            }
            Ok(())
        })();
        // No more rows: the decoders finish what they have, then stop.
        drop(raw_tx);
        read?;
        for decoded in decoded_rx {
            deliver(decoded)?;
        }
        Ok(())
    })
}

/// Reads the previous release's `instances/<name>.json` files; with
/// `clean`, removes unfinished writes (`.json.tmp`) on the way.
fn read_legacy(dir: &Path, clean: bool) -> Result<Vec<StoredInstance>, String> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        paths.push(entry.path());
    }
    paths.sort();
    let mut loaded = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if file_name.ends_with(".json.tmp") {
            // A write that never reached its rename: its change was never
            // acknowledged, so dropping it loses nothing that was promised.
            if clean {
                log::warn(format_args!(
                    "removing {shown}, an unfinished write from before a crash"
                ));
                fs::remove_file(&path).map_err(|e| format!("{shown}: {e}"))?;
            }
            continue;
        }
        let Some(name) = file_name.strip_suffix(".json") else {
            return Err(format!(
                "{shown}: unexpected file in the state directory; move it away"
            ));
        };
        let bytes = fs::read(&path).map_err(|e| format!("{shown}: {e}"))?;
        let stored =
            StoredInstance::decode(&bytes).map_err(|problem| format!("{shown}: {problem}"))?;
        if !valid_instance_name(name) || stored.instance.name != name {
            return Err(format!(
                "{shown}: holds instance {:?}, which does not match its file name",
                stored.instance.name
            ));
        }
        loaded.push(stored);
    }
    Ok(loaded)
}

/// An SQLite error in the words of the system error behind it where there
/// is one: a full disk is `ENOSPC`'s "No space left on device", as for any
/// other write, not SQLite's "database or disk is full".
fn plain(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            io::Error::from_raw_os_error(nix::libc::ENOSPC).to_string()
        }
        _ => e.to_string(),
    }
}

/// Where `path`'s next version is written before its rename.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Replaces the file at `path` durably, mode 0600 (see [`write_file`]).
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, bytes, 0o600)
}

/// Replaces the file at `path` with `bytes`, mode `mode`: written and
/// fsynced under a temporary name, renamed into place, the directory
/// fsynced. A reader sees the old file or the new one, never half of one;
/// a failure leaves the old file as it was (and no temporary file).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let temporary = temporary(path);
    let written = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(e);
    }
    fs::rename(&temporary, path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    let dir = File::open(dir)?;
    nix::unistd::fsync(dir.as_fd()).map_err(io::Error::from)
}

impl StateDir {
    /// Moves the previous release's per-instance files into the database:
    /// one transaction with all of them, then the files removed. A crash in
    /// between leaves files whose contents the database already has; they
    /// are moved again, unchanged, at the next start.
    fn import_legacy(&mut self, dir: &Path) -> Result<(), String> {
        let legacy = dir.join(LEGACY_DIR);
        if !legacy.exists() {
            return Ok(());
        }
        let stored = read_legacy(&legacy, true)?;
        let batch: BTreeMap<String, Option<Vec<u8>>> = stored
            .iter()
            .map(|s| {
                (
                    s.instance.name.clone(),
                    Some(StoredInstance::encode(&s.instance, s.state, s.pidns)),
                )
            })
            .collect();
        self.commit(&batch).map_err(|e| {
            format!(
                "cannot move {} into {}: {e}",
                legacy.display(),
                self.path.display()
            )
        })?;
        for entry in fs::read_dir(&legacy).map_err(|e| format!("{}: {e}", legacy.display()))? {
            let path = entry
                .map_err(|e| format!("{}: {e}", legacy.display()))?
                .path();
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        fs::remove_dir(&legacy).map_err(|e| format!("{}: {e}", legacy.display()))?;
        fsync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        log::info(format_args!(
            "moved {} instance(s) from {} into {}",
            stored.len(),
            legacy.display(),
            self.path.display()
        ));
        Ok(())
    }

    /// The identity key file: `<state-dir>/identity/keys.json`.
    pub fn keys_path(&self) -> PathBuf {
        self.identity_dir.join("keys.json")
    }

    /// The identity key file's bytes, `None` if there is none yet (a
    /// leftover temporary file, an unacknowledged write, is removed). A
    /// file that cannot be read is an error naming it.
    pub fn read_keys(&self) -> Result<Option<Vec<u8>>, String> {
        let path = self.keys_path();
        let shown = path.display();
        let _ = fs::remove_file(temporary(&path));
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{shown}: {e}")),
        };
        read_at_most(file, MAX_KEYS_FILE_BYTES)
            .map(Some)
            .map_err(|e| format!("{shown}: {e} (corrupt state)"))
    }

    /// Writes the identity key file durably now, before the writer thread
    /// runs (a key made at first start signs nothing before it is on disk).
    pub fn write_keys(&self, bytes: &Secret) -> Result<(), String> {
        write_durably(&self.keys_path(), &bytes.0)
            .map_err(|e| format!("cannot write {}: {e}", self.keys_path().display()))
    }

    /// The instances written (to `sink`) and removed after version `since`.
    fn changes_since(&self, since: u64, sink: Sink<'_>) -> Result<Loaded, String> {
        let shown = self.path.display().to_string();
        let damaged = |e: rusqlite::Error| {
            format!("{shown}: {e} (damaged state; restore the state directory from a backup)")
        };
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let mut query = self
            .db
            .prepare("SELECT name, body FROM instances WHERE version > ?1")
            .map_err(damaged)?;
        stream_rows(query.query(params![since]).map_err(damaged)?, &shown, sink)?;
        let mut query = self
            .db
            .prepare("SELECT name FROM removed WHERE version > ?1")
            .map_err(damaged)?;
        let removed = query
            .query_map(params![since], |row| row.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(damaged)?;
        Ok(Loaded {
            removed,
            version: self.version,
        })
    }

    /// Starts the writer thread. `wake` is called after each batch, once its
    /// result is on `Committed`'s channel.
    pub fn spawn_writer(
        self,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<(Writer, Receiver<Committed>)> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Queued>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("guestsock-writer".into())
            .spawn(move || self.run(jobs_rx, done_tx, wake))?;
        Ok((
            Writer {
                jobs: Some(jobs_tx),
                thread: Some(thread),
                next_seq: 1,
                epoch: 0,
            },
            done_rx,
        ))
    }

    /// The writer thread. Blocks for the first job of a batch, then takes
    /// whatever else is queued: under load batches grow and fsyncs per
    /// change fall.
    ///
    /// Once a batch fails, every job of its epoch still queued fails too
    /// without being written: the event loop built those changes on the
    /// failed ones, and it abandons them all (starting a new epoch) as soon
    /// as it hears of the failure.
    fn run(
        mut self,
        jobs: Receiver<Queued>,
        done: Sender<Committed>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) {
        let mut failed_epoch: Option<u64> = None;
        while let Ok(first) = jobs.recv() {
            let mut batch = Batch::default();
            let (mut seq, mut epoch) = (None, 0);
            let mut abandoned = None;
            for (job_seq, job_epoch, job) in std::iter::once(first).chain(jobs.try_iter()) {
                if failed_epoch.is_some_and(|failed| job_epoch <= failed) {
                    abandoned = Some((job_seq, job_epoch));
                    continue;
                }
                (seq, epoch) = (Some(job_seq), job_epoch);
                job.add_to(&mut batch);
            }
            let mut reports = Vec::new();
            if let Some((seq, epoch)) = abandoned {
                reports.push(Committed {
                    seq,
                    epoch,
                    error: Some("an earlier change it was built on could not be written".into()),
                });
            }
            if let Some(seq) = seq {
                // The key file first: a change of keys batched with instance
                // changes is on disk before they are (and their answers wait
                // for both), and a key file that cannot be written fails
                // them all, like any other part of a batch.
                let keys = match &batch.keys {
                    Some(secret) => write_durably(&self.keys_path(), &secret.0)
                        .map_err(|e| format!("cannot write {}: {e}", self.keys_path().display())),
                    None => Ok(()),
                };
                let error = keys
                    .and_then(|()| {
                        if batch.instances.is_empty() {
                            return Ok(());
                        }
                        self.commit(&batch.instances)
                            .map_err(|e| format!("cannot write the state directory: {}", plain(&e)))
                    })
                    .err();
                if let Some(error) = &error {
                    log::warn(format_args!("{error}"));
                    failed_epoch = Some(epoch);
                }
                for (path, bytes) in &batch.publish {
                    if let Err(e) = write_file(path, bytes, 0o644) {
                        log::error(format_args!("cannot write {}: {e}", path.display()));
                    }
                }
                reports.push(Committed { seq, epoch, error });
            }
            for report in reports {
                if done.send(report).is_err() {
                    return;
                }
            }
            wake();
        }
    }

    /// Writes a batch as one transaction stamped with the next version:
    /// durable when this returns `Ok` (the log is fsynced at commit), and
    /// nothing of it on disk when it returns `Err` (SQLite rolls the
    /// transaction back, whether the disk was full or a write failed).
    fn commit(&mut self, batch: &BTreeMap<String, Option<Vec<u8>>>) -> rusqlite::Result<()> {
        let version = self.version + 1;
        let stamp = i64::try_from(version).unwrap_or(i64::MAX);
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO instances (name, version, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, body = excluded.body",
            )?;
            let mut unremove = tx.prepare_cached("DELETE FROM removed WHERE name = ?1")?;
            let mut delete = tx.prepare_cached("DELETE FROM instances WHERE name = ?1")?;
            let mut remember = tx.prepare_cached(
                "INSERT INTO removed (name, version) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            )?;
            for (name, bytes) in batch {
                match bytes {
                    Some(bytes) => {
                        put.execute(params![name, stamp, bytes])?;
                        unremove.execute(params![name])?;
                    }
                    None => {
                        delete.execute(params![name])?;
                        remember.execute(params![name, stamp])?;
                    }
                }
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'version'",
                params![stamp],
            )?;
        }
        tx.commit()?;
        self.version = version;
        Ok(())
    }
}

/// The event loop's handle on the writer thread.
#[derive(Debug)]
pub struct Writer {
    jobs: Option<Sender<Queued>>,
    thread: Option<JoinHandle<()>>,
    next_seq: u64,
    /// Bumped by [`Writer::abandon`]: jobs of an epoch whose batch failed
    /// are never written.
    epoch: u64,
}

impl Writer {
    /// Queues a job; returns its sequence number, durable once a
    /// [`Committed`] with `seq` at least this arrives.
    pub fn submit(&mut self, job: Job) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(jobs) = &self.jobs {
            // Only fails if the thread died; its absence of a report then
            // leaves the waiting answer unsent, which `finish` reports.
            let _ = jobs.send((seq, self.epoch, job));
        }
        seq
    }

    /// The epoch jobs are submitted in now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a new epoch after a failure of this one: the jobs of this
    /// epoch still queued will fail unwritten.
    pub fn abandon(&mut self) {
        self.epoch += 1;
    }

    /// Stops taking jobs and waits until everything queued is written.
    pub fn finish(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn(format_args!("the state writer thread panicked"));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::MatchRule;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "guestsock-store-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn spec(name: &str) -> InstanceSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "match": {"uid_range": [1000, 1]}, "config": {"user.a": "b"}
        }))
        .unwrap()
    }

    /// [`open`], with the instances collected.
    fn load(dir: &Path, since: Option<u64>) -> (StateDir, Vec<StoredInstance>, Loaded) {
        let mut instances = Vec::new();
        let (state, loaded) = open(dir, since, &mut |stored| {
            instances.push(stored);
            Ok(())
        })
        .unwrap();
        (state, instances, loaded)
    }

    fn try_open(dir: &Path) -> Result<StateDir, String> {
        open(dir, None, &mut |_| Ok(())).map(|(state, _)| state)
    }

    /// Submits `jobs` and waits until they are all committed.
    fn write_all(state: StateDir, jobs: Vec<Job>) {
        let (tx, rx) = mpsc::channel();
        let (mut writer, done) = state
            .spawn_writer(Arc::new(move || {
                let _ = tx.send(());
            }))
            .unwrap();
        let mut last = 0;
        for job in jobs {
            last = writer.submit(job);
        }
        let mut seen = 0;
        while seen < last {
            rx.recv().unwrap();
            let committed = done.recv().unwrap();
            assert_eq!(committed.error, None);
            seen = committed.seq;
        }
        writer.finish();
    }

    fn put(name: &str, state: GuestState) -> Job {
        Job::Write {
            name: name.into(),
            bytes: StoredInstance::encode(&spec(name), state, None),
        }
    }

    #[test]
    fn documents_leave_out_defaults_and_decode_to_the_same_instance() {
        for json in [
            r#"{"name":"a","match":{"uid_range":[1000,10]}}"#,
            r#"{"name":"b","type":"virtual-machine","location":"l","cloud_init_id":"x",
                "match":{"cgroup":"/c"},"root_uid":7,"guest_access":"any",
                "config":{"user.a":"1"},"devices":{"eth0":{"type":"nic"}}}"#,
        ] {
            let spec: InstanceSpec = serde_json::from_str(json).unwrap();
            let spec = spec.validate("host1").unwrap();
            let bytes = StoredInstance::encode(&spec, GuestState::Ready, Some(9));
            let back = StoredInstance::decode(&bytes).unwrap();
            assert_eq!(back.instance, spec, "{}", String::from_utf8_lossy(&bytes));
            assert_eq!((back.state, back.pidns), (GuestState::Ready, Some(9)));
        }
        let spec: InstanceSpec =
            serde_json::from_str(r#"{"name":"a","match":{"uid_range":[1000,10]}}"#).unwrap();
        let bytes = StoredInstance::encode(&spec.validate("h").unwrap(), GuestState::Started, None);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"version":1,"instance":{"name":"a","location":"h","match":{"uid_range":[1000,10]}},"state":"Started"}"#
        );
    }

    #[test]
    fn writes_coalesces_removes_and_reloads() {
        let dir = temp_dir();
        let (state, loaded, _) = load(&dir, None);
        assert!(loaded.is_empty());
        write_all(
            state,
            vec![
                put("a", GuestState::Ready),
                put("b", GuestState::Started),
                Job::Remove { name: "b".into() },
            ],
        );
        let (_state, loaded, _) = load(&dir, None);
        assert_eq!(loaded.len(), 1);
        let a = &loaded[0];
        assert_eq!(a.instance.name, "a");
        assert_eq!(a.state, GuestState::Ready);
        assert_eq!(a.instance.rule, MatchRule::UidRange(1000, 1));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_catches_up_on_the_changes_made_after_it() {
        let dir = temp_dir();
        let (state, _, _) = load(&dir, None);
        write_all(
            state,
            vec![put("a", GuestState::Started), put("b", GuestState::Started)],
        );
        // A successor reads while its predecessor still holds the lock...
        let (state, _, _) = load(&dir, None);
        let mut read = 0;
        let snap = snapshot(&dir, &mut |_| {
            read += 1;
            Ok(())
        })
        .unwrap()
        .expect("a snapshot");
        assert_eq!(read, 2);
        // ... which goes on writing ...
        write_all(
            state,
            vec![
                put("a", GuestState::Ready),
                put("c", GuestState::Started),
                Job::Remove { name: "b".into() },
            ],
        );
        // ... then lets go: the successor reads exactly what changed.
        let (_state, changed, caught) = load(&dir, Some(snap.version));
        let mut names: Vec<&str> = changed.iter().map(|s| s.instance.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(caught.removed, ["b"]);
        assert!(caught.version > snap.version);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_previous_layout_is_moved_in_and_unfinished_writes_dropped() {
        let dir = temp_dir();
        let legacy = dir.join(LEGACY_DIR);
        fs::create_dir_all(&legacy).unwrap();
        for name in ["a", "b"] {
            fs::write(
                legacy.join(format!("{name}.json")),
                serde_json::to_vec_pretty(&StoredInstance {
                    version: 1,
                    instance: spec(name),
                    state: GuestState::Ready,
                    pidns: None,
                })
                .unwrap(),
            )
            .unwrap();
        }
        fs::write(legacy.join("c.json.tmp"), "half").unwrap();
        assert_eq!(dump(&dir).unwrap().len(), 2, "dump reads the old layout");
        assert!(
            snapshot(&dir, &mut |_| Ok(())).unwrap().is_none(),
            "only open converts"
        );
        let (state, loaded, _) = load(&dir, None);
        assert_eq!(loaded.len(), 2);
        assert!(loaded.iter().all(|s| s.state == GuestState::Ready));
        assert!(!legacy.exists());
        drop(state);
        let (_state, loaded, _) = load(&dir, None);
        assert_eq!(loaded.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_state_stops_the_start_with_where_and_what() {
        let dir = temp_dir();
        let legacy = dir.join(LEGACY_DIR);
        fs::create_dir_all(&legacy).unwrap();
        let other = String::from_utf8(StoredInstance::encode(
            &spec("x"),
            GuestState::Started,
            None,
        ))
        .unwrap();
        for (file, text, needle) in [
            ("x.json", "{\"version\":1,\"inst", "corrupt state"),
            ("x.json", "", "empty"),
            ("y.json", other.as_str(), "does not match its file name"),
            ("notes.txt", "hi", "unexpected file"),
        ] {
            fs::write(legacy.join(file), text).unwrap();
            let err = try_open(&dir).unwrap_err();
            assert!(err.contains(file) && err.contains(needle), "{err}");
            fs::remove_file(legacy.join(file)).unwrap();
        }
        fs::remove_dir(&legacy).unwrap();

        // A row that does not decode names the database and the instance.
        let (state, _, _) = load(&dir, None);
        write_all(
            state,
            vec![Job::Write {
                name: "bad".into(),
                bytes: b"{\"version\":1".to_vec(),
            }],
        );
        let err = try_open(&dir).unwrap_err();
        assert!(
            err.contains(DB_FILE)
                && err.contains("instance \"bad\"")
                && err.contains("corrupt state"),
            "{err}"
        );
        // A database that is not one.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = try_open(&dir).unwrap_err();
        assert!(
            err.contains(DB_FILE) && err.contains("damaged state"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_state_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let (state, _, _) = load(&dir, None);
        write_all(state, vec![put("a", GuestState::Started)]);
        let (_state, _, _) = load(&dir, None);
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            let mode = metadata.permissions().mode() & 0o777;
            let want = if metadata.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", entry.path().display());
        }
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_server_on_the_same_directory_is_refused() {
        let dir = temp_dir();
        let first = try_open(&dir).unwrap();
        let err = try_open(&dir).unwrap_err();
        assert!(err.contains("in use by another guestsock"), "{err}");
        drop(first);
        fs::remove_dir_all(&dir).unwrap();
    }
}
