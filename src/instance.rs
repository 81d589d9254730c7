//! One instance: the unit the guest API serves (docs/protocol.md section 4).
//!
//! Owns the JSON shape shared by the `--instances` file, the admin API and the
//! state directory, and its validation. It does not know about other
//! instances: conflicts between match rules are `registry`'s business.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compact_map::CompactMap;

use crate::limits::{
    DEFAULT_AGENT_PORT, MAX_CGROUP_PATH_BYTES, MAX_INSTANCE_LISTENERS, MAX_INSTANCE_NAME_BYTES,
    MAX_KEY_BYTES, MAX_LABEL_BYTES, MAX_SOCKET_PATH_BYTES, MAX_VALUE_BYTES,
};

/// An instance's config: key to value.
pub type Config = CompactMap<String>;

/// One device's fields: name to value.
pub type DeviceFields = CompactMap<String>;

/// An instance's devices: device name to its fields.
pub type Devices = CompactMap<DeviceFields>;

/// An instance as the host describes it (the section 4 JSON object).
///
/// Unknown fields are refused so that a typo (`"gues_access"`) is an error at
/// registration rather than a silently ignored setting.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// 1-63 characters of `a-z 0-9 -`, not starting or ending with `-`.
    pub name: String,
    /// `container` (default) or `virtual-machine`.
    #[serde(rename = "type", default)]
    pub kind: InstanceType,
    /// Shown as `location` in `GET /1.0`; defaults to the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// cloud-init's `instance-id`; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_id: Option<String>,
    /// How a connecting process is recognised as this instance. Absent
    /// (`OwnListeners`) only for an instance reached through a listener of
    /// its own that identifies its callers by itself (a VM's vsock socket).
    #[serde(
        rename = "match",
        default,
        skip_serializing_if = "MatchRule::is_own_listeners"
    )]
    pub rule: MatchRule,
    /// Sockets of the instance's own, beside the shared guest socket
    /// (docs/protocol.md section 4, "Listeners of an instance's own").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSpec>,
    /// Host uid of the container's root user; defaults to the first uid of a
    /// `uid_range` rule, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_uid: Option<u32>,
    /// Which of the instance's uids may use the guest API.
    #[serde(default)]
    pub guest_access: GuestAccess,
    /// Config keys; only `user.*` and `cloud-init.*` are ever shown to the guest.
    #[serde(default)]
    pub config: Config,
    /// Device name to its string fields.
    #[serde(default)]
    pub devices: Devices,
}

/// What runs inside the instance, as `GET /1.0` reports it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceType {
    /// A system or application container (the default).
    #[default]
    Container,
    /// A virtual machine whose agent reaches the socket.
    VirtualMachine,
}

impl InstanceType {
    /// The wire name, as in `GET /1.0`'s `instance_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceType::Container => "container",
            InstanceType::VirtualMachine => "virtual-machine",
        }
    }
}

/// Which uids of a recognised instance may use the guest API.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuestAccess {
    /// Only the container's root user (`root_uid`), as in LXD.
    #[default]
    Root,
    /// Every uid of the instance.
    Any,
}

/// How a caller is recognised as an instance: exactly one of three kinds,
/// or none at all for an instance whose own listener says who is calling.
///
/// Serialized externally tagged, which is exactly the section 4 shape:
/// `{"cgroup": "/lxc.payload.c1"}`, `{"uid_range": [1000000, 65536]}`,
/// `{"pid": 4242}`; `OwnListeners` is the absence of `match`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MatchRule {
    /// The caller's cgroup v2 path is this one or lies beneath it.
    Cgroup(String),
    /// The caller's host uid is in `[first, first + count)`.
    UidRange(u32, u32),
    /// The caller shares the pid namespace of this process (as it was when the
    /// instance was registered).
    Pid(i32),
    /// No rule: only the instance's own vsock listener reaches it, and
    /// claims nobody on the shared socket. Written as no `match` at all.
    #[default]
    #[serde(skip)]
    OwnListeners,
}

