//! What each socket's paths answer: `guest` is the API containers see,
//! `admin` the host orchestrator's.
//!
//! Both report what a request changed as [`Change`]s, which the server makes
//! durable (and, with the events issue, announces) before the answer leaves.

pub mod admin;
pub mod guest;

use crate::events::Event;
use crate::instance::GuestState;
use crate::registry::{Instance, InstanceId};

/// What an answered request changed.
#[derive(Debug)]
pub enum Change {
    /// The host registered or changed the instance (description or state);
    /// `events` says what changed, in order.
    Saved {
        /// The instance.
        id: InstanceId,
        /// What changed, for subscribers.
        events: Vec<Event>,
    },
    /// The guest set its own state (`PATCH /1.0`) to a different value.
    GuestState(InstanceId, GuestState),
    /// The host unregistered the instance; its guest connections end.
    Removed {
        /// Its key, until now.
        id: InstanceId,
        /// Its name, which names its state file.
        name: String,
        /// What it was, to find the connections it claimed.
        instance: Box<Instance>,
    },
}
