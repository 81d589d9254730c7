//! Durable state: the state directory, and the writer thread that makes a
//! change durable before the admin call that made it is answered.
//!
//! Layout: `<state-dir>/instances/<name>.json`, one file per instance
//! holding its section 4 object, its guest state and, for a `pid` rule, the
//! pid namespace it was registered with. A file is replaced by writing
//! `<name>.json.tmp`, fsyncing it, renaming it over the old one and fsyncing
//! the directory, so a file is always either the old or the new version,
//! never torn. A corrupt file can therefore only come from outside
//! guestsock, and it stops the start rather than being taken for "no
//! instance".
//!
//! The writer thread takes every job queued since its last pass, coalesces
//! jobs for the same instance, and commits them together (one directory
//! fsync per batch), so a slow disk delays the answers that wait for it,
//! never the event loop, and a burst of changes costs few fsyncs. It reports
//! back through a channel and wakes the loop with a `mio::Waker`.
//!
//! A batch is all or nothing as far as the disk allows: every new file is
//! written and fsynced before any rename, and a failure there removes the
//! temporary files and leaves every instance file as it was. Jobs carry the
//! loop's epoch: once a batch fails, the jobs of its epoch still queued were
//! built on it and fail unwritten, until the loop (which abandons them)
//! starts a new epoch.
//!
//! This module owns the files and the thread; which change produces which
//! job is `server`'s business.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use serde::{Deserialize, Serialize};

use crate::instance::{GuestState, InstanceSpec, valid_instance_name};
use crate::issuer::Secret;
use crate::limits::MAX_KEYS_FILE_BYTES;
use crate::log;

/// The version of the instance file format written by this build.
const FORMAT_VERSION: u32 = 1;

/// One instance file's contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredInstance {
    /// Always [`FORMAT_VERSION`] for files this build writes.
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
    /// The bytes of an instance file.
    pub fn encode(instance: &InstanceSpec, state: GuestState, pidns: Option<u64>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            instance: &'a InstanceSpec,
            state: GuestState,
            #[serde(skip_serializing_if = "Option::is_none")]
            pidns: Option<u64>,
        }
        let mut bytes = serde_json::to_vec_pretty(&Borrowed {
            version: FORMAT_VERSION,
            instance,
            state,
            pidns,
        })
        .unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// A change to write: the new contents of an instance file, or its removal,
/// or the identity key file's new contents.
#[derive(Debug)]
pub enum Job {
    /// Write the instance file of `name` with these bytes.
    Write { name: String, bytes: Vec<u8> },
    /// Remove the instance file of `name`.
    Remove { name: String },
    /// Write the identity key file (`identity/keys.json`, mode 0600).
    Keys(Secret),
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

/// The open state directory: holds its lock for as long as it lives.
#[derive(Debug)]
pub struct StateDir {
    instances_dir: PathBuf,
    /// `identity/`: the key file.
    identity_dir: PathBuf,
    /// `flock`ed: a second guestsock on the same directory is refused.
    _lock: nix::fcntl::Flock<File>,
}

/// Opens (creating if needed, mode 0700) the state directory, takes its
/// lock and reads every instance file. Fails, naming the file and the
/// problem, on anything it cannot read with certainty.
pub fn open(dir: &Path) -> Result<(StateDir, Vec<StoredInstance>), String> {
    let instances_dir = dir.join("instances");
    let identity_dir = dir.join("identity");
    for sub in [&instances_dir, &identity_dir] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(sub)
            .map_err(|e| format!("cannot create {}: {e}", sub.display()))?;
    }
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
    let mut loaded = Vec::new();
    let entries =
        fs::read_dir(&instances_dir).map_err(|e| format!("{}: {e}", instances_dir.display()))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", instances_dir.display()))?;
        paths.push(entry.path());
    }
    paths.sort();
    for path in paths {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if file_name.ends_with(".json.tmp") {
            // A write that never reached its rename: its change was never
            // acknowledged, so dropping it loses nothing that was promised.
            log::warn(format_args!(
                "removing {}, an unfinished write from before a crash",
                path.display()
            ));
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            continue;
        }
        let Some(name) = file_name.strip_suffix(".json") else {
            return Err(format!(
                "{}: unexpected file in the state directory; move it away",
                path.display()
            ));
        };
        loaded.push(read_instance(&path, name)?);
    }
    Ok((
        StateDir {
            instances_dir,
            identity_dir,
            _lock: lock,
        },
        loaded,
    ))
}

