//! A real VM (util::vm: QEMU under TCG, vhost-device-vsock, Debian's cloud
//! kernel) runs `guestsock agent` as its init would.
//!
//! First with the test as the host side: it listens on the VM's `UDS_1024`,
//! checks the agent's preamble (uid 0, the guest's root) and the request,
//! and answers; the answer must reach the in-guest client. A second agent,
//! relaying to a port nothing listens on, must answer `503` at once.
//!
//! Then with the real `guestsock serve`, the VM registered with a vsock
//! listener of its own: in the guest, its values, a Ready transition seen
//! on the host, an event pushed by the host, a token the host verifies, the
//! `guest_access` rule for an in-guest user, and nothing of another
//! instance.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use util::docs::Doc;
use util::vm::{GUEST_DONE, GUEST_UP, VM_PATIENCE, Vm, port_socket};
use util::{Server, TempDir, tool, unique};

/// What the test answers the guest's `GET /1.0`.
const ANSWER: &str = r#"{"api_version":"1.0","location":"vm-test","state":"Started"}"#;

/// One connection the host side took: what arrived, and when.
struct Arrival {
    /// Since QEMU started.
    after: Duration,
    /// The bytes before the end of the request head.
    bytes: Vec<u8>,
}

/// Accepts one connection on `listener`, reads up to the end of the request
/// head (after the preamble line) and answers [`ANSWER`], then closes.
fn host_side(listener: UnixListener, boot: Instant) -> Arrival {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + VM_PATIENCE;
    let (mut conn, after) = loop {
        match listener.accept() {
            Ok((conn, _)) => break (conn, boot.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no guest connection");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(util::PATIENCE))
        .expect("timeout");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).expect("read the relayed request");
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ANSWER}",
        ANSWER.len()
    );
    conn.write_all(answer.as_bytes()).expect("answer");
    Arrival { after, bytes }
}

