//! `guestsock watch docker`: Docker has no hook stage, so this follows the
//! Docker engine's event stream on its unix socket and registers each
//! container when it starts, removes it when it dies or is destroyed, and
//! reconciles with the containers that are running whenever it (re)connects,
//! so that nothing is missed or left behind.
//!
//! Owns what is the Docker Engine API's: its three `GET`s (`/events`,
//! `/containers/json`, `/containers/{id}/json`), the event stream decoded
//! into [`EngineEvent`]s, the inspect and list documents, and the watcher
//! loop. HTTP/1.1 itself (writing the request, the answer's head, chunked
//! transfer coding, splitting the stream into lines) is [`crate::http`]'s,
//! shared with every other client. It does not own what an instance is made
//! of (cgroup or pid-namespace rule, `root_uid`, labels to config): that is
//! [`super::describe`]'s, through [`super::register`], exactly as for the
//! OCI and LXC hooks.
//!
//! Every size the engine sends is bounded (`DOCKER_*` in [`crate::limits`]);
//! there is no async runtime: one thread reads the event stream, the other
//! inspects and registers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{Container, LABEL_PREFIX, Runtime, RuntimeError, Start};
use crate::client::{ClientError, encode_segment};
use crate::http::exchange::{self, BodyReader, ExchangeError};
use crate::http::lines::Lines;
use crate::http::response_head::ResponseHead;
use crate::limits::{
    DOCKER_CALL_TIMEOUT, DOCKER_EVENT_QUEUE, DOCKER_MAX_BODY_BYTES, DOCKER_MAX_EVENT_BYTES,
    DOCKER_MAX_HEAD_BYTES, DOCKER_RECONNECT_FIRST, DOCKER_RECONNECT_MAX, MAX_CHUNK_LINE_BYTES,
};
use crate::log;

/// The engine's socket when neither `--docker-socket` nor `DOCKER_HOST`
/// names one: where every Docker package puts it.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The variable the Docker client reads the engine's address from; the
/// watcher honours its `unix://` form.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";

/// How far before the subscription the watcher asks the engine to replay
/// events from (`since`): 1 s.
///
/// The engine sends the answer's head *before* it subscribes the caller
/// (moby's `getEvents` flushes, then calls `SubscribeToEvents`), so a head
/// alone does not prove that what happens next is seen. Events since a
/// time are replayed from the engine's buffer atomically with the
/// subscription, so asking for those since just before connecting closes
/// that gap; the margin covers a clock read a little late. Replayed events
/// are handled again, which is harmless: registering is a replace and
/// events come in order.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);

/// The events the watcher subscribes to, as the engine's `filters`
/// parameter: container starts, deaths, removals and renames.
const EVENT_FILTERS: &str = r#"{"type":["container"],"event":["start","die","destroy","rename"]}"#;

/// Why a call to the Docker engine failed. Each variant says whose fault it
/// is; the watcher treats every one of them as "the engine is lost":
/// reconnect, then reconcile.
#[derive(Debug)]
pub enum DockerError {
    /// Nothing could be connected to at the engine's socket: the engine is
    /// not running, or the path is wrong (the operator's to fix).
    Connect {
        /// The socket's path.
        socket: PathBuf,
        /// What `connect` said.
        source: io::Error,
    },
    /// Setting up the connection to the engine failed (its timeouts, the
    /// handle the reader thread reads through, or that thread).
    Io(io::Error),
    /// A call to the engine failed at the HTTP level: sending or reading
    /// failed, or timed out after [`DOCKER_CALL_TIMEOUT`] (the engine went
    /// away or hangs), the engine closed before the answer was complete, or
    /// the answer is not HTTP/1.1 as the engine writes it (its head past
    /// [`DOCKER_MAX_HEAD_BYTES`], its body past [`DOCKER_MAX_BODY_BYTES`],
    /// something other than the engine answers on the socket); says which.
    Http(ExchangeError),
    /// The engine ended the event stream (it is stopping).
    Closed,
    /// An event line longer than [`DOCKER_MAX_EVENT_BYTES`].
    EventTooLarge {
        /// The bound.
        limit: usize,
    },
    /// The engine answered with an error status and this message.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The engine's `message`, or its body.
        message: String,
    },
    /// An answer or event whose JSON is not the documented shape.
    BadJson {
        /// Which answer.
        what: &'static str,
        /// What serde said.
        reason: String,
    },
    /// The watcher fell [`DOCKER_EVENT_QUEUE`] events behind the stream;
    /// it reconnects and reconciles rather than lose any.
    QueueFull {
        /// The bound.
        limit: usize,
    },
    /// `DOCKER_HOST` names an engine that is not on a unix socket (the
    /// operator's to fix: give `--docker-socket`).
    NotUnix(String),
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Connect { socket, source } => {
                write!(f, "cannot connect to {}: {source}", socket.display())
            }
            DockerError::Io(e) => write!(f, "cannot set up the connection to the engine: {e}"),
            DockerError::Http(e) => write!(f, "talking to the engine: {e}"),
            DockerError::Closed => f.write_str("the engine ended the event stream"),
            DockerError::EventTooLarge { limit } => {
                write!(f, "an event from the engine is longer than {limit} bytes")
            }
            DockerError::Refused { status, message } => {
                write!(f, "the engine answered {status}: {message}")
            }
            DockerError::BadJson { what, reason } => {
                write!(
                    f,
                    "the engine's {what} is not what its API documents: {reason}"
                )
            }
            DockerError::QueueFull { limit } => write!(
                f,
                "{limit} engine events are waiting to be handled; catching up by reconciling"
            ),
            DockerError::NotUnix(host) => write!(
                f,
                "{DOCKER_HOST_ENV}={host} is not a unix socket (unix:///path): \
                 give the engine's socket with --docker-socket"
            ),
        }
    }
}

