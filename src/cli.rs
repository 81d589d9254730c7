//! The command line (PROTOCOL.md section 7): arguments to a [`Command`], and
//! each command run.
//!
//! Owns argument parsing, the `--instances` file and the demo set-up, and the
//! `query` client. The server itself is `server`'s business.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::instance::{InstanceSpec, MatchRule};
use crate::limits::MAX_INSTANCES_FILE_BYTES;
use crate::registry::Registry;
use crate::server::{self, ServeConfig};

/// Default guest socket path.
pub const DEFAULT_SOCKET: &str = "/run/guestsock/guest/sock";
/// Where `--demo` puts everything.
const DEMO_DIR: &str = "guestsock-demo";

const USAGE: &str = "\
usage:
  guestsock serve [--socket PATH] [--instances FILE] [--demo]
  guestsock query [--socket PATH] PATH      (a guest-side GET, for scripts inside containers)

serve:
  --socket PATH      guest socket (default /run/guestsock/guest/sock); bind-mount its
                     DIRECTORY into containers at /dev/lxd
  --instances FILE   JSON file {\"instances\":[...]} of instances to serve
  --demo             everything under ./guestsock-demo/, with one instance `demo`
                     matching your own uid
query:
  --socket PATH      guest socket (default $GUESTSOCK_SOCKET, else /dev/lxd/sock if it
                     exists, else /run/guestsock/guest/sock)
";

/// One parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Serve {
        socket: Option<PathBuf>,
        instances: Option<PathBuf>,
        demo: bool,
    },
    /// A guest-side `GET`, printing the body.
    Query {
        socket: Option<PathBuf>,
        path: String,
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
    let command = match command.as_str() {
        "serve" => {
            let mut socket = None;
            let mut instances = None;
            let mut demo = false;
            while let Some(flag) = flags.next_flag()? {
                match flag.as_str() {
                    "--socket" => socket = Some(flags.value(&flag)?.into()),
                    "--instances" => instances = Some(flags.value(&flag)?.into()),
                    "--demo" => demo = true,
                    other => return Err(format!("serve: unknown flag {other}")),
                }
            }
            Command::Serve {
                socket,
                instances,
                demo,
            }
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
            Command::Query {
                socket,
                path: path.clone(),
            }
        }
        "help" | "--help" | "-h" => Command::Help,
        other => return Err(format!("unknown command {other:?}")),
    };
    if !matches!(command, Command::Query { .. }) && !flags.positionals.is_empty() {
        return Err(format!("unexpected argument {:?}", flags.positionals[0]));
    }
    Ok(command)
}

/// A cursor over `--flag value`, `--flag=value` and positional arguments.
struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
    inline_value: Option<String>,
    positionals: Vec<String>,
}

impl<'a> Flags<'a> {
    fn new(args: &'a [String]) -> Flags<'a> {
        Flags {
            args: args.iter(),
            inline_value: None,
            positionals: Vec::new(),
        }
    }

    /// The next flag, collecting positional arguments on the way.
    fn next_flag(&mut self) -> Result<Option<String>, String> {
        if let Some(value) = self.inline_value.take() {
            return Err(format!("unexpected value {value:?}"));
        }
        for arg in self.args.by_ref() {
            if arg.starts_with("--") {
                return Ok(Some(match arg.split_once('=') {
                    Some((flag, value)) => {
                        self.inline_value = Some(value.to_owned());
                        flag.to_owned()
                    }
                    None => arg.clone(),
                }));
            }
            self.positionals.push(arg.clone());
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
        Command::Serve {
            socket,
            instances,
            demo,
        } => serve(socket, instances, demo),
        Command::Query { socket, path } => query(&guest_socket_for_client(socket), &path),
    }
}

fn serve(socket: Option<PathBuf>, instances: Option<PathBuf>, demo: bool) -> Result<(), String> {
    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut registry = Registry::new(host_name);
    if let Some(file) = &instances {
        for (index, spec) in load_instances(file)?.into_iter().enumerate() {
            let name = spec.name.clone();
            registry
                .insert(spec)
                .map_err(|e| format!("{}: instances[{index}] ({name:?}): {e}", file.display()))?;
        }
    }
    let socket = match (socket, demo) {
        (Some(socket), _) => socket,
        (None, true) => Path::new(DEMO_DIR).join("guest/sock"),
        (None, false) => PathBuf::from(DEFAULT_SOCKET),
    };
    if demo {
        let uid = nix::unistd::getuid().as_raw();
        registry
            .insert(demo_instance(uid))
            .map_err(|e| format!("cannot register the demo instance: {e}"))?;
        println!(
            "guestsock demo: instance `demo` answers processes of uid {uid}. Try:\n  curl --unix-socket {0} http://lxd/1.0/config\n  curl --unix-socket {0} http://lxd/1.0/config/user.greeting\n  curl --unix-socket {0} http://lxd/1.0/meta-data\nStop with Ctrl-C.",
            socket.display()
        );
    }
    server::serve(ServeConfig { socket, registry })
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

/// The demo instance: the invoking user's own uid, a few `user.*` keys, some
/// cloud-init data and a device.
fn demo_instance(uid: u32) -> InstanceSpec {
    let config = [
        ("user.greeting", "hello from guestsock"),
        ("user.meta-data", "public-keys: []\n"),
        ("cloud-init.user-data", "#cloud-config\nhostname: demo\n"),
        (
            "volatile.hidden",
            "host-only keys are never shown to guests",
        ),
    ];
    let nic = [
        ("type", "nic"),
        ("name", "eth0"),
        ("hwaddr", "00:16:3e:00:00:01"),
    ];
    InstanceSpec {
        name: "demo".into(),
        kind: Default::default(),
        location: None,
        cloud_init_id: None,
        rule: MatchRule::UidRange(uid, 1),
        root_uid: Some(uid),
        guest_access: Default::default(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        devices: BTreeMap::from([(
            "eth0".to_string(),
            nic.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )]),
    }
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
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(&reply) else {
        return Err("the server's answer is not HTTP".into());
    };
    let status = response.code.unwrap_or(0);
    let body = &reply[head_len..];
    if (200..300).contains(&status) {
        std::io::stdout()
            .write_all(body)
            .map_err(|e| format!("cannot write the answer: {e}"))
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(body).trim_end()
        ))
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
            parse_args(&args("serve --socket /x/sock --instances=/i.json --demo")),
            Ok(Command::Serve {
                socket: Some("/x/sock".into()),
                instances: Some("/i.json".into()),
                demo: true
            })
        );
        assert_eq!(
            parse_args(&args("query /1.0 --socket=/s")),
            Ok(Command::Query {
                socket: Some("/s".into()),
                path: "/1.0".into()
            })
        );
        assert_eq!(parse_args(&[]), Ok(Command::Help));
        for bad in [
            "serve --bogus",
            "serve --socket",
            "serve extra",
            "query",
            "query a b",
            "frobnicate",
            "serve --demo=1",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn demo_instance_is_valid() {
        let mut registry = Registry::new("h".into());
        registry.insert(demo_instance(1234)).unwrap();
    }
}
