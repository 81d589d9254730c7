//! What the kernel can prove about the process at the other end of a guest
//! connection: peer credentials, its cgroup and its pid namespace
//! (docs/protocol.md section 1).
//!
//! Owns two rules. A cgroup is learned through the peer's pidfd
//! (`PIDFD_GET_INFO`, Linux 6.13), which names that process and no other;
//! the id it gives is turned into a path by [`CgroupPaths`]. A fact read from
//! `/proc` by pid is trusted only if the pidfd shows the same process still
//! alive after the read. Which instance those facts select is `registry`'s
//! business.
//!
//! Also owns the cgroup-id cache ([`CgroupPaths`]): bounded by what it
//! costs, shared fairly between containers, and swept of removed cgroups.
//!
//! The `ioctl` lives in the small `pidfd` module below, and `malloc_trim` in
//! `heap`: with `activation`, the only places with `unsafe`.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::rc::Rc;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

use crate::instance::RuleKinds;
use crate::limits::{
    CGROUP_CACHE_SHARE_DIVISOR, CGROUP_ENTRY_OVERHEAD_BYTES, MAX_CGROUP_CACHE_BYTES,
    MAX_CGROUP_FILE_BYTES,
};

/// The facts about a caller that match rules are evaluated against, taken
/// once when its connection is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFacts {
    /// The connecting process, in guestsock's pid namespace.
    pub pid: i32,
    /// Its uid in the host's user namespace.
    pub uid: u32,
    /// Its gid in the host's user namespace.
    pub gid: u32,
    /// Which `/proc`-based kinds were asked for at accept (cgroup, pid), so
    /// that a rule registered later is not evaluated against a missing fact.
    pub gathered: RuleKinds,
    /// The cgroup v2 path (the `0::` line of `/proc/<pid>/cgroup`), shared
    /// with every other connection from the same cgroup.
    pub cgroup: Option<Rc<str>>,
    /// The pid namespace inode.
    pub pidns: Option<u64>,
    /// Why the `/proc` facts could not be trusted, if they were wanted and
    /// could not be established.
    pub proc_error: Option<&'static str>,
}

impl PeerFacts {
    /// Takes the in-guest caller's credentials from the agent's preamble,
    /// on a VM's own listener: from here on they are who is calling. The
    /// host facts (the VMM's cgroup and pid namespace) are dropped; nothing
    /// of the guest's is on the host to read.
    pub fn speaks_for(&mut self, preamble: &crate::preamble::Preamble) {
        *self = PeerFacts {
            pid: preamble.pid,
            uid: preamble.uid,
            gid: preamble.gid,
            gathered: RuleKinds::empty(),
            cgroup: None,
            pidns: None,
            proc_error: None,
        };
    }
}

/// Reads the peer credentials of a connected unix socket and, when `kinds`
/// needs them, its cgroup and pid namespace, proved against the peer's pidfd.
///
/// Fails only if the kernel will not say who the peer is at all.
pub fn peer_facts<S: AsFd>(
    stream: &S,
    kinds: RuleKinds,
    cgroups: &mut CgroupPaths,
) -> io::Result<PeerFacts> {
    let cred = getsockopt(stream, sockopt::PeerCredentials)?;
    let mut facts = PeerFacts {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        gathered: RuleKinds::empty(),
        cgroup: None,
        pidns: None,
        proc_error: None,
    };
    let wanted = kinds.proc_kinds();
    if !wanted.is_empty() {
        facts.gathered = wanted;
        if let Err(reason) = read_proc_facts(stream, &mut facts, wanted, cgroups) {
            facts.cgroup = None;
            facts.pidns = None;
            facts.proc_error = Some(reason);
        }
    }
    Ok(facts)
}