impl std::error::Error for DockerError {}

impl From<ExchangeError> for DockerError {
    fn from(e: ExchangeError) -> DockerError {
        DockerError::Http(e)
    }
}

/// The engine's socket: `--docker-socket` if given, else `DOCKER_HOST`'s
/// `unix://` path, else [`DEFAULT_DOCKER_SOCKET`].
pub fn engine_socket(flag: Option<&Path>) -> Result<PathBuf, DockerError> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    match std::env::var(DOCKER_HOST_ENV) {
        Ok(host) if !host.is_empty() => socket_from_docker_host(&host),
        _ => Ok(PathBuf::from(DEFAULT_DOCKER_SOCKET)),
    }
}

/// The socket path of a `DOCKER_HOST` value, which must be `unix://PATH`:
/// an engine reached over `tcp://` or `ssh://` may run on another host,
/// whose pids and cgroups mean nothing in this one's `/proc`.
pub fn socket_from_docker_host(host: &str) -> Result<PathBuf, DockerError> {
    match host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(DockerError::NotUnix(host.to_owned())),
    }
}

// ---------------------------------------------------------------------------
// Pure parsers of the engine's documents: bytes in, a value or an error
// out; no I/O.

/// What happened to a container, of the engine's events the watcher acts
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It started (or restarted): register it.
    Start,
    /// Its init exited: remove its instance.
    Die,
    /// It was removed: remove its instance (if its `die` was missed).
    Destroy,
    /// It was renamed: its instance's name may change.
    Rename,
}

/// One container event from the engine's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// What happened.
    pub action: Action,
    /// The container's full id.
    pub id: String,
    /// Its name (without the leading `/`), from the event's attributes.
    pub name: Option<String>,
    /// On `rename`, the name it had before (without the leading `/`).
    pub old_name: Option<String>,
    /// Its `io.guestsock.*` labels, which the engine copies into every
    /// event's attributes.
    pub labels: BTreeMap<String, String>,
}

/// An event as the engine encodes it (`events.Message`); only the fields
/// the watcher reads, the others ignored.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: WireActor,
}

/// The `Actor` of an event: the container and its attributes.
#[derive(Deserialize, Default)]
struct WireActor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: Option<HashMap<String, String>>,
}

/// A name as the engine writes it, without the leading `/` it sometimes
/// carries (`oldName` on `rename`, `Name` in inspect).
fn bare_name(name: &str) -> String {
    name.strip_prefix('/').unwrap_or(name).to_owned()
}

/// The `io.guestsock.*` entries of a label map.
fn guestsock_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    labels
        .into_iter()
        .filter(|(key, _)| key.starts_with(LABEL_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Parses one event line: `Ok(None)` for events the watcher does not act
/// on (another type or action), an error for a line that is not an event.
pub fn parse_event(line: &[u8]) -> Result<Option<EngineEvent>, DockerError> {
    let wire: WireEvent = serde_json::from_slice(line).map_err(|e| DockerError::BadJson {
        what: "event",
        reason: e.to_string(),
    })?;
    if wire.kind != "container" {
        return Ok(None);
    }
    let action = match wire.action.as_str() {
        "start" => Action::Start,
        "die" => Action::Die,
        "destroy" => Action::Destroy,
        "rename" => Action::Rename,
        _ => return Ok(None),
    };
    if wire.actor.id.is_empty() {
        return Err(DockerError::BadJson {
            what: "event",
            reason: "a container event without Actor.ID".into(),
        });
    }
    let attributes = wire.actor.attributes.unwrap_or_default();
    Ok(Some(EngineEvent {
        action,
        id: wire.actor.id,
        name: attributes.get("name").map(|n| bare_name(n)),
        old_name: attributes.get("oldName").map(|n| bare_name(n)),
        labels: guestsock_labels(&attributes),
    }))
}

/// A container as `GET /containers/{id}/json` describes it, as far as the
/// watcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Its full id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Whether it runs (and is not restarting).
    pub running: bool,
    /// Its init's host pid (0 when it does not run).
    pub pid: i32,
    /// Its `io.guestsock.*` labels.
    pub labels: BTreeMap<String, String>,
}

impl Inspected {
    /// The container as the runtime core registers it.
    pub fn container(&self) -> Container {
        Container {
            runtime: Runtime::Docker,
            id: self.id.clone(),
            name_hint: Some(self.name.clone()),
            pid: self.pid,
            labels: self.labels.clone(),
        }
    }
}

/// `GET /containers/{id}/json`, the fields the watcher reads.
#[derive(Deserialize)]
struct WireInspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State")]
    state: WireState,
    #[serde(rename = "Config", default)]
    config: Option<WireConfig>,
}

