//! The registered instances and the indexes that map a caller to one of them.
//!
//! Owns conflict detection between match rules (docs/protocol.md section 4),
//! the lookup from a caller's facts to at most one instance, and the changes
//! in flight: staged versions that later changes build on and are checked
//! against, committed (served) only once the server says they are durable.
//! It does not gather those facts (`identity` does) and does not decide what
//! a caller may read (`api::guest` does).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;

use slab::Slab;

use crate::identity::{self, PeerFacts};
use crate::instance::{
    GuestState, InstanceSpec, InvalidInstance, ListenerSpec, MatchRule, RuleKinds,
};

/// A registered instance's key in the registry. Stable while it is
/// registered; reused after it is removed.
pub type InstanceId = usize;

/// One registered instance and what guestsock keeps beside its description.
#[derive(Debug)]
pub struct Instance {
    /// The validated description, defaults filled in.
    pub spec: InstanceSpec,
    /// For a `pid` rule, the pid namespace (nsfs inode) the process was in at
    /// registration: the rule means that namespace, whatever the pid is later.
    pub pidns: Option<u64>,
    /// `Ready` once the guest said so, until the host resets it.
    pub state: GuestState,
    /// Unique to this registration: a connection counted against an
    /// instance id that was since removed and reused is not counted
    /// against its successor.
    pub serial: u64,
    /// Open guest connections identified as this instance at accept.
    pub connections: u32,
    /// The request rate limiter.
    pub bucket: TokenBucket,
}

/// A token bucket: `rate` tokens a second, at most `burst` kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    updated: Option<std::time::Instant>,
}

impl Default for TokenBucket {
    fn default() -> TokenBucket {
        TokenBucket::new()
    }
}

impl TokenBucket {
    /// A full bucket (filled on first use).
    pub const fn new() -> TokenBucket {
        TokenBucket {
            tokens: f64::MAX,
            updated: None,
        }
    }

    /// The tokens there are at `now` (refilled since the last use).
    fn tokens_at(&self, now: std::time::Instant, rate: u32, burst: u32) -> f64 {
        let elapsed = self.updated.map_or(0.0, |then| {
            now.saturating_duration_since(then).as_secs_f64()
        });
        (self.tokens.min(f64::from(burst)) + elapsed * f64::from(rate)).min(f64::from(burst.max(1)))
    }

    /// How long from `now` until a token is there: `None` if there is one
    /// now (or `rate` is 0, unlimited). Never more than `1 / rate` seconds.
    /// Takes nothing.
    pub fn wait(
        &self,
        now: std::time::Instant,
        rate: u32,
        burst: u32,
    ) -> Option<std::time::Duration> {
        if rate == 0 {
            return None;
        }
        let missing = 1.0 - self.tokens_at(now, rate, burst);
        (missing > 0.0).then(|| std::time::Duration::from_secs_f64(missing / f64::from(rate)))
    }

