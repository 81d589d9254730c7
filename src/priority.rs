//! The CPU priority that keeps guestsock ahead of its guests: what the
//! shipped systemd unit gives it (`dist/guestsock.service`, its `Nice=` and
//! `CPUWeight=`, compiled into the binary), and what a running process has
//! (its nice value, and its cgroup's `cpu.weight` on cgroup v2 or
//! `cpu.shares` on a cgroup v1 `cpu` hierarchy).
//!
//! Owns reading those facts, with pure parsers for the unit, `/proc/PID/stat`,
//! `/proc/PID/cgroup` and `/proc/self/mountinfo`. Judging them and saying how
//! to fix them is `doctor`'s; docs/priority.md explains the choice.

use std::fs;
use std::path::{Path, PathBuf};

use crate::limits::{MAX_CGROUP_FILE_BYTES, MAX_MOUNTINFO_BYTES, read_at_most};

/// The unit file guestsock ships, as built into this binary.
pub const SHIPPED_UNIT: &str = include_str!("../dist/guestsock.service");

/// systemd's default `CPUWeight=` (cgroup v2's default `cpu.weight`).
pub const DEFAULT_CPU_WEIGHT: u64 = 100;

/// cgroup v1's default `cpu.shares`, which systemd maps weight 100 to.
pub const DEFAULT_CPU_SHARES: u64 = 1024;

/// The priority a unit's `[Service]` section sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPriority {
    /// `Nice=`: -20 (first) to 19.
    pub nice: i32,
    /// `CPUWeight=`: 1 to 10000, 100 being everyone's default.
    pub cpu_weight: u64,
}

impl UnitPriority {
    /// What `dist/guestsock.service` sets.
    pub fn shipped() -> Result<UnitPriority, String> {
        parse_unit(SHIPPED_UNIT).map_err(|e| format!("the shipped unit: {e}"))
    }

    /// The `cpu.shares` systemd writes for this weight where the cpu
    /// controller is on cgroup v1: `weight * 1024 / 100`.
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_weight * DEFAULT_CPU_SHARES / DEFAULT_CPU_WEIGHT
    }
}

/// Reads `Nice=` and `CPUWeight=` from a unit file's `[Service]` section, as
/// systemd does: `#` and `;` start comments, the last assignment wins, and
/// an empty assignment resets the key. Both must end up set.
pub fn parse_unit(text: &str) -> Result<UnitPriority, String> {
    let mut in_service = false;
    let (mut nice, mut weight) = (None, None);
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_service {
            continue;
        }
        let (key, value) = (key.trim(), value.trim());
        let at = || format!("line {}: {key}={value}", number + 1);
        match key {
            "Nice" if value.is_empty() => nice = None,
            "Nice" => {
                let n: i32 = value
                    .parse()
                    .map_err(|_| format!("{}: not a number", at()))?;
                if !(-20..=19).contains(&n) {
                    return Err(format!("{}: outside -20..19", at()));
                }
                nice = Some(n);
            }
            "CPUWeight" if value.is_empty() => weight = None,
            "CPUWeight" => {
                let w: u64 = value
                    .parse()
                    .map_err(|_| format!("{}: not a number from 1 to 10000", at()))?;
                if !(1..=10_000).contains(&w) {
                    return Err(format!("{}: outside 1..10000", at()));
                }
                weight = Some(w);
            }
            _ => {}
        }
    }
    match (nice, weight) {
        (Some(nice), Some(cpu_weight)) => Ok(UnitPriority { nice, cpu_weight }),
        (None, _) => Err("no Nice= in [Service]".into()),
        (_, None) => Err("no CPUWeight= in [Service]".into()),
    }
}

/// The nice value in a `/proc/PID/stat` line (its 19th field, counted after
/// the command name, which may itself hold spaces and parentheses).
pub fn nice_from_stat(stat: &str) -> Option<i32> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from the 3rd (state) on; the nice value is the 19th.
    after_comm.split_whitespace().nth(19 - 3)?.parse().ok()
}

/// Which cgroup hierarchy holds the cpu controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy: `cpu.weight`, 1-10000, default 100.
    V2,
    /// A cgroup v1 hierarchy with the `cpu` controller: `cpu.shares`,
    /// default 1024.
    V1,
}

impl Hierarchy {
    /// The file that holds a group's CPU weight.
    pub fn file(self) -> &'static str {
        match self {
            Hierarchy::V2 => "cpu.weight",
            Hierarchy::V1 => "cpu.shares",
        }
    }
}

/// A cgroup mount, from one line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// v2 (`cgroup2`) or v1 (`cgroup`).
    pub hierarchy: Hierarchy,
    /// The group of the hierarchy mounted there (`/` on a host).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The superblock options: for v1, the controllers (`rw,cpu,cpuacct`).
    pub options: Vec<String>,
}

impl CgroupMount {
    /// Whether this v1 mount carries the cpu controller.
    fn has_v1_cpu(&self) -> bool {
        self.hierarchy == Hierarchy::V1 && self.options.iter().any(|o| o == "cpu")
    }
}

