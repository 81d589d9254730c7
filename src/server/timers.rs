//! Timers: one per connection, no later than its current deadline, and what
//! a deadline that passed calls for (`408`, close, or a wait answered).

use super::*;

impl Server {
    /// Acts on the connection deadlines that passed: slow requests get
    /// `408`, idle connections close, waits are answered.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.timer != Some(at) {
                continue;
            }
            conn.timer = None;
            let was_waiting = matches!(conn.state(), ConnState::Waiting(_));
            match conn.expire(now, &self.limits, &mut self.registry) {
                Expired::Nothing | Expired::Resumed => self.ready.push(key),
                Expired::Answered => {
                    if was_waiting && let Some(Listed::Waiter(id)) = conn.listed.take() {
                        unlist(self.waiters.get_mut(&id), key);
                    }
                    if !was_waiting && let Some(label) = NotServed::TooSlow.metrics_label() {
                        self.metrics.refused(label);
                    }
                    self.ready.push(key);
                }
                Expired::Close => self.finished.push(key),
            }
        }
    }

    /// Keeps one timer per connection, no later than its current deadline.
    /// A deadline that moved later (every request moves the idle deadline)
    /// keeps the earlier timer: when it fires, `expire` finds nothing due and
    /// the connection is re-armed at its new deadline. That costs one
    /// spurious wake-up per idle period instead of two tree updates per
    /// request.
    pub(super) fn set_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = conn.deadline(&self.limits);
        match (conn.timer, deadline) {
            (Some(old), Some(new)) if old <= new => return,
            (Some(_), None) => return,
            (None, None) => return,
            (Some(old), Some(_)) => {
                self.timers.remove(&(old, key));
            }
            (None, Some(_)) => {}
        }
        conn.timer = deadline;
        if let Some(at) = deadline {
            self.timers.insert((at, key));
        }
    }
}