impl MatchRule {
    /// Whether this is the absence of a rule (`match` not given).
    pub fn is_own_listeners(&self) -> bool {
        *self == MatchRule::OwnListeners
    }

    /// The `root_uid` this rule implies when none is given: the first uid
    /// of a `uid_range`, else 0.
    pub fn default_root_uid(&self) -> u32 {
        match self {
            MatchRule::UidRange(first, _) => *first,
            _ => 0,
        }
    }
}

/// A socket of an instance's own (docs/protocol.md section 4): a
/// connection accepted on it is this instance's.
///
/// Serialized externally tagged: `{"vsock": {"uds": "/run/vm1/v.sock",
/// "port": 1024, "vmm_uid": 107}}`, `{"socket_dir": {"dir":
/// "/run/guestsock/c1"}}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ListenerSpec {
    /// A VM's hybrid vsock: its VMM (or vhost-device-vsock) listens on
    /// `uds`, and a guest's connect to the host (CID 2) on `port` arrives
    /// on the unix socket `<uds>_<port>`, which guestsock listens on. Only
    /// `vmm_uid` may connect to it; each connection starts with the
    /// agent's preamble, which says who called inside the guest.
    Vsock(VsockListener),
    /// A container's own guest socket, `<dir>/sock` (the directory to
    /// bind-mount at `/dev/lxd`). Its callers are identified by their
    /// peer credentials as on the shared socket, and must be this
    /// instance's.
    SocketDir(SocketDirListener),
}

/// A VM's hybrid-vsock listener ([`ListenerSpec::Vsock`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockListener {
    /// The VMM's vsock unix socket (Firecracker's and Cloud Hypervisor's
    /// `uds_path`, vhost-device-vsock's `uds-path`), as the host sees it.
    pub uds: PathBuf,
    /// The vsock port the guest's agent connects to.
    #[serde(default = "default_vsock_port")]
    pub port: u32,
    /// The uid the VMM runs as: the only one that may connect.
    pub vmm_uid: u32,
}

fn default_vsock_port() -> u32 {
    DEFAULT_AGENT_PORT
}

/// A container's own socket directory ([`ListenerSpec::SocketDir`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SocketDirListener {
    /// The directory guestsock creates the socket `sock` in.
    pub dir: PathBuf,
}

impl ListenerSpec {
    /// The socket file guestsock listens on.
    pub fn socket_path(&self) -> PathBuf {
        match self {
            ListenerSpec::Vsock(v) => {
                let mut path = v.uds.clone().into_os_string();
                path.push(format!("_{}", v.port));
                PathBuf::from(path)
            }
            ListenerSpec::SocketDir(d) => d.dir.join("sock"),
        }
    }

    /// Its name in messages and in the admin API's field paths.
    fn field(&self, index: usize) -> String {
        match self {
            ListenerSpec::Vsock(_) => format!("listeners[{index}].vsock"),
            ListenerSpec::SocketDir(_) => format!("listeners[{index}].socket_dir"),
        }
    }
}

/// Checks a host path a listener names (`field`): absolute, normalised,
/// and leading to a `socket` path short enough for a socket address.
fn check_socket_path(field: String, path: &Path, socket: &Path) -> Result<(), InvalidInstance> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() {
        return Err(invalid(field, "must be an absolute path"));
    }
    if bytes.ends_with(b"/")
        || bytes[1..]
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        || bytes.iter().any(|b| b.is_ascii_control())
    {
        return Err(invalid(
            field,
            "must be a normalised path: no empty, '.' or '..' components, no trailing '/', no control characters",
        ));
    }
    let length = socket.as_os_str().len();
    if length > MAX_SOCKET_PATH_BYTES {
        return Err(invalid(
            field,
            format!(
                "the socket {} would be {length} bytes long, more than a unix socket address holds ({MAX_SOCKET_PATH_BYTES})",
                socket.display()
            ),
        ));
    }
    Ok(())
}

