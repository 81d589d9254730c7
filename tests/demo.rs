//! `serve --demo` answers the person who started it: started by an ordinary
//! user, that user; through sudo, the user who ran sudo; from a root shell,
//! root. Its directory lets that uid reach the socket, and an instance
//! registered beside it, as a container would be, is answered as itself
//! unless its root is the demo's uid too (a privileged container beside a
//! root demo), which is refused as ambiguous, never guessed.

mod util;

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

/// An ordinary uid for the person trying the demo.
const PERSON: u32 = 4242;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_ordinary_user_runs_it_and_calls_it() {
    require_root!(); // to become that user
    let demo = util::Demo::start(Some(PERSON), &[], &[]);
    let (status, body) = util::curl_as(PERSON, &demo.socket(), "/1.0/config/user.greeting");
    assert_eq!((status, body.as_str()), (200, "hello from guestsock"));
    // Example keys, cloud-init data and a device; host-only keys hidden.
    let (status, list) = util::curl_as(PERSON, &demo.socket(), "/1.0/config");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(
        list.as_array().unwrap().len() >= 2 && !list.to_string().contains("volatile"),
        "{list}"
    );
    let (_, meta) = util::curl_as(PERSON, &demo.socket(), "/1.0/meta-data");
    assert!(
        meta.starts_with("instance-id: demo\nlocal-hostname: demo\n"),
        "{meta}"
    );
    let (_, devices) = util::curl_as(PERSON, &demo.socket(), "/1.0/devices");
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert!(devices["eth0"].is_object(), "{devices}");
    // Another user reaches the socket and is told it is no instance's.
    let (status, body) = util::curl_as(PERSON + 1, &demo.socket(), "/1.0");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("uid 4243"), "{body}");
    assert!(
        demo.stdout()
            .contains("answers processes of uid 4242. Try:"),
        "{}",
        demo.stdout()
    );
}

#[test]
fn started_as_root_it_answers_the_user_and_no_root_process() {
    require_root!();
    let demo = util::Demo::start(None, &[("SUDO_UID", "4242")], &[]);
    let dir = demo.cwd.join("guestsock-demo");
    assert_eq!(mode(&dir), 0o755, "the demo directory is reachable");
    assert_eq!(mode(&dir.join("guest")), 0o755);
    assert_eq!(mode(&dir.join("state")), 0o700, "state stays private");
    let (status, body) = util::curl_as(PERSON, &demo.socket(), "/1.0/config/user.greeting");
    assert_eq!((status, body.as_str()), (200, "hello from guestsock"));
    let (status, body) = util::curl_as(0, &demo.socket(), "/1.0");
    assert_eq!(status, 403, "root is not the demo's: {body}");

    // Containers registered beside it: a privileged one matched by cgroup
    // (its root is host uid 0), an unprivileged one by uid range.
    let group = util::Cgroup::new();
    let admin = |method: &str, path: &str, body: String| {
        util::Client::connect(&demo.admin_socket()).request(method, path, body.as_bytes())
    };
    let c1 = json!({"name": "c1", "match": {"cgroup": group.path}, "config": {"user.who": "c1"}});
    let reply = admin("POST", "/1.0/instances", c1.to_string());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let c2 = json!({"name": "c2", "match": {"uid_range": [1_000_000, 65536]}, "config": {"user.who": "c2"}});
    let reply = admin("POST", "/1.0/instances", c2.to_string());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (status, body) = group.curl(Some(0), &demo.socket(), "/1.0/config/user.who");
    assert_eq!((status, body.as_str()), (200, "c1"), "c1's root is c1's");
    let (status, body) = util::curl_as(1_000_000, &demo.socket(), "/1.0/config/user.who");
    assert_eq!((status, body.as_str()), (200, "c2"));
    // Claiming the demo's own uid is a conflict that names the demo.
    let clash = json!({"name": "c3", "match": {"uid_range": [4000, 1000]}});
    let reply = admin("POST", "/1.0/instances", clash.to_string());
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(reply.text().contains("demo"), "{}", reply.text());
}

#[test]
fn from_a_root_shell_it_answers_root() {
    require_root!();
    let demo = util::Demo::start(None, &[], &[]);
    // A root shell beside the demo: what README's "Try it" pastes.
    let (status, body) = util::curl_as(0, &demo.socket(), "/1.0/config/user.greeting");
    assert_eq!((status, body.as_str()), (200, "hello from guestsock"));
    // Other host users are not the demo's.
    let (status, body) = util::curl_as(65534, &demo.socket(), "/1.0/config/user.greeting");
    assert_eq!(status, 403, "{body}");
    // An unprivileged container registered beside it is answered as
    // itself; a privileged one (its root is uid 0 too) is refused as
    // ambiguous, as README says.
    let group = util::Cgroup::new();
    let c1 = json!({"name": "c1", "match": {"cgroup": group.path}, "root_uid": 1_000_000, "config": {"user.who": "c1"}});
    let reply = util::Client::connect(&demo.admin_socket()).request(
        "POST",
        "/1.0/instances",
        c1.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (status, body) = group.curl(Some(1_000_000), &demo.socket(), "/1.0/config/user.who");
    assert_eq!((status, body.as_str()), (200, "c1"), "c1's root is c1's");
    let (status, body) = group.curl(Some(0), &demo.socket(), "/1.0/config/user.who");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("matches more than one instance"), "{body}");
    // Its greeting's commands work as printed, in this shell.
    let out = demo.stdout();
    assert!(out.contains("answers processes of uid 0. Try:"), "{out}");
    assert!(
        out.contains("\n  curl --unix-socket guestsock-demo/guest/sock http://lxd/1.0/config\n"),
        "{out}"
    );
}

#[test]
fn the_demo_directory_is_ignored_by_git() {
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "/guestsock-demo/"), "{ignore}");
}
