//! The commands that manage instances over the admin socket: `instance`
//! (list, show, add, remove), `config` (an instance's keys), `device` (its
//! devices) and `state` (its guest state), with their flags.
//!
//! Owns their output: a table for people, one confirmation line per
//! change (`--quiet` for none), the server's answer with `--json`, and the
//! remedy a refused `device add` names. Reaching the admin socket and
//! wording a failure to is `cli`'s (`AdminSocket`); the instance's rules,
//! the server's.

use std::collections::BTreeMap;
use std::fs;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::sockets::{AdminArg, AdminSocket};
use super::stdio::{print_json, read_stdin};
use crate::client::{ClientError, encode_segment, table};
use crate::limits::{MAX_ADMIN_BODY_BYTES, read_at_most};

/// The flags of the client commands (`instance`, `config`, `device`,
/// `state`), accepted anywhere after the command.
#[derive(Debug, PartialEq, Args)]
pub struct ClientArgs {
    /// The admin socket.
    #[command(flatten)]
    pub admin: AdminArg,
    /// `--json`.
    #[arg(
        long,
        global = true,
        help = "Print the server's answer as JSON (its metadata) instead of a table or a confirmation"
    )]
    pub json: bool,
}

/// `--quiet`, on every command that changes something.
#[derive(Debug, PartialEq, Args)]
pub struct Quiet {
    /// `--quiet`.
    #[arg(
        long,
        short,
        conflicts_with = "json",
        help = "Print nothing on success; the exit status says it"
    )]
    pub quiet: bool,
}

/// `guestsock instance ...`.
#[derive(Debug, PartialEq, Subcommand)]
pub enum InstanceCall {
    /// Every instance, as a table
    List,
    /// One instance as JSON, with its guest state
    Show {
        /// The instance.
        name: String,
    },
    /// Register an instance from a JSON file (docs/protocol.md section 4), `-` for standard input; a list or an instances file registers (or replaces) many at once, all or nothing
    Add {
        /// The file.
        #[arg(value_name = "FILE|-")]
        source: String,
        /// `--vsock-uds`, `--vsock-port`, `--vmm-uid`, `--socket-dir`.
        #[command(flatten)]
        listener: ListenerArgs,
        /// `--quiet`.
        #[command(flatten)]
        quiet: Quiet,
    },
    /// Unregister an instance; its open guest connections are closed
    Remove {
        /// The instance.
        name: String,
        /// `--quiet`.
        #[command(flatten)]
        quiet: Quiet,
    },
}

/// A listener of the instance's own, given on `instance add`'s command line
/// rather than in its file (docs/vms.md, docs/mounting.md).
#[derive(Debug, PartialEq, Args)]
pub struct ListenerArgs {
    /// A VM's hybrid-vsock socket: the VMM's `uds_path` on the host.
    #[arg(
        long,
        value_name = "PATH",
        requires = "vmm_uid",
        help = "Give the instance (a VM) a vsock listener: the VMM's vsock unix socket (Firecracker's and Cloud Hypervisor's uds_path, vhost-device-vsock's uds-path); guestsock listens on PATH_PORT"
    )]
    pub vsock_uds: Option<String>,
    /// The vsock port the guest's agent connects to.
    #[arg(
        long,
        value_name = "PORT",
        requires = "vsock_uds",
        help = "The vsock port the guest's agent connects to (default 1024)"
    )]
    pub vsock_port: Option<u32>,
    /// The uid the VMM runs as.
    #[arg(
        long,
        value_name = "UID",
        requires = "vsock_uds",
        help = "The uid the VMM runs as: the only one that may connect to the vsock listener"
    )]
    pub vmm_uid: Option<u32>,
    /// A container's own socket directory.
    #[arg(
        long,
        value_name = "DIR",
        help = "Give the instance (a container) a socket of its own, DIR/sock; mount DIR at /dev/lxd"
    )]
    pub socket_dir: Option<String>,
}

/// What `instance add` says when its flags meet a file of many instances.
const ONE_INSTANCE: &str =
    "--vsock-uds and --socket-dir add a listener to one instance; the file holds more";

