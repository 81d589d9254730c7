//! The priority `dist/guestsock.service` ships, applied as systemd applies
//! it: the unit's `Nice=` set before the server starts (nice(1), that is
//! setpriority), and its `CPUWeight=` written to a fresh cgroup the server
//! starts in: `cpu.weight` where cgroup v2 has the cpu controller, else
//! `cpu.shares = weight * 1024 / 100` on the cgroup v1 cpu hierarchy (as
//! systemd maps it). The running server's `/proc/PID/stat` and cgroup show
//! it, and `guestsock doctor` calls it fine; a server without it is told
//! what it lacks, each part, with the command that fixes it. The unit is
//! read here with a parser of this file's own, not the binary's. Needs root.

mod util;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `Nice=` and `CPUWeight=` from the `[Service]` section of the shipped unit
/// (the last assignment of each, as systemd takes it); fails if either is
/// absent.
fn shipped() -> (i32, u64) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/guestsock.service");
    let text = fs::read_to_string(&path).expect("dist/guestsock.service");
    let (mut section, mut nice, mut weight) = (String::new(), None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]" && !line.starts_with(['#', ';']) {
            match line.split_once('=') {
                Some(("Nice", v)) => nice = Some(v.trim().parse().expect("Nice= is a number")),
                Some(("CPUWeight", v)) => {
                    weight = Some(v.trim().parse().expect("CPUWeight= is a number"))
                }
                _ => {}
            }
        }
    }
    (
        nice.expect("dist/guestsock.service sets no Nice= in [Service]"),
        weight.expect("dist/guestsock.service sets no CPUWeight= in [Service]"),
    )
}

/// Where this host keeps the cpu controller, found in /proc/self/mountinfo.
enum CpuHierarchy {
    /// A cgroup v1 hierarchy with `cpu` among its controllers.
    V1(PathBuf),
    /// The unified hierarchy, whose root lists `cpu`.
    V2(PathBuf),
}

fn cpu_hierarchy() -> CpuHierarchy {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut v2 = None;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ").expect("mountinfo line");
        let right: Vec<&str> = right.split_whitespace().collect();
        let point = PathBuf::from(left.split_whitespace().nth(4).expect("mount point"));
        match right[0] {
            "cgroup" if right[2].split(',').any(|o| o == "cpu") => {
                return CpuHierarchy::V1(point);
            }
            "cgroup2" if v2.is_none() => v2 = Some(point),
            _ => {}
        }
    }
    let v2 = v2.expect("no cgroup mount has the cpu controller, and there is no cgroup2 mount");
    let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap();
    assert!(
        controllers.split_whitespace().any(|c| c == "cpu"),
        "no cgroup hierarchy on this host has the cpu controller ({}/cgroup.controllers: {controllers:?})",
        v2.display()
    );
    CpuHierarchy::V2(v2)
}

/// A fresh cgroup with the cpu controller, removed on drop.
struct CpuGroup {
    dir: PathBuf,
    /// `cpu.weight` or `cpu.shares`.
    file: &'static str,
    /// The group as `/proc/PID/cgroup` names it on that hierarchy.
    path: String,
}