/// Checks an instance's listeners on their own, and the rule they go
/// with: a VM's vsock listener is the whole of its identity (no `match`),
/// a container's own socket confirms its rule (which it needs).
fn check_listeners(rule: &MatchRule, listeners: &[ListenerSpec]) -> Result<(), InvalidInstance> {
    if listeners.len() > MAX_INSTANCE_LISTENERS {
        return Err(invalid(
            "listeners",
            format!("at most {MAX_INSTANCE_LISTENERS} listeners per instance"),
        ));
    }
    if rule.is_own_listeners() && listeners.is_empty() {
        return Err(invalid(
            "match",
            "is required (a cgroup, uid_range or pid rule), unless the instance has a vsock listener",
        ));
    }
    let mut seen = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.iter().enumerate() {
        let field = listener.field(index);
        let socket = listener.socket_path();
        match listener {
            ListenerSpec::Vsock(v) => {
                check_socket_path(format!("{field}.uds"), &v.uds, &socket)?;
                if v.port == 0 || v.port == u32::MAX {
                    return Err(invalid(
                        format!("{field}.port"),
                        "must be a vsock port from 1 to 4294967294",
                    ));
                }
                if !rule.is_own_listeners() {
                    return Err(invalid(
                        "match",
                        "must not be given with a vsock listener: a VM's callers have no host credentials, and the listener itself says which instance is calling",
                    ));
                }
            }
            ListenerSpec::SocketDir(d) => {
                check_socket_path(format!("{field}.dir"), &d.dir, &socket)?;
                if rule.is_own_listeners() {
                    return Err(invalid(
                        "match",
                        "is required with a socket_dir listener: its callers' peer credentials must prove they are this instance's",
                    ));
                }
            }
        }
        if seen.contains(&socket) {
            return Err(invalid(
                field,
                format!("{} is named twice", socket.display()),
            ));
        }
        seen.push(socket);
    }
    Ok(())
}

/// The kinds of match rule, as a small bit set: which facts about a caller
/// are worth gathering depends on which kinds some instance uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleKinds(u8);

impl RuleKinds {
    /// Cgroup path rules.
    pub const CGROUP: RuleKinds = RuleKinds(1);
    /// Uid range rules.
    pub const UID_RANGE: RuleKinds = RuleKinds(2);
    /// Pid namespace rules.
    pub const PID: RuleKinds = RuleKinds(4);

    /// No kind at all.
    pub const fn empty() -> RuleKinds {
        RuleKinds(0)
    }

    /// Whether every kind in `other` is also in `self`.
    pub fn contains(self, other: RuleKinds) -> bool {
        self.0 & other.0 == other.0
    }

    /// The kinds in either set.
    pub fn union(self, other: RuleKinds) -> RuleKinds {
        RuleKinds(self.0 | other.0)
    }

    /// The kinds in this set and not in `other`.
    pub fn without(self, other: RuleKinds) -> RuleKinds {
        RuleKinds(self.0 & !other.0)
    }

    /// Whether any of these kinds needs a read of `/proc/<pid>`.
    pub fn needs_proc(self) -> bool {
        !self.proc_kinds().is_empty()
    }

    /// The kinds among these that need a read of `/proc/<pid>`.
    pub fn proc_kinds(self) -> RuleKinds {
        RuleKinds(self.0 & (Self::CGROUP.0 | Self::PID.0))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Whether the guest has said it finished booting (`PATCH /1.0`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum GuestState {
    /// The default, and what the host resets a guest to.
    #[default]
    Started,
    /// Set by the guest; kept until the host resets it.
    Ready,
}

impl GuestState {
    /// The wire name (`"Started"` or `"Ready"`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Started => "Started",
            GuestState::Ready => "Ready",
        }
    }
}

/// Why an instance description was refused: the field, then the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidInstance {
    /// A path into the object, like `match.cgroup` or `config["user.x"]`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub reason: String,
}

