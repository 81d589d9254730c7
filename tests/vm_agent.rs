//! A real VM (util::vm: QEMU under TCG, vhost-device-vsock, Debian's cloud
//! kernel) runs `guestsock agent` as its init would, and an in-guest
//! `guestsock query` reaches the host through it: the test, standing in
//! for the host side that comes next, listens on the VM's `UDS_1024`,
//! checks the agent's preamble (uid 0, the guest's root) and the request,
//! and answers; the answer must reach the in-guest client. A second agent,
//! relaying to a port nothing listens on, must answer `503` at once.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::{Duration, Instant};

use util::docs::Doc;
use util::vm::{GUEST_DONE, GUEST_UP, VM_PATIENCE, Vm, port_socket};
use util::{TempDir, unique};

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