impl ListenerArgs {
    /// The listeners the flags declare, in the instance JSON's shape.
    fn listeners(&self) -> Vec<Value> {
        let mut listeners = Vec::new();
        if let (Some(uds), Some(vmm_uid)) = (&self.vsock_uds, self.vmm_uid) {
            let mut vsock = serde_json::json!({"uds": uds, "vmm_uid": vmm_uid});
            if let Some(port) = self.vsock_port {
                vsock["port"] = port.into();
            }
            listeners.push(serde_json::json!({ "vsock": vsock }));
        }
        if let Some(dir) = &self.socket_dir {
            listeners.push(serde_json::json!({"socket_dir": {"dir": dir}}));
        }
        listeners
    }

    /// `body`, one instance's JSON, with the flags' listeners added to the
    /// ones it names.
    fn add_to(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let listeners = self.listeners();
        if listeners.is_empty() {
            return Ok(body);
        }
        let mut instance: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the instance is not JSON: {e}"))?;
        let Some(object) = instance.as_object_mut() else {
            return Err(ONE_INSTANCE.into());
        };
        match object
            .entry("listeners")
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.extend(listeners),
            _ => return Err("the instance's \"listeners\" is not a list".into()),
        }
        Ok(instance.to_string().into_bytes())
    }
}

/// `guestsock config ...`.
#[derive(Debug, PartialEq, Subcommand)]
pub enum ConfigCall {
    /// Print one key's value
    Get {
        /// The instance.
        name: String,
        /// The key.
        key: String,
    },
    /// Set one key; VALUE `-` reads it from standard input, exactly as given
    Set {
        /// The instance.
        name: String,
        /// The key.
        key: String,
        /// The value; `--` before it if it is one of the flags (`-- --json`).
        #[arg(value_name = "VALUE|-", allow_hyphen_values = true)]
        value: String,
        /// `--quiet`.
        #[command(flatten)]
        quiet: Quiet,
    },
    /// Unset one key
    Unset {
        /// The instance.
        name: String,
        /// The key.
        key: String,
        /// `--quiet`.
        #[command(flatten)]
        quiet: Quiet,
    },
    /// Every key of an instance, as a table
    Show {
        /// The instance.
        name: String,
    },
}

/// `guestsock device ...`.
#[derive(Debug, PartialEq, Subcommand)]
pub enum DeviceCall {
    /// Add a device; refused (409) if the instance has one of that name
    Add(DeviceFields),
    /// Set a device: add it, or replace all its fields
    Set(DeviceFields),
    /// Remove a device
    Remove {
        /// The instance.
        name: String,
        /// The device.
        #[arg(value_name = "DEVICE")]
        device: String,
        /// `--quiet`.
        #[command(flatten)]
        quiet: Quiet,
    },
    /// An instance's devices, as a table
    List {
        /// The instance.
        name: String,
    },
}

/// What `device add` and `device set` take.
#[derive(Debug, PartialEq, Args)]
pub struct DeviceFields {
    /// The instance.
    pub name: String,
    /// The device.
    #[arg(value_name = "DEVICE")]
    pub device: String,
    /// Its fields.
    #[arg(
        value_name = "KEY=VALUE",
        required = true,
        value_parser = key_value,
        help = "The device's fields, like type=nic name=eth0"
    )]
    pub fields: Vec<(String, String)>,
    /// `--quiet`.
    #[command(flatten)]
    pub quiet: Quiet,
}

/// `guestsock state NAME STATE`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct StateArgs {
    /// The instance.
    pub name: String,
    /// The state.
    #[arg(value_parser = ["Started", "Ready"], help = "The state: Started, or Ready (what the guest's PATCH /1.0 sets, e.g. when restoring a backup)")]
    pub state: String,
    /// The admin socket and `--json`.
    #[command(flatten)]
    pub client: ClientArgs,
    /// `--quiet`.
    #[command(flatten)]
    pub quiet: Quiet,
}

/// Parses one `KEY=VALUE` (the value may hold `=`).
fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| "not KEY=VALUE".into())
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

/// The admin API's path of instance `name`.
fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", encode_segment(name))
}

/// How a command that changes something reports success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// One line saying what changed.
    Line,
    /// Nothing (`--quiet`).
    Quiet,
    /// The server's answer (`--json`).
    Json,
}

impl Report {
    fn new(json: bool, quiet: Quiet) -> Report {
        match (json, quiet.quiet) {
            (true, _) => Report::Json,
            (false, true) => Report::Quiet,
            (false, false) => Report::Line,
        }
    }

    /// Reports a change the server answered with `metadata`; the line, in
    /// the one form every change command uses, is `<command> <what> <done>`.
    fn changed(self, metadata: &Value, line: impl FnOnce() -> String) -> Result<(), String> {
        match self {
            Report::Line => println!("{}", line()),
            Report::Quiet => {}
            Report::Json => println!("{metadata}"),
        }
        Ok(())
    }
}

