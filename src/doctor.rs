//! `guestsock doctor`: looks into a container, through `/proc/<pid>/root`, at
//! the path where the guest socket should be mounted, and says plainly what
//! is wrong with it.
//!
//! Owns the diagnosis, and finding a process to look through for an
//! instance's rule ([`process_of`]); asking the server for the instances is
//! the command line's business.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::limits::MAX_DOCTOR_CGROUP_DIRS;

/// What is at the socket path inside one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The socket guestsock serves, reachable.
    Fine,
    /// Nothing there (not mounted).
    Missing,
    /// A directory: the runtime bind-mounted the socket path before the
    /// socket existed.
    Directory,
    /// A socket, but not the one guestsock serves now (a file mount from
    /// before a restart): its inode and the server's.
    Stale {
        /// The inode seen inside the container.
        inside: u64,
        /// The inode of the server's socket.
        server: u64,
    },
    /// The socket or its directory does not let other users in.
    Permissions(String),
    /// Something else is there.
    NotASocket,
    /// The container cannot be looked into.
    Unreadable(String),
}

impl Finding {
    /// Whether nothing needs fixing.
    pub fn is_fine(&self) -> bool {
        *self == Finding::Fine
    }

    /// A one-line explanation with the fix.
    pub fn explain(&self, path: &str) -> String {
        match self {
            Finding::Fine => format!("{path} is guestsock's socket: fine"),
            Finding::Missing => format!(
                "nothing at {path}: mount the socket's directory there (see docs/mounting.md)"
            ),
            Finding::Directory => format!(
                "{path} is a directory: the socket path was bind-mounted before the socket existed; mount the socket's directory, not the socket file"
            ),
            Finding::Stale { inside, server } => format!(
                "{path} is a stale socket (inode {inside}, the server's is {server}): the socket file was mounted and guestsock has restarted since; mount the directory instead and restart the container"
            ),
            Finding::Permissions(what) => format!("{path}: wrong permissions: {what}"),
            Finding::NotASocket => format!("{path} exists but is not a socket"),
            Finding::Unreadable(why) => format!("cannot look inside: {why}"),
        }
    }
}

/// Diagnoses `path` (absolute, as the container sees it) inside the
/// container of process `pid`, against the server's socket `server_socket`
/// on the host.
pub fn diagnose(pid: i32, path: &str, server_socket: &Path) -> Finding {
    let server = match fs::metadata(server_socket) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(e) => {
            return Finding::Unreadable(format!(
                "the server's socket {}: {e}",
                server_socket.display()
            ));
        }
    };
    let root = format!("/proc/{pid}/root");
    if let Err(e) = fs::metadata(&root) {
        return Finding::Unreadable(format!("{root}: {e}"));
    }
    let inside = format!("{root}/{}", path.trim_start_matches('/'));
    let meta = match fs::symlink_metadata(&inside) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Finding::Missing,
        Err(e) => return Finding::Unreadable(format!("{inside}: {e}")),
    };
    if meta.is_dir() {
        return Finding::Directory;
    }
    if !meta.file_type().is_socket() {
        return Finding::NotASocket;
    }
    if (meta.dev(), meta.ino()) != server {
        return Finding::Stale {
            inside: meta.ino(),
            server: server.1,
        };
    }
    // connect() needs write permission on the socket and search permission
    // on every directory above it, for the container's users too.
    if meta.mode() & 0o002 == 0 {
        return Finding::Permissions(format!(
            "the socket's mode is {:04o}; other users cannot connect (guestsock makes it 0666)",
            meta.mode() & 0o7777
        ));
    }
    if let Some(dir) = Path::new(&inside).parent()
        && let Ok(dir_meta) = fs::metadata(dir)
        && dir_meta.mode() & 0o001 == 0
    {
        return Finding::Permissions(format!(
            "its directory's mode is {:04o}; other users cannot reach the socket (use 0755)",
            dir_meta.mode() & 0o7777
        ));
    }
    match UnixStream::connect(&inside) {
        Ok(_) => Finding::Fine,
        Err(e) => Finding::Unreadable(format!("connecting to {inside}: {e}")),
    }
}

