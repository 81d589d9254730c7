//! Container runtimes register their containers themselves: an OCI hook
//! (runc, crun, podman), an LXC hook and a Docker event watcher turn "a
//! container started" into an instance, and "it stopped" into its removal,
//! over the admin socket like any other client.
//!
//! This module owns what the three share: reading a container's identity
//! from the kernel (`/proc/<pid>/cgroup`, `uid_map`, its pid namespace),
//! turning `io.guestsock.*` annotations or labels into an instance, the name
//! rules, and registering idempotently. Which container owns an instance is
//! written in it (the host-only config key [`OWNER_KEY`]), so a hook never
//! replaces or removes an instance that another container, or the operator,
//! registered. Each runtime's own input (the OCI state, LXC's environment,
//! Docker's API) is its submodule's business.

pub mod docker;
pub mod lxc;
pub mod oci;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::client::{self, ClientError, encode_segment};
use crate::identity;
use crate::instance::{GuestAccess, InstanceSpec, InstanceType, MatchRule, valid_instance_name};
use crate::limits::{MAX_CGROUP_FILE_BYTES, MAX_INSTANCE_NAME_BYTES, read_at_most};

/// The host-only config key that names the container owning an instance:
/// `<runtime>:<container id>`. Guests never see it (only `user.*` and
/// `cloud-init.*` keys are shown to them).
pub const OWNER_KEY: &str = "guestsock.container";

/// Every label guestsock reads starts with this.
pub const LABEL_PREFIX: &str = "io.guestsock.";

/// The label that names the instance.
const NAME_LABEL: &str = "io.guestsock.name";

/// Labels whose rest is a config key (`io.guestsock.config.user.foo`).
const CONFIG_LABEL: &str = "io.guestsock.config.";

/// Labels whose rest is `<device>.<field>` (`io.guestsock.device.eth0.type`).
const DEVICE_LABEL: &str = "io.guestsock.device.";

/// Hex digits of the id's hash in a derived name: 32 bits, so that two ids
/// that read alike once cleaned up (`a_b`, `a.b`) still get two names.
const NAME_HASH_HEX: usize = 8;

/// Which runtime registered a container: the first part of [`OWNER_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// An OCI runtime hook (runc, crun, podman, anything that runs OCI hooks).
    Oci,
    /// An LXC hook.
    Lxc,
    /// The Docker event watcher.
    Docker,
}

impl Runtime {
    /// The owner key's prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Oci => "oci",
            Runtime::Lxc => "lxc",
            Runtime::Docker => "docker",
        }
    }

    /// The owner key's value for container `id`.
    pub fn owner(self, id: &str) -> String {
        format!("{}:{id}", self.as_str())
    }
}

/// A running container, as its runtime describes it.
#[derive(Clone, Debug)]
pub struct Container {
    /// Which runtime runs it.
    pub runtime: Runtime,
    /// Its id: the OCI container id, the LXC name, Docker's full id.
    pub id: String,
    /// A friendlier name than the id where the runtime has one (Docker's
    /// container name, without its `/`); the instance is named after it.
    pub name_hint: Option<String>,
    /// The host pid of the container's init.
    pub pid: i32,
    /// Its annotations or labels; only `io.guestsock.*` ones are read.
    pub labels: BTreeMap<String, String>,
}