/// The body of a file or of standard input (`-`), within the admin body
/// limit.
fn read_source(source: &str, what: &str) -> Result<Vec<u8>, String> {
    if source == "-" {
        return read_stdin(what);
    }
    fs::File::open(source)
        .and_then(|f| read_at_most(f, MAX_ADMIN_BODY_BYTES as u64))
        .map_err(|e| format!("{source}: {e}"))
}

/// `guestsock instance ...`.
pub(super) fn instance(admin: &AdminSocket, json: bool, call: InstanceCall) -> Result<(), String> {
    match call {
        InstanceCall::List => {
            let list = admin.call("GET", "/1.0/instances?recursion=1", b"")?;
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
        InstanceCall::Show { name } => {
            let instance = admin.call("GET", &instance_path(&name), b"")?;
            if json {
                return print_json(&instance);
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&instance).unwrap_or_default()
            );
            Ok(())
        }
        InstanceCall::Add {
            source,
            listener,
            quiet,
        } => {
            let mut body = read_source(&source, "the instance")?;
            // Many instances, as a list or as an instances file: one batch
            // call, all or nothing.
            if body.trim_ascii_start().starts_with(b"[") {
                let mut wrapped = b"{\"instances\":".to_vec();
                wrapped.extend_from_slice(&body);
                wrapped.push(b'}');
                body = wrapped;
            }
            let text = body.trim_ascii_start();
            let batch = text
                .strip_prefix(b"{")
                .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"\"instances\""));
            if batch {
                if !listener.listeners().is_empty() {
                    return Err(ONE_INSTANCE.into());
                }
                let result = admin.call("POST", "/1.0/instances", &body)?;
                let count = |key: &str| result[key].as_u64().unwrap_or(0);
                return Report::new(json, quiet).changed(&result, || {
                    format!(
                        "{} instances registered ({} new, {} replaced)",
                        count("created") + count("replaced"),
                        count("created"),
                        count("replaced")
                    )
                });
            }
            let body = listener.add_to(body)?;
            let instance = admin.call("POST", "/1.0/instances", &body)?;
            Report::new(json, quiet).changed(&instance, || {
                format!(
                    "instance {} registered",
                    instance["name"].as_str().unwrap_or_default()
                )
            })
        }
        InstanceCall::Remove { name, quiet } => {
            let result = admin.call("DELETE", &instance_path(&name), b"")?;
            Report::new(json, quiet).changed(&result, || format!("instance {name} removed"))
        }
    }
}

