//! Durability holds: a change goes to the writer thread (`store`), its answer
//! is held, and only once the writer reports it on disk is it served,
//! announced and answered; a failed write abandons every change in flight.

use super::*;

impl Server {
    /// Sends one change to the writer; returns the sequence number of its
    /// write. Nothing of it is served or announced until that is durable
    /// ([`Server::commit`]).
    pub(super) fn apply(&mut self, change: Change) -> u64 {
        fn job(change: &Change) -> Job {
            match change {
                Change::Put { staged, .. } => Job::Write {
                    name: staged.spec.name.clone(),
                    bytes: StoredInstance::encode(&staged.spec, staged.state, staged.pidns),
                },
                Change::Remove { name } => Job::Remove { name: name.clone() },
                // One job, so that the writer makes it one transaction.
                Change::Batch(changes) => Job::Batch(changes.iter().map(job).collect()),
                Change::Keys { staged, .. } => Job::Keys(staged.encode()),
            }
        }
        let seq = self.writer.submit(job(&change));
        self.in_flight.push_back((seq, change));
        seq
    }

    /// A change is durable: serve it, announce it, and close what it ends.
    pub(super) fn commit(&mut self, change: Change) {
        match change {
            Change::Batch(changes) => {
                for change in changes {
                    self.commit(change);
                }
            }
            Change::Put { staged, events } => {
                let id = self.registry.commit(&staged);
                self.publish(id, &staged.spec.name, &events);
                self.recheck_waiters(id);
            }
            Change::Remove { name } => {
                let Some((id, instance)) = self.registry.commit_remove(&name) else {
                    return;
                };
                self.close_guests_of(&instance);
                // Its subscribers and waiters go with it: the id may be
                // reused by the next registration.
                let subs = self.subscribers.remove(&id).unwrap_or_default();
                self.subscriber_count = self.subscriber_count.saturating_sub(subs.len());
                let waits = self.waiters.remove(&id).unwrap_or_default();
                for key in subs.into_iter().chain(waits) {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.listed = None;
                        conn.cut_off(close_code::GOING_AWAY);
                    }
                    self.finished.push(key);
                }
                self.publish_to(None, &name, &[Event::InstanceRemoved]);
            }
            Change::Keys { staged, events } => {
                if self.issuer.commit(&staged) {
                    self.write_jwks_file();
                }
                for event in &events {
                    if let Event::IdentityKey { action, kid, .. } = event {
                        log::info(format_args!("identity key {kid} {action}"));
                    }
                }
                // The keys' events name no instance.
                self.publish_to(None, "", &events);
                self.release_deferred_mints();
            }
        }
    }

    /// Queues the current version of instance `id` for writing.
    pub(super) fn save(&mut self, id: usize) -> Option<u64> {
        let instance = self.registry.get(id)?;
        let bytes = StoredInstance::encode(&instance.spec, instance.state, instance.pidns);
        Some(self.writer.submit(Job::Write {
            name: instance.spec.name.clone(),
            bytes,
        }))
    }

    /// Ends every guest connection the removed instance claimed.
    pub(super) fn close_guests_of(&mut self, instance: &Instance) {
        for (key, conn) in self.conns.iter() {
            if conn.side == Side::Guest && instance.claims(&conn.peer) {
                self.finished.push(key);
            }
        }
    }

    /// Takes the writer's reports: serves the changes they make durable
    /// and lets their answers go; or, for a failed write, abandons every
    /// change in flight and fails their answers, leaving memory as the disk
    /// is (the orchestrator may retry).
    ///
    /// Answers released here are driven at once: the connection may have
    /// more pipelined requests behind them.
    pub(super) fn take_commits(&mut self) {
        while let Ok(Committed { seq, epoch, error }) = self.committed.try_recv() {
            if let Some(error) = error {
                // A report of an epoch already abandoned changes nothing.
                if epoch == self.writer.epoch() {
                    self.abandon_in_flight(&error);
                }
                continue;
            }
            while self.in_flight.front().is_some_and(|&(s, _)| s <= seq) {
                if let Some((_, change)) = self.in_flight.pop_front() {
                    self.commit(change);
                }
            }
            let ready = self.waiting.partition_point(|&(s, _)| s <= seq);
            for (s, key) in self.waiting.drain(..ready).collect::<Vec<_>>() {
                if let Some(conn) = self.conns.get_mut(key)
                    && conn.holds(s)
                {
                    conn.release_hold();
                    self.drive(key);
                }
            }
        }
    }

    /// A write failed: every change in flight was built on it or batched
    /// with it, so none of them is made, and their answers say so.
    pub(super) fn abandon_in_flight(&mut self, error: &str) {
        self.writer.abandon();
        self.registry.abandon_pending();
        self.issuer.abandon_pending();
        self.release_deferred_mints();
        self.in_flight.clear();
        for (s, key) in std::mem::take(&mut self.waiting) {
            if let Some(conn) = self.conns.get_mut(key)
                && conn.holds(s)
            {
                conn.fail_hold(error);
                self.drive(key);
            }
        }
    }
}
