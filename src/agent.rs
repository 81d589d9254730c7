//! `guestsock agent`: the in-guest end of a VM's guest socket (groundwork of
//! issue 25; docs/vms.md).
//!
//! Run inside a VM, it serves `/dev/lxd/sock` there and relays each
//! connection to the host: AF_VSOCK to CID 2 (the host) on a port, or, for
//! tests and for setups that bring their own transport, a unix socket path.
//! Before the first relayed byte it writes one line, [the agent's
//! preamble](Preamble), saying who connected in the guest (the peer
//! credentials the guest's kernel gives, `SO_PEERCRED`), then moves bytes
//! both ways until both sides have finished, passing each end-of-stream on
//! as a half-close (`shutdown(SHUT_WR)` on the other leg).
//!
//! One thread per connection, up to a cap ([`DEFAULT_AGENT_MAX_CONNECTIONS`]):
//! each relay is one `poll(2)` loop over its two sockets with two fixed
//! buffers ([`AGENT_RELAY_BUFFER_BYTES`]), so a side that does not read
//! stops the other from being read rather than growing a queue, and a
//! connection silent both ways for [`AGENT_IDLE_TIMEOUT`] is closed. A
//! thread per connection keeps each relay a plain loop with its own
//! deadline; a guest's few connections make the cost of a thread
//! irrelevant. Over the cap a caller is answered `503` at accept; when the
//! host leg cannot be opened, `503` in devlxd's error envelope
//! ([`NotServed::HostUnreachable`]), never a hang.
//!
//! Owns the guest-side socket and the relay. It does not read or answer
//! requests (the host does, through the relay), and it does not decide who
//! may do what (the host does, from the preamble on the VM's own listener;
//! the preamble's format is `preamble`'s, shared by both ends).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, VsockAddr, connect, getsockopt, shutdown, socket,
    sockopt,
};

use crate::error::NotServed;
use crate::http::request::{Parsed, parse};
use crate::limits::{
    ACCEPT_RETRY_MS, AGENT_IDLE_TIMEOUT, AGENT_REFUSAL_WAIT, AGENT_RELAY_BUFFER_BYTES,
    AGENT_THREAD_STACK_BYTES, DEFAULT_AGENT_MAX_CONNECTIONS, DEFAULT_AGENT_PORT, MAX_HEAD_BYTES,
};
use crate::log;
use crate::metrics::Limit;
use crate::preamble::{MAX_PREAMBLE_BYTES, Preamble};

/// Where the agent serves inside the guest by default: LXD's path, the one
/// a container sees (`cli::CONTAINER_SOCKET`).
pub const GUEST_SOCKET: &str = "/dev/lxd/sock";

/// The host's vsock context id: "the well-known address of the host"
/// (`VMADDR_CID_HOST`, vsock(7)). Under hybrid vsock the VMM turns a
/// connection to it into one on the host's `<uds_path>_<port>`.
pub const HOST_CID: u32 = 2;

const _: () = assert!(MAX_PREAMBLE_BYTES <= AGENT_RELAY_BUFFER_BYTES);

/// `guestsock agent`'s flags.
#[derive(Debug, PartialEq, Args)]
pub struct AgentArgs {
    /// `--socket`.
    #[arg(long, value_name = "PATH", default_value = GUEST_SOCKET,
        help = "The socket to serve in the guest (its directory is created mode 0755; the socket is 0666)")]
    pub socket: PathBuf,
    /// `--host-port`.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_AGENT_PORT,
        help = "The host's vsock port (CID 2) to relay to")]
    pub host_port: u32,
    /// `--host-unix`.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "host_port",
        help = "Relay to this unix socket instead of vsock (tests, or a transport of your own)"
    )]
    pub host_unix: Option<PathBuf>,
    /// `--max-connections`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_AGENT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..=65_536),
        help = "Connections relayed at once; past it a caller is answered 503")]
    pub max_connections: u32,
    /// `--idle-timeout`.
    #[arg(long, value_name = "S", default_value_t = AGENT_IDLE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=crate::limits::MAX_FLAG_SECS),
        help = "Seconds a connection may pass no byte either way before it is closed")]
    pub idle_timeout: u64,
}

/// Where the host leg of each connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostLeg {
    /// AF_VSOCK to [`HOST_CID`] on this port.
    Vsock {
        /// The port.
        port: u32,
    },
    /// A unix socket at this path.
    Unix(PathBuf),
}

impl HostLeg {
    /// Opens a connection to the host. A vsock connect gives up after the
    /// kernel's connect timeout (2 s by default, vsock(7)) when the VMM
    /// does not answer.
    pub fn connect(&self) -> io::Result<HostStream> {
        match self {
            HostLeg::Unix(path) => UnixStream::connect(path).map(|s| HostStream(s.into())),
            HostLeg::Vsock { port } => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, *port))?;
                Ok(HostStream(fd))
            }
        }
    }
}