/// An inspected container's `State`.
#[derive(Deserialize)]
struct WireState {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Restarting", default)]
    restarting: bool,
    #[serde(rename = "Pid", default)]
    pid: i64,
}

/// An inspected container's `Config`.
#[derive(Deserialize, Default)]
struct WireConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// Parses an inspect answer.
pub fn parse_inspect(body: &[u8]) -> Result<Inspected, DockerError> {
    let wire: WireInspect = serde_json::from_slice(body).map_err(|e| DockerError::BadJson {
        what: "container inspect answer",
        reason: e.to_string(),
    })?;
    let pid = i32::try_from(wire.state.pid).map_err(|_| DockerError::BadJson {
        what: "container inspect answer",
        reason: format!("State.Pid {} is not a pid", wire.state.pid),
    })?;
    let labels = wire
        .config
        .and_then(|c| c.labels)
        .map(|labels| guestsock_labels(&labels))
        .unwrap_or_default();
    Ok(Inspected {
        id: wire.id,
        name: bare_name(&wire.name),
        running: wire.state.running && !wire.state.restarting && pid > 0,
        pid,
        labels,
    })
}

/// One entry of `GET /containers/json`.
#[derive(Deserialize)]
struct WireListed {
    #[serde(rename = "Id")]
    id: String,
}

/// Parses the container list: the full ids.
pub fn parse_list(body: &[u8]) -> Result<Vec<String>, DockerError> {
    let listed: Vec<WireListed> =
        serde_json::from_slice(body).map_err(|e| DockerError::BadJson {
            what: "container list",
            reason: e.to_string(),
        })?;
    Ok(listed.into_iter().map(|c| c.id).collect())
}