#[test]
fn an_in_guest_query_reaches_the_host_through_the_agent() {
    require_root!();
    // Every sh block of docs/vms.md runs here: util::vm starts the VM with
    // the first two, and the guest's init runs the agent with the third.
    let mut doc = Doc::load("docs/vms.md");
    doc.take("vhost-device-vsock");
    doc.take("qemu-system-x86_64");
    let init_line = doc.take("guestsock agent");
    // Run by the test below.
    doc.take("guestsock instance add");
    doc.assert_all_taken();
    let dir = TempDir::new();
    let listener = UnixListener::bind(port_socket(&dir, 1024)).expect("bind UDS_1024");
    let out = format!("/tmp/{}", unique("query"));
    // As a guest's init: the agent, then a client once its socket is there.
    let script = format!(
        "{init_line}\
         i=0; while [ ! -S /dev/lxd/sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         ls -ld /dev/lxd /dev/lxd/sock\n\
         guestsock query /1.0 >{out} 2>&1; echo \"GUEST-QUERY-EXIT $?\"\n\
         echo \"GUEST-QUERY-OUT $(cat {out})\"\n\
         guestsock agent --socket /dev/lxd/nohost --host-port 1025 &\n\
         i=0; while [ ! -S /dev/lxd/nohost ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         t0=$(date +%s); guestsock query --socket /dev/lxd/nohost /1.0 >{out} 2>&1; echo \"GUEST-NOHOST-EXIT $?\"\n\
         echo \"GUEST-NOHOST-SECONDS $(( $(date +%s) - t0 ))\"\n\
         echo \"GUEST-NOHOST-OUT $(cat {out})\"\n"
    );
    let mut vm = Vm::boot(dir, &script);
    let boot = vm.started;
    let host = thread::spawn(move || host_side(listener, boot));
    vm.wait_for_console(GUEST_UP);
    vm.wait_for_console(GUEST_DONE);
    let arrival = host.join().expect("the host side");
    eprintln!(
        "initramfs built in {:?}; QEMU start to the guest's first vsock connection: {:?}; to the guest's end: {:?}",
        vm.initramfs_built_in,
        arrival.after,
        vm.started.elapsed()
    );
    let console = vm.console();

    // The preamble: the guest's root, and a pid, then the request as sent.
    let text = String::from_utf8(arrival.bytes).expect("UTF-8");
    let (preamble, request) = text.split_once("\r\n").expect("a preamble line");
    let pid = preamble
        .strip_prefix("GUESTSOCK-AGENT 1 uid=0 gid=0 pid=")
        .unwrap_or_else(|| panic!("preamble {preamble:?}"));
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 1),
        "pid {pid:?}: {console}"
    );
    assert!(
        request.starts_with("GET /1.0 HTTP/1.1\r\n"),
        "request {request:?}"
    );

    // The answer reached the in-guest client, exactly.
    assert!(
        console.contains("GUEST-QUERY-EXIT 0"),
        "query failed: {}",
        vm.report()
    );
    assert!(
        console.contains(&format!("GUEST-QUERY-OUT {ANSWER}")),
        "{}",
        vm.report()
    );
    // Nothing listens on port 1025: the agent answers 503 at once, in
    // LXD's error envelope, rather than leaving the caller hanging.
    // (The guest's connect gives up after vsock's 2 s connect timeout.)
    assert!(console.contains("GUEST-NOHOST-EXIT 1"), "{}", vm.report());
    assert!(
        console.contains(r#"guestsock: 503: {"type":"error""#)
            && console
                .contains(r#""error_code":503,"error":"the host's guestsock cannot be reached: "#),
        "{}",
        vm.report()
    );
    let seconds: u64 = console
        .lines()
        .find_map(|l| l.strip_prefix("GUEST-NOHOST-SECONDS "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", vm.report()));
    assert!(seconds <= 10, "answered after {seconds} s: {}", vm.report());
    // The agent made /dev/lxd 0755 and the socket 0666.
    assert!(console.contains("drwxr-xr-x"), "{console}");
    assert!(console.contains("srw-rw-rw-"), "{console}");
    assert!(vm.wait_exit().success(), "{}", vm.report());
}

/// The line the guest printed after `tag ` on its console.
fn said<'a>(console: &'a str, tag: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.strip_prefix(tag).and_then(|l| l.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("the guest never said {tag}: {console}"))
}

#[test]
fn guestsock_serves_a_real_vm_through_its_own_vsock_listener() {
    require_root!();
    let mut doc = Doc::load("docs/vms.md");
    let init_line = doc.take("guestsock agent");
    let add = doc.take("guestsock instance add");
    let dir = TempDir::new();
    // Another instance's key must stay out of the guest's reach.
    let server = Server::start(json!([
        {"name": "other", "match": {"uid_range": [5000, 1]}, "config": {"user.secret": "s3cret"}},
    ]));
    // The VM, registered before it boots with docs/vms.md's command line,
    // as pasted; vhost-device-vsock runs as root.
    let files = TempDir::new();
    std::fs::write(
        files.join("vm1.json"),
        json!({"name": "vm1", "type": "virtual-machine", "config": {"user.who": "vm1"}})
            .to_string(),
    )
    .unwrap();
    let added = std::process::Command::new("sh")
        .args(["-ec", &add])
        .current_dir(&files.path)
        // The binary under test first, as `guestsock` on PATH.
        .env(
            "PATH",
            format!(
                "{}:{}",
                std::path::Path::new(util::bin())
                    .parent()
                    .unwrap()
                    .display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("VM_DIR", &dir.path)
        .env("VMM_UID", "0")
        .env("GUESTSOCK_ADMIN", &server.admin_socket)
        .output()
        .expect("sh");
    assert!(
        added.status.success(),
        "{}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(port_socket(&dir, 1024).exists(), "{}", server.stderr());
    let ws = "-H 'Upgrade: websocket' -H 'Connection: Upgrade' \
              -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'Sec-WebSocket-Version: 13'";
    let script = format!(
        "{init_line}\
         i=0; while [ ! -S /dev/lxd/sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         echo \"GUEST-INFO $(guestsock query /1.0)\"\n\
         echo \"GUEST-WHO $(guestsock query /1.0/config/user.who)\"\n\
         guestsock query /1.0/config/user.secret >/tmp/s 2>&1; echo \"GUEST-SECRET $? $(cat /tmp/s)\"\n\
         echo \"GUEST-KEYS $(guestsock query /1.0/config)\"\n\
         echo \"GUEST-PATCH $(curl -sS --unix-socket /dev/lxd/sock -X PATCH -d '{{\"state\":\"Ready\"}}' -o /dev/null -w '%{{http_code}}' http://lxd/1.0)\"\n\
         echo \"GUEST-TOKEN $(guestsock token https://vault.example)\"\n\
         su -s /bin/sh guest -c 'guestsock query /1.0' >/tmp/u 2>&1; echo \"GUEST-AS-GUEST $? $(cat /tmp/u)\"\n\
         curl -sS -N --max-time 120 --unix-socket /dev/lxd/sock {ws} http://lxd/1.0/events >/tmp/ev 2>&1 &\n\
         sleep 1; echo GUEST-SUBSCRIBED\n\
         i=0; while ! grep -q changed-by-host /tmp/ev && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo \"GUEST-EVENT $(grep -o '\"key\":\"user.who\"' /tmp/ev) $(grep -o changed-by-host /tmp/ev)\"\n"
    );
    let mut vm = Vm::boot_with(dir, &script, &[tool("curl")]);
    vm.wait_for_console("GUEST-SUBSCRIBED");
    let reply = server.admin_call(
        "PUT",
        "/1.0/instances/vm1/config/user.who",
        b"changed-by-host",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    vm.wait_for_console(GUEST_DONE);
    let console = vm.console();

    let info: serde_json::Value = serde_json::from_str(said(&console, "GUEST-INFO"))
        .unwrap_or_else(|e| panic!("{e}: {}", vm.report()));
    assert_eq!(info["instance_type"], "virtual-machine", "{info}");
    assert_eq!(said(&console, "GUEST-WHO"), "vm1");
    // Another instance's key is not this one's: 404, and never listed.
    let secret = said(&console, "GUEST-SECRET");
    assert!(
        secret.starts_with("1 ") && !secret.contains("s3cret"),
        "{secret}"
    );
    assert!(
        !said(&console, "GUEST-KEYS").contains("secret"),
        "{console}"
    );
    // Ready, as the host sees it.
    assert_eq!(said(&console, "GUEST-PATCH"), "200");
    let shown = server.admin_call("GET", "/1.0/instances/vm1", b"").json();
    assert_eq!(shown["metadata"]["state"], "Ready", "{shown}");
    // A token for the VM, which the host verifies.
    let token = said(&console, "GUEST-TOKEN");
    let verified = std::process::Command::new(util::bin())
        .args([
            "identity",
            "verify",
            "--audience",
            "https://vault.example",
            "--admin",
        ])
        .arg(&server.admin_socket)
        .arg(token)
        .output()
        .expect("identity verify");
    let claims = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{claims} {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        claims.contains(r#""instance": "vm1""#) || claims.contains(r#""instance":"vm1""#),
        "{claims}"
    );
    assert!(claims.contains("virtual-machine"), "{claims}");
    // guest_access root: the in-guest user 1000 is refused (401).
    let as_guest = said(&console, "GUEST-AS-GUEST");
    assert!(
        as_guest.starts_with("1 ") && as_guest.contains("401"),
        "{as_guest}"
    );
    // The event the host pushed arrived in the guest.
    let event = said(&console, "GUEST-EVENT");
    assert_eq!(
        event,
        r#""key":"user.who" changed-by-host"#,
        "{}",
        vm.report()
    );
    assert!(vm.wait_exit().success(), "{}", vm.report());
}
