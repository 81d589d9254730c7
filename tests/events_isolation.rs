//! Thousands of websocket subscribers across a thousand instances, each
//! connected from the instance's own real cgroup with Python's
//! websocket-client: each receives exactly its own instance's event and
//! nothing else. Needs root (cgroups) and Python's websocket-client; fails,
//! naming the command that installs what is missing, without them.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::json;

const INSTANCES: usize = 1000;
const PER_INSTANCE: usize = 2;

#[test]
fn each_subscriber_gets_exactly_its_own_instances_events() {
    require_root!();
    util::needs_installed(
        "Python's websocket-client (for python3 on PATH)",
        "python3 -m pip install websocket-client",
        &["python3", "-c", "import websocket"],
    );
    let groups: Vec<util::Cgroup> = (0..INSTANCES).map(|_| util::Cgroup::new()).collect();
    let instances: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| json!({"name": format!("i{i}"), "match": {"cgroup": g.path}}))
        .collect();
    let server = util::Server::start(json!(instances));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ws_subscribers.py");
    let mut child = Command::new(util::tool("python3"))
        .arg(&script)
        .arg(&server.socket)
        .arg(PER_INSTANCE.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let pairs: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{} i{i}", g.dir.join("cgroup.procs").display()))
        .collect();
    writeln!(stdin, "{}", pairs.join(";")).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the subscribers never connected");
    let facts = server.admin_call("GET", "/1.0", b"").json();
    assert!(
        facts["metadata"]["connections"]["guest"].as_u64()
            >= Some((INSTANCES * PER_INSTANCE) as u64)
    );

    let mut admin = server.admin();
    for i in 0..INSTANCES {
        let reply = admin.request(
            "PUT",
            &format!("/1.0/instances/i{i}/config/user.who"),
            format!("i{i}").as_bytes(),
        );
        assert_eq!(reply.status, 200);
    }
    writeln!(stdin, "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = util::wait_with_deadline(&mut child);
    assert!(status.success(), "subscribers: {line}");
    assert_eq!(line.trim(), format!("ok {}", INSTANCES * PER_INSTANCE));
}