/// The engine's `since` parameter for `time`: seconds and nanoseconds since
/// the epoch, as `docker events --since` sends it.
pub fn since_param(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", since.as_secs(), since.subsec_nanos())
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Waits between attempts to reach the engine: doubling from
/// [`DOCKER_RECONNECT_FIRST`] to [`DOCKER_RECONNECT_MAX`].
#[derive(Debug)]
pub struct Backoff {
    /// The next wait.
    next: Duration,
}

impl Backoff {
    /// A backoff at its first wait.
    pub fn new() -> Backoff {
        Backoff {
            next: DOCKER_RECONNECT_FIRST,
        }
    }

    /// The wait to make now; the following one is twice as long, up to the
    /// bound.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(DOCKER_RECONNECT_MAX);
        wait
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = DOCKER_RECONNECT_FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

// ---------------------------------------------------------------------------
// The engine client: one request per connection, like `docker` itself for
// these calls.

/// The Docker engine on its unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The engine's socket.
    socket: PathBuf,
}

/// A connection whose answer head has been read: the stream, the body
/// bytes read with the head, and the head.
struct Answer {
    /// The connection.
    stream: UnixStream,
    /// Bytes already read past the head.
    rest: Vec<u8>,
    /// The head.
    head: ResponseHead,
}

impl Engine {
    /// The engine listening on `socket`.
    pub fn new(socket: &Path) -> Engine {
        Engine {
            socket: socket.to_path_buf(),
        }
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `GET path` on a new connection and reads the answer's head.
    fn get(&self, path: &str, timeout: Option<Duration>) -> Result<Answer, DockerError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| DockerError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(Some(DOCKER_CALL_TIMEOUT)))
            .map_err(DockerError::Io)?;
        let user_agent = concat!("User-Agent: guestsock/", env!("CARGO_PKG_VERSION"));
        exchange::send_request(&mut stream, "GET", path, "docker", &[user_agent], None)?;
        let (head, rest) = exchange::read_head(&mut stream, "GET", DOCKER_MAX_HEAD_BYTES)?;
        Ok(Answer { stream, rest, head })
    }

    /// `GET path`, the whole body of a `200` answer; a `404` is
    /// `Ok(None)`, any other status an error with the engine's message.
    fn call(&self, path: &str) -> Result<Option<Vec<u8>>, DockerError> {
        let Answer { stream, rest, head } = self.get(path, Some(DOCKER_CALL_TIMEOUT))?;
        let body = read_body(stream, rest, head)?;
        match head.status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            status => Err(DockerError::Refused {
                status,
                message: engine_message(&body),
            }),
        }
    }

    /// The full ids of the running containers (`GET /containers/json`).
    pub fn running(&self) -> Result<Vec<String>, DockerError> {
        let body = self.call("/containers/json")?.ok_or(DockerError::Refused {
            status: 404,
            message: "no /containers/json: is this a Docker engine?".into(),
        })?;
        parse_list(&body)
    }

    /// The container `id` as inspect describes it, or `None` if the engine
    /// has no such container (any more).
    pub fn inspect(&self, id: &str) -> Result<Option<Inspected>, DockerError> {
        let path = format!("/containers/{}/json", encode_segment(id));
        self.call(&path)?
            .map(|body| parse_inspect(&body))
            .transpose()
    }

    /// Subscribes to container events from `since` on (replayed from the
    /// engine's buffer, then live), and starts a thread that reads them into
    /// a queue of at most [`DOCKER_EVENT_QUEUE`].
    pub fn subscribe(&self, since: SystemTime) -> Result<Subscription, DockerError> {
        let path = format!(
            "/events?since={}&filters={}",
            since_param(since),
            encode_segment(EVENT_FILTERS)
        );
        let Answer { stream, rest, head } = self.get(&path, None)?;
        if head.status != 200 {
            let _ = stream.set_read_timeout(Some(DOCKER_CALL_TIMEOUT));
            let body = read_body(stream, rest, head).unwrap_or_default();
            return Err(DockerError::Refused {
                status: head.status,
                message: engine_message(&body),
            });
        }
        let control = stream.try_clone().map_err(DockerError::Io)?;
        let (sender, events) = mpsc::sync_channel(DOCKER_EVENT_QUEUE);
        let reader = thread::Builder::new()
            .name("docker-events".into())
            .spawn(move || {
                // Docker writes each event as one chunk.
                let max_chunk = DOCKER_MAX_EVENT_BYTES + MAX_CHUNK_LINE_BYTES;
                read_events(
                    BodyReader::new(stream, head.framing, rest, max_chunk),
                    sender,
                )
            })
            .map_err(DockerError::Io)?;
        Ok(Subscription {
            events: Some(events),
            control,
            reader: Some(reader),
        })
    }
}

/// Reads a whole answer body framed by `head`, starting with the bytes
/// `rest` read with the head, up to [`DOCKER_MAX_BODY_BYTES`].
fn read_body(
    stream: UnixStream,
    rest: Vec<u8>,
    head: ResponseHead,
) -> Result<Vec<u8>, DockerError> {
    let body = BodyReader::new(stream, head.framing, rest, DOCKER_MAX_BODY_BYTES);
    Ok(body.read_to_end(DOCKER_MAX_BODY_BYTES)?)
}

/// The engine's error message: the `message` of its JSON error body, else
/// the body as text.
fn engine_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct WireError {
        message: String,
    }
    match serde_json::from_slice::<WireError>(body) {
        Ok(error) => error.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// The event stream's reader thread: decodes chunks into lines and lines
/// into events, and queues them. Ends with one error in the queue (the
/// stream ended, broke, or the queue was full), or silently when the
/// watcher dropped the queue.
fn read_events(
    mut body: BodyReader<UnixStream>,
    sender: SyncSender<Result<EngineEvent, DockerError>>,
) {
    let mut run = || -> Result<(), DockerError> {
        let mut lines = Lines::new(DOCKER_MAX_EVENT_BYTES);
        let mut decoded = Vec::new();
        loop {
            decoded.clear();
            let more = body.read_into(&mut decoded)?;
            let complete = lines
                .push(&decoded)
                .map_err(|_| DockerError::EventTooLarge {
                    limit: DOCKER_MAX_EVENT_BYTES,
                })?;
            for line in complete {
                let Some(event) = parse_event(&line)? else {
                    continue;
                };
                match sender.try_send(Ok(event)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        return Err(DockerError::QueueFull {
                            limit: DOCKER_EVENT_QUEUE,
                        });
                    }
                    // The watcher stopped listening: nothing to report.
                    Err(TrySendError::Disconnected(_)) => return Ok(()),
                }
            }
            if !more {
                return Err(DockerError::Closed);
            }
        }
    };
    if let Err(error) = run() {
        // Blocks until the watcher takes the events before it (or is gone).
        let _ = sender.send(Err(error));
    }
}

/// A live subscription to the engine's container events. Dropping it
/// closes the connection and ends the reader thread.
pub struct Subscription {
    /// The queue the reader thread fills; its last item is the error that
    /// ended the stream. Taken only on drop.
    events: Option<Receiver<Result<EngineEvent, DockerError>>>,
    /// The same connection, to shut it down from this side.
    control: UnixStream,
    /// The reader thread.
    reader: Option<JoinHandle<()>>,
}

