//! What each socket's paths answer: `guest` is the API containers see,
//! `admin` the host orchestrator's.
//!
//! Both report what a request changed as [`Change`]s: a new version of an
//! instance staged in the registry (built on the newest version, checked
//! against every rule in flight), or a removal. Neither applies anything:
//! the server makes a change durable, and only then serves it, announces it
//! and lets its answer leave.

pub mod admin;
pub mod guest;
pub mod identity;

use std::rc::Rc;

use crate::events::Event;
use crate::issuer::KeyRing;
use crate::registry::Staged;

/// What an answered request changed: made durable by the server, and only
/// then served to guests and announced (docs/protocol.md section 7).
#[derive(Debug)]
pub enum Change {
    /// A new version of an instance: registered, replaced or changed by
    /// the host, or its state set by its guest. `events` says what changed,
    /// in order.
    Put {
        /// The version to make durable, then serve.
        staged: Rc<Staged>,
        /// What changed, for subscribers.
        events: Vec<Event>,
    },
    /// Many instances registered or replaced at once (a batch call): made
    /// durable together, all or nothing, then served in order.
    Batch(Vec<Change>),
    /// The host unregistered the instance; once that is durable its guest
    /// connections end.
    Remove {
        /// Its name, which names its state file.
        name: String,
    },
    /// A new set of identity keys (a rotation, or retired keys dropped):
    /// signs, is published and announced once durable (section 9).
    Keys {
        /// The keys to make durable, then put in force.
        staged: Rc<KeyRing>,
        /// What changed, for the admin stream.
        events: Vec<Event>,
    },
}