/// Where `path`'s next version is written before its rename.
pub(crate) fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn read_instance(path: &Path, name: &str) -> Result<StoredInstance, String> {
    let shown = path.display();
    let bytes = fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    if bytes.is_empty() {
        return Err(format!(
            "{shown}: empty file (corrupt state; restore it from a backup or remove it to drop the instance)"
        ));
    }
    let stored: StoredInstance = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{shown}: corrupt state ({e}); restore it from a backup or remove it to drop the instance"))?;
    if stored.version != FORMAT_VERSION {
        return Err(format!(
            "{shown}: format version {} is not {FORMAT_VERSION}, which this guestsock reads",
            stored.version
        ));
    }
    if !valid_instance_name(name) || stored.instance.name != name {
        return Err(format!(
            "{shown}: holds instance {:?}, which does not match its file name",
            stored.instance.name
        ));
    }
    Ok(stored)
}

impl StateDir {
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
        use std::io::Read;
        let mut bytes = Vec::new();
        file.take(MAX_KEYS_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{shown}: {e}"))?;
        if bytes.len() as u64 > MAX_KEYS_FILE_BYTES {
            return Err(format!(
                "{shown}: larger than {MAX_KEYS_FILE_BYTES} bytes (corrupt state)"
            ));
        }
        Ok(Some(bytes))
    }