/// Why a container could not be registered or removed. Each says what to
/// do about it in one line, because a runtime shows it as the reason a
/// container did not start.
#[derive(Debug)]
pub enum RuntimeError {
    /// An `io.guestsock.*` label is wrong (the container's configuration's
    /// fault).
    Label {
        /// The label.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The container's process could not be read (it exited already, or
    /// the hook runs somewhere it cannot see it).
    Process {
        /// The pid read.
        pid: i32,
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The instance's name belongs to another container or to the operator.
    Taken {
        /// The instance name.
        name: String,
        /// Who owns it (`docker:...`), or `None` for an instance registered
        /// by hand.
        owner: Option<String>,
    },
    /// The runtime's own input is unusable (the runtime's fault).
    Input(String),
    /// The server refused or could not be reached.
    Server {
        /// What was being done.
        doing: String,
        /// What went wrong.
        source: ClientError,
    },
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Label { key, reason } => write!(f, "label {key}: {reason}"),
            RuntimeError::Process { pid, what, source } => {
                write!(
                    f,
                    "cannot read {what} of the container's process {pid}: {source}"
                )
            }
            RuntimeError::Taken { name, owner } => match owner {
                Some(owner) => write!(
                    f,
                    "instance {name:?} belongs to container {owner}; give this container another name with the label {NAME_LABEL}"
                ),
                None => write!(
                    f,
                    "instance {name:?} was registered by hand, not by a runtime; remove it (guestsock instance remove {name}) or give this container another name with the label {NAME_LABEL}"
                ),
            },
            RuntimeError::Input(message) => f.write_str(message),
            RuntimeError::Server { doing, source } => {
                write!(f, "cannot {doing}: {source}")?;
                if let ClientError::Connect { .. } = source {
                    f.write_str(" (is `guestsock serve` running? --admin or GUESTSOCK_ADMIN names its admin socket)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RuntimeError {}

/// The instance name for a container: the `io.guestsock.name` label if it
/// has one (which must then be a valid name), else `name_hint` or `id`
/// itself when it is a valid name, else [`derived_name`] of it.
pub fn instance_name(
    id: &str,
    name_hint: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<String, RuntimeError> {
    if let Some(name) = labels.get(NAME_LABEL) {
        if !valid_instance_name(name) {
            return Err(RuntimeError::Label {
                key: NAME_LABEL.into(),
                reason: format!(
                    "{name:?} is not 1-{MAX_INSTANCE_NAME_BYTES} characters of a-z, 0-9 and '-' that neither starts nor ends with '-'"
                ),
            });
        }
        return Ok(name.clone());
    }
    let base = name_hint.filter(|hint| !hint.is_empty()).unwrap_or(id);
    if valid_instance_name(base) {
        return Ok(base.to_owned());
    }
    Ok(derived_name(base))
}

/// A valid instance name made from any string: lower-cased, every run of
/// other characters turned into one `-`, cut short, then `-` and 8 hex
/// digits of the string's SHA-1, so that different strings that clean up
/// alike still get different names.
pub fn derived_name(raw: &str) -> String {
    let mut base = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.ends_with('-') && !base.is_empty() {
            base.push('-');
        }
    }
    base.truncate(MAX_INSTANCE_NAME_BYTES - NAME_HASH_HEX - 1);
    let base = base.trim_end_matches('-');
    let digest = Sha1::digest(raw.as_bytes());
    let hash: String = digest
        .iter()
        .take(NAME_HASH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// The instance a container stands for: named by [`instance_name`], matched
/// by its own cgroup (or its pid namespace where it has no cgroup of its
/// own), its root user read from its uid map, and its config, devices and
/// settings from its `io.guestsock.*` labels.
pub fn describe(container: &Container) -> Result<InstanceSpec, RuntimeError> {
    let name = instance_name(
        &container.id,
        container.name_hint.as_deref(),
        &container.labels,
    )?;
    let pid = container.pid;
    if pid <= 0 {
        return Err(RuntimeError::Input(format!(
            "the runtime gave no process for container {:?} (pid {pid})",
            container.id
        )));
    }
    let process =
        |what: &'static str| move |source: io::Error| RuntimeError::Process { pid, what, source };
    let cgroup = identity::cgroup_of(pid).map_err(process("the cgroup"))?;
    let own =
        identity::cgroup_of(std::process::id() as i32).map_err(|source| RuntimeError::Process {
            pid: std::process::id() as i32,
            what: "the cgroup (of this hook)",
            source,
        })?;
    let rule = if owns_cgroup(&cgroup, &own) {
        MatchRule::Cgroup(cgroup)
    } else {
        MatchRule::Pid(pid)
    };
    let uid_map = read_bounded(&format!("/proc/{pid}/uid_map")).map_err(process("the uid map"))?;
    let root_uid = host_uid_of_root(&uid_map).ok_or_else(|| RuntimeError::Process {
        pid,
        what: "the uid map",
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            "uid 0 of the container is not mapped to any host uid",
        ),
    })?;
    let mut spec = InstanceSpec {
        name,
        kind: InstanceType::Container,
        location: None,
        cloud_init_id: None,
        rule,
        listeners: Vec::new(),
        root_uid: Some(root_uid),
        guest_access: GuestAccess::Root,
        config: Default::default(),
        devices: Default::default(),
    };
    apply_labels(&mut spec, &container.labels)?;
    spec.config
        .insert(OWNER_KEY.into(), container.runtime.owner(&container.id));
    Ok(spec)
}

/// Whether a container's cgroup v2 path (`container`) is its own: not the
/// root and not one that holds the hook's own cgroup (`own`, the runtime's),
/// which would claim host processes. Where a runtime leaves its containers
/// in the host's cgroup (cgroup v1 hosts: the `0::` path stays `/`), the pid
/// namespace tells containers apart instead.
fn owns_cgroup(container: &str, own: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer == "/"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    container != "/" && !within(own, container)
}

/// The host uid that uid 0 inside maps to, from a `uid_map` (lines of
/// "inside outside count").
fn host_uid_of_root(uid_map: &str) -> Option<u32> {
    uid_map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        (inside == 0 && count > 0)
            .then(|| u32::try_from(outside).ok())
            .flatten()
    })
}

/// A small `/proc` file, read whole but never past [`MAX_CGROUP_FILE_BYTES`].
fn read_bounded(path: &str) -> io::Result<String> {
    let bytes = read_at_most(fs::File::open(path)?, MAX_CGROUP_FILE_BYTES as u64)?;
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Fills `spec` from the `io.guestsock.*` labels; any other label is not
/// guestsock's and is left alone, but an unknown `io.guestsock.` one is an
/// error (a typo must not be silently ignored).
fn apply_labels(
    spec: &mut InstanceSpec,
    labels: &BTreeMap<String, String>,
) -> Result<(), RuntimeError> {
    for (key, value) in labels {
        let Some(rest) = key.strip_prefix(LABEL_PREFIX) else {
            continue;
        };
        let wrong = |reason: &str| RuntimeError::Label {
            key: key.clone(),
            reason: reason.into(),
        };
        if let Some(config_key) = key.strip_prefix(CONFIG_LABEL) {
            if config_key == OWNER_KEY {
                return Err(wrong("is set by guestsock itself"));
            }
            spec.config.insert(config_key.into(), value.clone());
        } else if let Some(field) = key.strip_prefix(DEVICE_LABEL) {
            let Some((device, field)) = field
                .split_once('.')
                .filter(|(d, f)| !d.is_empty() && !f.is_empty())
            else {
                return Err(wrong("must be io.guestsock.device.<device>.<field>"));
            };
            spec.devices
                .get_or_insert_default(device)
                .insert(field.into(), value.clone());
        } else {
            match rest {
                "name" => {}
                "type" => {
                    spec.kind = match value.as_str() {
                        "container" => InstanceType::Container,
                        "virtual-machine" => InstanceType::VirtualMachine,
                        _ => return Err(wrong("must be container or virtual-machine")),
                    }
                }
                "guest_access" => {
                    spec.guest_access = match value.as_str() {
                        "root" => GuestAccess::Root,
                        "any" => GuestAccess::Any,
                        _ => return Err(wrong("must be root or any")),
                    }
                }
                "location" => spec.location = Some(value.clone()),
                "cloud_init_id" => spec.cloud_init_id = Some(value.clone()),
                _ => {
                    return Err(wrong(
                        "is not one guestsock reads (name, type, guest_access, location, cloud_init_id, config.<key>, device.<device>.<field>)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// How a registration treats the guest's `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The container has just started: a `Ready` left from its last run is
    /// cleared, as LXD does on a restart.
    Fresh,
    /// The container was running already (a watcher catching up): what the
    /// guest said is kept, and an unchanged instance is not written again.
    Running,
}

/// Registers `container` as the instance [`describe`] makes of it,
/// replacing the instance if this same container registered it before
/// (a re-run or a restart), refusing if another container or the operator
/// owns that name. Returns the instance name.
pub fn register(admin: &Path, container: &Container, start: Start) -> Result<String, RuntimeError> {
    let spec = describe(container)?;
    let owner = container.runtime.owner(&container.id);
    let path = format!("/1.0/instances/{}", encode_segment(&spec.name));
    let body = serde_json::to_vec(&spec).expect("an instance serializes");
    let server = |doing: String| move |source: ClientError| RuntimeError::Server { doing, source };
    // A second try covers a POST that lost a race with another registration
    // of the same name (409 then the instance exists: look at its owner).
    for _ in 0..2 {
        match client::admin(admin, "GET", &path, b"") {
            Ok(existing) => {
                let theirs = owner_of(&existing);
                if theirs.as_deref() != Some(owner.as_str()) {
                    return Err(RuntimeError::Taken {
                        name: spec.name,
                        owner: theirs,
                    });
                }
                let unchanged =
                    serde_json::from_value::<InstanceSpec>(strip_state(existing.clone()))
                        .is_ok_and(|old| old == spec);
                if !(unchanged && start == Start::Running) {
                    client::admin(admin, "PUT", &path, &body)
                        .map_err(server(format!("replace instance {:?}", spec.name)))?;
                }
                if start == Start::Fresh
                    && existing.get("state").and_then(Value::as_str) != Some("Started")
                {
                    client::admin(
                        admin,
                        "PUT",
                        &format!("{path}/state"),
                        br#"{"state":"Started"}"#,
                    )
                    .map_err(server(format!(
                        "reset the state of instance {:?}",
                        spec.name
                    )))?;
                }
                return Ok(spec.name);
            }
            Err(ClientError::Refused { status: 404, .. }) => {
                match client::admin(admin, "POST", "/1.0/instances", &body) {
                    Ok(_) => return Ok(spec.name),
                    // The name was taken meanwhile (not a conflict of
                    // rules, which leaves it free): judge its owner.
                    Err(ClientError::Refused { status: 409, .. }) if name_taken(admin, &path) => {
                        continue;
                    }
                    Err(source) => {
                        return Err(RuntimeError::Server {
                            doing: format!("register instance {:?}", spec.name),
                            source,
                        });
                    }
                }
            }
            Err(source) => {
                return Err(RuntimeError::Server {
                    doing: format!("look up instance {:?}", spec.name),
                    source,
                });
            }
        }
    }
    Err(RuntimeError::Input(format!(
        "instance {:?} kept changing while it was being registered; try again",
        spec.name
    )))
}

/// Whether the admin object at `path` exists (a lookup that fails says
/// nothing about it: no).
fn name_taken(admin: &Path, path: &str) -> bool {
    client::admin(admin, "GET", path, b"").is_ok()
}

/// Removes the instance the container `id` of `runtime` registered:
/// `name`'s if this container owns it (the usual case, one lookup), else
/// whichever instance carries this container's owner key (the name was
/// given differently at registration). `Ok(false)`: it has none (already
/// removed, or its registration failed). An instance another container or
/// the operator owns is never touched.
pub fn unregister(
    admin: &Path,
    runtime: Runtime,
    id: &str,
    name: &str,
) -> Result<bool, RuntimeError> {
    let owner = runtime.owner(id);
    let path = format!("/1.0/instances/{}", encode_segment(name));
    let mine = match client::admin(admin, "GET", &path, b"") {
        Ok(existing) => owner_of(&existing).as_deref() == Some(owner.as_str()),
        Err(ClientError::Refused { status: 404, .. }) => false,
        Err(source) => {
            return Err(RuntimeError::Server {
                doing: format!("look up instance {name:?}"),
                source,
            });
        }
    };
    let names = if mine {
        vec![name.to_owned()]
    } else {
        owned(admin, runtime)?
            .into_iter()
            .filter(|(_, owner_id)| owner_id == id)
            .map(|(instance, _)| instance)
            .collect()
    };
    let mut removed = false;
    for name in names {
        let path = format!("/1.0/instances/{}", encode_segment(&name));
        match client::admin(admin, "DELETE", &path, b"") {
            Ok(_) => removed = true,
            Err(ClientError::Refused { status: 404, .. }) => {}
            Err(source) => {
                return Err(RuntimeError::Server {
                    doing: format!("remove instance {name:?}"),
                    source,
                });
            }
        }
    }
    Ok(removed)
}

/// Every instance that `runtime` registered, as (instance name, container
/// id): what a watcher compares with the containers that are running.
pub fn owned(admin: &Path, runtime: Runtime) -> Result<Vec<(String, String)>, RuntimeError> {
    let listed =
        client::admin(admin, "GET", "/1.0/instances?recursion=1", b"").map_err(|source| {
            RuntimeError::Server {
                doing: "list instances".into(),
                source,
            }
        })?;
    let prefix = format!("{}:", runtime.as_str());
    Ok(listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|instance| {
            let name = instance.get("name")?.as_str()?;
            let id = owner_of(instance)?.strip_prefix(&prefix)?.to_owned();
            Some((name.to_owned(), id))
        })
        .collect())
}

/// The owner key of an instance object, if it has one.
fn owner_of(instance: &Value) -> Option<String> {
    instance
        .get("config")?
        .get(OWNER_KEY)?
        .as_str()
        .map(str::to_owned)
}

/// An admin instance object without its `state`, which is not part of the
/// instance's description.
fn strip_state(mut instance: Value) -> Value {
    if let Some(object) = instance.as_object_mut() {
        object.remove("state");
    }
    instance
}

/// `KEY=VALUE` lines (a labels file, or `--label` values): blank lines and
/// `#` comments skipped; `source` names where they came from in errors.
pub fn parse_label_lines(
    text: &str,
    source: &str,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), RuntimeError> {
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(RuntimeError::Input(format!(
                "{source}:{}: {line:?} is not KEY=VALUE",
                number + 1
            )));
        };
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_come_from_the_label_the_hint_or_the_id() {
        let none = labels(&[]);
        for (id, hint, want) in [
            ("web-1", None, "web-1"),
            ("abc", Some("nice-name"), "nice-name"),
            ("abc", Some(""), "abc"),
            ("a_b", None, "a-b-"),
            ("My.Container", None, "my-container-"),
            ("___", None, ""),
        ] {
            let got = instance_name(id, hint, &none).unwrap();
            assert!(valid_instance_name(&got), "{id}: {got}");
            assert!(got.starts_with(want), "{id}: {got}");
        }
        let named = labels(&[(NAME_LABEL, "chosen")]);
        assert_eq!(instance_name("x_y", Some("z"), &named).unwrap(), "chosen");
        let bad = labels(&[(NAME_LABEL, "Bad_Name")]);
        assert!(matches!(
            instance_name("x", None, &bad),
            Err(RuntimeError::Label { .. })
        ));
    }

    #[test]
    fn derived_names_keep_different_ids_apart() {
        assert_ne!(derived_name("a_b"), derived_name("a.b"));
        assert_eq!(derived_name("a_b"), derived_name("a_b"));
        let long = derived_name(&"X".repeat(500));
        assert!(valid_instance_name(&long), "{long}");
        assert_eq!(long.len(), MAX_INSTANCE_NAME_BYTES);
        assert!(valid_instance_name(&derived_name("-a-")));
        assert!(valid_instance_name(&derived_name("é")));
    }

    #[test]
    fn a_cgroup_is_the_containers_own_unless_it_holds_the_hooks() {
        for (container, own, owns) in [
            ("/lxc.payload.c1", "/", true),
            ("/docker/abc", "/system.slice/docker.service", true),
            ("/", "/", false),
            ("/machine", "/machine", false),
            ("/machine", "/machine/runtime", false),
            ("/machine/c1", "/machine", true),
            ("/a/bc", "/a/b", true),
        ] {
            assert_eq!(owns_cgroup(container, own), owns, "{container} vs {own}");
        }
    }

    #[test]
    fn root_is_read_from_the_uid_map() {
        assert_eq!(
            host_uid_of_root("         0          0 4294967295\n"),
            Some(0)
        );
        assert_eq!(
            host_uid_of_root("         0     100000      65536\n"),
            Some(100000)
        );
        assert_eq!(
            host_uid_of_root("1 200000 10\n         0     100000      1\n"),
            Some(100000)
        );
        assert_eq!(host_uid_of_root("1 200000 10\n"), None);
        assert_eq!(host_uid_of_root(""), None);
    }

    #[test]
    fn labels_fill_config_devices_and_settings() {
        let mut spec = InstanceSpec {
            name: "c1".into(),
            kind: InstanceType::Container,
            location: None,
            cloud_init_id: None,
            rule: MatchRule::Pid(1),
            listeners: Vec::new(),
            root_uid: None,
            guest_access: GuestAccess::Root,
            config: Default::default(),
            devices: Default::default(),
        };
        apply_labels(
            &mut spec,
            &labels(&[
                ("io.guestsock.config.user.foo", "bar"),
                ("io.guestsock.config.cloud-init.user-data", "#cloud-config"),
                ("io.guestsock.device.eth0.type", "nic"),
                ("io.guestsock.device.eth0.hwaddr", "00:16:3e:00:00:01"),
                ("io.guestsock.guest_access", "any"),
                ("io.guestsock.name", "c1"),
                ("org.opencontainers.image.title", "not ours"),
            ]),
        )
        .unwrap();
        assert_eq!(spec.config["user.foo"], "bar");
        assert_eq!(spec.config["cloud-init.user-data"], "#cloud-config");
        assert_eq!(spec.devices["eth0"]["type"], "nic");
        assert_eq!(spec.devices["eth0"]["hwaddr"], "00:16:3e:00:00:01");
        assert_eq!(spec.guest_access, GuestAccess::Any);
        assert_eq!(spec.config.len(), 2);

        for bad in [
            ("io.guestsock.confg.user.foo", "typo"),
            ("io.guestsock.device.eth0", "no field"),
            ("io.guestsock.device..type", "no device"),
            ("io.guestsock.guest_access", "everyone"),
            ("io.guestsock.config.guestsock.container", "docker:forged"),
        ] {
            let err = apply_labels(&mut spec.clone(), &labels(&[bad])).unwrap_err();
            assert!(err.to_string().starts_with("label io.guestsock."), "{err}");
        }
    }

    #[test]
    fn label_lines() {
        let mut got = BTreeMap::new();
        parse_label_lines(
            "# keys for c1\n\nio.guestsock.config.user.foo = bar=baz\n",
            "f",
            &mut got,
        )
        .unwrap();
        assert_eq!(got["io.guestsock.config.user.foo"], "bar=baz");
        let err = parse_label_lines("ok=1\nnot a label\n", "f", &mut got).unwrap_err();
        assert_eq!(err.to_string(), "f:2: \"not a label\" is not KEY=VALUE");
    }
}
