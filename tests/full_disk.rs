//! A change the admin socket refused is not live and never becomes durable
//! later: with the state directory on a real, full filesystem (a 2 MiB
//! tmpfs), a refused change is served to nobody, is not in the state
//! directory, and is not carried to disk by the next successful write of
//! the same instance; a restart shows exactly the acknowledged changes.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use util::{Server, TempDir};

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        require_root!();
        fs::create_dir_all(at).expect("mount point");
        let status = Command::new(util::tool("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs(at.to_owned())
    }

    /// Fills the filesystem: a file grown until the kernel says `ENOSPC`.
    fn fill(&self) {
        let mut file = fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return;
            }
        }
    }

    fn free(&self) {
        let _ = fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new(util::tool("umount"))
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A server whose state directory is a fresh 2 MiB tmpfs, with instance
/// `a` (this process's uid) registered.
fn server_on_tmpfs() -> (Server, Tmpfs) {
    let dir = TempDir::new();
    let tmpfs = Tmpfs::mount(&dir.join("state"), "2m");
    let server = Server::start_in(dir, &[]);
    server.create_instance(&json!({
        "name": "a",
        "match": {"uid_range": [util::my_uid(), 1]},
        "guest_access": "any"
    }));
    (server, tmpfs)
}

fn set_key(server: &Server, instance: &str, key: &str, value: &str) -> u16 {
    server
        .admin_call(
            "PUT",
            &format!("/1.0/instances/{instance}/config/{key}"),
            value.as_bytes(),
        )
        .status
}

#[test]
fn a_refused_change_is_not_served_and_never_saved_later() {
    let (server, tmpfs) = server_on_tmpfs();
    assert_eq!(set_key(&server, "a", "user.before", "1"), 200);

    tmpfs.fill();
    let refused = server.admin_call("PUT", "/1.0/instances/a/config/user.refused", b"x");
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert!(
        refused.text().contains("not made") && refused.text().contains("No space left"),
        "{}",
        refused.text()
    );
    assert_eq!(server.get("/1.0/config/user.refused").status, 404);
    let admin_view = server.admin_call("GET", "/1.0/instances/a/config/user.refused", b"");
    assert_eq!(admin_view.status, 404, "{}", admin_view.text());
    let new_instance = server.admin_call(
        "POST",
        "/1.0/instances",
        json!({"name": "b", "match": {"cgroup": "/full-disk/b"}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(new_instance.status, 500, "{}", new_instance.text());
    assert_eq!(
        server.admin_call("GET", "/1.0/instances/b", b"").status,
        404
    );
    // A guest state change is a change too: refused, not served.
    let ready = server
        .connect()
        .request("PATCH", "/1.0", br#"{"state":"Ready"}"#);
    assert_eq!(ready.status, 500, "{}", ready.text());
    assert!(server.get("/1.0").text().contains("\"state\":\"Started\""));

    // The orchestrator retries once there is room; the next write of `a`
    // carries only what was acknowledged.
    tmpfs.free();
    assert_eq!(set_key(&server, "a", "user.after", "y"), 200);
    assert_eq!(server.get("/1.0/config/user.after").text(), "y");
    assert_eq!(server.get("/1.0/config/user.refused").status, 404);
    let stored = util::dump(&server.state_dir);
    let names: Vec<&str> = stored["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a"], "the refused instance b is not stored");
    assert!(
        stored["instances"][0]["config"]
            .get("user.refused")
            .is_none(),
        "{stored}"
    );

    let dir = server.stop_keep();
    let server = Server::start_in(dir, &[]);
    assert_eq!(server.get("/1.0/config/user.before").text(), "1");
    assert_eq!(server.get("/1.0/config/user.after").text(), "y");
    assert_eq!(server.get("/1.0/config/user.refused").status, 404);
    assert_eq!(
        server.admin_call("GET", "/1.0/instances/b", b"").status,
        404
    );
    drop(server);
    drop(tmpfs);
}

/// What the clients were told: per instance, its config as acknowledged,
/// and whether it exists.
type Acked = Arc<Mutex<BTreeMap<String, (bool, BTreeMap<String, String>)>>>;

/// Client `t` owns instance `t{t}`: it sets fresh keys on it, and creates
/// and removes its side instance `t{t}-side`, recording each 2xx; a 500 must
/// leave no trace. Any other answer fails the test.
fn client(server: Arc<Server>, t: usize, until: Instant, acked: Acked) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    let name = format!("t{t}");
    let side = format!("t{t}-side");
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let (method, path, body) = match n % 5 {
            0 => (
                "POST",
                "/1.0/instances".to_string(),
                json!({"name": side, "match": {"cgroup": format!("/full-disk/{side}")}})
                    .to_string(),
            ),
            1 => ("DELETE", format!("/1.0/instances/{side}"), String::new()),
            2 => (
                "PATCH",
                format!("/1.0/instances/{name}/config"),
                json!({format!("user.p{n}"): format!("{n}"), format!("user.q{n}"): format!("{n}")})
                    .to_string(),
            ),
            _ => (
                "PUT",
                format!("/1.0/instances/{name}/config/user.k{n}"),
                format!("{n}"),
            ),
        };
        let reply = server.admin_call(method, &path, body.as_bytes());
        match reply.status {
            200 => ok += 1,
            500 => refused += 1,
            _ => {}
        }
        let mut acked = acked.lock().expect("lock");
        match (reply.status, n % 5) {
            (200, 0) => {
                acked.insert(side.clone(), (true, BTreeMap::new()));
            }
            (200, 1) => {
                acked.insert(side.clone(), (false, BTreeMap::new()));
            }
            (200, 2) => {
                let config = &mut acked.get_mut(&name).expect("own instance").1;
                config.insert(format!("user.p{n}"), format!("{n}"));
                config.insert(format!("user.q{n}"), format!("{n}"));
            }
            (200, _) => {
                let config = &mut acked.get_mut(&name).expect("own instance").1;
                config.insert(format!("user.k{n}"), format!("{n}"));
            }
            // Creating an existing side instance, or removing a missing one.
            (409 | 404, 0 | 1) => {}
            (500, _) => {}
            (status, _) => panic!("{method} {path}: {status} {}", reply.text()),
        }
    }
    (ok, refused)
}

/// Every instance's config, as the admin socket reports it.
fn configs(server: &Server) -> BTreeMap<String, (bool, BTreeMap<String, String>)> {
    let list = server
        .admin_call("GET", "/1.0/instances?recursion=1", b"")
        .json();
    let mut found = BTreeMap::new();
    for instance in list["metadata"].as_array().expect("list") {
        let config: BTreeMap<String, String> =
            serde_json::from_value(instance["config"].clone()).expect("config");
        let name = instance["name"].as_str().expect("name").to_owned();
        found.insert(name, (true, config));
    }
    found
}

/// Fails naming only the keys that differ (the whole maps are large).
fn same(
    found: &BTreeMap<String, (bool, BTreeMap<String, String>)>,
    expected: &BTreeMap<String, (bool, BTreeMap<String, String>)>,
    when: &str,
) {
    let names: std::collections::BTreeSet<&String> = found.keys().chain(expected.keys()).collect();
    let mut differences = Vec::new();
    for name in names {
        match (found.get(name), expected.get(name)) {
            (Some((_, a)), Some((_, b))) => {
                for key in a.keys().chain(b.keys()) {
                    if a.get(key) != b.get(key) {
                        differences.push(format!(
                            "{name} {key}: served {:?}, acknowledged {:?}",
                            a.get(key),
                            b.get(key)
                        ));
                    }
                }
            }
            (a, b) => differences.push(format!(
                "{name}: served {}, acknowledged {}",
                a.is_some(),
                b.is_some()
            )),
        }
    }
    assert!(differences.is_empty(), "{when}: {differences:#?}");
}

#[test]
fn concurrent_changes_on_a_filling_disk_are_durable_exactly_when_acknowledged() {
    let dir = TempDir::new();
    let tmpfs = Tmpfs::mount(&dir.join("state"), "2m");
    let server = Arc::new(Server::start_in(dir, &[]));
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    for t in 0..6 {
        server.create_instance(
            &json!({"name": format!("t{t}"), "match": {"cgroup": format!("/full-disk/t{t}")}}),
        );
        acked
            .lock()
            .expect("lock")
            .insert(format!("t{t}"), (true, BTreeMap::new()));
    }
    let until = Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (server, acked) = (Arc::clone(&server), Arc::clone(&acked));
            thread::spawn(move || client(server, t, until, acked))
        })
        .collect();
    // The disk fills and empties under the clients, over and over.
    let mut full_rounds = 0;
    while Instant::now() < until {
        tmpfs.fill();
        full_rounds += 1;
        thread::sleep(Duration::from_millis(150));
        tmpfs.free();
        thread::sleep(Duration::from_millis(100));
    }
    let (mut ok, mut refused) = (0, 0);
    for client in clients {
        let (o, r) = client.join().expect("client");
        (ok, refused) = (ok + o, refused + r);
    }
    assert!(full_rounds >= 4);
    // Both outcomes happened, or the test proved nothing.
    assert!(
        ok > 0 && refused > 0,
        "{ok} acknowledged, {refused} refused"
    );
    eprintln!("{ok} changes acknowledged, {refused} refused over {full_rounds} full disks");

    let expected: BTreeMap<String, (bool, BTreeMap<String, String>)> = acked
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, (exists, _))| *exists)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    same(&configs(&server), &expected, "served before the restart");
    let server = Arc::into_inner(server).expect("clients are gone");
    let dir = server.kill9();
    let server = Server::start_in(dir, &[]);
    same(&configs(&server), &expected, "after kill -9 and a restart");
    drop(server);
    drop(tmpfs);
}