impl Subscription {
    /// The next event, waiting for it; the error that ended the stream
    /// once it ended.
    pub fn next(&self) -> Result<EngineEvent, DockerError> {
        self.events
            .as_ref()
            .and_then(|events| events.recv().ok())
            .unwrap_or(Err(DockerError::Closed))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Wakes the reader from its read, and fails any send it makes
        // after, so that it ends whatever it was doing.
        let _ = self.control.shutdown(Shutdown::Both);
        drop(self.events.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The watcher.

/// Why a session with the engine ended: the watcher reconnects after
/// either.
#[derive(Debug)]
enum Lost {
    /// The engine went away or answered something unusable.
    Engine(DockerError),
    /// guestsock could not be reached (to list its instances, or to
    /// register or remove one).
    Admin(RuntimeError),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Engine(e) => write!(f, "Docker engine: {e}"),
            Lost::Admin(e) => write!(f, "guestsock: {e}"),
        }
    }
}

impl From<DockerError> for Lost {
    fn from(e: DockerError) -> Lost {
        Lost::Engine(e)
    }
}

/// `guestsock watch docker`: follows the engine at `docker_socket` and
/// keeps guestsock's instances (through the admin socket `admin`) in step
/// with its running containers, for ever. A `unix://` prefix on the
/// socket's path (a `DOCKER_HOST` value) is accepted.
pub fn watch(admin: &Path, docker_socket: &Path) -> Result<(), String> {
    crate::log::init(None);
    let socket = match docker_socket.to_str() {
        Some(host) if host.contains("://") => {
            socket_from_docker_host(host).map_err(|e| format!("watch docker: {e}"))?
        }
        _ => docker_socket.to_path_buf(),
    };
    let engine = Engine::new(&socket);
    let mut watcher = Watcher {
        admin,
        engine,
        registered: HashSet::new(),
    };
    log::info(format_args!(
        "watching the Docker engine at {}, registering its containers through {}",
        socket.display(),
        admin.display()
    ));
    let mut backoff = Backoff::new();
    // Why the last attempt failed, while attempts fail: the first failure
    // (and a new reason) is a warning, a retry failing the same way is
    // debug detail, and the next success says so at info.
    let mut failing: Option<String> = None;
    loop {
        let (error, established) = watcher.session(&mut backoff);
        let wait = backoff.next_wait();
        let reason = error.to_string();
        if established || failing.as_deref() != Some(reason.as_str()) {
            log::warn(format_args!(
                "cannot follow the Docker engine at {} ({error}); retrying in {} ms \
                 (backing off to {} s), then reconciling",
                socket.display(),
                wait.as_millis(),
                DOCKER_RECONNECT_MAX.as_secs()
            ));
        } else {
            log::debug(format_args!(
                "still cannot follow the Docker engine ({error}); next attempt in {} ms",
                wait.as_millis()
            ));
        }
        failing = Some(reason);
        thread::sleep(wait);
    }
}

/// The watcher's two ends, guestsock's admin socket and the engine, and
/// what it registered.
struct Watcher<'a> {
    /// guestsock's admin socket.
    admin: &'a Path,
    /// The engine.
    engine: Engine,
    /// The containers that may have an instance of this watcher's: those
    /// it found at the last reconcile plus those it tried to register
    /// since (a failed replacement leaves the old instance), less those it
    /// removed. Only their deaths need a call to guestsock: a container
    /// the watcher never got to (it exited before it could be inspected)
    /// has nothing to remove, and asking would cost a look through every
    /// instance. One id per running container at most; rebuilt from
    /// guestsock's own list at every reconcile.
    registered: HashSet<String>,
}

/// How a reconcile went, for its log line.
#[derive(Debug, Default)]
struct Tally {
    /// Running containers found.
    running: usize,
    /// Of those, registered.
    registered: usize,
    /// Instances removed (their container is not running, or renamed).
    removed: usize,
    /// Running containers that could not be registered.
    failed: usize,
}

