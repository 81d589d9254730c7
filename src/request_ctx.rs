//! What a connection and `dispatch` share, below both so that neither
//! imports the other for it: which socket a connection came from (`Side`),
//! how its callers are identified (`Identification`, `KnownCaller`), what
//! the server lends for one drive of a connection (`Ctx`, with the
//! `Buffers` it borrows), and what a request can turn into that outlives it
//! (a `Subscription`, a `ChangeWait`).
//!
//! Owns these values, and applying a listener's rule to a caller (with
//! the finding remembered while the registry is unchanged). How a
//! connection uses them is `conn`'s business; what a request calls for,
//! `dispatch`'s; matching facts to an instance, `registry`'s; the server
//! builds the context and the listeners (`server`).

use std::time::Instant;

use crate::api::Change;
use crate::api::admin::ServerFacts;
use crate::api::guest::Caller;
use crate::api::identity::Mint;
use crate::events::TypeFilter;
use crate::http::request::Request;
use crate::identity::{CgroupPaths, PeerFacts};
use crate::issuer::Issuer;
use crate::limits::Tunables;
use crate::metrics::Metrics;
use crate::registry::{InstanceId, Registry};

/// Which socket a connection came from, which decides its API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A container's process on the guest socket.
    Guest,
    /// The host's orchestrator on the admin socket; `authorized` if its uid
    /// is root or an `--admin-uid`.
    Admin {
        /// Whether the peer may use the admin API at all.
        authorized: bool,
    },
}

/// How the callers of a listener's connections are identified: fixed per
/// listener, carried by each of its connections and applied by `dispatch`
/// (once per request, [`KnownCaller::caller`]) and at admission (to count
/// the connection under its instance).
///
/// A listener that belongs to one instance (a VM's hybrid-vsock socket, a
/// container's own socket) is a new variant naming that instance, with its
/// arm in [`Identification::identify`]; a connection and `dispatch` only
/// carry the value, so neither changes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identification {
    /// By each connection's peer credentials (and the facts they lead to),
    /// matched against every instance's rules: the shared guest socket. On
    /// the admin socket the same credentials decide who is authorized.
    PeerCredentials,
}

impl Identification {
    /// Who the caller with `peer` facts is, as the registry stands now.
    pub fn identify(self, peer: &PeerFacts, registry: &Registry) -> Caller {
        match self {
            Identification::PeerCredentials => registry.identify(peer),
        }
    }
}

/// Who a connection's callers are: how its listener identifies them, and
/// the instance its caller was last found to be with the registry
/// generation that finding holds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownCaller {
    /// The listener's way of identifying its callers.
    by: Identification,
    /// The last finding that was an instance, and at which generation.
    found: Option<(u64, InstanceId)>,
}

impl KnownCaller {
    /// A connection's, before its first request: nothing found yet.
    pub fn new(by: Identification) -> KnownCaller {
        KnownCaller { by, found: None }
    }

    /// Who the guest is: the remembered instance while the registry is at
    /// the generation it was found at, else the answer now (remembered if
    /// it is an instance). A refusal is never remembered: the next request
    /// asks again.
    pub fn caller(&mut self, peer: &PeerFacts, registry: &Registry) -> Caller {
        let generation = registry.generation();
        if let Some((at, id)) = self.found
            && at == generation
        {
            return Ok(id);
        }
        let caller = self.by.identify(peer, registry);
        self.found = caller.as_ref().ok().map(|&id| (generation, id));
        caller
    }

    /// The remembered instance, if the registry is still at the generation
    /// it was found at; asks nothing.
    pub fn remembered(&self, registry: &Registry) -> Option<InstanceId> {
        self.found
            .filter(|&(at, _)| at == registry.generation())
            .map(|(_, id)| id)
    }
}