/// Adds to `facts`, taken at accept, the `/proc` facts of kinds that were not
/// gathered then and that `kinds` (the rules in use now) needs: a rule of a
/// new kind was registered since. Facts already gathered are never read
/// again, so a process that moved to another cgroup after connecting keeps
/// the instance it connected as (SECURITY.md). The peer's pidfd still pins
/// the process that connected, so what is read now is that process's; if it
/// has exited, the new facts fail closed.
pub fn gather_missing<S: AsFd>(
    stream: &S,
    facts: &mut PeerFacts,
    kinds: RuleKinds,
    cgroups: &mut CgroupPaths,
) {
    let missing = kinds.proc_kinds().without(facts.gathered);
    if missing.is_empty() {
        return;
    }
    facts.gathered = facts.gathered.union(missing);
    if facts.proc_error.is_some() {
        return;
    }
    let mut more = facts.clone();
    match read_proc_facts(stream, &mut more, missing, cgroups) {
        Ok(()) => {
            if missing.contains(RuleKinds::CGROUP) {
                facts.cgroup = more.cgroup;
            }
            if missing.contains(RuleKinds::PID) {
                facts.pidns = more.pidns;
            }
        }
        Err(reason) => facts.proc_error = Some(reason),
    }
}

/// Fills in the facts `wanted` asks for, then, if any came from `/proc` by
/// pid, checks the pidfd. Only the kinds of rule in use are read (each read
/// is a system call on every connection); a rule of another kind registered
/// later makes the connection gather again, through the same pidfd (`conn`).
fn read_proc_facts<S: AsFd>(
    stream: &S,
    facts: &mut PeerFacts,
    wanted: RuleKinds,
    cgroups: &mut CgroupPaths,
) -> Result<(), &'static str> {
    if facts.pid <= 0 {
        // A peer in a pid namespace we cannot see is reported as pid 0.
        return Err("its pid is not visible from guestsock's pid namespace");
    }
    // Taken before /proc is read: the pidfd pins *this* process, so if the pid
    // is reused later the pidfd still refers to the original, exited one.
    let pidfd = getsockopt(stream, sockopt::PeerPidfd).map_err(
        |_| "the kernel does not provide SO_PEERPIDFD (Linux >= 6.5), so a pid cannot be proved",
    )?;
    let mut read_by_pid = false;
    if wanted.contains(RuleKinds::CGROUP) {
        let (path, proof) = cgroups.path_of(&pidfd, facts.pid)?;
        facts.cgroup = Some(path);
        read_by_pid = proof == Proof::ReadByPid;
    }
    if wanted.contains(RuleKinds::PID) {
        facts.pidns =
            Some(pid_namespace(facts.pid).map_err(|_| "its pid namespace could not be read")?);
        read_by_pid = true;
    }
    if read_by_pid && exited(&pidfd) {
        return Err("the connecting process exited, so its pid may name another process now");
    }
    Ok(())
}

/// Whether the process behind a pidfd has exited. A pidfd polls readable
/// once its process has exited (pidfd_open(2)); until then the pid cannot be
/// reused, so facts read through it before this check belong to it.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        // Readable, or any error: fail closed.
        _ => true,
    }
}

/// How a cgroup path was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// From the id the peer's pidfd gave: it is that process's, whatever
    /// happens to its pid.
    Pidfd,
    /// Read from `/proc/<pid>`: it is the peer's only if the pidfd shows the
    /// process alive afterwards.
    ReadByPid,
}

/// cgroup ids, as the peer's pidfd reports them, and the cgroup v2 paths
/// they name. A cgroup v2 directory cannot be renamed and its id is never
/// given to another cgroup while the system runs, so a pair once proved
/// stays true until the cgroup is removed.
///
/// A pair is learned on the first connection from a cgroup: the path read
/// from `/proc/<pid>/cgroup` is believed for the id only if the directory at
/// that path in the unified hierarchy has that id as its inode number (which
/// cgroupfs makes the cgroup id). Later connections from the same cgroup
/// cost one `ioctl` and no `/proc` read.
///
/// Guests can create cgroups, so the cache is bounded by what it costs
/// ([`MAX_CGROUP_CACHE_BYTES`], oldest out first), each container may fill
/// only its share of that ([`CGROUP_CACHE_SHARE_DIVISOR`]), and
/// [`CgroupPaths::sweep`] drops, a bounded number at a time, the pairs of
/// cgroups that are gone, giving their memory back.
#[derive(Debug, Default)]
pub struct CgroupPaths {
    /// Where the unified hierarchy is mounted, if it is mounted with its
    /// root there, and that mount's device: an inode number proves a cgroup
    /// id only on cgroupfs itself. Without it nothing is learned.
    mount: Option<(PathBuf, u64)>,
    /// Proved pairs.
    known: HashMap<u64, Known>,
    /// The ids of `known`, oldest first: the sweep takes from the front and
    /// puts a live one at the back, and past the bound the front goes.
    order: VecDeque<u64>,
    /// What `known` costs, as counted against the bound.
    bytes: usize,
    /// What each container's share holds, by its name ([`share_of`]).
    shares: HashMap<Rc<str>, usize>,
    /// `PIDFD_GET_INFO` is unknown to this kernel (before Linux 6.13): every
    /// connection reads `/proc`, as it had to before.
    unsupported: bool,
}