impl std::fmt::Display for HostLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostLeg::Vsock { port } => write!(f, "vsock CID {HOST_CID} port {port}"),
            HostLeg::Unix(path) => write!(f, "unix socket {}", path.display()),
        }
    }
}

/// A connected stream socket to the host, of either family: read, write and
/// shut down through its descriptor, which is all the relay asks of it.
#[derive(Debug)]
pub struct HostStream(OwnedFd);

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(&self.0, buf)?)
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(&self.0, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for HostStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides finished sending and everything was delivered.
    Finished,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// One direction of a relay: where its bytes stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The source may send more.
    Open,
    /// The source reached its end; what is buffered is still to be written,
    /// then the end passed on.
    Draining,
    /// The end was passed on (`shutdown(SHUT_WR)` on the destination).
    Done,
}

/// One direction's buffer and state.
struct Direction {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    flow: Flow,
}

/// Chunks one direction moves before the other gets a turn: a fast stream
/// one way never starves the other.
const CHUNKS_PER_TURN: usize = 8;

impl Direction {
    fn new(first: &[u8]) -> Direction {
        let mut buf = vec![0u8; AGENT_RELAY_BUFFER_BYTES].into_boxed_slice();
        let end = first.len().min(buf.len());
        buf[..end].copy_from_slice(&first[..end]);
        Direction {
            buf,
            start: 0,
            end,
            flow: Flow::Open,
        }
    }

    /// Whether the source should be read (the buffer is empty, the source open).
    fn wants_read(&self) -> bool {
        self.flow == Flow::Open && self.start == self.end
    }

    /// Whether the destination has bytes (or an end) to take.
    fn wants_write(&self) -> bool {
        self.start < self.end || self.flow == Flow::Draining
    }

