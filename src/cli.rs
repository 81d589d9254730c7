//! The command line (PROTOCOL.md section 7): arguments to a [`Command`], and
//! each command run.
//!
//! Owns argument parsing, the `--instances` file and the demo set-up, and the
//! client commands' output (tables for people, `--json` for scripts). The
//! server is `server`'s business; talking to it, `client`'s.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::client::{self, encode_segment, table};
use crate::instance::InstanceSpec;
use crate::limits::{MAX_ADMIN_BODY_BYTES, MAX_INSTANCES_FILE_BYTES, Tunables};
use crate::server::{self, Seed, ServeConfig};

/// Default guest socket path.
pub const DEFAULT_SOCKET: &str = "/run/guestsock/guest/sock";
/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/guestsock/admin.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/guestsock";

const USAGE: &str = "\
usage:
  guestsock serve [--socket PATH] [--admin-socket PATH] [--admin-uid UID]...
                  [--state-dir DIR] [--instances FILE] [--demo]
  guestsock instance list | show NAME | add FILE|- | remove NAME
  guestsock config get NAME KEY | set NAME KEY VALUE|- | unset NAME KEY | show NAME
  guestsock device add NAME DEV KEY=VALUE... | remove NAME DEV | list NAME
  guestsock state NAME Started
  guestsock query [--socket PATH] PATH      (a guest-side GET, for scripts inside containers)
  guestsock doctor [NAME...] [--pid PID] [--path /dev/lxd/sock] [--socket PATH]
  guestsock stats                           (the server's counters; GET /1.0/metrics for Prometheus)

serve:
  --socket PATH        guest socket (default /run/guestsock/guest/sock); bind-mount its
                       DIRECTORY into containers at /dev/lxd
  --admin-socket PATH  admin socket, mode 0600 (default /run/guestsock/admin.sock)
  --admin-uid UID      a uid besides root that may use the admin socket (repeatable)
  --state-dir DIR      durable state (default /var/lib/guestsock)
  --instances FILE     JSON file {\"instances\":[...]} registered at start; instances the
                       state directory already has keep their saved version
  --demo               everything under ./guestsock-demo/, with one instance `demo`
                       answering your own uid (README, \"Try it\")
  --pid-file PATH      where to write the server's pid (default: guestsock.pid
                       beside the admin socket); for kill -HUP $(cat PATH)
limits (SECURITY.md has the reasons):
  --max-connections N  open connections in all (default: open-file limit - 64)
  --max-per-instance N guest connections per instance (default 32)
  --max-unknown N      connections from callers matching no instance (default 64)
  --header-timeout S   seconds to send a request head (default 5)
  --body-timeout S     seconds to send a body after its head (default 10)
  --idle-timeout S     seconds a keep-alive connection may idle (default 60)
  --rate-limit N       guest requests per second per instance, 0 = off (default 100)
  --rate-burst N       requests an instance may send at once (default 200)
  --ws-ping-interval S seconds between websocket pings (default 10)
  --log-level LEVEL    error, warn, info (default) or debug; else $RUST_LOG
client commands (instance, config, device, state):
  --admin PATH         admin socket (default $GUESTSOCK_ADMIN, else /run/guestsock/admin.sock)
  --json               print the server's answer as JSON instead of a table
  config set NAME KEY -   reads the value from standard input
query:
  --socket PATH        guest socket (default $GUESTSOCK_SOCKET, else /dev/lxd/sock if it
                       exists, else /run/guestsock/guest/sock)
";

/// `serve`'s flags.
#[derive(Debug, Default, PartialEq)]
pub struct ServeArgs {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--admin-uid`, each time given.
    pub admin_uids: Vec<u32>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--instances`.
    pub instances: Option<PathBuf>,
    /// `--demo`.
    pub demo: bool,
    /// The limit flags.
    pub limits: Tunables,
    /// `--log-level`.
    pub log_level: Option<crate::log::Level>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
}

/// A config value given on the command line or to be read from stdin.
#[derive(Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// The argument itself.
    Given(String),
    /// `-`: standard input, exactly as read.
    Stdin,
}

/// One call of the admin API.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminCall {
    InstanceList,
    InstanceShow(String),
    /// A file name, or `-` for standard input.
    InstanceAdd(String),
    InstanceRemove(String),
    ConfigGet(String, String),
    ConfigSet(String, String, ValueSource),
    ConfigUnset(String, String),
    ConfigShow(String),
    DeviceAdd(String, String, BTreeMap<String, String>),
    DeviceRemove(String, String),
    DeviceList(String),
    State(String, String),
}

