//! What a connection and `dispatch` share, below both so that neither
//! imports the other for it: which socket a connection came from (`Side`),
//! what the server lends for one drive of a connection (`Ctx`, with the
//! `Buffers` it borrows), and what a request can turn into that outlives it
//! (a `Subscription`, a `ChangeWait`).
//!
//! Owns these values and their docs only. How a connection uses them is
//! `conn`'s business; what a request calls for, `dispatch`'s; the server
//! builds the context (`server`).

use std::time::Instant;

use crate::api::Change;
use crate::api::admin::ServerFacts;
use crate::api::identity::Mint;
use crate::events::TypeFilter;
use crate::http::request::Request;
use crate::identity::CgroupPaths;
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