impl Watcher<'_> {
    /// One connection to the engine: subscribe, reconcile, then follow the
    /// events until the engine is lost. Returns why it ended, and whether it
    /// got as far as following.
    fn session(&mut self, backoff: &mut Backoff) -> (Lost, bool) {
        // Subscribe before listing: whatever happens after the list was
        // taken is in the stream (see REPLAY_MARGIN for why `since`).
        let since = SystemTime::now()
            .checked_sub(REPLAY_MARGIN)
            .unwrap_or(UNIX_EPOCH);
        let subscription = match self.engine.subscribe(since) {
            Ok(subscription) => subscription,
            Err(e) => return (Lost::Engine(e), false),
        };
        match self.reconcile() {
            Ok(tally) => log::info(format_args!(
                "connected to the Docker engine at {}: {} running containers, {} registered, \
                 {} not registered, {} stale instances removed",
                self.engine.socket().display(),
                tally.running,
                tally.registered,
                tally.failed,
                tally.removed
            )),
            Err(lost) => return (lost, false),
        }
        backoff.reset();
        loop {
            let event = match subscription.next() {
                Ok(event) => event,
                Err(e) => return (Lost::Engine(e), true),
            };
            if let Err(lost) = self.handle(&event) {
                return (lost, true);
            }
        }
    }

    /// Brings guestsock's Docker instances in line with the running
    /// containers: every one registered, every instance whose container is
    /// not running (or has been renamed) removed.
    fn reconcile(&mut self) -> Result<Tally, Lost> {
        let mut tally = Tally::default();
        self.registered.clear();
        // First, so that while guestsock is down a retry costs one call,
        // not an inspect of every container. Only this watcher registers
        // Docker's instances, so nothing changes them meanwhile.
        let owned = super::owned(self.admin, Runtime::Docker).map_err(Lost::Admin)?;
        let mut running: Vec<(Inspected, Option<String>)> = Vec::new();
        for id in self.engine.running()? {
            // It may have stopped since the list: then it is not running.
            let Some(container) = self.engine.inspect(&id)? else {
                continue;
            };
            if !container.running {
                continue;
            }
            let name =
                match super::instance_name(&container.id, Some(&container.name), &container.labels)
                {
                    Ok(name) => Some(name),
                    Err(e) => {
                        self.not_registered(&container, &e);
                        tally.failed += 1;
                        None
                    }
                };
            running.push((container, name));
        }
        tally.running = running.len();
        let wanted: HashMap<&str, Option<&str>> = running
            .iter()
            .map(|(c, name)| (c.id.as_str(), name.as_deref()))
            .collect();
        // Removed first, so that a stale instance (a renamed container's
        // old name) never stands in the way of a registration.
        for (instance, id) in owned {
            let stale = match wanted.get(id.as_str()) {
                None => Some("is not running"),
                Some(Some(name)) if *name != instance => Some("was renamed"),
                // A running container whose name is unusable keeps what it
                // had: it is not gone.
                Some(_) => None,
            };
            match stale {
                Some(why) => {
                    if self.remove(&id, &instance, why)? {
                        tally.removed += 1;
                    }
                }
                None => {
                    self.registered.insert(id);
                }
            }
        }
        for (container, name) in &running {
            if name.is_some() {
                // Running already: a guest's Ready is kept, and an
                // unchanged instance is not written again.
                let registered = self.register(container, Start::Running)?;
                self.registered.insert(container.id.clone());
                if registered {
                    tally.registered += 1;
                } else {
                    tally.failed += 1;
                }
            }
        }
        Ok(tally)
    }

    /// Acts on one event. Only a failure to reach the engine or guestsock
    /// is an error (the session ends, and the reconcile after it catches
    /// up); a container that cannot be registered is logged.
    fn handle(&mut self, event: &EngineEvent) -> Result<(), Lost> {
        match event.action {
            Action::Start => {
                // The event is only a hint: inspect says whether it still
                // runs and with which pid (the event may be a replay, or
                // the container may have died since).
                match self.engine.inspect(&event.id)? {
                    Some(container) if container.running => {
                        self.register(&container, Start::Fresh)?;
                        self.registered.insert(container.id);
                    }
                    _ => log::debug(format_args!(
                        "container {} ({}) started but no longer runs",
                        event.name.as_deref().unwrap_or("?"),
                        short(&event.id)
                    )),
                }
            }
            Action::Die if self.registered.contains(&event.id) => {
                // A death may be old news: replayed at a reconnection, or
                // the container restarted since (a restart policy, `docker
                // restart`). One that runs again keeps its instance, which
                // its own start event (later in the stream) replaces.
                if let Some(container) = self.engine.inspect(&event.id)?
                    && container.running
                {
                    log::debug(format_args!(
                        "container {} ({}) died but runs again",
                        container.name,
                        short(&event.id)
                    ));
                } else {
                    self.forget(event, event.name.as_deref(), "stopped")?;
                }
            }
            // Its death was handled (a container dies before it is
            // removed); this only catches one whose death was not.
            Action::Destroy if self.registered.contains(&event.id) => {
                self.forget(event, event.name.as_deref(), "was removed")?;
            }
            Action::Rename => {
                let old = self.event_instance(event, event.old_name.as_deref());
                let new = self.event_instance(event, event.name.as_deref());
                if old != new {
                    if self.registered.contains(&event.id) {
                        self.forget(event, event.old_name.as_deref(), "was renamed")?;
                    }
                    if let Some(container) = self.engine.inspect(&event.id)?
                        && container.running
                    {
                        self.register(&container, Start::Running)?;
                        self.registered.insert(container.id);
                    }
                }
            }
            Action::Die | Action::Destroy => {}
        }
        Ok(())
    }

    /// Removes the instance of the event's container, named as it is under
    /// `name`, and forgets that it had one.
    fn forget(&mut self, event: &EngineEvent, name: Option<&str>, why: &str) -> Result<(), Lost> {
        self.registered.remove(&event.id);
        if let Some(instance) = self.event_instance(event, name) {
            self.remove(&event.id, &instance, why)?;
        }
        Ok(())
    }

    /// The instance name a container of this event has under `name`, or
    /// `None` (logged) if it cannot have one.
    fn event_instance(&self, event: &EngineEvent, name: Option<&str>) -> Option<String> {
        match super::instance_name(&event.id, name, &event.labels) {
            Ok(instance) => Some(instance),
            Err(e) => {
                log::debug(format_args!(
                    "container {} ({}): no instance name: {e}",
                    name.unwrap_or("?"),
                    short(&event.id)
                ));
                None
            }
        }
    }

    /// Registers a running container; logs the outcome, one line. Whether
    /// it was registered; an error only if guestsock could not be reached.
    fn register(&self, container: &Inspected, start: Start) -> Result<bool, Lost> {
        match super::register(self.admin, &container.container(), start) {
            Ok(instance) => {
                log::info(format_args!(
                    "container {} ({}, pid {}): registered as instance {instance}",
                    container.name,
                    short(&container.id),
                    container.pid
                ));
                Ok(true)
            }
            Err(e) if unreachable(&e) => Err(Lost::Admin(e)),
            Err(e) => {
                self.not_registered(container, &e);
                Ok(false)
            }
        }
    }

    /// The one line for a container that cannot be registered.
    fn not_registered(&self, container: &Inspected, error: &RuntimeError) {
        log::warn(format_args!(
            "container {} ({}, pid {}): not registered: {error}",
            container.name,
            short(&container.id),
            container.pid
        ));
    }

    /// Removes container `id`'s instance `instance` if that container owns
    /// it; logs what was done. Whether an instance was removed; an error
    /// only if guestsock could not be reached.
    fn remove(&self, id: &str, instance: &str, why: &str) -> Result<bool, Lost> {
        match super::unregister(self.admin, Runtime::Docker, id, instance) {
            Ok(true) => {
                log::info(format_args!(
                    "container {} {why}: removed instance {instance}",
                    short(id)
                ));
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) if unreachable(&e) => Err(Lost::Admin(e)),
            Err(e) => {
                log::warn(format_args!(
                    "container {} {why}: cannot remove instance {instance}: {e}",
                    short(id)
                ));
                Ok(false)
            }
        }
    }
}