/// One parsed command line.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// A guest-side `GET`, printing the body.
    Query {
        socket: Option<PathBuf>,
        path: String,
    },
    /// `stats`: the server's counters for a person.
    Stats {
        /// `--admin`.
        admin: Option<PathBuf>,
    },
    /// `doctor`: checks the socket mount inside containers.
    Doctor {
        /// Instances to check (all registered by `pid` if empty).
        names: Vec<String>,
        /// `--pid`: check this process's container instead.
        pid: Option<i32>,
        /// `--path`: where the socket should be inside (default /dev/lxd/sock).
        path: String,
        /// `--socket`: the server's guest socket on the host.
        socket: Option<PathBuf>,
        /// `--admin`: the admin socket, to list instances.
        admin: Option<PathBuf>,
    },
    /// A client command of the admin socket.
    Admin {
        admin: Option<PathBuf>,
        json: bool,
        call: AdminCall,
    },
    /// Print the usage.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let mut flags = Flags::new(rest);
    match command.as_str() {
        "serve" => {
            let mut serve = ServeArgs::default();
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--socket" => serve.socket = Some(flags.value(&flag)?.into()),
                    "--admin-socket" => serve.admin_socket = Some(flags.value(&flag)?.into()),
                    "--admin-uid" => {
                        let value = flags.value(&flag)?;
                        serve.admin_uids.push(
                            value
                                .parse()
                                .map_err(|_| format!("--admin-uid: {value:?} is not a uid"))?,
                        );
                    }
                    "--state-dir" => serve.state_dir = Some(flags.value(&flag)?.into()),
                    "--instances" => serve.instances = Some(flags.value(&flag)?.into()),
                    "--demo" => serve.demo = true,
                    "--pid-file" => serve.pid_file = Some(flags.value(&flag)?.into()),
                    "--log-level" => {
                        let value = flags.value(&flag)?;
                        serve.log_level =
                            Some(crate::log::Level::parse(&value).ok_or_else(|| {
                                format!("--log-level: {value:?} is not error, warn, info or debug")
                            })?);
                    }
                    "--max-connections" => {
                        serve.limits.max_connections = Some(number(&flag, &flags.value(&flag)?)?)
                    }
                    "--max-per-instance" => {
                        serve.limits.max_per_instance = number(&flag, &flags.value(&flag)?)?
                    }
                    "--max-unknown" => {
                        serve.limits.max_unknown = number(&flag, &flags.value(&flag)?)?
                    }
                    "--header-timeout" => {
                        serve.limits.header_timeout = seconds(&flag, &flags.value(&flag)?)?
                    }
                    "--body-timeout" => {
                        serve.limits.body_timeout = seconds(&flag, &flags.value(&flag)?)?
                    }
                    "--idle-timeout" => {
                        serve.limits.idle_timeout = seconds(&flag, &flags.value(&flag)?)?
                    }
                    "--rate-limit" => {
                        serve.limits.rate_per_sec = number(&flag, &flags.value(&flag)?)?
                    }
                    "--rate-burst" => {
                        serve.limits.rate_burst = number(&flag, &flags.value(&flag)?)?
                    }
                    "--ws-ping-interval" => {
                        serve.limits.ping_interval = seconds(&flag, &flags.value(&flag)?)?;
                        if serve.limits.ping_interval.is_zero() {
                            return Err("--ws-ping-interval must be above 0".into());
                        }
                    }
                    other => return Err(format!("serve: unknown flag {other}")),
                }
            }
            if let Some(extra) = flags.positionals.first() {
                return Err(format!("serve: unexpected argument {extra:?}"));
            }
            Ok(Command::Serve(serve))
        }
        "query" => {
            let mut socket = None;
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--socket" => socket = Some(flags.value(&flag)?.into()),
                    other => return Err(format!("query: unknown flag {other}")),
                }
            }
            let [path] = flags.positionals.as_slice() else {
                return Err("query: give exactly one PATH, like /1.0/config".into());
            };
            Ok(Command::Query {
                socket,
                path: path.clone(),
            })
        }
        "stats" | "top" => {
            let mut admin = None;
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--admin" => admin = Some(flags.value(&flag)?.into()),
                    other => return Err(format!("stats: unknown flag {other}")),
                }
            }
            Ok(Command::Stats { admin })
        }
        "doctor" => {
            let (mut pid, mut path, mut socket, mut admin) =
                (None, "/dev/lxd/sock".to_string(), None, None);
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--pid" => pid = Some(number(&flag, &flags.value(&flag)?)?),
                    "--path" => path = flags.value(&flag)?,
                    "--socket" => socket = Some(flags.value(&flag)?.into()),
                    "--admin" => admin = Some(flags.value(&flag)?.into()),
                    other => return Err(format!("doctor: unknown flag {other}")),
                }
            }
            Ok(Command::Doctor {
                names: flags.positionals.clone(),
                pid,
                path,
                socket,
                admin,
            })
        }
        "instance" | "config" | "device" | "state" => {
            let mut admin = None;
            let mut json = false;
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--admin" => admin = Some(flags.value(&flag)?.into()),
                    "--json" => json = true,
                    other => return Err(format!("{command}: unknown flag {other}")),
                }
            }
            let call = admin_call(command, &flags.positionals)?;
            Ok(Command::Admin { admin, json, call })
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        other => Err(format!("unknown command {other:?}; see guestsock help")),
    }
}