/// `guestsock config ...`.
pub(super) fn config(admin: &AdminSocket, json: bool, call: ConfigCall) -> Result<(), String> {
    let key_path =
        |name: &str, key: &str| format!("{}/config/{}", instance_path(name), encode_segment(key));
    match call {
        ConfigCall::Get { name, key } => {
            let path = key_path(&name, &key);
            let reply = admin.raw("GET", &path)?;
            if !(200..300).contains(&reply.status) {
                // Errors come in the envelope; let `call` word them.
                return admin.call("GET", &path, b"").map(|_| ());
            }
            let value = String::from_utf8_lossy(&reply.body);
            if json {
                return print_json(&Value::String(value.into_owned()));
            }
            println!("{value}");
            Ok(())
        }
        ConfigCall::Set {
            name,
            key,
            value,
            quiet,
        } => {
            let value = if value == "-" {
                read_stdin("the value")?
            } else {
                value.into_bytes()
            };
            let instance = admin.call("PUT", &key_path(&name, &key), &value)?;
            Report::new(json, quiet).changed(&instance, || {
                if crate::instance::guest_visible(&key) {
                    format!("config {name} {key} set")
                } else {
                    // Host-only keys are allowed (the hooks' own, notes for
                    // the orchestrator), but a guest asking for one is
                    // refused: say so now, not when a guest gets `403`.
                    format!(
                        "config {name} {key} set (host-only: guests see only user.* and cloud-init.* keys)"
                    )
                }
            })
        }
        ConfigCall::Unset { name, key, quiet } => {
            let instance = admin.call("DELETE", &key_path(&name, &key), b"")?;
            Report::new(json, quiet).changed(&instance, || format!("config {name} {key} unset"))
        }
        ConfigCall::Show { name } => {
            let config = admin.call("GET", &format!("{}/config", instance_path(&name)), b"")?;
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
    }
}

/// `guestsock device ...`.
pub(super) fn device(admin: &AdminSocket, json: bool, call: DeviceCall) -> Result<(), String> {
    let device_path =
        |name: &str, dev: &str| format!("{}/devices/{}", instance_path(name), encode_segment(dev));
    match call {
        DeviceCall::Add(DeviceFields {
            name,
            device,
            fields,
            quiet,
        }) => {
            let fields: BTreeMap<String, String> = fields.into_iter().collect();
            let body = serde_json::json!({ "name": device, "fields": fields }).to_string();
            let path = format!("{}/devices", instance_path(&name));
            let instance = match admin.request("POST", &path, body.as_bytes()) {
                Ok(instance) => instance,
                Err(e @ ClientError::Refused { status: 409, .. }) => {
                    return Err(format!(
                        "{e}; `guestsock device set {name} {device} KEY=VALUE...` replaces it"
                    ));
                }
                Err(e) => return Err(admin.explain(e)),
            };
            Report::new(json, quiet).changed(&instance, || format!("device {name} {device} added"))
        }
        DeviceCall::Set(DeviceFields {
            name,
            device,
            fields,
            quiet,
        }) => {
            let fields: BTreeMap<String, String> = fields.into_iter().collect();
            let body = serde_json::to_vec(&fields).unwrap_or_default();
            let instance = admin.call("PUT", &device_path(&name, &device), &body)?;
            Report::new(json, quiet).changed(&instance, || format!("device {name} {device} set"))
        }
        DeviceCall::Remove {
            name,
            device,
            quiet,
        } => {
            let instance = admin.call("DELETE", &device_path(&name, &device), b"")?;
            Report::new(json, quiet)
                .changed(&instance, || format!("device {name} {device} removed"))
        }
        DeviceCall::List { name } => {
            let instance = admin.call("GET", &instance_path(&name), b"")?;
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
    }
}

/// `guestsock state NAME STATE`.
pub(super) fn set_state(
    admin: &AdminSocket,
    json: bool,
    name: &str,
    state: &str,
    quiet: Quiet,
) -> Result<(), String> {
    let body = serde_json::json!({ "state": state }).to_string();
    let instance = admin.call(
        "PUT",
        &format!("{}/state", instance_path(name)),
        body.as_bytes(),
    )?;
    Report::new(json, quiet).changed(&instance, || format!("state {name} set to {state}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::command;
    use crate::cli::{Command, DEFAULT_ADMIN_SOCKET};

    fn client(admin: &str, json: bool) -> ClientArgs {
        ClientArgs {
            admin: AdminArg {
                admin: admin.into(),
            },
            json,
        }
    }

    const LOUD: Quiet = Quiet { quiet: false };

    #[test]
    fn config_and_device_lines() {
        let table = [
            (
                "config set c1 user.x -- --odd",
                Command::Config {
                    call: ConfigCall::Set {
                        name: "c1".into(),
                        key: "user.x".into(),
                        value: "--odd".into(),
                        quiet: LOUD,
                    },
                    client: client(DEFAULT_ADMIN_SOCKET, false),
                },
            ),
            (
                "config set c1 user.x -5",
                Command::Config {
                    call: ConfigCall::Set {
                        name: "c1".into(),
                        key: "user.x".into(),
                        value: "-5".into(),
                        quiet: LOUD,
                    },
                    client: client(DEFAULT_ADMIN_SOCKET, false),
                },
            ),
            (
                "config set c1 user.x - --json --admin /a",
                Command::Config {
                    call: ConfigCall::Set {
                        name: "c1".into(),
                        key: "user.x".into(),
                        value: "-".into(),
                        quiet: LOUD,
                    },
                    client: client("/a", true),
                },
            ),
            (
                "device add c1 eth0 type=nic name=eth0 -q",
                Command::Device {
                    call: DeviceCall::Add(DeviceFields {
                        name: "c1".into(),
                        device: "eth0".into(),
                        fields: vec![
                            ("type".into(), "nic".into()),
                            ("name".into(), "eth0".into()),
                        ],
                        quiet: Quiet { quiet: true },
                    }),
                    client: client(DEFAULT_ADMIN_SOCKET, false),
                },
            ),
        ];
        for (line, expected) in table {
            assert_eq!(command(line), expected, "{line}");
        }
    }
}