/// One proved pair's path, the share it is counted in, and its cost.
#[derive(Debug)]
struct Known {
    path: Rc<str>,
    share: Rc<str>,
    cost: usize,
}

/// The share of the cache a cgroup's pair is counted in: its path up to its
/// first component that is not a systemd slice, which is one container's
/// (`/lxc.payload.c1/init` is in `/lxc.payload.c1`,
/// `/system.slice/docker-ID.scope/x` in `/system.slice/docker-ID.scope`).
fn share_of(path: &str) -> &str {
    let mut end = 0;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        // Components are slices of `path`: where this one ends.
        end = component.as_ptr() as usize - path.as_ptr() as usize + component.len();
        if !component.ends_with(".slice") {
            break;
        }
    }
    if end == 0 { "/" } else { &path[..end] }
}

impl CgroupPaths {
    /// A map that learns, using the cgroup2 mount in `/proc/self/mountinfo`.
    pub fn new() -> CgroupPaths {
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_root_mount(&text))
            .and_then(|point| {
                let dev = fs::metadata(&point).ok()?.dev();
                Some((point, dev))
            });
        CgroupPaths {
            mount,
            ..CgroupPaths::default()
        }
    }

    /// How many pairs are cached.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// What the cached pairs cost, as counted against the bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cgroup path of the process behind `pidfd`, whose pid is `pid`.
    fn path_of(&mut self, pidfd: &OwnedFd, pid: i32) -> Result<(Rc<str>, Proof), &'static str> {
        let id = if self.unsupported {
            None
        } else {
            match pidfd::cgroup_id(pidfd) {
                Ok(id) => Some(id),
                // The process is gone (reaped): nothing can be said of it.
                Err(Errno::ESRCH) => {
                    return Err("the connecting process exited before it could be identified");
                }
                Err(Errno::ENOTTY | Errno::EINVAL | Errno::EOPNOTSUPP) => {
                    self.unsupported = true;
                    None
                }
                Err(_) => None,
            }
        };
        if let Some(known) = id.and_then(|id| self.known.get(&id)) {
            return Ok((Rc::clone(&known.path), Proof::Pidfd));
        }
        let path: Rc<str> = cgroup_of(pid)
            .map_err(|_| "its cgroup could not be read")?
            .into();
        match id {
            Some(id) if self.names(&path, id) => {
                self.learn(id, Rc::clone(&path));
                Ok((path, Proof::Pidfd))
            }
            _ => Ok((path, Proof::ReadByPid)),
        }
    }

    /// Caches a proved pair, unless its container's share is full: then
    /// its connections go on reading `/proc`. Past the whole bound, the
    /// oldest pairs go.
    fn learn(&mut self, id: u64, path: Rc<str>) -> bool {
        let cost = path.len() + CGROUP_ENTRY_OVERHEAD_BYTES;
        let share = share_of(&path);
        let held = self.shares.get(share).copied().unwrap_or(0);
        if held + cost > MAX_CGROUP_CACHE_BYTES / CGROUP_CACHE_SHARE_DIVISOR {
            return false;
        }
        while self.bytes + cost > MAX_CGROUP_CACHE_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.forget(oldest);
        }
        let share: Rc<str> = match self.shares.get_key_value(share) {
            Some((name, _)) => Rc::clone(name),
            None => share.into(),
        };
        *self.shares.entry(Rc::clone(&share)).or_insert(0) += cost;
        self.bytes += cost;
        self.order.push_back(id);
        self.known.insert(id, Known { path, share, cost });
        true
    }

    /// Drops a pair (already taken off `order`).
    fn forget(&mut self, id: u64) {
        let Some(known) = self.known.remove(&id) else {
            return;
        };
        self.bytes -= known.cost;
        if let Some(held) = self.shares.get_mut(&known.share) {
            *held -= known.cost;
            if *held == 0 {
                self.shares.remove(&known.share);
            }
        }
    }

    /// Checks at most `budget` pairs, oldest first, against cgroupfs, and
    /// drops those whose cgroup is gone (or whose path names another
    /// cgroup now); once the cache has shrunk well below what it held, its
    /// tables shrink and the freed memory goes back to the system. Returns
    /// how many were dropped.
    pub fn sweep(&mut self, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.order.len()) {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            let alive = self
                .known
                .get(&id)
                .is_some_and(|known| self.names(&known.path, id));
            if alive {
                self.order.push_back(id);
            } else {
                self.forget(id);
                dropped += 1;
            }
        }
        if dropped > 0 && self.known.len() < self.known.capacity() / 4 {
            self.known.shrink_to_fit();
            self.order.shrink_to_fit();
            self.shares.shrink_to_fit();
            heap::give_back();
        }
        dropped
    }

    /// Whether the cgroup at `path` has id `id`.
    fn names(&self, path: &str, id: u64) -> bool {
        let Some((mount, dev)) = &self.mount else {
            return false;
        };
        fs::metadata(mount.join(path.trim_start_matches('/')))
            .is_ok_and(|meta| meta.is_dir() && meta.dev() == *dev && meta.ino() == id)
    }
}