/// A process to look through for an instance whose `match` is `rule` (the
/// instance object's JSON), or why there is none, saying what to do.
///
/// A `pid` rule names its process; a `cgroup` rule any process in the
/// group or below it (the container's init is usually alone at the top);
/// a `uid_range` rule names no process of its own.
pub fn process_of(rule: &serde_json::Value) -> Result<i32, String> {
    if let Some(pid) = rule["pid"].as_i64() {
        return i32::try_from(pid).map_err(|_| format!("pid rule {pid} is not a process id"));
    }
    if let Some(path) = rule["cgroup"].as_str() {
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| crate::identity::cgroup2_root_mount(&text))
            .ok_or(
                "no cgroup v2 hierarchy is mounted here with its root (see /proc/self/mountinfo)",
            )?;
        let dir = mount.join(path.trim_start_matches('/'));
        return first_process(&dir).ok_or_else(|| {
            format!(
                "no process is in cgroup {path} ({}): is the container running? Give --pid PID of one of its processes",
                dir.display()
            )
        });
    }
    Err(
        "its rule is a uid range, which names no process: give --pid PID of one of its processes"
            .into(),
    )
}

/// The first process in the cgroup at `dir` or below, looking at no more
/// than [`MAX_DOCTOR_CGROUP_DIRS`] groups, breadth first.
fn first_process(dir: &Path) -> Option<i32> {
    let mut queue = std::collections::VecDeque::from([dir.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DOCTOR_CGROUP_DIRS {
            return None;
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs"))
            && let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok())
        {
            return Some(pid);
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        children.sort();
        queue.extend(children);
    }
    None
}

/// How a running server's CPU priority compares with what the shipped unit
/// gives it (`dist/guestsock.service`, docs/priority.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityFinding {
    /// At least the unit's nice value and CPU weight: what it has.
    Fine(String),
    /// Something the unit gives it is missing: each, with the command that
    /// gives it.
    Lacking(Vec<String>),
    /// The server's priority cannot be read.
    Unreadable(String),
}

impl PriorityFinding {
    /// Whether nothing needs fixing.
    pub fn is_fine(&self) -> bool {
        matches!(self, PriorityFinding::Fine(_))
    }

    /// What the server has, or what it lacks with the fixes (one line
    /// each, indented).
    pub fn explain(&self) -> String {
        match self {
            PriorityFinding::Fine(has) => format!("priority {has}, as the unit ships it: fine"),
            PriorityFinding::Lacking(missing) => format!(
                "lacks the priority the unit ships (docs/priority.md); \
                 dist/guestsock.service gives it all, or by hand:\n  - {}",
                missing.join("\n  - ")
            ),
            PriorityFinding::Unreadable(why) => format!("cannot read its priority: {why}"),
        }
    }
}

/// Compares the priority of the server with pid `pid` with the shipped
/// unit's `Nice=` and `CPUWeight=`: a lower nice value or a higher weight
/// is fine too.
pub fn diagnose_priority(pid: u32) -> PriorityFinding {
    let shipped = match crate::priority::UnitPriority::shipped() {
        Ok(shipped) => shipped,
        Err(e) => return PriorityFinding::Unreadable(e),
    };
    match crate::priority::of_process(pid) {
        Ok(found) => judge_priority(pid, shipped, &found),
        Err(e) => PriorityFinding::Unreadable(e),
    }
}

/// The judgement of [`diagnose_priority`], on facts already read.
fn judge_priority(
    pid: u32,
    shipped: crate::priority::UnitPriority,
    found: &crate::priority::ProcessPriority,
) -> PriorityFinding {
    use crate::priority::Hierarchy;
    let mut missing = Vec::new();
    let mut has = vec![format!("nice {}", found.nice)];
    if found.nice > shipped.nice {
        missing.push(format!(
            "its nice value is {}, the unit's {}: `renice -n {} -p {pid}` (the event loop's \
             thread; `nice -n {} guestsock serve` at start gives every thread)",
            found.nice, shipped.nice, shipped.nice, shipped.nice
        ));
    }
    match &found.cpu {
        None => missing.push(format!(
            "no cgroup hierarchy on this host has the cpu controller, so it has no CPU weight \
             (the unit's CPUWeight={}): mount the cpu controller",
            shipped.cpu_weight
        )),
        Some(group) => {
            let (file, wanted) = match group.hierarchy {
                Hierarchy::V2 => ("cpu.weight", shipped.cpu_weight),
                Hierarchy::V1 => ("cpu.shares", shipped.cpu_shares()),
            };
            let dir = group.dir.display();
            let set = if group.path.ends_with(".service") {
                let unit = group.path.rsplit('/').next().unwrap_or_default();
                format!(
                    "`systemctl set-property {unit} CPUWeight={}`",
                    shipped.cpu_weight
                )
            } else {
                format!("`echo {wanted} > {dir}/{file}`")
            };
            match group.value {
                Some(value) if value >= wanted => has.push(format!("{file} {value} in {dir}")),
                Some(value) => missing.push(format!(
                    "its cgroup {} has {file} {value}, the unit's {wanted}: {set}",
                    group.path
                )),
                None if group.path == "/" => {
                    let parent = group.dir.display();
                    let enable = if group.hierarchy == Hierarchy::V2 {
                        format!("echo +cpu > {parent}/cgroup.subtree_control && ")
                    } else {
                        String::new()
                    };
                    missing.push(format!(
                        "it is in the root of the cpu hierarchy ({parent}), where it has no \
                         {file} of its own: `{enable}mkdir {parent}/guestsock && echo {wanted} > \
                         {parent}/guestsock/{file} && echo {pid} > {parent}/guestsock/cgroup.procs`"
                    ));
                }
                None => {
                    let parent = group.dir.parent().unwrap_or(&group.dir).display();
                    missing.push(format!(
                        "its cgroup {} has no {file} (the cpu controller is not enabled for \
                         it): `echo +cpu > {parent}/cgroup.subtree_control && echo {wanted} > \
                         {dir}/{file}`",
                        group.path
                    ));
                }
            }
        }
    }
    if missing.is_empty() {
        PriorityFinding::Fine(has.join(", "))
    } else {
        PriorityFinding::Lacking(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::{CpuGroup, Hierarchy, ProcessPriority, UnitPriority};
    use std::path::PathBuf;

    fn group(hierarchy: Hierarchy, path: &str, value: Option<u64>) -> Option<CpuGroup> {
        Some(CpuGroup {
            hierarchy,
            path: path.into(),
            dir: PathBuf::from(format!("/cg{path}").trim_end_matches('/')),
            value,
        })
    }

    #[test]
    fn priority_table() {
        let shipped = UnitPriority {
            nice: -10,
            cpu_weight: 1000,
        };
        // (nice, its cgroup, None if fine or the parts its fix must name)
        type Case = (i32, Option<CpuGroup>, Option<&'static [&'static str]>);
        let cases: &[Case] = &[
            (-10, group(Hierarchy::V2, "/g", Some(1000)), None),
            (-15, group(Hierarchy::V1, "/g", Some(10240)), None),
            (-10, group(Hierarchy::V2, "/g", Some(5000)), None),
            (
                0,
                group(Hierarchy::V2, "/g", Some(1000)),
                Some(&["renice -n -10 -p 7"]),
            ),
            (
                -10,
                group(Hierarchy::V1, "/g", Some(1024)),
                Some(&["echo 10240 > /cg/g/cpu.shares"]),
            ),
            (
                -10,
                group(Hierarchy::V2, "/g", Some(999)),
                Some(&["echo 1000 > /cg/g/cpu.weight"]),
            ),
            (
                -10,
                group(Hierarchy::V2, "/system.slice/guestsock.service", Some(100)),
                Some(&["systemctl set-property guestsock.service CPUWeight=1000"]),
            ),
            (
                0,
                group(Hierarchy::V1, "/", None),
                Some(&[
                    "renice",
                    "mkdir /cg/guestsock && echo 10240 > /cg/guestsock/cpu.shares && echo 7 > /cg/guestsock/cgroup.procs",
                ]),
            ),
            (
                -10,
                group(Hierarchy::V2, "/", None),
                Some(&["echo +cpu > /cg/cgroup.subtree_control && mkdir"]),
            ),
            (
                -10,
                group(Hierarchy::V2, "/a/b", None),
                Some(&[
                    "echo +cpu > /cg/a/cgroup.subtree_control && echo 1000 > /cg/a/b/cpu.weight",
                ]),
            ),
            (-10, None, Some(&["no cgroup hierarchy", "CPUWeight=1000"])),
        ];
        for (nice, cpu, want) in cases {
            let found = ProcessPriority {
                nice: *nice,
                cpu: cpu.clone(),
            };
            let finding = judge_priority(7, shipped, &found);
            let text = finding.explain();
            match want {
                None => assert!(finding.is_fine(), "{found:?}: {text}"),
                Some(parts) => {
                    assert!(!finding.is_fine(), "{found:?}: {text}");
                    for part in *parts {
                        assert!(text.contains(part), "{found:?}: {text} lacks {part}");
                    }
                }
            }
        }
    }
}