impl CpuGroup {
    /// Makes the group and gives it `weight` as systemd would.
    fn new(weight: u64) -> CpuGroup {
        let name = util::unique("guestsock-prio");
        let (dir, file, value) = match cpu_hierarchy() {
            CpuHierarchy::V1(mount) => (mount.join(&name), "cpu.shares", weight * 1024 / 100),
            CpuHierarchy::V2(mount) => {
                let control = mount.join("cgroup.subtree_control");
                let enabled = fs::read_to_string(&control).unwrap();
                if !enabled.split_whitespace().any(|c| c == "cpu") {
                    fs::write(&control, "+cpu").expect("enable cpu for the root's children");
                }
                (mount.join(&name), "cpu.weight", weight)
            }
        };
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let group = CpuGroup {
            dir,
            file,
            path: format!("/{name}"),
        };
        fs::write(group.dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
        group
    }

    fn value(&self) -> u64 {
        fs::read_to_string(self.dir.join(self.file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + util::PATIENCE;
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A `guestsock serve` started at nice `nice`, in `group` if given, the way
/// systemd starts its unit; killed on drop.
struct Started {
    child: Child,
    admin: PathBuf,
    _dir: util::TempDir,
}

impl Started {
    fn new(nice: i32, group: Option<&CpuGroup>) -> Started {
        let dir = util::TempDir::new();
        let admin = dir.join("admin.sock");
        // nice(1) adds to the niceness it runs at, which is this thread's
        // (a child inherits its forking thread's).
        let increment = nice - nice_in(&fs::read_to_string("/proc/thread-self/stat").unwrap());
        let procs = group.map_or_else(|| "/dev/null".into(), |g| g.dir.join("cgroup.procs"));
        let child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec nice -n \"$@\"")
            .arg(procs)
            .arg(increment.to_string())
            .arg(util::bin())
            .args(["serve", "--socket"])
            .arg(dir.join("guest/sock"))
            .arg("--admin-socket")
            .arg(&admin)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let mut started = Started {
            child,
            admin,
            _dir: dir,
        };
        let deadline = Instant::now() + util::PATIENCE;
        while UnixStream::connect(&started.admin).is_err() {
            assert!(
                started.child.try_wait().unwrap().is_none(),
                "guestsock serve exited before serving"
            );
            assert!(Instant::now() < deadline, "guestsock serve never served");
            thread::sleep(Duration::from_millis(20));
        }
        started
    }

    /// The server's pid: sh and nice exec it, so it is the child's.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn doctor(&self) -> (bool, String) {
        let admin = self.admin.display().to_string();
        let out = util::run_guestsock(&["doctor", "--admin", &admin], None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nice value in `/proc/PID/stat` (the 19th field; the command name,
/// in parentheses, may hold spaces).
fn nice_of(pid: u32) -> i32 {
    nice_in(&fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

fn nice_in(stat: &str) -> i32 {
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The group `/proc/PID/cgroup` names on the hierarchy of `group`.
fn group_of(pid: u32, group: &CpuGroup) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let wanted = |controllers: &str, id: &str| match group.file {
        "cpu.shares" => controllers.split(',').any(|c| c == "cpu"),
        _ => id == "0",
    };
    text.lines()
        .find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            wanted(controllers, id).then(|| path.to_owned())
        })
        .expect("the server is on the cpu hierarchy")
}

#[test]
fn the_shipped_priority_is_what_the_server_runs_with_and_doctor_says_so() {
    require_root!();
    util::tool("nice");
    let (nice, weight) = shipped();
    assert!(
        nice < 0 && weight > 100,
        "the unit must rank guestsock ahead of its guests: Nice={nice} CPUWeight={weight}"
    );
    let group = CpuGroup::new(weight);
    let server = Started::new(nice, Some(&group));
    let pid = server.pid();

    assert_eq!(nice_of(pid), nice, "the server's nice value");
    assert_eq!(group_of(pid, &group), group.path, "the server's cgroup");
    let expected = match group.file {
        "cpu.shares" => weight * 1024 / 100,
        _ => weight,
    };
    assert_eq!(group.value(), expected, "{}", group.file);
    let facts = util::Client::connect(&server.admin)
        .request("GET", "/1.0", b"")
        .json();
    assert_eq!(facts["metadata"]["pid"], pid, "GET /1.0 names the server");

    let (ok, text) = server.doctor();
    assert!(ok, "doctor must call the shipped priority fine: {text}");
    let fine = format!(
        "server (pid {pid}): priority nice {nice}, {} {expected} in {}, as the unit ships it: fine",
        group.file,
        group.dir.display()
    );
    assert!(text.contains(&fine), "{text}\nlacks: {fine}");
}

#[test]
fn doctor_names_what_a_server_lacks_and_the_fix() {
    require_root!();
    util::tool("nice");
    util::tool("renice");
    let (nice, weight) = shipped();

    // At nice 0, wherever this test runs.
    let server = Started::new(0, None);
    let pid = server.pid();
    assert_eq!(nice_of(pid), 0);
    let (ok, text) = server.doctor();
    assert!(!ok, "a server at nice 0 passed: {text}");
    assert!(
        text.contains(&format!("server (pid {pid}): lacks the priority"))
            && text.contains(&format!("its nice value is 0, the unit's {nice}"))
            && text.contains(&format!("`renice -n {nice} -p {pid}`")),
        "{text}"
    );
    // The fix it names works: renice the loop, and the nice complaint goes.
    let renice = Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &pid.to_string()])
        .output()
        .unwrap();
    assert!(renice.status.success(), "{renice:?}");
    let (_, text) = server.doctor();
    assert!(!text.contains("its nice value is"), "{text}");
    drop(server);

    // At the unit's nice value, in a group of the default weight.
    let group = CpuGroup::new(100);
    let server = Started::new(nice, Some(&group));
    let pid = server.pid();
    let (ok, text) = server.doctor();
    let (default, wanted) = match group.file {
        "cpu.shares" => (1024, weight * 1024 / 100),
        _ => (100, weight),
    };
    assert!(!ok, "a server of the default CPU weight passed: {text}");
    assert!(!text.contains("its nice value is"), "{text}");
    let fix = format!("`echo {wanted} > {}/{}`", group.dir.display(), group.file);
    assert!(
        text.contains(&format!(
            "its cgroup {} has {} {default}, the unit's {wanted}: {fix}",
            group.path, group.file
        )),
        "{text}"
    );
    // The command it names, run as written, makes it fine.
    let sh = Command::new("sh")
        .arg("-c")
        .arg(fix.trim_matches('`'))
        .status()
        .unwrap();
    assert!(sh.success());
    let (ok, text) = server.doctor();
    assert!(
        ok && text.contains(&format!("server (pid {pid}): priority")),
        "{text}"
    );
}