    /// Moves what it can without blocking; says whether anything moved.
    fn pump(&mut self, src: &mut impl Read, dst: &mut (impl Write + AsFd)) -> io::Result<bool> {
        let mut moved = false;
        for _ in 0..CHUNKS_PER_TURN {
            if self.start < self.end {
                match dst.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.start += n;
                        moved = true;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            self.start = 0;
            self.end = 0;
            match self.flow {
                Flow::Done => break,
                Flow::Draining => {
                    // The other side may have closed already; its end is
                    // then passed on by that close.
                    match shutdown(dst.as_fd().as_raw_fd(), Shutdown::Write) {
                        Ok(()) | Err(Errno::ENOTCONN) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.flow = Flow::Done;
                    moved = true;
                    break;
                }
                Flow::Open => match src.read(&mut self.buf) {
                    Ok(0) => {
                        self.flow = Flow::Draining;
                        moved = true;
                    }
                    Ok(n) => {
                        self.end = n;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(moved)
    }
}

/// Sets `O_NONBLOCK` on a descriptor.
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Relays between `guest` and `host` until both directions have finished
/// (each end passed on as a half-close) or `idle` passes with no byte moved
/// either way. `first` is sent to the host before anything of the guest's
/// (the preamble). Both sockets are made non-blocking. An error of either
/// side ends the relay; dropping the sockets then closes both.
pub fn relay<G, H>(
    guest: &mut G,
    host: &mut H,
    first: &[u8],
    idle: Duration,
) -> io::Result<RelayEnd>
where
    G: Read + Write + AsFd,
    H: Read + Write + AsFd,
{
    set_nonblocking(guest.as_fd())?;
    set_nonblocking(host.as_fd())?;
    let mut up = Direction::new(first);
    let mut down = Direction::new(b"");
    let mut last_moved = Instant::now();
    loop {
        let mut moved = up.pump(guest, host)?;
        moved |= down.pump(host, guest)?;
        if up.flow == Flow::Done && down.flow == Flow::Done {
            return Ok(RelayEnd::Finished);
        }
        let now = Instant::now();
        if moved {
            last_moved = now;
        }
        let Some(left) = (last_moved + idle).checked_duration_since(now) else {
            return Ok(RelayEnd::Idle);
        };
        let interest = |reads: bool, writes: bool| {
            let mut flags = PollFlags::empty();
            if reads {
                flags |= PollFlags::POLLIN;
            }
            if writes {
                flags |= PollFlags::POLLOUT;
            }
            flags
        };
        let guest_wants = interest(up.wants_read(), down.wants_write());
        let host_wants = interest(down.wants_read(), up.wants_write());
        // A leg with nothing to do is left out: its hang-up alone would
        // wake the loop forever.
        let mut fds = Vec::with_capacity(2);
        if !guest_wants.is_empty() {
            fds.push(PollFd::new(guest.as_fd(), guest_wants));
        }
        if !host_wants.is_empty() {
            fds.push(PollFd::new(host.as_fd(), host_wants));
        }
        // Rounded up, so that the loop never spins on a sub-millisecond rest.
        let wait =
            PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, wait) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Answers a caller the agent will not relay with `refusal`, then closes.
/// Waits up to [`AGENT_REFUSAL_WAIT`] for the request head first, so that
/// the answer follows the request.
fn refuse(mut guest: UnixStream, refusal: &NotServed, wait_for_request: bool) {
    if wait_for_request {
        let deadline = Instant::now() + AGENT_REFUSAL_WAIT;
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        // Until a whole head, a head with a body to come, or one that is
        // not HTTP at all: then answer.
        while let Ok(Parsed::Partial {
            head_complete: false,
            ..
        }) = parse(&head, 0, 0)
        {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() || guest.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match guest.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    head.extend_from_slice(&chunk[..n]);
                    if head.len() > MAX_HEAD_BYTES {
                        break;
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(512);
    refusal.response().write_to(&mut out, false, false, false);
    let _ = guest.set_write_timeout(Some(AGENT_REFUSAL_WAIT));
    let _ = guest.write_all(&out);
    let _ = guest.shutdown(std::net::Shutdown::Write);
}

/// Serves one accepted in-guest connection to its end.
fn serve_one(guest: UnixStream, host: &HostLeg, idle: Duration) {
    let caller = match getsockopt(&guest, sockopt::PeerCredentials) {
        Ok(cred) => Preamble {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        },
        Err(e) => {
            log::warn(format_args!("agent: no peer credentials ({e}); closed"));
            return;
        }
    };
    let mut upstream = match host.connect() {
        Ok(stream) => stream,
        Err(e) => {
            log::warn(format_args!(
                "agent: cannot reach the host at {host}: {e}; pid {} answered 503",
                caller.pid
            ));
            refuse(guest, &NotServed::HostUnreachable(e.to_string()), true);
            return;
        }
    };
    let mut guest = guest;
    match relay(&mut guest, &mut upstream, caller.line().as_bytes(), idle) {
        Ok(RelayEnd::Finished) => {}
        Ok(RelayEnd::Idle) => log::debug(format_args!(
            "agent: pid {}'s connection idle for {} s; closed",
            caller.pid,
            idle.as_secs()
        )),
        Err(e) => log::debug(format_args!(
            "agent: pid {}'s connection ended: {e}",
            caller.pid
        )),
    }
}

/// Creates the socket's directory (mode 0755) if it is missing, replaces a
/// stale socket nothing listens on, binds, and opens the socket to every
/// user in the guest (0666): who may do what is the host's to decide.
pub fn bind(socket: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The mode given is masked by the umask; the directory must be
        // searchable by every caller.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    }
    if let Ok(meta) = fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; remove it or choose another --socket",
                socket.display()
            ));
        }
        if UnixStream::connect(socket).is_ok() {
            return Err(format!(
                "{} is served already (another agent?); stop it first",
                socket.display()
            ));
        }
        fs::remove_file(socket)
            .map_err(|e| format!("cannot remove the stale {}: {e}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod {}: {e}", socket.display()))?;
    Ok(listener)
}

/// Counts a relay thread while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts and relays forever (until the process is stopped).
fn accept_loop(listener: &UnixListener, host: &HostLeg, cap: usize, idle: Duration) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let guest = match listener.accept() {
            Ok((guest, _)) => guest,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted
                    && e.kind() != io::ErrorKind::ConnectionAborted
                {
                    // Out of descriptors or memory: the waiting callers
                    // stay queued until some relay ends.
                    log::warn(format_args!("agent: accept failed: {e}; retrying"));
                    thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
                }
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= cap {
            active.fetch_sub(1, Ordering::AcqRel);
            let busy = NotServed::AtCapacity {
                limit: Limit::Connections,
                why: format!("the agent relays {cap} connections already; retry later"),
            };
            // Not waiting for the request: the accept loop must not stall.
            let _ = guest.set_nonblocking(true);
            refuse(guest, &busy, false);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let host = host.clone();
        let spawned = thread::Builder::new()
            .name("relay".into())
            .stack_size(AGENT_THREAD_STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                serve_one(guest, &host, idle);
            });
        if let Err(e) = spawned {
            // The closure (and with it the caller's socket and slot) is
            // dropped: the caller sees its connection close.
            log::warn(format_args!("agent: cannot start a relay thread: {e}"));
        }
    }
}

/// `guestsock agent`: binds the guest socket and relays until stopped.
pub fn run(args: AgentArgs) -> Result<(), String> {
    log::init(None);
    let host = match args.host_unix {
        Some(path) => HostLeg::Unix(path),
        None => HostLeg::Vsock {
            port: args.host_port,
        },
    };
    let listener = bind(&args.socket)?;
    log::info(format_args!(
        "agent: serving {}, relaying to {host} (up to {} connections)",
        args.socket.display(),
        args.max_connections
    ));
    accept_loop(
        &listener,
        &host,
        args.max_connections as usize,
        Duration::from_secs(args.idle_timeout),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_default_socket_is_the_containers_one() {
        assert_eq!(GUEST_SOCKET, crate::cli::CONTAINER_SOCKET);
    }

    /// Runs [`relay`] on a thread between two socket pairs; returns the
    /// test's ends (the guest caller's, the host's) and the relay's result.
    fn relayed(
        first: &'static [u8],
        idle: Duration,
    ) -> (
        UnixStream,
        UnixStream,
        thread::JoinHandle<io::Result<RelayEnd>>,
    ) {
        let (caller, mut guest) = UnixStream::pair().unwrap();
        let (host_end, mut host) = UnixStream::pair().unwrap();
        for s in [&caller, &host_end] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let handle = thread::spawn(move || relay(&mut guest, &mut host, first, idle));
        (caller, host_end, handle)
    }

    fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn the_preamble_goes_first_and_bytes_go_both_ways() {
        let (mut caller, mut host, handle) = relayed(b"PRE\r\n", Duration::from_secs(10));
        caller.write_all(b"request").unwrap();
        assert_eq!(read_exactly(&mut host, 12), b"PRE\r\nrequest");
        host.write_all(b"answer").unwrap();
        assert_eq!(read_exactly(&mut caller, 6), b"answer");
        drop(caller);
        drop(host);
        assert_eq!(handle.join().unwrap().unwrap(), RelayEnd::Finished);
    }

    #[test]
    fn a_half_close_is_passed_on_and_the_other_way_stays_open() {
        let (mut caller, mut host, handle) = relayed(b"", Duration::from_secs(10));
        caller.write_all(b"all of it").unwrap();
        caller.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"all of it", "the host sees the end of the request");
        // The answer still flows after the caller's end.
        host.write_all(b"late answer").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        caller.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"late answer");
        assert_eq!(handle.join().unwrap().unwrap(), RelayEnd::Finished);
    }

    #[test]
    fn a_large_stream_arrives_whole_through_the_bounded_buffers() {
        let (mut caller, mut host, handle) = relayed(b"", Duration::from_secs(10));
        let big: Vec<u8> = (0..8 * AGENT_RELAY_BUFFER_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = big.clone();
        let writer = thread::spawn(move || {
            host.write_all(&sent).unwrap();
            host.shutdown(std::net::Shutdown::Write).unwrap();
            host
        });
        let mut got = Vec::new();
        caller.read_to_end(&mut got).unwrap();
        assert!(got == big, "{} bytes of {}", got.len(), big.len());
        drop(caller);
        drop(writer.join().unwrap());
        assert_eq!(handle.join().unwrap().unwrap(), RelayEnd::Finished);
    }

    #[test]
    fn a_silent_connection_ends_at_the_idle_timeout() {
        let (mut caller, _host, handle) = relayed(b"", Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(handle.join().unwrap().unwrap(), RelayEnd::Idle);
        assert!(started.elapsed() >= Duration::from_millis(200));
        let mut byte = [0u8; 1];
        assert_eq!(
            caller.read(&mut byte).unwrap(),
            0,
            "the caller's leg closed"
        );
    }

    #[test]
    fn traffic_keeps_a_connection_past_the_idle_timeout() {
        let (mut caller, mut host, handle) = relayed(b"", Duration::from_millis(300));
        for _ in 0..6 {
            thread::sleep(Duration::from_millis(100));
            host.write_all(b"ping").unwrap();
            assert_eq!(read_exactly(&mut caller, 4), b"ping");
        }
        drop(caller);
        drop(host);
        assert_eq!(handle.join().unwrap().unwrap(), RelayEnd::Finished);
    }

    #[test]
    fn the_host_gone_is_answered_503_in_the_error_envelope() {
        let (mut caller, guest) = UnixStream::pair().unwrap();
        caller
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("guestsock-agent-{}", std::process::id()));
        let host = HostLeg::Unix(dir.join("nothing-listens"));
        caller
            .write_all(b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n")
            .unwrap();
        serve_one(guest, &host, Duration::from_secs(10));
        let mut answer = String::new();
        caller.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error_code"], 503);
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .starts_with("the host's guestsock cannot be reached: "),
            "{body}"
        );
    }
}