/// A whole number for `flag`.
fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
}

/// Seconds, possibly fractional (`0.5`), for `flag`.
fn seconds(flag: &str, value: &str) -> Result<std::time::Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag}: {value:?} is not a number of seconds (0 to 86400)"))
}

/// The admin call a client command line names.
fn admin_call(command: &str, args: &[String]) -> Result<AdminCall, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let own = |s: &str| s.to_owned();
    Ok(match (command, words.as_slice()) {
        ("instance", ["list"]) => AdminCall::InstanceList,
        ("instance", ["show", name]) => AdminCall::InstanceShow(own(name)),
        ("instance", ["add", source]) => AdminCall::InstanceAdd(own(source)),
        ("instance", ["remove", name]) => AdminCall::InstanceRemove(own(name)),
        ("config", ["get", name, key]) => AdminCall::ConfigGet(own(name), own(key)),
        ("config", ["set", name, key, "-"]) => {
            AdminCall::ConfigSet(own(name), own(key), ValueSource::Stdin)
        }
        ("config", ["set", name, key, value]) => {
            AdminCall::ConfigSet(own(name), own(key), ValueSource::Given(own(value)))
        }
        ("config", ["unset", name, key]) => AdminCall::ConfigUnset(own(name), own(key)),
        ("config", ["show", name]) => AdminCall::ConfigShow(own(name)),
        ("device", ["add", name, dev, fields @ ..]) if !fields.is_empty() => {
            let mut map = BTreeMap::new();
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    return Err(format!("device add: {field:?} is not KEY=VALUE"));
                };
                map.insert(own(key), own(value));
            }
            AdminCall::DeviceAdd(own(name), own(dev), map)
        }
        ("device", ["remove", name, dev]) => AdminCall::DeviceRemove(own(name), own(dev)),
        ("device", ["list", name]) => AdminCall::DeviceList(own(name)),
        ("state", [name, state]) => AdminCall::State(own(name), own(state)),
        _ => {
            return Err(format!(
                "{command}: wrong arguments {words:?}; see guestsock help"
            ));
        }
    })
}

/// A cursor over `--flag value`, `--flag=value` and positional arguments;
/// everything after `--` is positional (for values that start with `--`).
struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
    inline_value: Option<String>,
    positionals: Vec<String>,
    rest_positional: bool,
}