/// What answering needs from the server.
pub struct Ctx<'a> {
    /// The instances.
    pub registry: &'a mut Registry,
    /// Where answered requests report their changes.
    pub changes: &'a mut Vec<Change>,
    /// What the admin `GET /1.0` tells.
    pub facts: &'a ServerFacts,
    /// The operator's limits.
    pub limits: &'a Tunables,
    /// The counters of `GET /1.0/metrics`.
    pub metrics: &'a mut Metrics,
    /// Open subscribers, for the metrics.
    pub subscribers: usize,
    /// The buffer every read goes through
    /// ([`READ_CHUNK_BYTES`](crate::limits::READ_CHUNK_BYTES)).
    pub scratch: &'a mut [u8],
    /// cgroup ids proved to name cgroup paths.
    pub cgroups: &'a mut CgroupPaths,
    /// Buffers a connection without its own borrows while it is driven.
    pub buffers: &'a mut Buffers,
    /// The server is stopping: every answer closes its connection.
    pub stopping: bool,
    /// The server has handed the state over to a successor (SIGHUP): it
    /// answers what reads the state and refuses what would change it.
    pub handing_over: bool,
    /// When a refusal was last logged (one line a second at most).
    pub refusal_logged: &'a mut Option<Instant>,
    /// The identity issuer: its JWKS, and its keys for admin rotation.
    pub issuer: &'a mut Issuer,
    /// Where answered requests report the tokens to sign (at most one per
    /// drive: the connection's answer is held until it is signed).
    pub mints: &'a mut Vec<Mint>,
}

/// Whose events a subscriber receives, and which types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The instance; `None` on the admin socket (every instance).
    pub instance: Option<InstanceId>,
    /// The `?type=` filter.
    pub filter: TypeFilter,
}

/// A guest request held until its answer's tag moves (`wait_for_change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeWait {
    /// The caller's instance.
    pub instance: InstanceId,
    /// The path asked for (without its query).
    pub path: String,
    /// The tag the answer must move away from.
    pub etag: String,
    /// When to answer the unchanged value anyway.
    pub deadline: Instant,
    /// The request was `HEAD`.
    pub head_only: bool,
    /// The request asked to keep the connection.
    pub keep_alive: bool,
    /// The request was HTTP/1.0.
    pub http10: bool,
}

impl ChangeWait {
    /// Holds `req` of instance `id` until its answer's tag moves from
    /// `etag`, or `deadline` passes.
    pub fn new(req: &Request<'_>, id: InstanceId, etag: String, deadline: Instant) -> ChangeWait {
        ChangeWait {
            instance: id,
            path: req.path.to_owned(),
            etag,
            deadline,
            head_only: req.method == "HEAD",
            keep_alive: req.keep_alive,
            http10: req.http10,
        }
    }
}

/// The buffers a connection borrows while it is driven.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Borrowed as `input`.
    pub input: Vec<u8>,
    /// Borrowed as `output`.
    pub output: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{InstanceSpec, RuleKinds};

    fn uid_range(name: &str, first: u32) -> InstanceSpec {
        serde_json::from_str(&format!(
            r#"{{"name":"{name}","match":{{"uid_range":[{first},10]}}}}"#
        ))
        .unwrap()
    }

    fn facts(uid: u32) -> PeerFacts {
        PeerFacts {
            pid: 42,
            uid,
            gid: uid,
            gathered: RuleKinds::empty(),
            cgroup: None,
            pidns: None,
            proc_error: None,
        }
    }

    #[test]
    fn a_caller_is_remembered_until_the_registry_changes() {
        let mut registry = Registry::new("host".into());
        let a = registry.insert(uid_range("a", 1000)).unwrap();
        let mut known = KnownCaller::new(Identification::PeerCredentials);
        assert_eq!(known.caller(&facts(1000), &registry), Ok(a));
        // Remembered: no lookup while the registry is unchanged.
        assert_eq!(known.caller(&facts(5000), &registry), Ok(a));
        registry.remove("a");
        assert!(known.caller(&facts(1000), &registry).is_err());
        // A refusal is not remembered.
        let b = registry.insert(uid_range("b", 1000)).unwrap();
        assert_eq!(known.caller(&facts(1000), &registry), Ok(b));
        assert!(known.caller(&facts(5000), &registry).is_ok());
        registry.insert(uid_range("c", 2000)).unwrap();
        assert!(known.caller(&facts(5000), &registry).is_err());
    }
}