    /// Writes the identity key file durably now, before the writer thread
    /// runs (a key made at first start signs nothing before it is on disk).
    pub fn write_keys(&self, bytes: &Secret) -> Result<(), String> {
        let mut batch = BTreeMap::new();
        batch.insert(self.keys_path(), Some(bytes.0.clone()));
        self.commit(&batch)
            .map_err(|e| format!("cannot write {}: {e}", self.keys_path().display()))
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
        self,
        jobs: Receiver<Queued>,
        done: Sender<Committed>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) {
        let mut failed_epoch: Option<u64> = None;
        while let Ok(first) = jobs.recv() {
            let mut batch: BTreeMap<PathBuf, Option<Vec<u8>>> = BTreeMap::new();
            let (mut seq, mut epoch) = (None, 0);
            let mut abandoned = None;
            for (job_seq, job_epoch, job) in std::iter::once(first).chain(jobs.try_iter()) {
                if failed_epoch.is_some_and(|failed| job_epoch <= failed) {
                    abandoned = Some((job_seq, job_epoch));
                    continue;
                }
                (seq, epoch) = (Some(job_seq), job_epoch);
                match job {
                    Job::Write { name, bytes } => {
                        batch.insert(self.instance_path(&name), Some(bytes))
                    }
                    Job::Remove { name } => batch.insert(self.instance_path(&name), None),
                    Job::Keys(Secret(bytes)) => batch.insert(self.keys_path(), Some(bytes)),
                };
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
                let error = self
                    .commit(&batch)
                    .err()
                    .map(|e| format!("cannot write the state directory: {e}"));
                if let Some(error) = &error {
                    log::warn(format_args!("{error}"));
                    failed_epoch = Some(epoch);
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

    /// Writes a batch: every new file written and fsynced under a temporary
    /// name, then renamed into place, removals done, and each directory
    /// touched fsynced once so that the renames and removals are durable
    /// too.
    ///
    /// All or nothing as far as the disk allows: if any new file cannot be
    /// written (a full disk, no descriptors), the temporary files are
    /// removed and no file has changed. Only a failing rename, unlink or
    /// directory fsync after that (an I/O error, not a full disk) can leave
    /// part of a batch in place.
    fn commit(&self, batch: &BTreeMap<PathBuf, Option<Vec<u8>>>) -> io::Result<()> {
        let written = write_temporaries(batch);
        if let Err(e) = written {
            for (path, bytes) in batch {
                if bytes.is_some() {
                    let _ = fs::remove_file(temporary(path));
                }
            }
            return Err(e);
        }
        let mut dirs: Vec<&Path> = Vec::new();
        for (path, bytes) in batch {
            if bytes.is_some() {
                fs::rename(temporary(path), path)?;
            } else {
                match fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            if let Some(dir) = path.parent()
                && !dirs.contains(&dir)
            {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            let dir = File::open(dir)?;
            nix::unistd::fsync(dir.as_fd()).map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Where instance `name`'s file is.
    fn instance_path(&self, name: &str) -> PathBuf {
        self.instances_dir.join(format!("{name}.json"))
    }
}

/// Writes and fsyncs every new file of a batch under its temporary name,
/// mode 0600 (an instance's host-only keys, a private key).
fn write_temporaries(batch: &BTreeMap<PathBuf, Option<Vec<u8>>>) -> io::Result<()> {
    for (path, bytes) in batch {
        if let Some(bytes) = bytes {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(temporary(path))?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
    }
    Ok(())
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

    #[test]
    fn writes_coalesces_removes_and_reloads() {
        let dir = temp_dir();
        let (state, loaded) = open(&dir).unwrap();
        assert!(loaded.is_empty());
        let (tx, rx) = mpsc::channel();
        let (mut writer, done) = state
            .spawn_writer(Arc::new(move || {
                let _ = tx.send(());
            }))
            .unwrap();
        let a = StoredInstance::encode(&spec("a"), GuestState::Ready, None);
        writer.submit(Job::Write {
            name: "a".into(),
            bytes: a,
        });
        writer.submit(Job::Write {
            name: "b".into(),
            bytes: b"junk".to_vec(),
        });
        let last = writer.submit(Job::Remove { name: "b".into() });
        let mut seen = 0;
        while seen < last {
            rx.recv().unwrap();
            let committed = done.recv().unwrap();
            assert_eq!(committed.error, None);
            seen = committed.seq;
        }
        writer.finish();
        drop(writer);
        let (_state, loaded) = open(&dir).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].instance.name, "a");
        assert_eq!(loaded[0].state, GuestState::Ready);
        assert_eq!(loaded[0].instance.rule, MatchRule::UidRange(1000, 1));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_stop_the_start_and_tmp_files_are_dropped() {
        let dir = temp_dir();
        drop(open(&dir).unwrap());
        let instances = dir.join("instances");
        fs::write(instances.join("x.json.tmp"), "half").unwrap();
        drop(open(&dir).unwrap());
        assert!(!instances.join("x.json.tmp").exists());

        for (file, text, needle) in [
            ("x.json", "{\"version\":1,\"inst", "corrupt state"),
            ("x.json", "", "empty file"),
            (
                "y.json",
                &String::from_utf8(StoredInstance::encode(
                    &spec("x"),
                    GuestState::Started,
                    None,
                ))
                .unwrap(),
                "does not match its file name",
            ),
            ("notes.txt", "hi", "unexpected file"),
        ] {
            fs::write(instances.join(file), text).unwrap();
            let err = open(&dir).unwrap_err();
            assert!(err.contains(file) && err.contains(needle), "{err}");
            fs::remove_file(instances.join(file)).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_server_on_the_same_directory_is_refused() {
        let dir = temp_dir();
        let first = open(&dir).unwrap();
        let err = open(&dir).unwrap_err();
        assert!(err.contains("in use by another guestsock"), "{err}");
        drop(first);
        fs::remove_dir_all(&dir).unwrap();
    }
}
