//! The cgroup-id cache a container can fill: one container creates
//! thousands of real sub-cgroups and connects from each. The cache keeps
//! to the container's share of its bound, and once the cgroups are removed
//! it empties and the server's memory returns to where it started.

mod util;

use std::time::{Duration, Instant};

use serde_json::json;

/// Sub-cgroups the container creates: more than its share of the cache
/// holds (about 5,000 at 1 MiB), so that the share is seen to hold.
const SUB_CGROUPS: usize = 10_000;

/// The container's client: moves itself into each of N new sub-cgroups of
/// its cgroup in turn, makes one GET from each, then moves back; prints
/// how many were answered 200.
const CONTAINER: &str = r#"
import os, socket, sys
top, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
home = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
mount = top[: len(top) - len(sys.argv[4])]
ok = 0
for i in range(n):
    sub = os.path.join(top, f"c{i}")
    os.mkdir(sub)
    with open(os.path.join(sub, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    ok += data.startswith(b"HTTP/1.1 200")
with open(os.path.join(mount, home.lstrip("/"), "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
print(ok)
"#;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn gauge(server: &util::Server, name: &str) -> u64 {
    let text = server.admin_call("GET", "/1.0/metrics", b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Removes the sub-cgroups left behind if the test fails midway, so that
/// the container's cgroup can go too.
struct SubCgroups(std::path::PathBuf);

impl Drop for SubCgroups {
    fn drop(&mut self) {
        for i in 0..SUB_CGROUPS {
            let _ = std::fs::remove_dir(self.0.join(format!("c{i}")));
        }
    }
}

#[test]
fn a_container_creating_cgroups_fills_its_share_and_the_memory_comes_back() {
    util::needs_root("a_container_creating_cgroups_fills_its_share_and_the_memory_comes_back");
    util::needs_installed(
        "python3",
        "apt-get install python3",
        &["/usr/bin/python3", "-c", ""],
    );
    let container = util::Cgroup::new();
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"cgroup": container.path}}]),
        &["--rate-limit", "0"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = rss_kib(server.pid());
    let subs = SubCgroups(container.dir.clone());
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", CONTAINER])
        .arg(&container.dir)
        .arg(&server.socket)
        .arg(SUB_CGROUPS.to_string())
        .arg(&container.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(answered, SUB_CGROUPS, "every sub-cgroup is the instance's");

    let entries = gauge(&server, "guestsock_cgroup_cache_entries");
    let bytes = gauge(&server, "guestsock_cgroup_cache_bytes");
    let full = rss_kib(server.pid());
    println!(
        "RSS {start} KiB at the start, {full} KiB with {entries} cgroup ids cached ({bytes} bytes)"
    );
    // One container's share is an eighth of the 8 MiB bound.
    assert!(
        bytes <= 1024 * 1024,
        "{bytes} bytes cached for one container"
    );
    assert!(entries > 1000, "the cache learned nothing: {entries}");
    assert!(
        (entries as usize) < SUB_CGROUPS,
        "one container cached all its {entries} cgroups: no share held"
    );

    drop(subs);
    let deadline = Instant::now() + util::PATIENCE;
    while gauge(&server, "guestsock_cgroup_cache_entries") > 0 {
        assert!(Instant::now() < deadline, "removed cgroups stayed cached");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss_kib(server.pid());
    println!("RSS {after} KiB once the cgroups were removed");
    assert!(
        after <= 2 * start,
        "RSS {start} KiB at the start, {after} KiB after"
    );
    assert_eq!(gauge(&server, "guestsock_cgroup_cache_bytes"), 0);
}