impl<'a> Flags<'a> {
    fn new(args: &'a [String]) -> Flags<'a> {
        Flags {
            args: args.iter(),
            inline_value: None,
            positionals: Vec::new(),
            rest_positional: false,
        }
    }

    /// The next flag, collecting positional arguments on the way.
    fn next_flag(&mut self) -> Result<Option<String>, String> {
        if let Some(value) = self.inline_value.take() {
            return Err(format!("unexpected value {value:?}"));
        }
        for arg in self.args.by_ref() {
            if !self.rest_positional && arg == "--" {
                self.rest_positional = true;
            } else if !self.rest_positional && arg.starts_with("--") {
                return Ok(Some(match arg.split_once('=') {
                    Some((flag, value)) => {
                        self.inline_value = Some(value.to_owned());
                        flag.to_owned()
                    }
                    None => arg.clone(),
                }));
            } else {
                self.positionals.push(arg.clone());
            }
        }
        Ok(None)
    }

    /// The value of the flag just returned.
    fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inline_value
            .take()
            .or_else(|| self.args.next().cloned())
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

/// Runs a command; the error is printed by `main`, which exits non-zero.
pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Serve(args) => serve(args),
        Command::Query { socket, path } => query(&guest_socket_for_client(socket), &path),
        Command::Stats { admin } => stats(admin),
        Command::Doctor {
            names,
            pid,
            path,
            socket,
            admin,
        } => doctor(names, pid, &path, socket, admin),
        Command::Admin { admin, json, call } => {
            let socket = admin
                .or_else(|| std::env::var_os("GUESTSOCK_ADMIN").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
            run_admin(&socket, json, call)
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    crate::log::init(args.log_level);
    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut seeds = Vec::new();
    if let Some(file) = &args.instances {
        for (index, spec) in load_instances(file)?.into_iter().enumerate() {
            seeds.push(Seed {
                origin: format!("{}: instances[{index}] ({:?})", file.display(), spec.name),
                spec,
            });
        }
    }
    let demo_dir = Path::new(crate::demo::DIR);
    let pick = |flag: Option<PathBuf>, demo: &str, default: &str| match (flag, args.demo) {
        (Some(path), _) => path,
        (None, true) => demo_dir.join(demo),
        (None, false) => PathBuf::from(default),
    };
    let socket = pick(args.socket.clone(), "guest/sock", DEFAULT_SOCKET);
    let admin_socket = pick(
        args.admin_socket.clone(),
        "admin.sock",
        DEFAULT_ADMIN_SOCKET,
    );
    let state_dir = pick(args.state_dir.clone(), "state", DEFAULT_STATE_DIR);
    let mut admin_uids = args.admin_uids.clone();
    if args.demo {
        // The newcomer running the demo drives it with the CLI too.
        crate::demo::set_up(
            &socket,
            &admin_socket,
            &state_dir,
            &mut seeds,
            &mut admin_uids,
        )?;
    }
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| crate::pidfile::default_for(&admin_socket));
    server::serve(ServeConfig {
        socket,
        admin_socket,
        admin_uids,
        state_dir,
        host_name,
        seeds,
        limits: args.limits,
        pid_file,
    })
}

/// The `--instances` file: `{"instances": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    instances: Vec<InstanceSpec>,
}

/// Reads and parses an instances file. Syntax and shape errors carry
/// serde_json's line and column; validation is left to the registry.
fn load_instances(path: &Path) -> Result<Vec<InstanceSpec>, String> {
    let shown = path.display();
    let file = fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut text = Vec::new();
    file.take(MAX_INSTANCES_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 > MAX_INSTANCES_FILE_BYTES {
        return Err(format!(
            "{shown}: larger than {MAX_INSTANCES_FILE_BYTES} bytes"
        ));
    }
    serde_json::from_slice::<InstancesFile>(&text)
        .map(|f| f.instances)
        .map_err(|e| format!("{shown}: {e}"))
}

/// The guest socket a client command talks to: the flag, else
/// `$GUESTSOCK_SOCKET`, else `/dev/lxd/sock` inside a container, else the
/// host's default.
fn guest_socket_for_client(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("GUESTSOCK_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| {
            let in_container = Path::new("/dev/lxd/sock");
            if in_container.exists() {
                in_container.to_path_buf()
            } else {
                PathBuf::from(DEFAULT_SOCKET)
            }
        })
}

/// `guestsock query PATH`: a guest-side `GET`; the body goes to standard
/// output, an error status to standard error with a non-zero exit.
fn query(socket: &Path, path: &str) -> Result<(), String> {
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("query: {path:?} is not a path like /1.0/config"));
    }
    let reply = client::call(socket, "GET", path, b"")?;
    if (200..300).contains(&reply.status) {
        std::io::stdout()
            .write_all(&reply.body)
            .map_err(|e| format!("cannot write the answer: {e}"))
    } else {
        Err(format!(
            "{}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim_end()
        ))
    }
}