/// The mount point of the cgroup v2 hierarchy in a `/proc/self/mountinfo`
/// text, if it is mounted with its root there (as on a host; inside a
/// container it may be a subtree, whose paths would not join). Mount points
/// with escaped characters are passed over.
pub fn cgroup2_root_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fields: Vec<&str> = fields.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        (rest.split(' ').next() == Some("cgroup2") && *root == "/" && !point.contains('\\'))
            .then(|| PathBuf::from(point))
    })
}

/// Giving freed memory back to the system.
#[allow(unsafe_code)]
mod heap {
    /// Returns the free pages of the allocator's heap to the system: glibc
    /// keeps freed small blocks (a swept cache's paths) in its arenas, and
    /// gives back only the top of the heap by itself.
    pub fn give_back() {
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim(3) takes no pointer and only releases memory
        // the allocator holds free; it is safe to call at any time.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

/// The one system call nix has no safe wrapper for.
#[allow(unsafe_code)]
mod pidfd {
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::errno::Errno;
    use nix::libc;

    /// `struct pidfd_info` as of `PIDFD_INFO_SIZE_VER0` (64 bytes); the
    /// kernel fills no more than the size the request number carries.
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        ids: [u32; 11],
        exit_code: i32,
    }

    const _: () = assert!(size_of::<PidfdInfo>() == libc::PIDFD_INFO_SIZE_VER0 as usize);

    /// The id of the cgroup v2 the process behind `pidfd` is in now.
    /// `ESRCH` once the process is reaped; `ENOTTY` before Linux 6.13.
    pub fn cgroup_id(pidfd: &OwnedFd) -> Result<u64, Errno> {
        let mut info = PidfdInfo {
            mask: u64::from(libc::PIDFD_INFO_CGROUPID),
            ..PidfdInfo::default()
        };
        // SAFETY: PIDFD_GET_INFO reads and writes one `struct pidfd_info` of
        // the size encoded in the request number, which is `PidfdInfo`'s
        // (asserted above); `info` is a live, exclusively borrowed value of
        // that layout, and `pidfd` is an open descriptor we own.
        let result = unsafe {
            libc::ioctl(
                pidfd.as_raw_fd(),
                libc::PIDFD_GET_INFO,
                &mut info as *mut PidfdInfo,
            )
        };
        Errno::result(result)?;
        if info.mask & u64::from(libc::PIDFD_INFO_CGROUPID) == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(info.cgroupid)
    }
}

/// The cgroup v2 path of a process: the `0::` line of `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: i32) -> io::Result<String> {
    // One open and one or two reads into the stack: this runs on every
    // accepted connection.
    use std::io::Read;
    let mut file = fs::File::open(format!("/proc/{pid}/cgroup"))?;
    let mut buf = [0u8; MAX_CGROUP_FILE_BYTES];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
        // procfs hands out the whole file in one read when it fits: a short
        // read ending a line is the end, and saves a system call.
        if len < buf.len() && buf[len - 1] == b'\n' {
            break;
        }
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cgroup file too long",
            ));
        }
    }
    let text = std::str::from_utf8(&buf[..len])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cgroup file is not UTF-8"))?;
    parse_cgroup_v2(text)
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no cgroup v2 (0::) line"))
}

