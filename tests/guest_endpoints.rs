//! Every guest endpoint of PROTOCOL.md section 3 answered by the real binary,
//! with the content types and bodies of section 2, for a caller matched by
//! uid range (this test process itself).

mod util;

use serde_json::json;

fn instance() -> serde_json::Value {
    json!({
        "name": "c1",
        "type": "virtual-machine",
        "location": "rack-7",
        "cloud_init_id": "iid-c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
        "config": {
            "user.foo": "bar",
            "user.a-b": "dash",
            "user.meta-data": "public-keys: [k]\n",
            "cloud-init.user-data": "#cloud-config\n",
            "volatile.secret": "host only",
        },
        "devices": {
            "eth0": {"type": "nic", "name": "eth0"},
            "disk0": {"type": "disk", "path": "/mnt"},
        },
    })
}

fn assert_json(reply: &util::Reply, want: serde_json::Value) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.body.ends_with(b"}\n") || reply.body.ends_with(b"]\n"));
    assert_eq!(reply.json(), want);
}

fn assert_raw(reply: &util::Reply, want: &str) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.text(), want);
}

fn assert_error(reply: &util::Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert!(reply.text().ends_with('\n'));
    assert!(
        reply.text().contains(message),
        "{:?} lacks {message:?}",
        reply.text()
    );
}

#[test]
fn endpoints_answer_the_callers_instance() {
    let server = util::Server::start(json!([instance()]));
    let mut c = server.connect();

    assert_json(&c.request("GET", "/", b""), json!(["/1.0"]));
    assert_json(
        &c.request("GET", "/1.0", b""),
        json!({"api_version": "1.0", "auth": "untrusted", "instance_type": "virtual-machine",
               "location": "rack-7", "state": "Started"}),
    );
    assert_json(
        &c.request("GET", "/1.0/config", b""),
        json!([
            "/1.0/config/cloud-init.user-data",
            "/1.0/config/user.a-b",
            "/1.0/config/user.foo",
            "/1.0/config/user.meta-data"
        ]),
    );
    assert_raw(&c.request("GET", "/1.0/config/user.foo", b""), "bar");
    assert_raw(&c.request("GET", "/1.0/config/user.a%2Db", b""), "dash");
    // Keys never hold `/`, so neither spelling names a key.
    assert_error(&c.request("GET", "/1.0/config/user.a%2Fb", b""), 404, "");
    assert_error(&c.request("GET", "/1.0/config/user.a/b", b""), 404, "");
    assert_raw(&c.request("GET", "/1.0/config/%75ser.foo?x=1", b""), "bar");
    assert_raw(
        &c.request("GET", "/1.0/meta-data", b""),
        "instance-id: iid-c1\nlocal-hostname: c1\npublic-keys: [k]\n",
    );
    assert_json(
        &c.request("GET", "/1.0/devices", b""),
        json!({"disk0": {"path": "/mnt", "type": "disk"}, "eth0": {"name": "eth0", "type": "nic"}}),
    );
}

#[test]
fn head_is_get_without_body() {
    let server = util::Server::start(json!([instance()]));
    let mut c = server.connect();
    let get = c.request("GET", "/1.0/config/user.foo", b"");
    let head = c.request("HEAD", "/1.0/config/user.foo", b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert_eq!(head.header("content-type"), get.header("content-type"));
    // The connection is still in step: nothing of a body was sent after HEAD.
    assert_raw(&c.request("GET", "/1.0/config/user.foo", b""), "bar");
}

#[test]
fn patch_state_ready_and_back() {
    let server = util::Server::start(json!([instance()]));
    let mut c = server.connect();
    let r = c.request("PATCH", "/1.0", br#"{"state":"Ready"}"#);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(c.request("GET", "/1.0", b"").json()["state"], "Ready");
    // Kept per instance, not per connection.
    assert_eq!(server.get("/1.0").json()["state"], "Ready");
    let r = c.request("PATCH", "/1.0", br#"{"state":"Started"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(server.get("/1.0").json()["state"], "Started");

    assert_error(
        &c.request("PATCH", "/1.0", br#"{"state":"ready"}"#),
        400,
        "Invalid state \"ready\"",
    );
    assert_error(
        &c.request("PATCH", "/1.0", br#"{"state":"Stopped"}"#),
        400,
        "Invalid state \"Stopped\"",
    );
    assert_error(&c.request("PATCH", "/1.0", b"not json"), 400, "");
    assert_error(&c.request("PATCH", "/1.0", b""), 400, "");
    assert_error(&c.request("PATCH", "/1.0", br#"{"state":1}"#), 400, "");
}

#[test]
fn not_found_and_method_not_allowed() {
    let server = util::Server::start(json!([instance()]));
    let mut c = server.connect();
    for path in [
        "/1.0/",
        "/1.0/config/",
        "/2.0",
        "/1.0/nope",
        "/1.0/config/user.missing",
        "/1.0/devices/eth0",
    ] {
        assert_error(&c.request("GET", path, b""), 404, "");
    }
    for (method, path, allow) in [
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/1.0", "GET, HEAD, PATCH"),
        ("PUT", "/1.0/config", "GET, HEAD"),
        ("PUT", "/1.0/config/user.foo", "GET, HEAD"),
        ("POST", "/1.0/meta-data", "GET, HEAD"),
        ("DELETE", "/1.0/devices", "GET, HEAD"),
    ] {
        let r = c.request(method, path, b"");
        assert_error(&r, 405, "");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn host_only_keys_are_forbidden() {
    let server = util::Server::start(json!([instance()]));
    let mut c = server.connect();
    assert_error(
        &c.request("GET", "/1.0/config/volatile.secret", b""),
        403,
        "",
    );
    assert_error(
        &c.request("GET", "/1.0/config/volatile.missing", b""),
        403,
        "",
    );
    assert!(
        !c.request("GET", "/1.0/config", b"")
            .text()
            .contains("volatile")
    );
    assert_error(&c.request("GET", "/1.0/config/user.%zz", b""), 400, "");
}

#[test]
fn unknown_caller_is_forbidden_with_pid_and_uid() {
    let mut other = instance();
    other["match"] = json!({"uid_range": [util::my_uid().wrapping_add(1), 1]});
    other["root_uid"] = json!(util::my_uid().wrapping_add(1));
    let server = util::Server::start(json!([other]));
    let r = server.get("/1.0");
    assert_error(&r, 403, &format!("uid {}", util::my_uid()));
    assert!(
        r.text().contains(&format!("pid {}", std::process::id())),
        "{}",
        r.text()
    );
    // Every path, not only the known ones: a stranger learns nothing.
    assert_error(&server.get("/nope"), 403, "");
}

#[test]
fn wrong_uid_inside_an_instance_is_unauthorized() {
    let mut inst = instance();
    inst["root_uid"] = json!(util::my_uid().wrapping_add(1));
    let server = util::Server::start(json!([inst.clone()]));
    assert_error(&server.get("/1.0"), 401, "Access denied for non-root user");
    drop(server);

    inst["guest_access"] = json!("any");
    let server = util::Server::start(json!([inst]));
    assert_eq!(server.get("/1.0").status, 200);
}
