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
use crate::registry::{InstanceId, Refusal, Registry};

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
/// container's own socket) names that instance ([`Identification::Own`]);
/// a connection and `dispatch` only carry the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identification {
    /// By each connection's peer credentials (and the facts they lead to),
    /// matched against every instance's rules: the shared guest socket. On
    /// the admin socket the same credentials decide who is authorized.
    PeerCredentials,
    /// A listener of one instance's own: its callers are that instance's,
    /// if they may use it at all (`by`).
    Own {
        /// The listener's key among the server's listeners (two listeners
        /// of one instance are told apart by it).
        listener: usize,
        /// The instance.
        id: InstanceId,
        /// Its registration's serial: a key reused by a later registration
        /// is not this instance.
        serial: u64,
        /// Who may use the listener.
        by: OwnListener,
    },
    /// A connection on a VM's listener (listener `listener`) from someone
    /// other than its VMM's user: every request is refused (`403`), as a
    /// stranger's on the shared socket is, after it is read.
    NotTheVmm {
        /// The listener's key.
        listener: usize,
    },
}

/// Who may use a listener of an instance's own, and how its callers are
/// told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnListener {
    /// A VM's hybrid-vsock socket: only the VMM's user may connect (checked
    /// at admission, from the connection's peer credentials); each
    /// connection then starts with the agent's preamble, which says who
    /// called inside the guest (`preamble::Preamble`).
    Vsock {
        /// The uid the VMM runs as.
        vmm_uid: u32,
    },
    /// A container's own socket: its callers' peer credentials must prove
    /// them this instance's, as on the shared socket.
    SocketDir,
}

impl Identification {
    /// Who the caller with `peer` facts is, as the registry stands now.
    pub fn identify(self, peer: &PeerFacts, registry: &Registry) -> Caller {
        let (pid, uid) = (peer.pid, peer.uid);
        match self {
            Identification::PeerCredentials => registry.identify(peer),
            Identification::NotTheVmm { .. } => Err(Refusal::WrongListener {
                pid,
                uid,
                reason: "only the VMM's user may connect to a VM's listener",
            }),
            Identification::Own { id, serial, by, .. } => {
                if registry.get(id).is_none_or(|i| i.serial != serial) {
                    return Err(Refusal::ListenerGone { pid, uid });
                }
                match by {
                    // Admission let only the VMM's user in.
                    OwnListener::Vsock { .. } => Ok(id),
                    OwnListener::SocketDir => match registry.identify(peer) {
                        Ok(found) if found == id => Ok(id),
                        Ok(_) | Err(Refusal::Ambiguous { .. }) => Err(Refusal::WrongListener {
                            pid,
                            uid,
                            reason: "the caller is another instance's",
                        }),
                        Err(refusal) => Err(refusal),
                    },
                }
            }
        }
    }

    /// Whether its connections start with the agent's preamble (a VM's
    /// listener's, whoever connected).
    pub fn takes_preamble(self) -> bool {
        matches!(
            self,
            Identification::Own {
                by: OwnListener::Vsock { .. },
                ..
            } | Identification::NotTheVmm { .. }
        )
    }

    /// The instance (key and serial) a listener of its own names.
    pub fn own_instance(self) -> Option<(InstanceId, u64)> {
        match self {
            Identification::PeerCredentials | Identification::NotTheVmm { .. } => None,
            Identification::Own { id, serial, .. } => Some((id, serial)),
        }
    }

    /// The key of the listener of an instance's own its connections came
    /// through, if they did.
    pub fn own_listener(self) -> Option<usize> {
        match self {
            Identification::PeerCredentials => None,
            Identification::Own { listener, .. } | Identification::NotTheVmm { listener } => {
                Some(listener)
            }
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

    /// How its listener identifies its callers.
    pub fn by(&self) -> Identification {
        self.by
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
