//! Subscribers and fan-out: delivering each event to the subscribers that
//! want it, pinging websockets, and answering the waits whose answer moved.

use super::*;

impl Server {
    /// Pings every websocket subscriber; drops those silent for three
    /// intervals.
    pub(super) fn ping_subscribers(&mut self, now: Instant) {
        let interval = self.limits.ping_interval;
        self.next_ping = now + interval;
        let keys: Vec<usize> = self
            .subscribers
            .values()
            .flatten()
            .chain(&self.admin_subscribers)
            .copied()
            .collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key)
                && !conn.ping(now, interval * SILENT_PINGS)
            {
                self.metrics.ping_timeouts += 1;
                log::info(format_args!(
                    "dropping a websocket subscriber (pid {}) silent for {:?}",
                    conn.peer.pid,
                    interval * SILENT_PINGS
                ));
                self.finished.push(key);
            }
        }
    }

    /// Delivers `events` of instance `id` (named `name`) to its guest
    /// subscribers (guest-visible ones only) and to the admin stream.
    pub(super) fn publish(&mut self, id: InstanceId, name: &str, events: &[Event]) {
        self.publish_to(Some(id), name, events);
    }

    /// Delivers `events` of the instance named `name`: to the guest
    /// subscribers of `id` (guest-visible events only; none once the
    /// instance is gone) and to the admin stream. The time the whole
    /// fan-out took is kept for the metrics.
    pub(super) fn publish_to(&mut self, id: Option<InstanceId>, name: &str, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let started = Instant::now();
        self.metrics.events_published += events.len() as u64;
        let timestamp = events::timestamp_now();
        let guests = id
            .and_then(|id| self.subscribers.get(&id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut frames = 0;
        for event in events {
            let mut send = |keys: &[usize], instance: Option<&str>| {
                let json = event.to_json(&timestamp, instance);
                frames += keys.len();
                deliver(
                    &mut self.conns,
                    keys,
                    event,
                    &json,
                    &mut self.finished,
                    &mut self.metrics,
                    &mut self.refusal_logged,
                );
            };
            if event.guest_visible() && !guests.is_empty() {
                send(guests, None);
            }
            if !self.admin_subscribers.is_empty() {
                send(&self.admin_subscribers, Some(name));
            }
        }
        self.metrics.fanout(frames, started.elapsed().as_secs_f64());
    }

    /// Answers the guest requests of instance `id` waiting for a change
    /// whose answer moved.
    pub(super) fn recheck_waiters(&mut self, id: InstanceId) {
        let Some(keys) = self.waiters.get_mut(&id) else {
            return;
        };
        let conns = &mut self.conns;
        let registry = &mut self.registry;
        let ready = &mut self.ready;
        keys.retain(|&key| {
            let Some(conn) = conns.get_mut(key) else {
                return false;
            };
            if conn.recheck_wait(registry, false) {
                conn.listed = None;
                ready.push(key);
                false
            } else {
                true
            }
        });
    }
}

/// Queues one event on each of `keys` that wants it; subscribers cut off
/// for being too slow are marked finished.
fn deliver(
    conns: &mut Slab<Conn>,
    keys: &[usize],
    event: &Event,
    json: &[u8],
    finished: &mut Vec<usize>,
    metrics: &mut Metrics,
    logged: &mut Option<Instant>,
) {
    for &key in keys {
        let Some(conn) = conns.get_mut(key) else {
            continue;
        };
        let Some(subscription) = conn.subscription() else {
            continue;
        };
        if !subscription.filter.wants(event) {
            continue;
        }
        metrics.events_delivered += 1;
        if !conn.push_event(json) {
            metrics.slow_consumers_cut += 1;
            log_throttled(
                logged,
                format_args!(
                    "cut off a slow event subscriber (pid {}, uid {}): it stopped reading",
                    conn.peer.pid, conn.peer.uid
                ),
            );
            finished.push(key);
        }
    }
}