/// The path of the unified hierarchy's line (`0::/path`) in a
/// `/proc/<pid>/cgroup` text.
pub fn parse_cgroup_v2(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
}

/// The pid namespace of a process, as the inode of `/proc/<pid>/ns/pid`.
pub fn pid_namespace(pid: i32) -> io::Result<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/pid"))?;
    link.to_str()
        .and_then(|s| s.strip_prefix("pid:["))
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected ns link"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn cgroup_v2_line() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/lxc.payload.c1/init\n";
        assert_eq!(parse_cgroup_v2(hybrid), Some("/lxc.payload.c1/init"));
        assert_eq!(parse_cgroup_v2("0::/\n"), Some("/"));
        assert_eq!(parse_cgroup_v2("4:memory:/x\n"), None);
        assert_eq!(parse_cgroup_v2("0::\n"), None);
    }

    #[test]
    fn own_socket_pair_identifies_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut cgroups = CgroupPaths::new();
        let facts = peer_facts(&a, RuleKinds::CGROUP.union(RuleKinds::PID), &mut cgroups).unwrap();
        assert_eq!(facts.pid, std::process::id() as i32);
        assert_eq!(facts.uid, nix::unistd::getuid().as_raw());
        assert_eq!(facts.proc_error, None);
        assert_eq!(
            facts.cgroup.as_deref(),
            Some(cgroup_of(facts.pid).unwrap().as_str())
        );
        assert_eq!(facts.pidns, Some(pid_namespace(facts.pid).unwrap()));
    }

    #[test]
    fn no_proc_read_when_only_uid_rules_exist() {
        let (a, _b) = UnixStream::pair().unwrap();
        let facts = peer_facts(&a, RuleKinds::UID_RANGE, &mut CgroupPaths::new()).unwrap();
        assert_eq!(facts.gathered, RuleKinds::empty());
        assert_eq!(facts.cgroup, None);
    }

    #[test]
    fn a_cgroup_id_is_learned_once_proved_then_answered_from_the_map() {
        let (a, _b) = UnixStream::pair().unwrap();
        let own = cgroup_of(std::process::id() as i32).unwrap();
        let mut cgroups = CgroupPaths::new();
        // guestsock's hosts run the unified hierarchy; without it this test
        // would prove nothing, so it fails rather than skips.
        assert!(cgroups.mount.is_some(), "no cgroup2 mount with its root");
        let pidfd = getsockopt(&a, sockopt::PeerPidfd).unwrap();
        let pid = std::process::id() as i32;
        let (path, proof) = cgroups.path_of(&pidfd, pid).unwrap();
        assert_eq!((&*path, proof), (own.as_str(), Proof::Pidfd));
        assert_eq!(cgroups.known.len(), 1);
        // Given a pid that is not the pidfd's, an answer from the map still
        // names the pidfd's process, never the pid's.
        let (again, proof) = cgroups.path_of(&pidfd, 1).unwrap();
        assert_eq!((&*again, proof), (own.as_str(), Proof::Pidfd));
        assert!(Rc::ptr_eq(&path, &again));
    }

    #[test]
    fn a_share_is_one_container() {
        let cases = [
            ("/lxc.payload.c1/init", "/lxc.payload.c1"),
            ("/lxc.payload.c1", "/lxc.payload.c1"),
            (
                "/system.slice/docker-ab.scope/x/y",
                "/system.slice/docker-ab.scope",
            ),
            (
                "/machine.slice/libpod-1.scope",
                "/machine.slice/libpod-1.scope",
            ),
            (
                "/user.slice/user-1000.slice/session-2.scope",
                "/user.slice/user-1000.slice/session-2.scope",
            ),
            ("/a.slice", "/a.slice"),
            ("/", "/"),
        ];
        for (path, share) in cases {
            assert_eq!(share_of(path), share, "{path}");
        }
    }

    #[test]
    fn the_cache_keeps_to_its_bound_and_each_container_to_its_share() {
        let mut cgroups = CgroupPaths::default();
        let cost = |path: &str| path.len() + CGROUP_ENTRY_OVERHEAD_BYTES;
        let share_cap = MAX_CGROUP_CACHE_BYTES / CGROUP_CACHE_SHARE_DIVISOR;
        // One container learns until its share is full, and no further.
        let mut id = 0;
        let mut held = 0;
        loop {
            id += 1;
            let path = format!("/lxc.payload.greedy/c{id}");
            if !cgroups.learn(id, path.as_str().into()) {
                break;
            }
            held += cost(&path);
        }
        assert!(held <= share_cap && held + cost("/lxc.payload.greedy/c1") * 2 > share_cap);
        assert_eq!(cgroups.bytes(), held);
        // Many containers fill the whole bound; the oldest pairs go first.
        for c in 0..4 * CGROUP_CACHE_SHARE_DIVISOR {
            for n in 0..3000 {
                id += 1;
                assert!(cgroups.learn(id, format!("/lxc.payload.c{c}/n{n}").into()));
                assert!(cgroups.bytes() <= MAX_CGROUP_CACHE_BYTES);
            }
        }
        assert!(!cgroups.known.contains_key(&1), "the oldest stayed");
        assert!(cgroups.known.contains_key(&id), "the newest went");
        let counted: usize = cgroups.known.values().map(|k| k.cost).sum();
        assert_eq!(counted, cgroups.bytes());
        assert_eq!(cgroups.shares.values().sum::<usize>(), counted);
        assert_eq!(cgroups.order.len(), cgroups.known.len());
    }

    #[test]
    fn the_sweep_drops_removed_cgroups_and_keeps_live_ones() {
        let (a, _b) = UnixStream::pair().unwrap();
        let pidfd = getsockopt(&a, sockopt::PeerPidfd).unwrap();
        let mut cgroups = CgroupPaths::new();
        assert!(cgroups.mount.is_some(), "no cgroup2 mount with its root");
        let (own, _) = cgroups.path_of(&pidfd, std::process::id() as i32).unwrap();
        // Pairs no cgroup has (any more): an id that is not the inode.
        for n in 0..10_000u64 {
            assert!(cgroups.learn(u64::MAX - n, format!("/gone.{n}").into()));
        }
        let grown = cgroups.known.capacity();
        // The live one, learned first, is among the first checked.
        assert_eq!(cgroups.sweep(4000), 3999);
        assert_eq!(cgroups.len(), 6002);
        while cgroups.sweep(4000) > 0 {}
        assert_eq!(cgroups.len(), 1);
        assert!(
            cgroups.known.capacity() < grown / 4,
            "the table kept its size"
        );
        assert_eq!(cgroups.bytes(), own.len() + CGROUP_ENTRY_OVERHEAD_BYTES);
        let (again, proof) = cgroups.path_of(&pidfd, 1).unwrap();
        assert!(Rc::ptr_eq(&own, &again) && proof == Proof::Pidfd);
    }

    #[test]
    fn nothing_is_learned_without_a_way_to_prove_it() {
        let (a, _b) = UnixStream::pair().unwrap();
        let pidfd = getsockopt(&a, sockopt::PeerPidfd).unwrap();
        let mut cgroups = CgroupPaths::default();
        let (path, proof) = cgroups.path_of(&pidfd, std::process::id() as i32).unwrap();
        assert_eq!(&*path, cgroup_of(std::process::id() as i32).unwrap());
        assert_eq!(proof, Proof::ReadByPid);
        assert!(cgroups.known.is_empty());
        // A wrong id never proves a path.
        let cgroups = CgroupPaths::new();
        assert!(!cgroups.names("/", u64::MAX));
        assert!(!cgroups.names("/no/such/cgroup", 1));
    }

    #[test]
    fn cgroup2_mount_is_found_only_with_its_root() {
        let host = "24 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let hybrid = "30 24 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let subtree = "50 40 0:30 /lxc.payload.c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let escaped = "24 1 0:22 / /my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        let optional = "24 1 0:22 / /sys/fs/cgroup rw shared:9 master:2 - cgroup2 none rw\n";
        let cases = [
            (host, Some("/sys/fs/cgroup")),
            (hybrid, Some("/sys/fs/cgroup/unified")),
            (subtree, None),
            (escaped, None),
            (optional, Some("/sys/fs/cgroup")),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                cgroup2_root_mount(text),
                want.map(PathBuf::from),
                "{text:?}"
            );
        }
    }
}
