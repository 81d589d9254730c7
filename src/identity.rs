//! What the kernel can prove about the process at the other end of a guest
//! connection: peer credentials, and from `/proc` its cgroup and pid
//! namespace (PROTOCOL.md section 1).
//!
//! Owns the rule that a pid read from `/proc` is trusted only if the peer's
//! pidfd shows the same process still alive after the read. Which instance
//! those facts select is `registry`'s business.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

use crate::instance::RuleKinds;

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
    /// The cgroup v2 path (the `0::` line of `/proc/<pid>/cgroup`).
    pub cgroup: Option<Box<str>>,
    /// The pid namespace inode.
    pub pidns: Option<u64>,
    /// Why the `/proc` facts could not be trusted, if they were wanted and
    /// could not be established.
    pub proc_error: Option<&'static str>,
}

/// Reads the peer credentials of a connected unix socket and, when `kinds`
/// needs them, its cgroup and pid namespace, proved against the peer's pidfd.
///
/// Fails only if the kernel will not say who the peer is at all.
pub fn peer_facts<S: AsFd>(stream: &S, kinds: RuleKinds) -> io::Result<PeerFacts> {
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
        if let Err(reason) = read_proc_facts(stream, &mut facts, wanted) {
            facts.cgroup = None;
            facts.pidns = None;
            facts.proc_error = Some(reason);
        }
    }
    Ok(facts)
}

/// Fills in the `/proc` facts `wanted` asks for, then checks the pidfd. Only
/// the kinds of rule in use are read (each read is a system call on every
/// connection); a rule of another kind registered later makes the
/// connection gather again, through the same pidfd check (`conn`).
fn read_proc_facts<S: AsFd>(
    stream: &S,
    facts: &mut PeerFacts,
    wanted: RuleKinds,
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
    if wanted.contains(RuleKinds::CGROUP) {
        facts.cgroup = Some(
            cgroup_of(facts.pid)
                .map_err(|_| "its cgroup could not be read")?
                .into(),
        );
    }
    if wanted.contains(RuleKinds::PID) {
        facts.pidns =
            Some(pid_namespace(facts.pid).map_err(|_| "its pid namespace could not be read")?);
    }
    if exited(&pidfd) {
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

/// The cgroup v2 path of a process: the `0::` line of `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: i32) -> io::Result<String> {
    // One open and one or two reads into the stack: this runs on every
    // accepted connection.
    use std::io::Read;
    let mut file = fs::File::open(format!("/proc/{pid}/cgroup"))?;
    let mut buf = [0u8; 4096];
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
        let facts = peer_facts(&a, RuleKinds::CGROUP.union(RuleKinds::PID)).unwrap();
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
        let facts = peer_facts(&a, RuleKinds::UID_RANGE).unwrap();
        assert_eq!(facts.gathered, RuleKinds::empty());
        assert_eq!(facts.cgroup, None);
    }
}