impl fmt::Display for InvalidInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidInstance {
    InvalidInstance {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `name` is a valid instance name: 1 to
/// [`MAX_INSTANCE_NAME_BYTES`] of `a-z 0-9 -`, not starting or ending with
/// `-` (a DNS label, as LXD requires).
pub fn valid_instance_name(name: &str) -> bool {
    (1..=MAX_INSTANCE_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Characters a config key or device name may not hold, beyond spaces and
/// control characters: each would stop `/1.0/config/<key>` from being a path
/// that names the key unambiguously without percent-encoding, as LXD writes
/// it in `GET /1.0/config`.
const KEY_FORBIDDEN: &[u8] = b"/?#%\"\\";

/// Whether `key` can name a config key or a device (or a device's field):
/// [`KeyRule`].
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !KEY_FORBIDDEN.contains(&b))
}

/// What [`valid_key`] takes, in words, for the messages that refuse a key
/// or a name: "1-255 printable ASCII characters without spaces or any of
/// / ? # % \" \\".
#[derive(Debug, Clone, Copy)]
pub struct KeyRule;

impl fmt::Display for KeyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "1-{MAX_KEY_BYTES} printable ASCII characters without spaces or any of / ? # % \" \\"
        )
    }
}

/// Checks a config key and its value; `field` names it in the error.
pub fn check_config_entry(key: &str, value: &str) -> Result<(), InvalidInstance> {
    // The field names are only formatted for an error: validation runs for
    // every instance a server loads at start.
    if !valid_key(key) {
        return Err(invalid(
            format!("config[{key:?}]"),
            format!("a key is {KeyRule}"),
        ));
    }
    check_value(|| format!("config[{key:?}]"), value)
}

