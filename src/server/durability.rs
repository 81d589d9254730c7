//! Durability holds: a change goes to the writer thread (`store`), its answer
//! is held, and only once the writer reports it on disk is it served,
//! announced and answered; a failed write abandons every change in flight.

use super::*;
use crate::instance::ListenerSpec;

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
                let before = self
                    .registry
                    .find(&staged.spec.name)
                    .and_then(|id| self.registry.get(id))
                    .map(|i| i.spec.listeners.clone());
                let id = self.registry.commit(&staged);
                self.reconcile_own_listeners(id, before);
                self.publish(id, &staged.spec.name, &events);
                self.recheck_waiters(id);
            }
            Change::Remove { name } => {
                let Some((id, instance)) = self.registry.commit_remove(&name) else {
                    return;
                };
                for listener in &instance.spec.listeners {
                    self.close_own_listener(&listener.socket_path());
                }
                self.close_guests_of(id, &instance);
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

    /// Ends every guest connection the removed instance `id` claimed, and
    /// those accepted on its own listeners.
    pub(super) fn close_guests_of(&mut self, id: InstanceId, instance: &Instance) {
        for (key, conn) in self.conns.iter() {
            if conn.side == Side::Guest
                && (instance.claims(&conn.peer)
                    || conn.by().own_instance() == Some((id, instance.serial)))
            {
                self.finished.push(key);
            }
        }
    }

    /// Makes instance `id`'s own listeners what its registered version
    /// says, now that it is durable: `before`, its listeners before this
    /// change (`None` for a new instance). A socket it keeps unchanged
    /// stays open (its backlog and inode with it) and names it anew; one
    /// whose rule changed (another VMM uid) is closed, ending what was
    /// accepted under the old rule, and made again as the new one says.
    fn reconcile_own_listeners(&mut self, id: InstanceId, before: Option<Vec<ListenerSpec>>) {
        let Some(instance) = self.registry.get(id) else {
            return;
        };
        let (serial, now) = (instance.serial, instance.spec.listeners.clone());
        let old = before.unwrap_or_default();
        for gone in old.iter().filter(|o| !now.contains(o)) {
            self.close_own_listener(&gone.socket_path());
        }
        for spec in &now {
            let path = spec.socket_path();
            if old.contains(spec) && self.listeners.own_at(&path).is_some() {
                self.listeners.retarget_own(&path, id, serial);
            } else {
                self.open_own_listener(id, serial, spec, None);
            }
        }
    }

    /// Opens one listener of instance `id`'s own (registration `serial`):
    /// `adopted`, the socket a predecessor passed for it, if any. A failure
    /// is logged and counted; the instance stays registered without it.
    pub(super) fn open_own_listener(
        &mut self,
        id: InstanceId,
        serial: u64,
        spec: &ListenerSpec,
        adopted: Option<std::os::fd::OwnedFd>,
    ) {
        let name = self
            .registry
            .get(id)
            .map(|i| i.spec.name.clone())
            .unwrap_or_default();
        let path = spec.socket_path();
        match self
            .listeners
            .add_own(spec, id, serial, adopted, self.poll.registry())
        {
            Ok(_) => log::info(format_args!(
                "instance {name:?}: listening on {}",
                path.display()
            )),
            Err(e) => {
                log::error(format_args!(
                    "instance {name:?}: cannot open its listener: {e}; trying again every second"
                ));
                if !self.listeners_to_retry.iter().any(|(_, p)| *p == path) {
                    self.listeners_to_retry.push((name, path));
                }
            }
        }
    }

    /// Closes the listener of an instance's own at `path`, removes its
    /// file and ends the connections accepted on it.
    pub(super) fn close_own_listener(&mut self, path: &std::path::Path) {
        if let Some(key) = self.listeners.remove_own(path, self.poll.registry()) {
            self.close_accepted_on(key);
            log::info(format_args!("closed the listener {}", path.display()));
        }
    }

    /// Opens again the listeners of instances' own whose file was deleted
    /// or replaced by hand: the old socket, which nobody can reach any
    /// more, is closed (its accepted connections go on) and a new one bound
    /// at the path, if nothing else is there now. And tries again those
    /// that could not be opened (something in the way, or, in a SIGHUP
    /// successor, the predecessor still listening on a socket registered
    /// after it passed its sockets), quietly, while their instance still
    /// names them.
    pub(super) fn reopen_gone_listeners(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        // At most a turn's worth of binds; the rest wait their turn.
        let due = self.listeners_to_retry.len().min(LISTENER_CHECKS_PER_TURN);
        let retry: Vec<_> = self.listeners_to_retry.drain(..due).collect();
        for (name, path) in retry {
            let wanted = self.registry.find(&name).and_then(|id| {
                let instance = self.registry.get(id)?;
                let spec = instance
                    .spec
                    .listeners
                    .iter()
                    .find(|l| l.socket_path() == path)?;
                Some((id, instance.serial, spec.clone()))
            });
            let Some((id, serial, spec)) = wanted else {
                continue;
            };
            if self.listeners.own_at(&path).is_some() {
                continue;
            }
            match self
                .listeners
                .add_own(&spec, id, serial, None, self.poll.registry())
            {
                Ok(_) => log::info(format_args!(
                    "instance {name:?}: listening on {} at last",
                    path.display()
                )),
                Err(_) => self.listeners_to_retry.push((name, path)),
            }
        }
        for (spec, id, serial) in self.listeners.files_gone(LISTENER_CHECKS_PER_TURN) {
            let path = spec.socket_path();
            log::warn(format_args!(
                "{} is no longer the socket guestsock listens on (deleted or replaced); binding it again",
                path.display()
            ));
            self.listeners.drop_own(&path, self.poll.registry());
            self.open_own_listener(id, serial, &spec, None);
        }
    }

    /// Ends the guest connections accepted on listener `key`.
    fn close_accepted_on(&mut self, key: usize) {
        for (conn_key, conn) in self.conns.iter() {
            if conn.by().own_listener() == Some(key) {
                self.finished.push(conn_key);
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