/// Whether a registration failed because guestsock could not be reached
/// (stopped, restarting, or gone mid-answer), rather than because it refused
/// this container: then no container can be registered, and the watcher
/// waits for guestsock and reconciles instead of dropping this one.
fn unreachable(error: &RuntimeError) -> bool {
    matches!(
        error,
        RuntimeError::Server {
            source: ClientError::Connect { .. }
                | ClientError::Send(_)
                | ClientError::Receive(_)
                | ClientError::NotHttp,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event line as Docker 20.10 writes it.
    const START: &str = r#"{"status":"start","id":"5089ab15bb6da33842b6e436ad7e85a2b3d9d7ad29c1bed2a3546afa266f9aab","from":"gs-test:1","Type":"container","Action":"start","Actor":{"ID":"5089ab15bb6da33842b6e436ad7e85a2b3d9d7ad29c1bed2a3546afa266f9aab","Attributes":{"image":"gs-test:1","io.guestsock.config.user.foo":"bar","name":"magical_zhukovsky"}},"scope":"local","time":1796129129,"timeNano":1796129129461812033}"#;

    #[test]
    fn event_lines_become_events() {
        let id = "5089ab15bb6da33842b6e436ad7e85a2b3d9d7ad29c1bed2a3546afa266f9aab";
        let event = parse_event(START.as_bytes()).unwrap().unwrap();
        assert_eq!(
            event,
            EngineEvent {
                action: Action::Start,
                id: id.into(),
                name: Some("magical_zhukovsky".into()),
                old_name: None,
                labels: BTreeMap::from([(
                    "io.guestsock.config.user.foo".to_owned(),
                    "bar".to_owned()
                )]),
            }
        );
        let die = START.replace(r#""Action":"start""#, r#""Action":"die""#);
        assert_eq!(
            parse_event(die.as_bytes()).unwrap().unwrap().action,
            Action::Die
        );
        let destroy = START.replace(r#""Action":"start""#, r#""Action":"destroy""#);
        assert_eq!(
            parse_event(destroy.as_bytes()).unwrap().unwrap().action,
            Action::Destroy
        );
        // Newer engines leave out the old top-level fields.
        let rename = format!(
            r#"{{"Type":"container","Action":"rename","Actor":{{"ID":"{id}","Attributes":{{"name":"new","oldName":"/old"}}}}}}"#
        );
        let rename = parse_event(rename.as_bytes()).unwrap().unwrap();
        assert_eq!(rename.action, Action::Rename);
        assert_eq!(rename.name.as_deref(), Some("new"));
        assert_eq!(rename.old_name.as_deref(), Some("old"));
        assert!(rename.labels.is_empty());
    }

    #[test]
    fn events_the_watcher_does_not_act_on_parse_to_nothing() {
        for line in [
            START.replace(r#""Action":"start""#, r#""Action":"exec_start: sh""#),
            START.replace(r#""Action":"start""#, r#""Action":"kill""#),
            START.replace(r#""Type":"container""#, r#""Type":"network""#),
            r#"{"Type":"image","Action":"pull","Actor":{"ID":"busybox"}}"#.to_owned(),
        ] {
            assert_eq!(parse_event(line.as_bytes()).unwrap(), None, "{line}");
        }
        for line in [
            &b"not json"[..],
            br#"{"Type":"container","Action":"start","Actor":{}}"#,
            br#""start""#,
        ] {
            assert!(
                matches!(parse_event(line), Err(DockerError::BadJson { .. })),
                "{line:?}"
            );
        }
    }

    #[test]
    fn inspect_answers_give_pid_name_and_guestsock_labels() {
        let body = br#"{"Id":"abc","Name":"/web-1","State":{"Status":"running","Running":true,"Paused":false,"Restarting":false,"Pid":4242},"Config":{"Labels":{"io.guestsock.config.user.foo":"bar","io.guestsock.name":"web","com.example":"x"}}}"#;
        assert_eq!(
            parse_inspect(body).unwrap(),
            Inspected {
                id: "abc".into(),
                name: "web-1".into(),
                running: true,
                pid: 4242,
                labels: BTreeMap::from([
                    ("io.guestsock.config.user.foo".to_owned(), "bar".to_owned()),
                    ("io.guestsock.name".to_owned(), "web".to_owned()),
                ]),
            }
        );
        // Stopped, restarting, no labels at all.
        let stopped = br#"{"Id":"abc","Name":"/c","State":{"Running":false,"Pid":0},"Config":{"Labels":null}}"#;
        let stopped = parse_inspect(stopped).unwrap();
        assert!(!stopped.running && stopped.labels.is_empty());
        let restarting =
            br#"{"Id":"abc","Name":"/c","State":{"Running":true,"Restarting":true,"Pid":7}}"#;
        assert!(!parse_inspect(restarting).unwrap().running);
        assert!(matches!(
            parse_inspect(br#"{"Id":"abc","State":{"Pid":99999999999}}"#),
            Err(DockerError::BadJson { .. })
        ));
        assert!(matches!(
            parse_inspect(b"{}"),
            Err(DockerError::BadJson { .. })
        ));
    }

    #[test]
    fn the_container_list_gives_full_ids() {
        let body = br#"[{"Id":"aaa","Names":["/a"],"State":"running"},{"Id":"bbb","Labels":{}}]"#;
        assert_eq!(parse_list(body).unwrap(), vec!["aaa", "bbb"]);
        assert_eq!(parse_list(b"[]").unwrap(), Vec::<String>::new());
        assert!(parse_list(br#"{"message":"x"}"#).is_err());
    }

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        assert_eq!(
            socket_from_docker_host("unix:///run/docker.sock").unwrap(),
            PathBuf::from("/run/docker.sock")
        );
        for host in [
            "tcp://127.0.0.1:2375",
            "ssh://me@host",
            "unix://relative",
            "/run/docker.sock",
        ] {
            assert!(
                matches!(socket_from_docker_host(host), Err(DockerError::NotUnix(_))),
                "{host}"
            );
        }
    }

    #[test]
    fn since_is_seconds_and_nanoseconds() {
        let time = UNIX_EPOCH + Duration::new(1_796_129_129, 461_812_033);
        assert_eq!(since_param(time), "1796129129.461812033");
        assert_eq!(
            since_param(UNIX_EPOCH + Duration::from_secs(5)),
            "5.000000000"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits[0], DOCKER_RECONNECT_FIRST);
        assert_eq!(waits[1], DOCKER_RECONNECT_FIRST * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), DOCKER_RECONNECT_MAX);
        backoff.reset();
        assert_eq!(backoff.next_wait(), DOCKER_RECONNECT_FIRST);
    }

    #[test]
    fn engine_errors_give_the_engines_message() {
        assert_eq!(
            engine_message(br#"{"message":"No such container: x"}"#),
            "No such container: x"
        );
        assert_eq!(engine_message(b"page not found\n"), "page not found");
    }
}