fn check_value(field: impl FnOnce() -> String, value: &str) -> Result<(), InvalidInstance> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(
            field(),
            format!(
                "value is {} bytes, more than the limit of {MAX_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks one device: its name and every field.
pub fn check_device(name: &str, fields: &DeviceFields) -> Result<(), InvalidInstance> {
    if !valid_key(name) {
        return Err(invalid(
            format!("devices[{name:?}]"),
            format!("a device name is {KeyRule}"),
        ));
    }
    for (key, value) in fields {
        let field = || format!("devices[{name:?}][{key:?}]");
        if !valid_key(key) {
            return Err(invalid(
                field(),
                format!("a device field name is {KeyRule}"),
            ));
        }
        check_value(field, value)?;
    }
    Ok(())
}

/// Checks a match rule on its own (not against other instances).
fn check_rule(rule: &MatchRule) -> Result<(), InvalidInstance> {
    match rule {
        MatchRule::Cgroup(path) => {
            let field = "match.cgroup";
            if !path.starts_with('/') {
                return Err(invalid(
                    field,
                    "must be an absolute cgroup v2 path, like /lxc.payload.c1",
                ));
            }
            if path == "/" {
                return Err(invalid(
                    field,
                    "the root cgroup would match every process on the host, guestsock's own callers included",
                ));
            }
            if path.len() > MAX_CGROUP_PATH_BYTES {
                return Err(invalid(
                    field,
                    format!("longer than {MAX_CGROUP_PATH_BYTES} bytes"),
                ));
            }
            let mut components = path[1..].split('/');
            if path.ends_with('/')
                || components.any(|c| c.is_empty() || c == "." || c == "..")
                || path.bytes().any(|b| b.is_ascii_control())
            {
                return Err(invalid(
                    field,
                    "must be a normalised path: no empty, '.' or '..' components, no trailing '/', no control characters",
                ));
            }
            Ok(())
        }
        MatchRule::UidRange(first, count) => {
            if *count == 0 {
                return Err(invalid("match.uid_range", "count must be at least 1"));
            }
            if u64::from(*first) + u64::from(*count) > u64::from(u32::MAX) {
                return Err(invalid(
                    "match.uid_range",
                    "first + count must not pass 4294967295 (uid -1 is not a uid)",
                ));
            }
            Ok(())
        }
        MatchRule::Pid(pid) => {
            if *pid <= 0 {
                return Err(invalid("match.pid", "must be a positive process id"));
            }
            Ok(())
        }
        // Whether it may be absent is check_listeners'.
        MatchRule::OwnListeners => Ok(()),
    }
}

impl InstanceSpec {
    /// Checks every field and fills in the defaults of section 4 (`location`
    /// from `host_name`, `cloud_init_id` from `name`, `root_uid` from the
    /// rule), so that what is stored and shown is explicit.
    pub fn validate(mut self, host_name: &str) -> Result<InstanceSpec, InvalidInstance> {
        if !valid_instance_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not 1-{MAX_INSTANCE_NAME_BYTES} characters of a-z, 0-9 and '-' that neither starts nor ends with '-'",
                    self.name
                ),
            ));
        }
        check_rule(&self.rule)?;
        check_listeners(&self.rule, &self.listeners)?;
        for (field, value) in [
            ("location", &self.location),
            ("cloud_init_id", &self.cloud_init_id),
        ] {
            if let Some(value) = value
                && (value.is_empty()
                    || value.len() > MAX_LABEL_BYTES
                    || value.chars().any(char::is_control))
            {
                return Err(invalid(
                    field,
                    format!("must be 1-{MAX_LABEL_BYTES} characters with no control characters"),
                ));
            }
        }
        for (key, value) in &self.config {
            check_config_entry(key, value)?;
        }
        for (name, fields) in &self.devices {
            check_device(name, fields)?;
        }
        self.location.get_or_insert_with(|| host_name.to_owned());
        self.cloud_init_id.get_or_insert_with(|| self.name.clone());
        self.root_uid.get_or_insert(self.rule.default_root_uid());
        Ok(self)
    }

    /// The uid whose processes are the instance's root user.
    pub fn root_uid(&self) -> u32 {
        self.root_uid.unwrap_or(0)
    }
}