    /// Takes one token at `now` if there is one. `rate` 0 means unlimited.
    pub fn take(&mut self, now: std::time::Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        self.tokens = self.tokens_at(now, rate, burst);
        self.updated = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Instance {
    /// Whether this instance's own rule claims the caller, whatever other
    /// instances' rules say (used to find the connections of a removed
    /// instance).
    pub fn claims(&self, peer: &PeerFacts) -> bool {
        match &self.spec.rule {
            MatchRule::Cgroup(path) => peer.cgroup.as_deref().is_some_and(|cgroup| {
                cgroup
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
            MatchRule::UidRange(first, count) => {
                peer.uid >= *first && u64::from(peer.uid) < u64::from(*first) + u64::from(*count)
            }
            MatchRule::Pid(_) => self.pidns.is_some() && peer.pidns == self.pidns,
            MatchRule::OwnListeners => false,
        }
    }

    /// Whether a `pid` rule still stands for the namespace it was registered
    /// with: its process is alive and still in that namespace. A namespace
    /// lives exactly as long as its init process, and its nsfs inode number
    /// is reused once it is gone, so a rule whose process has exited must
    /// not claim whoever gets that number next (a container that stopped
    /// without being unregistered). Rules of other kinds always hold.
    pub fn rule_holds(&self) -> bool {
        match self.spec.rule {
            MatchRule::Pid(pid) => {
                self.pidns.is_some() && identity::pid_namespace(pid).ok() == self.pidns
            }
            _ => true,
        }
    }
}

/// A version of an instance that a change would make: validated, its rule
/// checked, but not yet durable, so not yet served (docs/protocol.md section 7:
/// a 2xx means the change is on disk; a guest sees it only from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The description, validated, defaults filled in.
    pub spec: InstanceSpec,
    /// The guest state it will have.
    pub state: GuestState,
    /// For a `pid` rule, the namespace the rule stands for.
    pub pidns: Option<u64>,
}

/// The newest version of an instance counting the changes in flight: what
/// the next change to it builds on.
#[derive(Debug, Clone)]
struct Pending {
    /// `None`: its removal is in flight.
    latest: Option<Rc<Staged>>,
    /// Changes in flight that named it; the entry goes when the last is
    /// committed.
    changes: u32,
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The description itself is wrong (the host's fault): `400`.
    Invalid(InvalidInstance),
    /// An instance of that name exists already: `409`.
    NameTaken(String),
    /// The match rule could claim a caller another instance's rule claims: `409`.
    Conflict {
        /// The instance already holding the rule.
        other: String,
        /// What the two rules share.
        detail: String,
    },
    /// A listener's socket is another instance's: `409`.
    ListenerTaken {
        /// The instance whose listener it is.
        other: String,
        /// The socket's path.
        path: PathBuf,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Invalid(e) => e.fmt(f),
            RegistryError::NameTaken(name) => {
                write!(f, "an instance named {name:?} exists already")
            }
            RegistryError::Conflict { other, detail } => {
                write!(f, "match rule conflicts with instance {other:?}: {detail}")
            }
            RegistryError::ListenerTaken { other, path } => {
                write!(
                    f,
                    "listener {} is instance {other:?}'s already",
                    path.display()
                )
            }
        }
    }
}

/// Why a caller is not served as any instance. Every variant is the caller's
/// situation, not a server fault, and is answered `403`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No instance's rule claims the caller.
    NoInstance { pid: i32, uid: u32 },
    /// Rules of different kinds claim the caller for different instances.
    Ambiguous {
        pid: i32,
        uid: u32,
        first: String,
        second: String,
    },
    /// A fact some rule needs could not be established safely.
    Unverified {
        pid: i32,
        uid: u32,
        reason: &'static str,
    },
    /// On a listener of an instance's own: the caller is not who may use
    /// it (another instance's process, or not the VMM's user).
    WrongListener {
        pid: i32,
        uid: u32,
        reason: &'static str,
    },
    /// The instance a listener was opened for is gone (removed, or its
    /// listener dropped) while this connection was open.
    ListenerGone { pid: i32, uid: u32 },
}

impl Refusal {
    /// What the caller is told: its own pid and uid and why, never the name
    /// of an instance, which would tell a guest about its neighbours. The
    /// whole reason ([`fmt::Display`]) is for the host's log.
    pub fn guest_message(&self) -> String {
        match self {
            Refusal::NoInstance { .. }
            | Refusal::Unverified { .. }
            | Refusal::WrongListener { .. }
            | Refusal::ListenerGone { .. } => self.to_string(),
            Refusal::Ambiguous { pid, uid, .. } => {
                format!("pid {pid} (uid {uid}) matches more than one instance; refusing to guess")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoInstance { pid, uid } => {
                write!(
                    f,
                    "pid {pid} (uid {uid}) is not part of any registered instance"
                )
            }
            Refusal::Ambiguous {
                pid,
                uid,
                first,
                second,
            } => write!(
                f,
                "pid {pid} (uid {uid}) matches both instance {first:?} and instance {second:?}; refusing to guess"
            ),
            Refusal::Unverified { pid, uid, reason } => {
                write!(f, "pid {pid} (uid {uid}) could not be identified: {reason}")
            }
            Refusal::WrongListener { pid, uid, reason } => {
                write!(f, "pid {pid} (uid {uid}) may not use this socket: {reason}")
            }
            Refusal::ListenerGone { pid, uid } => write!(
                f,
                "pid {pid} (uid {uid}): this socket's instance is no longer registered with it"
            ),
        }
    }
}

/// All registered instances, with one index per kind of match rule.
#[derive(Debug, Default)]
pub struct Registry {
    instances: Slab<Instance>,
    by_name: HashMap<String, InstanceId>,
    /// Exact cgroup path to instance; lookups walk the caller's path upwards.
    by_cgroup: HashMap<String, InstanceId>,
    /// First uid of each range to (end of range, exclusive; instance).
    /// Ranges never overlap, so the range holding a uid is the last one that
    /// starts at or before it.
    by_uid: BTreeMap<u32, (u64, InstanceId)>,
    /// Pid namespace inode to instance.
    by_pidns: HashMap<u64, InstanceId>,
    /// The socket path of each listener of an instance's own, to its
    /// instance: no two instances may name one.
    by_listener: HashMap<PathBuf, InstanceId>,
    /// guestsock's own pid namespace: a `pid` rule naming it would claim
    /// every host process.
    own_pidns: Option<u64>,
    /// Default `location`.
    host_name: String,
    /// The last registration's serial.
    serial: u64,
    /// Bumped by every change to which instance claims whom (registration,
    /// replacement, removal): a caller identified at an earlier generation
    /// may be identified again.
    generation: u64,
    /// Changes accepted but not yet durable, by instance name: admin
    /// changes build on them (so two in flight never undo each other) and
    /// are checked against them, but guests never see them.
    pending: HashMap<String, Pending>,
}

impl Registry {
    /// An empty registry; `host_name` is the default `location`.
    pub fn new(host_name: String) -> Registry {
        Registry {
            own_pidns: identity::pid_namespace(std::process::id() as i32).ok(),
            host_name,
            ..Registry::default()
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Which version of the rules this is: a caller's identity worked out
    /// at the same generation still holds.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The default `location` of instances.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// How many instances are registered.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The kinds of rule some instance uses: only these need facts gathered.
    pub fn kinds_in_use(&self) -> RuleKinds {
        let mut kinds = RuleKinds::empty();
        if !self.by_cgroup.is_empty() {
            kinds = kinds.union(RuleKinds::CGROUP);
        }
        if !self.by_uid.is_empty() {
            kinds = kinds.union(RuleKinds::UID_RANGE);
        }
        if !self.by_pidns.is_empty() {
            kinds = kinds.union(RuleKinds::PID);
        }
        kinds
    }

    /// The instance with this key.
    pub fn get(&self, id: InstanceId) -> Option<&Instance> {
        self.instances.get(id)
    }

    /// The instance with this key, to change it.
    pub fn get_mut(&mut self, id: InstanceId) -> Option<&mut Instance> {
        self.instances.get_mut(id)
    }

    /// The key of the instance with this name.
    pub fn find(&self, name: &str) -> Option<InstanceId> {
        self.by_name.get(name).copied()
    }

    /// Every instance, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (InstanceId, &Instance)> {
        self.instances.iter()
    }

    /// Validates `spec` and registers it, refusing a taken name or a match
    /// rule that conflicts with another instance's.
    pub fn insert(&mut self, spec: InstanceSpec) -> Result<InstanceId, RegistryError> {
        let spec = spec
            .validate(&self.host_name)
            .map_err(RegistryError::Invalid)?;
        if self.by_name.contains_key(&spec.name) {
            return Err(RegistryError::NameTaken(spec.name));
        }
        let pidns = self.check_rule(&spec.rule, None)?;
        self.check_listeners(&spec, true)?;
        let serial = self.next_serial();
        Ok(self.attach(Instance {
            spec,
            pidns,
            state: GuestState::Started,
            serial,
            connections: 0,
            bucket: TokenBucket::new(),
        }))
    }

    /// Registers an instance read back from the state directory, with the
    /// guest state and pid namespace it was saved with.
    ///
    /// A `pid` rule's namespace is kept only if process `pid` is still in it:
    /// namespace inodes are reused once a namespace dies, so a recorded one
    /// whose process is gone could later name a stranger's namespace. Such an
    /// instance stays registered but matches no caller until re-registered
    /// (the returned warning says so).
    pub fn restore(
        &mut self,
        spec: InstanceSpec,
        state: GuestState,
        recorded_pidns: Option<u64>,
    ) -> Result<(InstanceId, Option<String>), RegistryError> {
        let spec = spec
            .validate(&self.host_name)
            .map_err(RegistryError::Invalid)?;
        if self.by_name.contains_key(&spec.name) {
            return Err(RegistryError::NameTaken(spec.name));
        }
        let mut warning = None;
        let pidns = match &spec.rule {
            MatchRule::Pid(pid) => {
                let now = identity::pid_namespace(*pid).ok();
                if now.is_some() && now == recorded_pidns {
                    self.check_rule(&spec.rule, None)?
                } else {
                    warning = Some(format!(
                        "instance {:?}: process {pid} is no longer in the pid namespace it was registered with; it matches no caller until it is registered again",
                        spec.name
                    ));
                    None
                }
            }
            rule => self.check_rule(rule, None)?,
        };
        self.check_listeners(&spec, true)?;
        let serial = self.next_serial();
        let id = self.attach(Instance {
            spec,
            pidns,
            state,
            serial,
            connections: 0,
            bucket: TokenBucket::new(),
        });
        Ok((id, warning))
    }

    /// Unregisters the instance with this name and returns it.
    pub fn remove(&mut self, name: &str) -> Option<(InstanceId, Instance)> {
        let id = *self.by_name.get(name)?;
        Some((id, self.detach(id)))
    }

    /// Stores an instance whose rule was checked, and indexes it.
    fn attach(&mut self, instance: Instance) -> InstanceId {
        self.generation += 1;
        let name = instance.spec.name.clone();
        let rule = instance.spec.rule.clone();
        let pidns = instance.pidns;
        let sockets: Vec<PathBuf> = instance
            .spec
            .listeners
            .iter()
            .map(ListenerSpec::socket_path)
            .collect();
        let id = self.instances.insert(instance);
        self.by_name.insert(name, id);
        for socket in sockets {
            self.by_listener.insert(socket, id);
        }
        match rule {
            MatchRule::Cgroup(path) => {
                self.by_cgroup.insert(path, id);
            }
            MatchRule::UidRange(first, count) => {
                self.by_uid
                    .insert(first, (u64::from(first) + u64::from(count), id));
            }
            MatchRule::Pid(_) => {
                if let Some(ns) = pidns {
                    self.by_pidns.insert(ns, id);
                }
            }
            MatchRule::OwnListeners => {}
        }
        id
    }

    /// Takes an instance out of the slab and every index.
    fn detach(&mut self, id: InstanceId) -> Instance {
        self.generation += 1;
        let instance = self.instances.remove(id);
        self.by_name.remove(&instance.spec.name);
        for listener in &instance.spec.listeners {
            self.by_listener.remove(&listener.socket_path());
        }
        match &instance.spec.rule {
            MatchRule::Cgroup(path) => {
                self.by_cgroup.remove(path);
            }
            MatchRule::UidRange(first, _) => {
                self.by_uid.remove(first);
            }
            MatchRule::Pid(_) => {
                // A stale rule's namespace number may have been taken by a
                // later instance since (`rule_holds`): leave that one's.
                if let Some(ns) = instance.pidns
                    && self.by_pidns.get(&ns) == Some(&id)
                {
                    self.by_pidns.remove(&ns);
                }
            }
            MatchRule::OwnListeners => {}
        }
        instance
    }

    /// Checks a rule against every other instance's rule (all but the one
    /// named `except`), counting the changes in flight; for a `pid` rule,
    /// returns the namespace it stands for.
    ///
    /// A registered instance with a change in flight is judged by its newest
    /// version, so two changes in flight can never register conflicting
    /// rules, and a rule being given up is free only once that is durable
    /// (until then its new owner is told `409` and may retry).
    fn check_rule(
        &self,
        rule: &MatchRule,
        except: Option<&str>,
    ) -> Result<Option<u64>, RegistryError> {
        self.check_rule_against(rule, except, true)
    }

    /// [`Registry::check_rule`], against the registered versions only when
    /// `in_flight` is false (a batch checks the versions in flight itself,
    /// once for all its entries).
    fn check_rule_against(
        &self,
        rule: &MatchRule,
        except: Option<&str>,
        in_flight: bool,
    ) -> Result<Option<u64>, RegistryError> {
        let pidns = match rule {
            MatchRule::Pid(pid) => Some(self.pid_rule_namespace(*pid)?),
            _ => None,
        };
        let skip = |name: &str| Some(name) == except;
        // Registered versions.
        let durable = |id: InstanceId| -> Result<(), RegistryError> {
            let other = &self.instances[id];
            if skip(&other.spec.name) {
                return Ok(());
            }
            match rules_conflict((rule, pidns), (&other.spec.rule, other.pidns)) {
                Some(detail) => Err(RegistryError::Conflict {
                    other: other.spec.name.clone(),
                    detail,
                }),
                None => Ok(()),
            }
        };
        match rule {
            MatchRule::Cgroup(path) => {
                if let Some(&id) = self.by_cgroup.get(path) {
                    durable(id)?;
                }
            }
            MatchRule::UidRange(first, count) => {
                // Registered ranges are disjoint: walking down from the end
                // of this one, the overlapping ones come first.
                let end = u64::from(*first) + u64::from(*count);
                let below_end = u32::try_from(end)
                    .map_or(self.by_uid.range(..), |end| self.by_uid.range(..end));
                for (_, &(other_end, id)) in below_end.rev() {
                    if other_end <= u64::from(*first) {
                        break;
                    }
                    durable(id)?;
                }
            }
            MatchRule::Pid(_) => {
                if let Some(&id) = pidns.and_then(|ns| self.by_pidns.get(&ns))
                    && self.instances[id].rule_holds()
                {
                    durable(id)?;
                }
            }
            MatchRule::OwnListeners => {}
        }
        if !in_flight {
            return Ok(pidns);
        }
        // Versions in flight.
        for (name, pending) in &self.pending {
            let Some(staged) = pending.latest.as_deref() else {
                continue;
            };
            if skip(name) {
                continue;
            }
            if let Some(detail) = rules_conflict((rule, pidns), (&staged.spec.rule, staged.pidns)) {
                return Err(RegistryError::Conflict {
                    other: name.clone(),
                    detail,
                });
            }
        }
        Ok(pidns)
    }

    /// Refuses `spec` if one of its listeners' sockets is another
    /// instance's: a registered one's, or (with `in_flight`) one in flight.
    /// A socket the instance of the same name holds is its own to keep.
    fn check_listeners(&self, spec: &InstanceSpec, in_flight: bool) -> Result<(), RegistryError> {
        for listener in &spec.listeners {
            let path = listener.socket_path();
            let taken = |other: &str| RegistryError::ListenerTaken {
                other: other.to_owned(),
                path: path.clone(),
            };
            if let Some(&id) = self.by_listener.get(&path) {
                let other = &self.instances[id].spec.name;
                // A version in flight may give it up; until that is
                // durable, the socket is still the other's.
                if *other != spec.name {
                    return Err(taken(other));
                }
            }
            if !in_flight {
                continue;
            }
            for (name, pending) in &self.pending {
                if *name != spec.name
                    && let Some(staged) = pending.latest.as_deref()
                    && staged
                        .spec
                        .listeners
                        .iter()
                        .any(|l| l.socket_path() == path)
                {
                    return Err(taken(name));
                }
            }
        }
        Ok(())
    }

    /// Refuses `spec` if a listener it adds could not be opened now: what
    /// is at its path, or (for a VM's) its directory missing, checked
    /// before the change is promised, changing nothing. A socket the
    /// instance holds already is its own and not looked at.
    fn probe_new_listeners(&self, spec: &InstanceSpec) -> Result<(), RegistryError> {
        for (index, listener) in spec.listeners.iter().enumerate() {
            let path = listener.socket_path();
            if self
                .by_listener
                .get(&path)
                .is_some_and(|&id| self.instances[id].spec.name == spec.name)
            {
                continue;
            }
            let vsock = matches!(listener, ListenerSpec::Vsock(_));
            crate::socket_file::probe_socket_path(&path, vsock).map_err(|reason| {
                RegistryError::Invalid(InvalidInstance {
                    field: format!("listeners[{index}]"),
                    reason,
                })
            })?;
        }
        Ok(())
    }

    /// The pid namespace a `pid` rule naming `pid` stands for, refusing
    /// guestsock's own.
    fn pid_rule_namespace(&self, pid: i32) -> Result<u64, RegistryError> {
        let ns = identity::pid_namespace(pid).map_err(|e| {
            RegistryError::Invalid(InvalidInstance {
                field: "match.pid".into(),
                reason: format!("cannot read the pid namespace of process {pid}: {e}"),
            })
        })?;
        if Some(ns) == self.own_pidns {
            return Err(RegistryError::Invalid(InvalidInstance {
                field: "match.pid".into(),
                reason: format!(
                    "process {pid} shares guestsock's own pid namespace, so the rule would match every host process; name a process inside the container"
                ),
            }));
        }
        Ok(ns)
    }

    /// The newest version of the instance named `name`, counting the
    /// changes in flight; `None` if it does not exist or its removal is in
    /// flight. A change builds on this.
    pub fn latest(&self, name: &str) -> Option<Staged> {
        match self.pending.get(name) {
            Some(pending) => pending.latest.as_deref().cloned(),
            None => {
                let instance = self.instances.get(*self.by_name.get(name)?)?;
                Some(Staged {
                    spec: instance.spec.clone(),
                    state: instance.state,
                    pidns: instance.pidns,
                })
            }
        }
    }

    /// Whether an instance named `name` exists, counting changes in flight.
    pub fn exists_latest(&self, name: &str) -> bool {
        match self.pending.get(name) {
            Some(pending) => pending.latest.is_some(),
            None => self.by_name.contains_key(name),
        }
    }

    /// Accepts the registration of `spec` as a change in flight, refusing a
    /// taken name or a conflicting rule. Nothing is served until
    /// [`Registry::commit`].
    pub fn stage_insert(&mut self, spec: InstanceSpec) -> Result<Rc<Staged>, RegistryError> {
        let spec = spec
            .validate(&self.host_name)
            .map_err(RegistryError::Invalid)?;
        if self.exists_latest(&spec.name) {
            return Err(RegistryError::NameTaken(spec.name));
        }
        let pidns = self.check_rule(&spec.rule, None)?;
        self.check_listeners(&spec, true)?;
        self.probe_new_listeners(&spec)?;
        Ok(self.stage(Staged {
            spec,
            state: GuestState::Started,
            pidns,
        }))
    }

    /// Accepts a new description of the existing instance `name`, keeping
    /// its guest state, as a change in flight. Refused if the description
    /// is invalid, renames it, or conflicts with another instance.
    pub fn stage_replace(
        &mut self,
        name: &str,
        spec: InstanceSpec,
    ) -> Result<Rc<Staged>, RegistryError> {
        let Some(old) = self.latest(name) else {
            return Err(RegistryError::Invalid(InvalidInstance {
                field: "name".into(),
                reason: "no such instance".into(),
            }));
        };
        let spec = spec
            .validate(&self.host_name)
            .map_err(RegistryError::Invalid)?;
        if spec.name != old.spec.name {
            return Err(RegistryError::Invalid(InvalidInstance {
                field: "name".into(),
                reason: format!(
                    "{:?} differs from the instance being replaced, {:?}; instances cannot be renamed",
                    spec.name, old.spec.name
                ),
            }));
        }
        // An unchanged pid rule keeps its namespace: the process may have
        // gone, but the rule still means the namespace it named.
        let pidns = if spec.rule == old.spec.rule {
            old.pidns
        } else {
            self.check_rule(&spec.rule, Some(name))?
        };
        self.check_listeners(&spec, true)?;
        self.probe_new_listeners(&spec)?;
        Ok(self.stage(Staged {
            spec,
            state: old.state,
            pidns,
        }))
    }

    /// Accepts many registrations and replacements as changes in flight,
    /// all or none: each entry registers a new instance or replaces the one
    /// of its name (keeping its guest state). Returns each entry's version
    /// before (`None` for a new one) and staged version, in order.
    ///
    /// Every entry is validated and checked before any is staged: against
    /// the registered rules (as [`Registry::stage_insert`] does), and against
    /// the versions in flight and the other entries through one index built
    /// for the whole batch, so that a batch of n entries costs O(n log n),
    /// not n checks against a growing list of changes in flight.
    pub fn stage_batch(&mut self, specs: Vec<InstanceSpec>) -> Result<Vec<BatchEntry>, BatchError> {
        let fail = |index: usize, name: &str, error: RegistryError| BatchError {
            index,
            name: name.to_owned(),
            error,
        };
        let mut names = HashMap::with_capacity(specs.len());
        let mut checked = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let name = spec.name.clone();
            let spec = spec
                .validate(&self.host_name)
                .map_err(|e| fail(index, &name, RegistryError::Invalid(e)))?;
            if names.insert(name.clone(), index).is_some() {
                return Err(fail(
                    index,
                    &name,
                    RegistryError::Invalid(InvalidInstance {
                        field: "name".into(),
                        reason: "appears more than once in the batch".into(),
                    }),
                ));
            }
            let before = self.latest(&name);
            // An unchanged pid rule keeps its namespace, as in a replacement.
            let pidns = match &before {
                Some(old) if old.spec.rule == spec.rule => old.pidns,
                _ => self
                    .check_rule_against(&spec.rule, Some(&name), false)
                    .map_err(|e| fail(index, &name, e))?,
            };
            self.check_listeners(&spec, false)
                .and_then(|()| self.probe_new_listeners(&spec))
                .map_err(|e| fail(index, &name, e))?;
            checked.push((before, spec, pidns));
        }
        // Listeners: the batch's entries against each other and against
        // the versions in flight, which are few.
        let mut sockets: HashMap<PathBuf, &str> = HashMap::new();
        for (name, pending) in &self.pending {
            if let Some(staged) = pending.latest.as_deref()
                && !names.contains_key(name)
            {
                for listener in &staged.spec.listeners {
                    sockets.insert(listener.socket_path(), name);
                }
            }
        }
        for (index, (_, spec, _)) in checked.iter().enumerate() {
            for listener in &spec.listeners {
                let path = listener.socket_path();
                if let Some(other) = sockets.get(&path) {
                    let error = RegistryError::ListenerTaken {
                        other: (*other).to_owned(),
                        path,
                    };
                    return Err(fail(index, &spec.name, error));
                }
                sockets.insert(path, &spec.name);
            }
        }
        // The versions in flight and the batch, checked against each other
        // (versions in flight were checked against each other already).
        let mut held: Vec<(&str, &MatchRule, Option<u64>, Option<usize>)> = Vec::new();
        for (name, pending) in &self.pending {
            if let Some(staged) = pending.latest.as_deref()
                && !names.contains_key(name)
            {
                held.push((name, &staged.spec.rule, staged.pidns, None));
            }
        }
        for (index, (_, spec, pidns)) in checked.iter().enumerate() {
            held.push((&spec.name, &spec.rule, *pidns, Some(index)));
        }
        if let Some((index, name, error)) = first_conflict(&held) {
            return Err(fail(index, &name, error));
        }
        Ok(checked
            .into_iter()
            .map(|(before, spec, pidns)| {
                let state = before.as_ref().map_or(GuestState::Started, |b| b.state);
                let staged = self.stage(Staged { spec, state, pidns });
                (before, staged)
            })
            .collect())
    }

    /// Accepts a version of an existing instance whose rule is unchanged
    /// (config, devices, state: built from [`Registry::latest`]) as a
    /// change in flight.
    pub fn stage(&mut self, staged: Staged) -> Rc<Staged> {
        let staged = Rc::new(staged);
        let pending = self
            .pending
            .entry(staged.spec.name.clone())
            .or_insert(Pending {
                latest: None,
                changes: 0,
            });
        pending.latest = Some(Rc::clone(&staged));
        pending.changes += 1;
        staged
    }

    /// Accepts the removal of instance `name` as a change in flight;
    /// `false` if there is no such instance.
    pub fn stage_remove(&mut self, name: &str) -> bool {
        if !self.exists_latest(name) {
            return false;
        }
        let pending = self.pending.entry(name.to_owned()).or_insert(Pending {
            latest: None,
            changes: 0,
        });
        pending.latest = None;
        pending.changes += 1;
        true
    }

    /// Makes a staged version the registered one, now that it is durable:
    /// from here on guests are served it. Returns its key.
    ///
    /// Cannot fail: its rule was checked against every registered and
    /// in-flight version when it was staged, and changes are committed in
    /// the order they were staged.
    pub fn commit(&mut self, staged: &Staged) -> InstanceId {
        self.settle(&staged.spec.name);
        let staged = staged.clone();
        match self.by_name.get(&staged.spec.name).copied() {
            Some(id) => {
                let mut instance = self.detach(id);
                instance.spec = staged.spec;
                instance.state = staged.state;
                instance.pidns = staged.pidns;
                self.attach(instance)
            }
            None => {
                let serial = self.next_serial();
                self.attach(Instance {
                    spec: staged.spec,
                    pidns: staged.pidns,
                    state: staged.state,
                    serial,
                    connections: 0,
                    bucket: TokenBucket::new(),
                })
            }
        }
    }

    /// Unregisters instance `name`, now that its removal is durable, and
    /// returns it.
    pub fn commit_remove(&mut self, name: &str) -> Option<(InstanceId, Instance)> {
        self.settle(name);
        self.remove(name)
    }

    /// Forgets every change in flight: the state directory refused one of
    /// them, and the others were built on it.
    pub fn abandon_pending(&mut self) {
        self.pending.clear();
    }

    /// Counts one change to `name` as no longer in flight.
    fn settle(&mut self, name: &str) {
        if let Some(pending) = self.pending.get_mut(name) {
            pending.changes = pending.changes.saturating_sub(1);
            if pending.changes == 0 {
                self.pending.remove(name);
            }
        }
    }

    /// The one instance whose rule claims the caller, or why there is none.
    ///
    /// Each kind of rule in use is asked; if two kinds name different
    /// instances the caller is refused rather than guessed (section 4).
    pub fn identify(&self, peer: &PeerFacts) -> Result<InstanceId, Refusal> {
        let kinds = self.kinds_in_use();
        let (pid, uid) = (peer.pid, peer.uid);
        if kinds.needs_proc() {
            if !peer.gathered.contains(kinds.proc_kinds()) {
                return Err(Refusal::Unverified {
                    pid,
                    uid,
                    reason: "instances were registered since this connection was opened; reconnect",
                });
            }
            if let Some(reason) = peer.proc_error {
                return Err(Refusal::Unverified { pid, uid, reason });
            }
        }
        let mut found: Option<InstanceId> = None;
        let mut consider = |id: Option<InstanceId>| -> Result<(), Refusal> {
            match (found, id) {
                (Some(a), Some(b)) if a != b => Err(Refusal::Ambiguous {
                    pid,
                    uid,
                    first: self.instances[a].spec.name.clone(),
                    second: self.instances[b].spec.name.clone(),
                }),
                (None, Some(b)) => {
                    found = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        if kinds.contains(RuleKinds::CGROUP) {
            consider(
                peer.cgroup
                    .as_deref()
                    .and_then(|path| self.by_cgroup_path(path)),
            )?;
        }
        if kinds.contains(RuleKinds::UID_RANGE) {
            consider(self.by_uid(uid))?;
        }
        if kinds.contains(RuleKinds::PID) {
            consider(
                peer.pidns
                    .and_then(|ns| self.by_pidns.get(&ns).copied())
                    .filter(|&id| self.instances[id].rule_holds()),
            )?;
        }
        found.ok_or(Refusal::NoInstance { pid, uid })
    }

    /// The instance with the longest registered cgroup path that is `path` or
    /// one of its ancestors, compared component by component.
    fn by_cgroup_path(&self, path: &str) -> Option<InstanceId> {
        let mut candidate = path;
        loop {
            if let Some(&id) = self.by_cgroup.get(candidate) {
                return Some(id);
            }
            match candidate.rfind('/') {
                Some(0) | None => return None,
                Some(cut) => candidate = &candidate[..cut],
            }
        }
    }

    fn by_uid(&self, uid: u32) -> Option<InstanceId> {
        let (_, &(end, id)) = self.by_uid.range(..=uid).next_back()?;
        (u64::from(uid) < end).then_some(id)
    }
}

/// What two rules (each with the namespace a `pid` rule stands for) could
/// both claim, if anything. Rules of different kinds never conflict here:
/// a caller they both claim is refused when it connects (section 4).
/// The first conflict among `held` rules (name, rule, pid namespace, and
/// the batch index of entries that are the batch's), blamed on a batch
/// entry: equal cgroup paths, overlapping uid ranges or equal pid
/// namespaces, found by sorting, not by comparing every pair.
fn first_conflict(
    held: &[(&str, &MatchRule, Option<u64>, Option<usize>)],
) -> Option<(usize, String, RegistryError)> {
    let blame = |a: usize, b: usize| -> Option<(usize, String, RegistryError)> {
        let (x, y) = (&held[a], &held[b]);
        // The later batch entry is blamed; a version in flight never is.
        let (culprit, other) = match (x.3, y.3) {
            (Some(i), Some(j)) if i > j => (x, y),
            (Some(_), Some(_)) | (None, Some(_)) => (y, x),
            (Some(_), None) => (x, y),
            (None, None) => return None,
        };
        let detail = rules_conflict((culprit.1, culprit.2), (other.1, other.2))?;
        Some((
            culprit.3?,
            culprit.0.to_owned(),
            RegistryError::Conflict {
                other: other.0.to_owned(),
                detail,
            },
        ))
    };
    let mut cgroups: HashMap<&str, usize> = HashMap::new();
    let mut namespaces: HashMap<u64, usize> = HashMap::new();
    let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
    let mut found: Option<(usize, String, RegistryError)> = None;
    let mut keep = |candidate: Option<(usize, String, RegistryError)>| {
        if let Some(c) = candidate
            && found.as_ref().is_none_or(|f| c.0 < f.0)
        {
            found = Some(c);
        }
    };
    for (at, (_, rule, pidns, _)) in held.iter().enumerate() {
        match rule {
            MatchRule::Cgroup(path) => {
                if let Some(&other) = cgroups.get(path.as_str()) {
                    keep(blame(other, at));
                } else {
                    cgroups.insert(path, at);
                }
            }
            MatchRule::UidRange(first, count) => {
                ranges.push((u64::from(*first), u64::from(*first) + u64::from(*count), at));
            }
            MatchRule::Pid(_) => {
                if let Some(ns) = pidns {
                    if let Some(&other) = namespaces.get(ns) {
                        keep(blame(other, at));
                    } else {
                        namespaces.insert(*ns, at);
                    }
                }
            }
            MatchRule::OwnListeners => {}
        }
    }
    ranges.sort_unstable();
    // Sorted by start, a range overlaps an earlier one exactly when it
    // starts before the furthest end seen so far.
    let mut furthest: Option<(u64, usize)> = None;
    for &(start, end, at) in &ranges {
        if let Some((reach, holder)) = furthest {
            if start < reach {
                keep(blame(holder, at));
            }
            if end > reach {
                furthest = Some((end, at));
            }
        } else {
            furthest = Some((end, at));
        }
    }
    found
}

/// An entry of a staged batch: the instance's version before it (`None`
/// for a new instance) and its staged version.
pub type BatchEntry = (Option<Staged>, Rc<Staged>);

/// Why a batch was refused: the first entry that cannot be registered.
#[derive(Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Its position in the batch.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Why.
    pub error: RegistryError,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instances[{}] ({:?}): {}",
            self.index, self.name, self.error
        )
    }
}

fn rules_conflict(a: (&MatchRule, Option<u64>), b: (&MatchRule, Option<u64>)) -> Option<String> {
    match (a.0, b.0) {
        (MatchRule::Cgroup(x), MatchRule::Cgroup(y)) if x == y => {
            Some(format!("both match cgroup {x}"))
        }
        (MatchRule::UidRange(first, count), MatchRule::UidRange(other_first, other_count)) => {
            let end = u64::from(*first) + u64::from(*count);
            let other_end = u64::from(*other_first) + u64::from(*other_count);
            (u64::from(*other_first) < end && u64::from(*first) < other_end).then(|| {
                format!("uid ranges [{first}, {end}) and [{other_first}, {other_end}) overlap")
            })
        }
        (MatchRule::Pid(_), MatchRule::Pid(_)) => match (a.1, b.1) {
            (Some(x), Some(y)) if x == y => Some(format!("both match pid namespace pid:[{x}]")),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_says_how_long_until_its_next_token_and_takes_nothing() {
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let mut bucket = TokenBucket::new();
        // Unlimited, or a token there: no wait.
        assert_eq!(bucket.wait(start, 0, 0), None);
        assert_eq!(bucket.wait(start, 10, 2), None);
        assert!(bucket.take(start, 10, 2));
        assert!(bucket.take(start, 10, 2));
        assert!(!bucket.take(start, 10, 2));
        // Empty at 10 a second: a token in 100 ms, 40 ms later in 60 ms.
        let wait = bucket.wait(start, 10, 2).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let later = start + Duration::from_millis(40);
        let wait = bucket.wait(later, 10, 2).unwrap();
        assert!((wait.as_secs_f64() - 0.06).abs() < 1e-6, "{wait:?}");
        // Asking took nothing: at the wait's end a token is there.
        assert_eq!(bucket.wait(start + Duration::from_millis(100), 10, 2), None);
        assert!(bucket.take(start + Duration::from_millis(100), 10, 2));
        // Never longer than one token's refill, at the slowest rate.
        let mut slow = TokenBucket::new();
        assert!(slow.take(start, 1, 1));
        assert!(slow.wait(start, 1, 1).unwrap() <= Duration::from_secs(1));
    }

    fn spec(name: &str, rule: &str) -> InstanceSpec {
        serde_json::from_str(&format!(r#"{{"name":"{name}","match":{rule}}}"#)).unwrap()
    }

    fn facts(uid: u32, cgroup: Option<&str>) -> PeerFacts {
        PeerFacts {
            pid: 42,
            uid,
            gid: uid,
            gathered: RuleKinds::CGROUP.union(RuleKinds::PID),
            cgroup: cgroup.map(Into::into),
            pidns: None,
            proc_error: None,
        }
    }

    fn registry(rules: &[(&str, &str)]) -> Registry {
        let mut r = Registry::new("host".into());
        for (name, rule) in rules {
            r.insert(spec(name, rule)).unwrap();
        }
        r
    }

    fn name_of(r: &Registry, result: Result<InstanceId, Refusal>) -> Result<String, Refusal> {
        result.map(|id| r.get(id).unwrap().spec.name.clone())
    }

    #[test]
    fn a_batch_is_checked_against_itself_and_changes_in_flight() {
        let uid = |name: &str, first: u32, count: u32| {
            spec(name, &format!(r#"{{"uid_range":[{first},{count}]}}"#))
        };
        let mut r = registry(&[("held", r#"{"uid_range":[500,10]}"#)]);
        // In flight, not yet durable: a batch must not overlap it either.
        r.stage_insert(uid("flying", 600, 10)).unwrap();
        for (batch, culprit, other) in [
            // A long range holds a later one that its neighbour does not.
            (
                vec![uid("a", 0, 100), uid("b", 10, 10), uid("c", 50, 10)],
                1,
                "a",
            ),
            (
                vec![uid("a", 0, 10), uid("b", 100, 10), uid("c", 95, 10)],
                2,
                "b",
            ),
            (vec![uid("a", 0, 10), uid("b", 605, 1)], 1, "flying"),
            (vec![uid("a", 0, 10), uid("b", 509, 5)], 1, "held"),
        ] {
            let err = r.stage_batch(batch).unwrap_err();
            assert_eq!(err.index, culprit, "{err}");
            assert!(
                matches!(&err.error, RegistryError::Conflict { other: o, .. } if o == other),
                "{err}"
            );
            assert_eq!(r.pending.len(), 1, "a refused batch stages nothing");
        }
        let staged = r
            .stage_batch(vec![uid("a", 0, 10), uid("held", 500, 5), uid("b", 10, 10)])
            .unwrap();
        assert_eq!(staged.len(), 3);
        assert!(staged[1].0.is_some(), "held is replaced");
        assert_eq!(r.pending.len(), 4);
    }

    #[test]
    fn cgroup_matching_is_component_wise_and_longest_wins() {
        let r = registry(&[
            ("a", r#"{"cgroup":"/a"}"#),
            ("ab", r#"{"cgroup":"/a/b"}"#),
            ("x", r#"{"cgroup":"/x.slice/c1.scope"}"#),
        ]);
        let table = [
            ("/a", Some("a")),
            ("/a/c", Some("a")),
            ("/a/b", Some("ab")),
            ("/a/b/c/d", Some("ab")),
            ("/a/bc", Some("a")),
            ("/ab", None),
            ("/", None),
            ("/x.slice/c1.scope/init", Some("x")),
            ("/x.slice/c1.scopeX", None),
            ("/x.slice", None),
        ];
        for (path, want) in table {
            let got = name_of(&r, r.identify(&facts(0, Some(path)))).ok();
            assert_eq!(got.as_deref(), want, "{path}");
        }
    }

    #[test]
    fn uid_ranges() {
        let r = registry(&[
            ("a", r#"{"uid_range":[100000,65536]}"#),
            ("b", r#"{"uid_range":[165536,65536]}"#),
        ]);
        for (uid, want) in [
            (99999, None),
            (100000, Some("a")),
            (165535, Some("a")),
            (165536, Some("b")),
            (231071, Some("b")),
            (231072, None),
            (0, None),
        ] {
            let got = name_of(&r, r.identify(&facts(uid, None))).ok();
            assert_eq!(got.as_deref(), want, "{uid}");
        }
    }

    #[test]
    fn conflicts_are_refused() {
        let mut r = registry(&[
            ("a", r#"{"uid_range":[100000,1000]}"#),
            ("c", r#"{"cgroup":"/c"}"#),
        ]);
        for (name, rule) in [
            ("b", r#"{"uid_range":[100999,5]}"#),
            ("b", r#"{"uid_range":[99000,1001]}"#),
            ("b", r#"{"uid_range":[100500,1]}"#),
            ("b", r#"{"uid_range":[0,4294967295]}"#),
            ("b", r#"{"cgroup":"/c"}"#),
        ] {
            assert!(
                matches!(
                    r.insert(spec(name, rule)),
                    Err(RegistryError::Conflict { .. })
                ),
                "{rule}"
            );
        }
        assert_eq!(
            r.insert(spec("a", r#"{"uid_range":[1,1]}"#)),
            Err(RegistryError::NameTaken("a".into()))
        );
        // Adjacent ranges and nested cgroups are not conflicts.
        r.insert(spec("b", r#"{"uid_range":[99000,1000]}"#))
            .unwrap();
        r.insert(spec("d", r#"{"uid_range":[101000,1]}"#)).unwrap();
        r.insert(spec("e", r#"{"cgroup":"/c/d"}"#)).unwrap();
    }

    #[test]
    fn different_kinds_naming_different_instances_is_ambiguous() {
        let r = registry(&[
            ("a", r#"{"uid_range":[100000,1000]}"#),
            ("c", r#"{"cgroup":"/c"}"#),
        ]);
        let refusal = r.identify(&facts(100001, Some("/c/x"))).unwrap_err();
        assert!(matches!(refusal, Refusal::Ambiguous { .. }), "{refusal:?}");
        assert!(refusal.to_string().contains("\"a\"") && refusal.to_string().contains("\"c\""));
        // The guest is told neither name.
        let told = refusal.guest_message();
        assert!(told.contains("pid 42 (uid 100001)"), "{told}");
        assert!(
            !told.contains('"') && !told.contains(" a ") && !told.contains(" c "),
            "{told}"
        );
        assert_eq!(
            name_of(&r, r.identify(&facts(100001, Some("/other")))).unwrap(),
            "a"
        );
    }

    #[test]
    fn missing_proc_facts_fail_closed() {
        let r = registry(&[("a", r#"{"uid_range":[0,1]}"#), ("c", r#"{"cgroup":"/c"}"#)]);
        let mut f = facts(0, None);
        f.proc_error = Some("the process exited");
        assert!(matches!(r.identify(&f), Err(Refusal::Unverified { .. })));
        let mut f = facts(0, None);
        f.gathered = RuleKinds::empty();
        assert!(matches!(r.identify(&f), Err(Refusal::Unverified { .. })));
        // With only uid rules registered, /proc is never needed.
        let r = registry(&[("a", r#"{"uid_range":[0,1]}"#)]);
        assert_eq!(name_of(&r, r.identify(&f)).unwrap(), "a");
    }

    #[test]
    fn removal_frees_name_and_rule() {
        let mut r = registry(&[
            ("a", r#"{"uid_range":[10,10]}"#),
            ("c", r#"{"cgroup":"/c"}"#),
        ]);
        assert!(r.remove("a").is_some());
        assert!(r.remove("a").is_none());
        assert!(r.remove("c").is_some());
        assert_eq!(r.kinds_in_use(), RuleKinds::empty());
        r.insert(spec("a", r#"{"uid_range":[10,10]}"#)).unwrap();
        r.insert(spec("c", r#"{"cgroup":"/c"}"#)).unwrap();
    }

    #[test]
    fn changes_in_flight_are_checked_against_each_other_but_not_served() {
        let mut r = registry(&[("a", r#"{"uid_range":[100,10]}"#)]);
        let b = r
            .stage_insert(spec("b", r#"{"uid_range":[200,10]}"#))
            .unwrap();
        // Not served before it is committed, but its name and rule are taken.
        assert!(r.identify(&facts(200, None)).is_err());
        assert_eq!(
            r.stage_insert(spec("b", r#"{"uid_range":[300,1]}"#)),
            Err(RegistryError::NameTaken("b".into()))
        );
        assert!(matches!(
            r.stage_insert(spec("c", r#"{"uid_range":[205,100]}"#)),
            Err(RegistryError::Conflict { .. })
        ));
        // A removal in flight still serves the instance and still holds its
        // rule; its name is free for the next change to build on.
        assert!(r.stage_remove("a"));
        assert!(!r.stage_remove("a"));
        assert!(r.latest("a").is_none());
        assert_eq!(name_of(&r, r.identify(&facts(105, None))).unwrap(), "a");
        assert!(matches!(
            r.stage_insert(spec("d", r#"{"uid_range":[100,1]}"#)),
            Err(RegistryError::Conflict { .. })
        ));
        // Committed in order: then served.
        r.commit(&b);
        assert!(r.commit_remove("a").is_some());
        assert_eq!(name_of(&r, r.identify(&facts(200, None))).unwrap(), "b");
        assert!(r.identify(&facts(105, None)).is_err());
        r.stage_insert(spec("d", r#"{"uid_range":[100,1]}"#))
            .unwrap();
        // Abandoned: nothing of it remains.
        r.abandon_pending();
        assert!(r.latest("d").is_none());
        r.stage_insert(spec("d", r#"{"uid_range":[100,1]}"#))
            .unwrap();
    }

    #[test]
    fn uid_ranges_overlapping_several_registered_ones_conflict() {
        let mut r = registry(&[
            ("a", r#"{"uid_range":[100,10]}"#),
            ("b", r#"{"uid_range":[200,10]}"#),
        ]);
        // Widening `b` skips `b` itself but must still find `a`, below it: a
        // check that stopped at the first neighbour would miss it.
        assert!(matches!(
            r.stage_replace("b", spec("b", r#"{"uid_range":[0,4294967295]}"#)),
            Err(RegistryError::Conflict { other, .. }) if other == "a"
        ));
        r.stage_replace("b", spec("b", r#"{"uid_range":[110,90]}"#))
            .unwrap();
    }

    #[test]
    fn pid_rule_in_own_namespace_is_refused() {
        let mut r = Registry::new("host".into());
        let own = std::process::id();
        let err = r
            .insert(spec("p", &format!(r#"{{"pid":{own}}}"#)))
            .unwrap_err();
        assert!(err.to_string().contains("own pid namespace"), "{err}");
    }
}