/// The cgroup mounts in a `/proc/self/mountinfo` text, in its order.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let hierarchy = match right.next() {
            Some("cgroup2") => Hierarchy::V2,
            Some("cgroup") => Hierarchy::V1,
            _ => continue,
        };
        let options = right
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        let mut left = left.split_whitespace();
        let (Some(root), Some(mount_point)) = (left.nth(3), left.next()) else {
            continue;
        };
        mounts.push(CgroupMount {
            hierarchy,
            root: unescape_mountinfo(root),
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            options,
        });
    }
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The group a `/proc/PID/cgroup` text puts the process in on the
/// hierarchy `hierarchy` (for v1, the one whose controllers include `cpu`).
pub fn group_in(proc_cgroup: &str, hierarchy: Hierarchy) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match hierarchy {
            Hierarchy::V2 => id == "0" && controllers.is_empty(),
            Hierarchy::V1 => controllers.split(',').any(|c| c == "cpu"),
        };
        wanted.then_some(path)
    })
}

/// Where a running process's CPU weight is kept, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuGroup {
    /// The hierarchy that has the cpu controller.
    pub hierarchy: Hierarchy,
    /// The process's group in it, as `/proc/PID/cgroup` names it.
    pub path: String,
    /// That group's directory.
    pub dir: PathBuf,
    /// Its `cpu.weight` or `cpu.shares`; `None` in the hierarchy's root
    /// (which has no weight of its own) or where the controller is not
    /// enabled for the group (cgroup v2's `cgroup.subtree_control`).
    pub value: Option<u64>,
}

/// A running process's priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPriority {
    /// Its main thread's nice value (guestsock's event loop runs there).
    pub nice: i32,
    /// Its cgroup's CPU weight; `None` where no cpu controller is mounted.
    pub cpu: Option<CpuGroup>,
}