/// Whether a guest may see this config key (`user.*` or `cloud-init.*`).
pub fn guest_visible(key: &str) -> bool {
    key.starts_with("user.") || key.starts_with("cloud-init.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<InstanceSpec, String> {
        let spec: InstanceSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate("host1").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = spec(r#"{"name":"c1","match":{"uid_range":[1000000,65536]}}"#).unwrap();
        assert_eq!(s.location.as_deref(), Some("host1"));
        assert_eq!(s.cloud_init_id.as_deref(), Some("c1"));
        assert_eq!(s.root_uid, Some(1000000));
        assert_eq!(s.kind, InstanceType::Container);
        assert_eq!(s.guest_access, GuestAccess::Root);
        let s = spec(r#"{"name":"c1","match":{"cgroup":"/lxc.payload.c1"}}"#).unwrap();
        assert_eq!(s.root_uid, Some(0));
    }

    #[test]
    fn names() {
        for good in ["a", "c1", "web-01", &"a".repeat(63)] {
            assert!(valid_instance_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ä"] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys() {
        for good in ["user.foo", "cloud-init.user-data", "user.a:b=c"] {
            assert!(valid_key(good), "{good}");
        }
        for bad in [
            "", "user.a b", "user/a", "user.a?", "user.%41", "user.\n", "user.é",
        ] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn bounds_are_worded_as_before() {
        let rule = "1-255 printable ASCII characters without spaces or any of / ? # % \" \\";
        assert_eq!(KeyRule.to_string(), rule);
        let reason = |r: Result<(), InvalidInstance>| r.unwrap_err().reason;
        assert_eq!(
            reason(check_config_entry("a b", "")),
            format!("a key is {rule}")
        );
        let fields: DeviceFields = [("a b".to_owned(), String::new())].into_iter().collect();
        assert_eq!(
            reason(check_device("a b", &DeviceFields::new())),
            format!("a device name is {rule}")
        );
        assert_eq!(
            reason(check_device("eth0", &fields)),
            format!("a device field name is {rule}")
        );
        let long_path = format!("/{}", "a".repeat(4096));
        for (json, message) in [
            (
                r#"{"name":"-c","match":{"pid":1}}"#.to_owned(),
                "name: \"-c\" is not 1-63 characters of a-z, 0-9 and '-' that neither starts nor ends with '-'",
            ),
            (
                r#"{"name":"c","match":{"pid":1},"location":""}"#.to_owned(),
                "location: must be 1-255 characters with no control characters",
            ),
            (
                format!(r#"{{"name":"c","match":{{"cgroup":"{long_path}"}}}}"#),
                "match.cgroup: longer than 4096 bytes",
            ),
        ] {
            assert_eq!(spec(&json).unwrap_err(), message);
        }
    }

    #[test]
    fn refused_descriptions() {
        let cases = [
            (r#"{"name":"c1"}"#, "match: is required"),
            (r#"{"name":"c1","match":{}}"#, ""),
            (r#"{"name":"c1","match":{"cgroup":"/a","pid":3}}"#, ""),
            (
                r#"{"name":"c1","match":{"cgroups":"/a"}}"#,
                "unknown variant",
            ),
            (
                r#"{"name":"c1","match":{"cgroup":"/a"},"extra":1}"#,
                "unknown field `extra`",
            ),
            (r#"{"name":"c1","match":{"cgroup":"a"}}"#, "match.cgroup"),
            (r#"{"name":"c1","match":{"cgroup":"/"}}"#, "root cgroup"),
            (
                r#"{"name":"c1","match":{"cgroup":"/a/../b"}}"#,
                "normalised",
            ),
            (r#"{"name":"c1","match":{"cgroup":"/a/"}}"#, "normalised"),
            (r#"{"name":"c1","match":{"uid_range":[5,0]}}"#, "at least 1"),
            (
                r#"{"name":"c1","match":{"uid_range":[4294967295,1]}}"#,
                "first + count",
            ),
            (r#"{"name":"c1","match":{"pid":0}}"#, "positive"),
            (r#"{"name":"C1","match":{"pid":1}}"#, "name"),
            (
                r#"{"name":"c1","match":{"pid":1},"config":{"user.a":1}}"#,
                "invalid type",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"config":{"a b":"x"}}"#,
                "config[\"a b\"]",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"devices":{"eth0":{"type":3}}}"#,
                "invalid type",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"devices":{"e/0":{}}}"#,
                "devices[\"e/0\"]",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"type":"vm"}"#,
                "unknown variant",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"guest_access":"all"}"#,
                "unknown variant",
            ),
            (
                r#"{"name":"c1","match":{"pid":1},"location":""}"#,
                "location",
            ),
        ];
        for (json, expected) in cases {
            let err = spec(json).expect_err(json);
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn value_limit() {
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(
            check_config_entry("user.big", &big)
                .unwrap_err()
                .reason
                .contains("limit")
        );
        assert!(check_config_entry("user.ok", &big[1..]).is_ok());
    }

    #[test]
    fn listeners_and_the_rules_they_go_with() {
        let vm = spec(
            r#"{"name":"vm1","type":"virtual-machine","listeners":[{"vsock":{"uds":"/run/vm1/v.sock","vmm_uid":107}}]}"#,
        )
        .unwrap();
        assert_eq!(vm.rule, MatchRule::OwnListeners);
        assert_eq!(vm.root_uid, Some(0));
        assert_eq!(
            vm.listeners[0].socket_path(),
            PathBuf::from("/run/vm1/v.sock_1024")
        );
        // No `match` is written back for a VM; the port's default is.
        let json = serde_json::to_string(&vm).unwrap();
        assert!(!json.contains("match"), "{json}");
        assert!(
            json.contains(
                r#""listeners":[{"vsock":{"uds":"/run/vm1/v.sock","port":1024,"vmm_uid":107}}]"#
            ),
            "{json}"
        );
        let c = spec(
            r#"{"name":"c1","match":{"cgroup":"/c1"},"listeners":[{"socket_dir":{"dir":"/run/gs/c1"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.listeners[0].socket_path(),
            PathBuf::from("/run/gs/c1/sock")
        );
        let long = format!("/{}", "d".repeat(103));
        let cases = [
            (
                r#"{"name":"c1","match":{"pid":1},"listeners":[{"vsock":{"uds":"/v","vmm_uid":0}}]}"#.to_owned(),
                "match: must not be given with a vsock listener",
            ),
            (
                r#"{"name":"c1","listeners":[{"socket_dir":{"dir":"/run/c1"}}]}"#.to_owned(),
                "match: is required with a socket_dir listener",
            ),
            (
                r#"{"name":"c1","listeners":[{"vsock":{"uds":"v.sock","vmm_uid":0}}]}"#.to_owned(),
                "listeners[0].vsock.uds: must be an absolute path",
            ),
            (
                r#"{"name":"c1","listeners":[{"vsock":{"uds":"/a/../v","vmm_uid":0}}]}"#.to_owned(),
                "listeners[0].vsock.uds: must be a normalised path",
            ),
            (
                r#"{"name":"c1","listeners":[{"vsock":{"uds":"/v","port":0,"vmm_uid":0}}]}"#.to_owned(),
                "listeners[0].vsock.port: must be a vsock port",
            ),
            (
                format!(r#"{{"name":"c1","listeners":[{{"vsock":{{"uds":"{long}","vmm_uid":0}}}}]}}"#),
                "more than a unix socket address holds (107)",
            ),
            (
                r#"{"name":"c1","listeners":[{"vsock":{"uds":"/v","vmm_uid":0}},{"vsock":{"uds":"/v","port":1024,"vmm_uid":1}}]}"#.to_owned(),
                "listeners[1].vsock: /v_1024 is named twice",
            ),
            (
                r#"{"name":"c1","listeners":[{"vsock":{"uds":"/v"}}]}"#.to_owned(),
                "missing field `vmm_uid`",
            ),
            (
                r#"{"name":"c1","listeners":[{"tcp":{}}]}"#.to_owned(),
                "unknown variant",
            ),
            (
                r#"{"name":"c1","match":"own_listeners","listeners":[{"vsock":{"uds":"/v","vmm_uid":0}}]}"#.to_owned(),
                "",
            ),
        ];
        for (json, expected) in cases {
            let err = spec(&json).expect_err(&json);
            assert!(err.contains(expected), "{json}: {err}");
        }
        let five = [r#"{"vsock":{"uds":"/v","vmm_uid":0}}"#; MAX_INSTANCE_LISTENERS + 1];
        let json = format!(r#"{{"name":"c1","listeners":[{}]}}"#, five.join(","));
        assert!(spec(&json).unwrap_err().contains("at most 4 listeners"));
    }

    #[test]
    fn rule_round_trips_in_protocol_shape() {
        let rule: MatchRule = serde_json::from_str(r#"{"uid_range":[1000000,65536]}"#).unwrap();
        assert_eq!(rule, MatchRule::UidRange(1000000, 65536));
        assert_eq!(
            serde_json::to_string(&rule).unwrap(),
            r#"{"uid_range":[1000000,65536]}"#
        );
        assert_eq!(
            serde_json::to_string(&MatchRule::Cgroup("/a".into())).unwrap(),
            r#"{"cgroup":"/a"}"#
        );
    }
}
