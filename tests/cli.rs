//! The admin command line driven end to end against a real server: tables
//! for people, `--json` for scripts, values from stdin, the server's message
//! and a non-zero exit on every error.

mod util;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn cli(server: &util::Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(util::bin())
        .args(args)
        .env("GUESTSOCK_ADMIN", &server.admin_socket)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(server: &util::Server, args: &[&str]) -> String {
    let out = cli(server, args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(server: &util::Server, args: &[&str], needle: &str) {
    let out = cli(server, args, None);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

#[test]
fn register_set_and_read_back_through_the_cli() {
    let server = util::Server::start(json!([]));
    let file = server.dir.join("c1.json");
    std::fs::write(
        &file,
        json!({"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}).to_string(),
    )
    .unwrap();
    assert_eq!(
        ok(&server, &["instance", "add", file.to_str().unwrap()]),
        "instance c1 registered\n"
    );
    let out = cli(
        &server,
        &["instance", "add", "-"],
        Some(
            json!({"name": "web-2", "match": {"cgroup": "/system.slice/docker-abc.scope"}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    ok(&server, &["config", "set", "c1", "user.foo", "bar"]);
    // The guest sees it on its next request.
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    let out = cli(
        &server,
        &["config", "set", "c1", "cloud-init.user-data", "-"],
        Some(b"#cloud-config\npackages: [jq]\n"),
    );
    assert!(out.status.success());
    assert_eq!(
        server.get("/1.0/config/cloud-init.user-data").text(),
        "#cloud-config\npackages: [jq]\n"
    );
    ok(
        &server,
        &[
            "config",
            "set",
            "c1",
            "user.dash",
            "--",
            "--looks-like-a-flag",
        ],
    );
    assert_eq!(
        ok(&server, &["config", "get", "c1", "user.dash"]),
        "--looks-like-a-flag\n"
    );
    assert_eq!(
        ok(&server, &["config", "get", "c1", "user.foo", "--json"]),
        "\"bar\"\n"
    );

    let table = ok(&server, &["config", "show", "c1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["KEY", "VALUE"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cloud-init.user-data  #cloud-config [...]")),
        "{table}"
    );
    // Columns line up: every value starts where the header's does.
    let col = lines[0].find("VALUE").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.as_bytes()[col - 1], b' ', "{table}");
        assert_ne!(line.as_bytes()[col], b' ', "{table}");
    }

    ok(
        &server,
        &[
            "device",
            "add",
            "c1",
            "eth0",
            "type=nic",
            "name=eth0",
            "hwaddr=00:16:3e:00:00:01",
        ],
    );
    assert_eq!(
        server.get("/1.0/devices").json()["eth0"]["hwaddr"],
        "00:16:3e:00:00:01"
    );
    let devices = ok(&server, &["device", "list", "c1"]);
    assert!(
        devices.contains("eth0    nic   hwaddr=00:16:3e:00:00:01 name=eth0"),
        "{devices}"
    );
    ok(&server, &["device", "remove", "c1", "eth0"]);
    assert_eq!(server.get("/1.0/devices").json(), json!({}));

    let list = ok(&server, &["instance", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "TYPE", "MATCH", "STATE", "KEYS", "DEVICES"]
    );
    assert_eq!(rows[1][0], "c1");
    assert_eq!(rows[1][4], "3");
    assert_eq!(
        rows[2],
        [
            "web-2",
            "container",
            "cgroup=\"/system.slice/docker-abc.scope\"",
            "Started",
            "0",
            "0"
        ]
    );
    let json: Value = serde_json::from_str(&ok(&server, &["instance", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["config"]["user.foo"], "bar");
    let show: Value = serde_json::from_str(&ok(&server, &["instance", "show", "web-2"])).unwrap();
    assert_eq!(show["match"]["cgroup"], "/system.slice/docker-abc.scope");

    server.guest_ready();
    ok(&server, &["state", "c1", "Started"]);
    assert_eq!(server.get("/1.0").json()["state"], "Started");

    ok(&server, &["config", "unset", "c1", "user.foo"]);
    assert_eq!(server.get("/1.0/config/user.foo").status, 404);
    ok(&server, &["instance", "remove", "web-2"]);
    assert!(!ok(&server, &["instance", "list"]).contains("web-2"));
}

#[test]
fn errors_print_the_servers_message_and_exit_non_zero() {
    let server = util::Server::start(json!([{"name": "c1", "match": {"uid_range": [1000, 1]}}]));
    fails(
        &server,
        &["config", "get", "c1", "user.missing"],
        "404: key \"user.missing\" is not set",
    );
    fails(
        &server,
        &["config", "set", "nope", "user.x", "v"],
        "404: instance \"nope\" not found",
    );
    fails(&server, &["config", "set", "c1", "bad key", "v"], "400");
    fails(&server, &["config", "unset", "c1", "user.never"], "404");
    fails(&server, &["device", "remove", "c1", "eth9"], "404");
    fails(&server, &["state", "c1", "Sleeping"], "400: Invalid state");
    fails(&server, &["instance", "remove", "nope"], "404");
    fails(
        &server,
        &["instance", "add", "/nonexistent.json"],
        "/nonexistent.json",
    );
    let out = cli(
        &server,
        &["instance", "add", "-"],
        Some(br#"{"name": "c2", "match": {"uid_range": [1000, 5]}}"#),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("409: match rule conflicts with instance \"c1\"")
    );
    fails(&server, &["instance", "frobnicate"], "wrong arguments");
    let out = Command::new(util::bin())
        .args(["instance", "list", "--admin", "/nonexistent/admin.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to /nonexistent/admin.sock")
    );
}