/// Reads process `pid`'s nice value and its cgroup's CPU weight, finding the
/// hierarchy with the cpu controller in `/proc/self/mountinfo`: a v1 `cpu`
/// hierarchy if one is mounted (the controller is then not on v2), else the
/// unified hierarchy if its root lists `cpu` in `cgroup.controllers`.
pub fn of_process(pid: u32) -> Result<ProcessPriority, String> {
    let stat = read_small(Path::new(&format!("/proc/{pid}/stat")))?;
    let nice = nice_from_stat(&stat)
        .ok_or_else(|| format!("/proc/{pid}/stat: no nice value in {stat:?}"))?;
    let mountinfo = read_at_most(
        fs::File::open("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?,
        MAX_MOUNTINFO_BYTES,
    )
    .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mounts = cgroup_mounts(&String::from_utf8_lossy(&mountinfo));
    let v2_has_cpu = |m: &CgroupMount| {
        m.hierarchy == Hierarchy::V2
            && read_small(&m.mount_point.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
    };
    let Some(mount) = mounts
        .iter()
        .find(|m| m.has_v1_cpu())
        .or_else(|| mounts.iter().find(|m| v2_has_cpu(m)))
    else {
        return Ok(ProcessPriority { nice, cpu: None });
    };
    let proc_cgroup = read_small(Path::new(&format!("/proc/{pid}/cgroup")))?;
    let path = group_in(&proc_cgroup, mount.hierarchy)
        .ok_or_else(|| {
            format!(
                "/proc/{pid}/cgroup names no group on the {} hierarchy at {}",
                mount.hierarchy.file(),
                mount.mount_point.display()
            )
        })?
        .to_owned();
    let below_root = if mount.root == "/" {
        Some(path.as_str())
    } else {
        path.strip_prefix(mount.root.as_str())
    }
    .ok_or_else(|| {
        format!(
            "process {pid}'s group {path} is outside the part of the hierarchy mounted at {}",
            mount.mount_point.display()
        )
    })?;
    let relative = below_root.trim_start_matches('/');
    let dir = if relative.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(relative)
    };
    let value = if relative.is_empty() {
        None
    } else {
        match read_small(&dir.join(mount.hierarchy.file())) {
            Ok(text) => Some(text.trim().parse().map_err(|_| {
                format!(
                    "{}: not a number: {text:?}",
                    dir.join(mount.hierarchy.file()).display()
                )
            })?),
            Err(_) if mount.hierarchy == Hierarchy::V2 => None,
            Err(e) => return Err(e),
        }
    };
    Ok(ProcessPriority {
        nice,
        cpu: Some(CpuGroup {
            hierarchy: mount.hierarchy,
            path,
            dir,
            value,
        }),
    })
}

/// Reads a small kernel file (`/proc`, `/sys/fs/cgroup`) as text.
fn read_small(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = read_at_most(file, MAX_CGROUP_FILE_BYTES as u64)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_sets_both() {
        let shipped = UnitPriority::shipped().expect("dist/guestsock.service parses");
        assert!(shipped.nice < 0, "{shipped:?}");
        assert!(shipped.cpu_weight > DEFAULT_CPU_WEIGHT, "{shipped:?}");
    }

    #[test]
    fn unit_table() {
        let ok = |nice, cpu_weight| Ok(UnitPriority { nice, cpu_weight });
        let cases: &[(&str, Result<UnitPriority, String>)] = &[
            ("[Service]\nNice=-10\nCPUWeight=1000\n", ok(-10, 1000)),
            ("[Service]\n  Nice = -5 \n CPUWeight= 200\n", ok(-5, 200)),
            // The last assignment wins; comments are not assignments.
            (
                "[Service]\nNice=-1\n# Nice=5\n;CPUWeight=1\nNice=-3\nCPUWeight=300\n",
                ok(-3, 300),
            ),
            // Only [Service] counts.
            (
                "[Unit]\nNice=-19\n[Service]\nNice=2\nCPUWeight=100\n[Install]\nCPUWeight=9\n",
                ok(2, 100),
            ),
            (
                "[Service]\nCPUWeight=1000\n",
                Err("no Nice= in [Service]".into()),
            ),
            (
                "[Service]\nNice=-10\nCPUWeight=1000\nCPUWeight=\n",
                Err("no CPUWeight= in [Service]".into()),
            ),
            (
                "[Unit]\nNice=-10\nCPUWeight=1000\n",
                Err("no Nice= in [Service]".into()),
            ),
            (
                "[Service]\nNice=-21\n",
                Err("line 2: Nice=-21: outside -20..19".into()),
            ),
            (
                "[Service]\nNice=high\n",
                Err("line 2: Nice=high: not a number".into()),
            ),
            (
                "[Service]\nNice=0\nCPUWeight=idle\n",
                Err("line 3: CPUWeight=idle: not a number from 1 to 10000".into()),
            ),
            (
                "[Service]\nNice=0\nCPUWeight=10001\n",
                Err("line 3: CPUWeight=10001: outside 1..10000".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_unit(text), want, "{text:?}");
        }
    }

    #[test]
    fn shares_are_mapped_as_systemd_maps_them() {
        let p = |cpu_weight| UnitPriority {
            nice: 0,
            cpu_weight,
        };
        assert_eq!(p(100).cpu_shares(), 1024);
        assert_eq!(p(1000).cpu_shares(), 10240);
        assert_eq!(p(1).cpu_shares(), 10);
        assert_eq!(p(10_000).cpu_shares(), 102_400);
    }

    #[test]
    fn stat_table() {
        let line = |comm: &str, nice: &str| {
            format!(
                "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 {nice} 3 0 99 1000 200 18446744073709551615"
            )
        };
        assert_eq!(nice_from_stat(&line("guestsock", "-10")), Some(-10));
        assert_eq!(nice_from_stat(&line("a) b (c", "5")), Some(5));
        assert_eq!(nice_from_stat(&line("guestsock", "0")), Some(0));
        assert_eq!(nice_from_stat("4242 (x) S 1 2"), None);
        assert_eq!(nice_from_stat("no parenthesis"), None);
        assert_eq!(nice_from_stat(""), None);
    }

    #[test]
    fn mountinfo_table() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 /lxc.payload.c1 /mnt/my\\040cg rw shared:5 - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = cgroup_mounts(hybrid);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert!(mounts[0].has_v1_cpu());
        assert!(!mounts[1].has_v1_cpu(), "cpuacct is not cpu");
        assert_eq!(mounts[2].hierarchy, Hierarchy::V2);
        assert_eq!(mounts[2].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[3].root, "/lxc.payload.c1");
        assert_eq!(mounts[3].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(
            cgroup_mounts(
                "22 1 0:21 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct"
            )[0]
            .options,
            ["rw", "cpu", "cpuacct"]
        );
        assert!(cgroup_mounts("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn proc_cgroup_table() {
        let hybrid = "9:name=systemd:/system.slice/guestsock.service\n\
                      2:cpuacct:/\n\
                      1:cpu:/system.slice/guestsock.service\n\
                      0::/system.slice/guestsock.service\n";
        assert_eq!(
            group_in(hybrid, Hierarchy::V1),
            Some("/system.slice/guestsock.service")
        );
        assert_eq!(
            group_in(hybrid, Hierarchy::V2),
            Some("/system.slice/guestsock.service")
        );
        let joined = "4:cpu,cpuacct:/a:b\n";
        assert_eq!(group_in(joined, Hierarchy::V1), Some("/a:b"));
        assert_eq!(group_in(joined, Hierarchy::V2), None);
        assert_eq!(group_in("0::/\n", Hierarchy::V2), Some("/"));
        assert_eq!(group_in("2:cpuacct:/x\n", Hierarchy::V1), None);
    }

    #[test]
    fn this_process_has_a_priority() {
        let me = of_process(std::process::id()).expect("readable");
        assert!((-20..=19).contains(&me.nice));
    }
}