/// `guestsock stats`: the metrics of `GET /1.0/metrics`, summed up for a
/// person as one aligned table.
fn stats(admin: Option<PathBuf>) -> Result<(), String> {
    let admin = admin
        .or_else(|| std::env::var_os("GUESTSOCK_ADMIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let reply = client::call(&admin, "GET", "/1.0/metrics", b"")?;
    if reply.status != 200 {
        return Err(format!(
            "{}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim_end()
        ));
    }
    let text = String::from_utf8_lossy(&reply.body);
    // Sums every sample of a metric whose labels contain `filter`.
    let sum = |metric: &str, filter: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| {
                (name.starts_with(&format!("{metric}{{")) || *name == metric)
                    && name.contains(filter)
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    };
    let count = |metric: &str, filter: &str| format!("{}", sum(metric, filter) as u64);
    let requests = sum("guestsock_requests_total", "");
    let latency = sum("guestsock_request_duration_seconds_sum", "");
    let rows = vec![
        vec!["instances".into(), count("guestsock_instances", "")],
        vec![
            "connections: guest".into(),
            count("guestsock_connections", "kind=\"guest\""),
        ],
        vec![
            "connections: admin".into(),
            count("guestsock_connections", "kind=\"admin\""),
        ],
        vec![
            "event subscribers".into(),
            count("guestsock_connections", "kind=\"subscriber\""),
        ],
        vec!["requests answered".into(), format!("{}", requests as u64)],
        vec![
            "  2xx".into(),
            count("guestsock_requests_total", "status=\"2"),
        ],
        vec![
            "  4xx".into(),
            count("guestsock_requests_total", "status=\"4"),
        ],
        vec![
            "  5xx".into(),
            count("guestsock_requests_total", "status=\"5"),
        ],
        vec![
            "mean request time".into(),
            if requests > 0.0 {
                format!("{:.1} µs", latency / requests * 1e6)
            } else {
                "-".into()
            },
        ],
        vec![
            "identity failures".into(),
            count("guestsock_identity_failures_total", ""),
        ],
        vec![
            "events published".into(),
            count("guestsock_events_total", "published"),
        ],
        vec![
            "events delivered".into(),
            count("guestsock_events_total", "delivered"),
        ],
        vec![
            "subscribers cut off".into(),
            count("guestsock_subscribers_dropped_total", ""),
        ],
        vec!["limits hit".into(), count("guestsock_limits_hit_total", "")],
    ];
    print!("{}", table(&["WHAT", "VALUE"], &rows));
    Ok(())
}

/// `guestsock doctor`: for each container to check, what is at the socket
/// path inside it. Exits non-zero if anything needs fixing.
fn doctor(
    names: Vec<String>,
    pid: Option<i32>,
    path: &str,
    socket: Option<PathBuf>,
    admin: Option<PathBuf>,
) -> Result<(), String> {
    let admin = admin
        .or_else(|| std::env::var_os("GUESTSOCK_ADMIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let mut targets: Vec<(String, i32)> = Vec::new();
    let server_socket = match (pid, socket) {
        (Some(pid), Some(socket)) => {
            targets.push((format!("pid {pid}"), pid));
            socket
        }
        (pid, socket) => {
            let facts = client::admin(&admin, "GET", "/1.0", b"")?;
            let instances = client::admin(&admin, "GET", "/1.0/instances?recursion=1", b"")?;
            if let Some(pid) = pid {
                targets.push((format!("pid {pid}"), pid));
            }
            for instance in instances.as_array().map(Vec::as_slice).unwrap_or_default() {
                let name = instance["name"].as_str().unwrap_or_default();
                let rule_pid = instance["match"]["pid"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok());
                if let Some(rule_pid) = rule_pid
                    && pid.is_none()
                    && (names.is_empty() || names.iter().any(|n| n == name))
                {
                    targets.push((name.to_owned(), rule_pid));
                }
            }
            socket.unwrap_or_else(|| {
                PathBuf::from(facts["guest_socket"].as_str().unwrap_or(DEFAULT_SOCKET))
            })
        }
    };
    if targets.is_empty() {
        return Err("doctor: no instance is registered by pid; give --pid PID".into());
    }
    let mut problems = 0;
    for (label, pid) in targets {
        let finding = crate::doctor::diagnose(pid, path, &server_socket);
        if !finding.is_fine() {
            problems += 1;
        }
        println!("{label}: {}", finding.explain(path));
    }
    if problems > 0 {
        return Err(format!("doctor: {problems} container(s) need fixing"));
    }
    Ok(())
}

/// Reads standard input to its end, within the admin body limit.
fn read_stdin(what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_ADMIN_BODY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} from standard input: {e}"))?;
    if bytes.len() > MAX_ADMIN_BODY_BYTES {
        return Err(format!(
            "{what} on standard input is larger than {MAX_ADMIN_BODY_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

/// Prints `value` as JSON (for `--json`).
fn print_json(value: &Value) -> Result<(), String> {
    println!("{value}");
    Ok(())
}

/// A config value or device field as one table cell: the first line, marked
/// when there is more.
fn cell(value: &str) -> String {
    match value.split_once('\n') {
        Some((first, rest)) if !rest.is_empty() => format!("{first} [...]"),
        Some((first, _)) => first.to_owned(),
        None => value.to_owned(),
    }
}

/// The `match` rule in the form the instances file uses.
fn rule_cell(rule: &Value) -> String {
    match rule.as_object().and_then(|o| o.iter().next()) {
        Some((kind, arg)) => format!("{kind}={arg}"),
        None => String::new(),
    }
}

fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", encode_segment(name))
}

/// Runs one client command against the admin socket.
fn run_admin(socket: &Path, json: bool, call: AdminCall) -> Result<(), String> {
    let admin = |method: &str, path: &str, body: &[u8]| client::admin(socket, method, path, body);
    match call {
        AdminCall::InstanceList => {
            let list = admin("GET", "/1.0/instances?recursion=1", b"")?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|i| {
                    let count =
                        |field: &str| i[field].as_object().map_or(0, |o| o.len()).to_string();
                    vec![
                        i["name"].as_str().unwrap_or_default().to_owned(),
                        i["type"].as_str().unwrap_or_default().to_owned(),
                        rule_cell(&i["match"]),
                        i["state"].as_str().unwrap_or_default().to_owned(),
                        count("config"),
                        count("devices"),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NAME", "TYPE", "MATCH", "STATE", "KEYS", "DEVICES"],
                    &rows
                )
            );
            Ok(())
        }
        AdminCall::InstanceShow(name) => {
            let instance = admin("GET", &instance_path(&name), b"")?;
            if json {
                return print_json(&instance);
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&instance).unwrap_or_default()
            );
            Ok(())
        }
        AdminCall::InstanceAdd(source) => {
            let body = if source == "-" {
                read_stdin("the instance")?
            } else {
                let mut bytes = Vec::new();
                fs::File::open(&source)
                    .and_then(|f| {
                        f.take(MAX_ADMIN_BODY_BYTES as u64 + 1)
                            .read_to_end(&mut bytes)
                    })
                    .map_err(|e| format!("{source}: {e}"))?;
                bytes
            };
            let instance = admin("POST", "/1.0/instances", &body)?;
            if json {
                return print_json(&instance);
            }
            println!(
                "instance {} registered",
                instance["name"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        AdminCall::InstanceRemove(name) => {
            let result = admin("DELETE", &instance_path(&name), b"")?;
            if json {
                return print_json(&result);
            }
            Ok(())
        }
        AdminCall::ConfigGet(name, key) => {
            let path = format!("{}/config/{}", instance_path(&name), encode_segment(&key));
            let reply = client::call(socket, "GET", &path, b"")?;
            if !(200..300).contains(&reply.status) {
                // Errors come in the envelope; let `admin` word them.
                return admin("GET", &path, b"").map(|_| ());
            }
            let value = String::from_utf8_lossy(&reply.body);
            if json {
                return print_json(&Value::String(value.into_owned()));
            }
            println!("{value}");
            Ok(())
        }
        AdminCall::ConfigSet(name, key, source) => {
            let value = match source {
                ValueSource::Given(value) => value.into_bytes(),
                ValueSource::Stdin => read_stdin("the value")?,
            };
            let path = format!("{}/config/{}", instance_path(&name), encode_segment(&key));
            let instance = admin("PUT", &path, &value)?;
            if json {
                return print_json(&instance);
            }
            Ok(())
        }
        AdminCall::ConfigUnset(name, key) => {
            let path = format!("{}/config/{}", instance_path(&name), encode_segment(&key));
            let instance = admin("DELETE", &path, b"")?;
            if json {
                return print_json(&instance);
            }
            Ok(())
        }
        AdminCall::ConfigShow(name) => {
            let config = admin("GET", &format!("{}/config", instance_path(&name)), b"")?;
            if json {
                return print_json(&config);
            }
            let rows: Vec<Vec<String>> = config
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), cell(v.as_str().unwrap_or_default())])
                .collect();
            print!("{}", table(&["KEY", "VALUE"], &rows));
            Ok(())
        }
        AdminCall::DeviceAdd(name, dev, fields) => {
            let body = serde_json::to_vec(&fields).unwrap_or_default();
            let path = format!("{}/devices/{}", instance_path(&name), encode_segment(&dev));
            let instance = admin("PUT", &path, &body)?;
            if json {
                return print_json(&instance);
            }
            Ok(())
        }
        AdminCall::DeviceRemove(name, dev) => {
            let path = format!("{}/devices/{}", instance_path(&name), encode_segment(&dev));
            let instance = admin("DELETE", &path, b"")?;
            if json {
                return print_json(&instance);
            }
            Ok(())
        }
        AdminCall::DeviceList(name) => {
            let instance = admin("GET", &instance_path(&name), b"")?;
            let devices = &instance["devices"];
            if json {
                return print_json(devices);
            }
            let rows: Vec<Vec<String>> = devices
                .as_object()
                .into_iter()
                .flatten()
                .map(|(dev, device)| {
                    let fields: Vec<String> = device
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| k.as_str() != "type")
                        .map(|(k, v)| format!("{k}={}", cell(v.as_str().unwrap_or_default())))
                        .collect();
                    vec![
                        dev.clone(),
                        cell(device["type"].as_str().unwrap_or_default()),
                        fields.join(" "),
                    ]
                })
                .collect();
            print!("{}", table(&["DEVICE", "TYPE", "FIELDS"], &rows));
            Ok(())
        }
        AdminCall::State(name, state) => {
            let body =
                serde_json::to_vec(&serde_json::json!({ "state": state })).unwrap_or_default();
            let instance = admin("PUT", &format!("{}/state", instance_path(&name)), &body)?;
            if json {
                return print_json(&instance);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_args(&args(
                "serve --socket /x/sock --instances=/i.json --demo --admin-uid 5 --admin-uid=6 --state-dir /s"
            )),
            Ok(Command::Serve(ServeArgs {
                socket: Some("/x/sock".into()),
                instances: Some("/i.json".into()),
                demo: true,
                admin_uids: vec![5, 6],
                state_dir: Some("/s".into()),
                admin_socket: None,
                limits: Tunables::default(),
                log_level: None,
                pid_file: None,
            }))
        );
        assert_eq!(
            parse_args(&args("query /1.0 --socket=/s")),
            Ok(Command::Query {
                socket: Some("/s".into()),
                path: "/1.0".into()
            })
        );
        assert_eq!(
            parse_args(&args("config set c1 user.x -- --odd")),
            Ok(Command::Admin {
                admin: None,
                json: false,
                call: AdminCall::ConfigSet(
                    "c1".into(),
                    "user.x".into(),
                    ValueSource::Given("--odd".into())
                ),
            })
        );
        assert_eq!(
            parse_args(&args("--json config set c1 user.x -")).ok(),
            None,
            "flags belong after the command"
        );
        assert_eq!(
            parse_args(&args("config set c1 user.x - --json --admin /a")),
            Ok(Command::Admin {
                admin: Some("/a".into()),
                json: true,
                call: AdminCall::ConfigSet("c1".into(), "user.x".into(), ValueSource::Stdin),
            })
        );
        assert_eq!(
            parse_args(&args("device add c1 eth0 type=nic name=eth0")),
            Ok(Command::Admin {
                admin: None,
                json: false,
                call: AdminCall::DeviceAdd(
                    "c1".into(),
                    "eth0".into(),
                    BTreeMap::from([
                        ("type".into(), "nic".into()),
                        ("name".into(), "eth0".into())
                    ])
                ),
            })
        );
        assert_eq!(parse_args(&[]), Ok(Command::Help));
        for bad in [
            "serve --bogus",
            "serve --socket",
            "serve extra",
            "serve --admin-uid x",
            "query",
            "query a b",
            "frobnicate",
            "serve --demo=1",
            "instance",
            "instance show",
            "config set c1 k",
            "device add c1 eth0",
            "device add c1 eth0 novalue",
            "state c1",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }
}
