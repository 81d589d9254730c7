//! The admin API of PROTOCOL.md section 6 on the real binary: every endpoint,
//! LXD's envelope on every answer, every validation error, and changes seen
//! by the very next guest request.

mod util;

use serde_json::{Value, json};

fn me() -> Value {
    json!({"uid_range": [util::my_uid(), 1]})
}

fn ok(reply: &util::Reply) -> Value {
    assert!(
        (200..300).contains(&reply.status),
        "{}: {}",
        reply.status,
        reply.text()
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["type"], "sync", "{body}");
    assert_eq!(body["status"], "Success");
    assert_eq!(body["status_code"], reply.status);
    body["metadata"].clone()
}

fn err(reply: &util::Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error_code"], status);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[test]
fn server_facts_and_instance_listing() {
    let server = util::Server::start(json!([
        {"name": "b", "match": {"uid_range": [2000, 10]}},
        {"name": "a", "match": {"cgroup": "/a"}, "config": {"user.x": "1"}},
    ]));
    // Answered once, so it is certainly accepted (and still open) before
    // the admin call below.
    let mut guest = server.connect();
    assert_eq!(guest.request("GET", "/1.0", b"").status, 403);
    let facts = ok(&server.admin_call("GET", "/1.0", b""));
    assert_eq!(facts["instances"], 2);
    assert_eq!(facts["guest_socket"], server.socket.display().to_string());
    // The harness's readiness probes may not have been reaped yet.
    assert!(facts["connections"]["admin"].as_u64() >= Some(1), "{facts}");
    assert!(facts["connections"]["guest"].as_u64() >= Some(1), "{facts}");
    assert!(facts["version"].is_string());
    assert_eq!(ok(&server.admin_call("GET", "/", b"")), json!(["/1.0"]));

    assert_eq!(
        ok(&server.admin_call("GET", "/1.0/instances", b"")),
        json!(["/1.0/instances/a", "/1.0/instances/b"])
    );
    let full = ok(&server.admin_call("GET", "/1.0/instances?recursion=1", b""));
    assert_eq!(full[0]["name"], "a");
    assert_eq!(full[0]["config"]["user.x"], "1");
    assert_eq!(full[1]["root_uid"], 2000, "defaults are filled in");
    assert_eq!(full[1]["state"], "Started");

    let one = ok(&server.admin_call("GET", "/1.0/instances/b", b""));
    assert_eq!(one, full[1]);
    err(
        &server.admin_call("GET", "/1.0/instances/zzz", b""),
        404,
        "\"zzz\" not found",
    );
    err(&server.admin_call("GET", "/2.0", b""), 404, "not found");
}

#[test]
fn register_change_and_remove_seen_by_the_next_guest_request() {
    let server = util::Server::start(json!([]));
    let mut guest = server.connect();
    assert_eq!(guest.request("GET", "/1.0", b"").status, 403);

    let body = json!({"name": "c1", "match": me(), "root_uid": util::my_uid(),
                      "config": {"user.foo": "bar"}, "devices": {"eth0": {"type": "nic"}}});
    let created = ok(&server.admin_call("POST", "/1.0/instances", body.to_string().as_bytes()));
    assert_eq!(created["name"], "c1");
    assert_eq!(created["cloud_init_id"], "c1");
    assert_eq!(
        guest.request("GET", "/1.0/config/user.foo", b"").text(),
        "bar"
    );

    let mut admin = server.admin();
    ok(&admin.request(
        "PUT",
        "/1.0/instances/c1/config/user.foo",
        b"baz\nmulti-line",
    ));
    assert_eq!(
        guest.request("GET", "/1.0/config/user.foo", b"").text(),
        "baz\nmulti-line"
    );
    let raw = admin.request("GET", "/1.0/instances/c1/config/user.foo", b"");
    assert_eq!(raw.text(), "baz\nmulti-line");

    ok(&admin.request("PUT", "/1.0/instances/c1/config/user.new%2Dkey", b"v"));
    assert_eq!(
        guest.request("GET", "/1.0/config/user.new-key", b"").text(),
        "v"
    );
    ok(&admin.request("DELETE", "/1.0/instances/c1/config/user.new-key", b""));
    assert_eq!(
        guest.request("GET", "/1.0/config/user.new-key", b"").status,
        404
    );
    err(
        &admin.request("DELETE", "/1.0/instances/c1/config/user.new-key", b""),
        404,
        "not set",
    );

    let patched = ok(&admin.request(
        "PATCH",
        "/1.0/instances/c1/config",
        br##"{"user.a": "1", "user.foo": null, "cloud-init.user-data": "#cloud-config\n"}"##,
    ));
    assert_eq!(
        patched["config"],
        json!({"user.a": "1", "cloud-init.user-data": "#cloud-config\n"})
    );
    assert_eq!(
        ok(&admin.request("GET", "/1.0/instances/c1/config", b"")),
        patched["config"]
    );

    ok(&admin.request(
        "PUT",
        "/1.0/instances/c1/devices/kvm",
        br#"{"type": "unix-char", "path": "/dev/kvm"}"#,
    ));
    assert_eq!(
        guest.request("GET", "/1.0/devices", b"").json(),
        json!({"eth0": {"type": "nic"}, "kvm": {"type": "unix-char", "path": "/dev/kvm"}})
    );
    ok(&admin.request("DELETE", "/1.0/instances/c1/devices/eth0", b""));
    err(
        &admin.request("DELETE", "/1.0/instances/c1/devices/eth0", b""),
        404,
        "does not exist",
    );
    assert_eq!(
        ok(&admin.request("GET", "/1.0/instances/c1/devices/kvm", b"")),
        json!({"type": "unix-char", "path": "/dev/kvm"})
    );

    let mut replacement = body.clone();
    replacement["config"] = json!({"user.only": "this"});
    replacement["type"] = json!("virtual-machine");
    ok(&admin.request(
        "PUT",
        "/1.0/instances/c1",
        replacement.to_string().as_bytes(),
    ));
    assert_eq!(
        guest.request("GET", "/1.0/config", b"").json(),
        json!(["/1.0/config/user.only"])
    );
    assert_eq!(
        guest.request("GET", "/1.0", b"").json()["instance_type"],
        "virtual-machine"
    );

    // Removing the instance ends its guest's connection.
    ok(&admin.request("DELETE", "/1.0/instances/c1", b""));
    assert!(
        guest.is_closed_by_server(),
        "the guest connection was left open"
    );
    assert_eq!(server.get("/1.0").status, 403);
    err(
        &admin.request("DELETE", "/1.0/instances/c1", b""),
        404,
        "not found",
    );
}

#[test]
fn guest_ready_is_kept_until_the_host_resets_it() {
    let server =
        util::Server::start(json!([{"name": "c1", "match": me(), "root_uid": util::my_uid()}]));
    let mut guest = server.connect();
    assert_eq!(
        guest
            .request("PATCH", "/1.0", br#"{"state":"Ready"}"#)
            .status,
        200
    );
    assert_eq!(
        ok(&server.admin_call("GET", "/1.0/instances/c1", b""))["state"],
        "Ready"
    );
    assert_eq!(
        ok(&server.admin_call("GET", "/1.0/instances/c1/state", b"")),
        "Ready"
    );

    // It survives a restart.
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    assert_eq!(server.get("/1.0").json()["state"], "Ready");

    ok(&server.admin_call("PUT", "/1.0/instances/c1/state", br#"{"state":"Started"}"#));
    assert_eq!(server.get("/1.0").json()["state"], "Started");
    err(
        &server.admin_call("PUT", "/1.0/instances/c1/state", br#"{"state":"Stopped"}"#),
        400,
        "Invalid state",
    );
    err(
        &server.admin_call(
            "PUT",
            "/1.0/instances/c1/state",
            br#"{"state":"Started","x":1}"#,
        ),
        400,
        "unknown field",
    );
}

#[test]
fn every_body_and_name_is_validated() {
    let server = util::Server::start(json!([
        {"name": "c1", "match": {"uid_range": [1000, 10]}},
        {"name": "c2", "match": {"cgroup": "/lxc.payload.c2"}},
    ]));
    let post = |body: &str| server.admin_call("POST", "/1.0/instances", body.as_bytes());
    err(
        &post(r#"{"name": "Bad_Name", "match": {"cgroup": "/x"}}"#),
        400,
        "name",
    );
    err(
        &post(r#"{"name": "-x", "match": {"cgroup": "/x"}}"#),
        400,
        "name",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x"}, "colour": "red"}"#),
        400,
        "unknown field `colour`",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x", "pid": 1}}"#),
        400,
        "",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "x/y"}}"#),
        400,
        "match",
    );
    err(
        &post(r#"{"name": "x", "match": {"uid_range": [1, 0]}}"#),
        400,
        "match",
    );
    err(
        &post(r#"{"name": "x", "match": {"uid_range": [4294967295, 2]}}"#),
        400,
        "match",
    );
    err(&post(r#"{"name": "x", "match": {"pid": 0}}"#), 400, "match");
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x"}, "config": {"user.a": 5}}"#),
        400,
        "invalid type",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x"}, "config": {"bad key": "v"}}"#),
        400,
        "bad key",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x"}, "devices": {"d": {"n": 1}}}"#),
        400,
        "invalid type",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/x"}, "type": "vm"}"#),
        400,
        "unknown variant",
    );
    err(&post("not json"), 400, "invalid instance");
    err(&post(""), 400, "invalid instance");
    // Conflicts are 409, naming the other instance.
    err(
        &post(r#"{"name": "c1", "match": {"cgroup": "/other"}}"#),
        409,
        "exists already",
    );
    err(
        &post(r#"{"name": "x", "match": {"uid_range": [1005, 100]}}"#),
        409,
        "\"c1\"",
    );
    err(
        &post(r#"{"name": "x", "match": {"cgroup": "/lxc.payload.c2"}}"#),
        409,
        "\"c2\"",
    );

    let put = |path: &str, body: &[u8]| server.admin_call("PUT", path, body);
    err(&put("/1.0/instances/c1/config/bad%20key", b"v"), 400, "key");
    err(
        &put("/1.0/instances/c1/config/user.%zz", b"v"),
        400,
        "percent-encoding",
    );
    err(
        &put("/1.0/instances/c1/config/user.x", &[0xff, 0xfe]),
        400,
        "UTF-8",
    );
    let big = vec![b'a'; 1024 * 1024 + 1];
    err(&put("/1.0/instances/c1/config/user.x", &big), 400, "");
    ok(&put("/1.0/instances/c1/config/user.x", &big[1..]));
    err(
        &put("/1.0/instances/c1/devices/eth0", br#"{"type": 1}"#),
        400,
        "invalid type",
    );
    err(
        &put("/1.0/instances/c1/devices/eth0", br#"["x"]"#),
        400,
        "invalid device",
    );
    err(
        &put(
            "/1.0/instances/c1",
            br#"{"name": "renamed", "match": {"uid_range": [1000, 10]}}"#,
        ),
        400,
        "renamed",
    );
    err(
        &put(
            "/1.0/instances/c1",
            br#"{"name": "c1", "match": {"cgroup": "/lxc.payload.c2"}}"#,
        ),
        409,
        "\"c2\"",
    );
    err(
        &put("/1.0/instances/nope/config/user.x", b"v"),
        404,
        "not found",
    );

    // A patch with one bad entry applies nothing.
    err(
        &server.admin_call(
            "PATCH",
            "/1.0/instances/c1/config",
            br#"{"user.ok": "1", "bad key": "2"}"#,
        ),
        400,
        "bad key",
    );
    err(
        &server.admin_call("PATCH", "/1.0/instances/c1/config", br#"{"user.ok": 1}"#),
        400,
        "invalid type",
    );
    let config = ok(&server.admin_call("GET", "/1.0/instances/c1/config", b""));
    assert!(config.get("user.ok").is_none(), "{config}");
}

#[test]
fn methods_limits_and_request_errors_use_the_envelope() {
    let server = util::Server::start(json!([{"name": "c1", "match": {"uid_range": [1000, 10]}}]));
    for (method, path, allow) in [
        ("DELETE", "/1.0", "GET, HEAD"),
        ("DELETE", "/1.0/instances", "GET, HEAD, POST"),
        ("POST", "/1.0/instances/c1", "GET, HEAD, PUT, DELETE"),
        ("POST", "/1.0/instances/c1/config", "GET, HEAD, PATCH"),
        (
            "POST",
            "/1.0/instances/c1/config/user.x",
            "GET, HEAD, PUT, DELETE",
        ),
        ("PATCH", "/1.0/instances/c1/state", "GET, HEAD, PUT"),
    ] {
        let reply = server.admin_call(method, path, b"");
        err(&reply, 405, "method not allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    let mut c = server.admin();
    c.send(b"PUT /1.0/instances/c1/config/user.x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n");
    err(&c.read_reply(false), 413, "larger than");
    let mut c = server.admin();
    c.send(b"GET /1.0 HTTP/1.1\r\n\r\n");
    err(&c.read_reply(false), 400, "Host");
}

#[test]
fn admin_socket_is_private_and_refuses_other_uids() {
    use std::os::unix::fs::PermissionsExt;
    let server = util::Server::start(json!([]));
    let mode = std::fs::metadata(&server.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    require_root!();
    // Reachable only if the mode allows it: open it up to prove the uid check
    // holds by itself.
    std::fs::set_permissions(&server.admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, body) = util::curl_as(4321, &server.admin_socket, "/1.0/instances");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("uid 4321 may not use the admin socket"),
        "{body}"
    );
    drop(server);

    // As started, with no change by hand: each --admin-uid reaches the
    // socket (an ACL entry of its own), and another uid cannot connect.
    let server = util::Server::start_with(json!([]), &["--admin-uid", "4321", "--admin-uid=4322"]);
    for uid in [4321, 4322] {
        let (status, body) = util::curl_as(uid, &server.admin_socket, "/1.0/instances");
        assert_eq!(status, 200, "uid {uid}: {body}");
    }
    let mode = std::fs::metadata(&server.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "no access for others: {mode:o}");
    let refused = std::process::Command::new(util::tool("setpriv"))
        .args(["--reuid=4323", "--regid=4323", "--clear-groups"])
        .arg(util::bin())
        .args(["instance", "list", "--admin"])
        .arg(&server.admin_socket)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("--admin-uid 4323"),
        "{err}"
    );
    // getfacl (Debian's acl) reads back what the kernel holds.
    util::needs_installed("getfacl", "apt-get install acl", &["getfacl", "--version"]);
    let acl = std::process::Command::new("getfacl")
        .args(["-cn"])
        .arg(&server.admin_socket)
        .output()
        .unwrap();
    let acl = String::from_utf8_lossy(&acl.stdout);
    for entry in [
        "user::rw-",
        "user:4321:rw-",
        "user:4322:rw-",
        "group::---",
        "mask::rw-",
        "other::---",
    ] {
        assert!(acl.lines().any(|l| l == entry), "{entry} in {acl}");
    }
    // A restart without the flag takes the access back.
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    let out = std::process::Command::new(util::tool("setpriv"))
        .args(["--reuid=4321", "--regid=4321", "--clear-groups"])
        .arg(util::tool("curl"))
        .args(util::curl_args(&server.admin_socket, "/1.0/instances"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "uid 4321 reached the socket without --admin-uid"
    );
}

#[test]
fn a_keep_alive_guest_is_recognised_by_a_cgroup_rule_registered_later() {
    require_root!();
    let group = util::Cgroup::new();
    let server = util::Server::start(json!([{"name": "other", "match": {"uid_range": [5000, 1]}}]));
    // A Python client in the cgroup keeps one connection open across the
    // registration: first 403, then its instance.
    let script = format!(
        r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect({sock:?})
def get():
    s.sendall(b"GET /1.0/config/user.who HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data: data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n: body += s.recv(4096)
    return head.split(b" ")[1].decode() + " " + body.decode().strip()
print(get(), flush=True)
sys.stdin.readline()
print(get(), flush=True)
"#,
        sock = server.socket.display().to_string()
    );
    let mut child = group
        .command(None, "python3", &["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("403 "), "{line}");
    let body = json!({"name": "c1", "match": {"cgroup": group.path}, "config": {"user.who": "c1"}});
    ok(&server.admin_call("POST", "/1.0/instances", body.to_string().as_bytes()));
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200 c1");
    util::wait_with_deadline(&mut child);
}

#[test]
fn an_orchestrator_may_hold_many_admin_connections_at_once() {
    // Below the connection ceiling the admin socket takes slots like any
    // other; only past it is it held to its reserve of 16.
    let server = util::Server::start(json!([]));
    let mut held: Vec<util::Client> = (0..40).map(|_| server.admin()).collect();
    for (n, client) in held.iter_mut().enumerate() {
        let reply = client.request("GET", "/1.0", b"");
        assert_eq!(reply.status, 200, "connection {n}: {}", reply.text());
    }
}
