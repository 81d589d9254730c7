//! Registering many instances in one admin call (`POST /1.0/instances`
//! with `{"instances": [...]}`), as a host does at boot: new ones are
//! registered and existing ones replaced, all or nothing, durable when
//! answered; `guestsock instance add` sends a list or an instances file
//! that way.

mod util;

use serde_json::{Value, json};

fn names(server: &util::Server) -> Vec<String> {
    let listed = server.admin_call("GET", "/1.0/instances", b"").json();
    listed["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            u.as_str()
                .unwrap()
                .trim_start_matches("/1.0/instances/")
                .to_owned()
        })
        .collect()
}

fn batch(server: &util::Server, instances: Value) -> util::Reply {
    let body = json!({ "instances": instances }).to_string();
    server.admin_call("POST", "/1.0/instances", body.as_bytes())
}

fn instance(name: &str, first: u32, value: &str) -> Value {
    json!({"name": name, "match": {"uid_range": [first, 10]}, "config": {"user.v": value}})
}

#[test]
fn a_batch_registers_new_instances_and_replaces_existing_ones() {
    let me = util::my_uid();
    let server = util::Server::start_with(
        json!([{"name": "mine", "match": {"uid_range": [me, 1]}, "root_uid": me,
                "config": {"user.v": "old"}}]),
        &[],
    );
    server.guest_ready();
    let reply = batch(
        &server,
        json!([
            instance("a", 2_000_000, "1"),
            instance("b", 2_000_010, "2"),
            {"name": "mine", "match": {"uid_range": [me, 1]}, "root_uid": me, "config": {"user.v": "new"}},
            instance("c", 2_000_020, "3"),
        ]),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["metadata"],
        json!({"created": 3, "replaced": 1})
    );
    assert_eq!(names(&server), ["a", "b", "c", "mine"]);
    // Served at once, the replaced instance keeping its guest's Ready.
    assert_eq!(server.get("/1.0/config/user.v").text(), "new");
    assert_eq!(server.get("/1.0").json()["state"], "Ready");
    // Durable when answered.
    let dir = server.kill9();
    let server = util::Server::start_in(dir, &[]);
    assert_eq!(names(&server), ["a", "b", "c", "mine"]);
    let b = server.admin_call("GET", "/1.0/instances/b", b"").json();
    assert_eq!(b["metadata"]["config"]["user.v"], "2");
}

#[test]
fn one_bad_entry_refuses_the_whole_batch_and_names_it() {
    let server = util::Server::start_with(
        json!([{"name": "held", "match": {"uid_range": [3_000_000, 100]}}]),
        &[],
    );
    for (instances, status, needle) in [
        // Overlaps a registered instance.
        (
            json!([instance("a", 2_000_000, "1"), instance("b", 3_000_050, "2")]),
            409,
            r#"instances[1] ("b"): match rule conflicts with instance "held""#,
        ),
        // Overlaps an earlier entry of the same batch: the later is named.
        (
            json!([
                instance("a", 2_000_000, "1"),
                instance("b", 2_100_000, "2"),
                instance("c", 2_000_005, "3")
            ]),
            409,
            r#"instances[2] ("c"): match rule conflicts with instance "a""#,
        ),
        // The same cgroup twice.
        (
            json!([{"name": "a", "match": {"cgroup": "/x"}}, {"name": "b", "match": {"cgroup": "/x"}}]),
            409,
            r#"instances[1] ("b"): match rule conflicts with instance "a": both match cgroup /x"#,
        ),
        (
            json!([instance("a", 2_000_000, "1"), instance("a", 2_100_000, "2")]),
            400,
            r#"instances[1] ("a"): name: appears more than once in the batch"#,
        ),
        (
            json!([
                instance("a", 2_000_000, "1"),
                instance("Bad_Name", 2_100_000, "2")
            ]),
            400,
            r#"instances[1] ("Bad_Name"): name:"#,
        ),
    ] {
        let reply = batch(&server, instances);
        assert_eq!(reply.status, status, "{}", reply.text());
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.starts_with("nothing registered: ") && error.contains(needle),
            "{error}"
        );
        assert_eq!(
            names(&server),
            ["held"],
            "part of a refused batch was registered"
        );
    }
    // Not a batch at all.
    let reply = server.admin_call("POST", "/1.0/instances", br#"{"instances": 3}"#);
    assert_eq!(reply.status, 400, "{}", reply.text());
    let too_many: Vec<Value> = (0..65_537)
        .map(|i| json!({"name": format!("i{i}"), "match": {"uid_range": [i * 10, 10]}}))
        .collect();
    let reply = batch(&server, json!(too_many));
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("at most 65536"), "{}", reply.text());
    assert_eq!(names(&server), ["held"]);
}

#[test]
fn instance_add_sends_a_list_or_an_instances_file_as_one_batch() {
    let server = util::Server::start(json!([]));
    let admin = server.admin_socket.display().to_string();
    let add = |file: &std::path::Path| {
        util::run_guestsock(
            &["instance", "add", file.to_str().unwrap(), "--admin", &admin],
            None,
        )
    };
    // `instance add FILE` succeeds and says `line`.
    let added = |file: &std::path::Path, line: &str| {
        let out = add(file);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), line);
    };
    let list = server.dir.join("list.json");
    std::fs::write(
        &list,
        json!([instance("a", 2_000_000, "1"), instance("b", 2_000_010, "2")]).to_string(),
    )
    .unwrap();
    added(&list, "2 instances registered (2 new, 0 replaced)\n");
    let file = server.dir.join("instances-file.json");
    std::fs::write(
        &file,
        json!({"instances": [instance("b", 2_000_010, "two"), instance("c", 2_000_020, "3")]})
            .to_string(),
    )
    .unwrap();
    added(&file, "2 instances registered (1 new, 1 replaced)\n");
    assert_eq!(names(&server), ["a", "b", "c"]);
    // A refused batch: nothing changes, and the command fails saying why.
    std::fs::write(
        &list,
        json!([instance("d", 2_000_030, "4"), instance("e", 2_000_000, "5")]).to_string(),
    )
    .unwrap();
    let out = add(&list);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"instances[1] ("e")"#), "{err}");
    assert_eq!(names(&server), ["a", "b", "c"]);
}
