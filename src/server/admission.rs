//! Admission: accepting a bounded batch per listener per loop turn, reading
//! what a new connection sent, identifying it as its listener says, and
//! admitting it under the caps or refusing it with `503`. The listeners
//! themselves are `listener`'s.

use super::*;

impl Server {
    /// Whether a listener may still have connections to accept now.
    pub(super) fn backlog_pending(&self) -> bool {
        self.stopping.is_none() && self.accept_retry_at.is_none() && self.listeners.any_waiting()
    }

    /// Accepts from each listener with a backlog, at most
    /// [`ACCEPTS_PER_TURN`] connections each; the admin socket first, so
    /// that the operator always gets in.
    pub(super) fn accept_turn(&mut self) {
        if !self.backlog_pending() {
            return;
        }
        // prlimit(1) may have changed it since the last turn.
        self.fd_limit = open_file_limit();
        self.fresh.clear();
        for nth in 0..self.listeners.len() {
            if let Some(index) = self.listeners.waiting_in_turn(nth) {
                let more = self.accept_some(index);
                self.listeners.set_waiting(index, more);
            }
        }
    }

    /// Accepts up to [`ACCEPTS_PER_TURN`] connections from listener
    /// `index`; returns whether more may be waiting.
    pub(super) fn accept_some(&mut self, index: usize) -> bool {
        for _ in 0..ACCEPTS_PER_TURN {
            if self.accept_retry_at.is_some() {
                return true;
            }
            let listener = self.listeners.get(index);
            let (side, by) = (listener.side(), listener.identification());
            let stream = match listener.accept() {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE)
                    ) =>
                {
                    self.out_of_descriptors();
                    return true;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => continue,
            };
            self.admit_one(stream, side, by);
        }
        true
    }

    /// The process ran out of file descriptors: accepting pauses for
    /// [`ACCEPT_RETRY_MS`], with one log line a second at most.
    pub(super) fn out_of_descriptors(&mut self) {
        let open = self.conns.len();
        self.log_throttled(format_args!(
            "out of file descriptors with {open} connections open; pausing accept for {ACCEPT_RETRY_MS} ms"
        ));
        self.accept_retry_at = Some(Instant::now() + Duration::from_millis(ACCEPT_RETRY_MS));
    }

    /// Takes one accepted connection from a listener of `side` that
    /// identifies its callers `by` that rule: reads what the peer sent
    /// already, identifies it, admits or refuses it, and answers what it
    /// can at once.
    ///
    /// A peer that connected and closed without sending anything (the
    /// connect-and-close flood) costs one `read` and a `close`: there is
    /// nobody to answer, so it is never identified or registered with
    /// epoll. Most clients send their request right after connecting, so
    /// a request is usually answered here, before any epoll registration,
    /// and a connection that closes after its answer is never registered.
    pub(super) fn admit_one(
        &mut self,
        mut stream: mio::net::UnixStream,
        side: Side,
        by: Identification,
    ) {
        let received = match io::Read::read(&mut stream, &mut self.scratch) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        // A VM's callers are named by its agent's preamble: the VMM that
        // connected has no facts worth reading.
        let kinds = match side {
            Side::Guest if !by.takes_preamble() => self.registry.kinds_in_use(),
            Side::Guest | Side::Admin { .. } => RuleKinds::empty(),
        };
        let peer = match identity::peer_facts(&stream, kinds, &mut self.cgroups) {
            Ok(peer) => peer,
            Err(e) => {
                log::warn(format_args!(
                    "dropping a connection whose peer cannot be read: {e}"
                ));
                return;
            }
        };
        // The socket's mode lets only the VMM's user in; whoever else
        // reached it (root, or through a mode changed by hand) cannot speak
        // for the VM: its preamble is read past and believed in nothing,
        // and every request it makes is refused.
        let by = match by {
            Identification::Own {
                listener,
                by: OwnListener::Vsock { vmm_uid },
                ..
            } if peer.uid != vmm_uid => Identification::NotTheVmm { listener },
            by => by,
        };
        let side = match side {
            Side::Guest => Side::Guest,
            Side::Admin { .. } => {
                let authorized = peer.uid == 0 || self.admin_uids.contains(&peer.uid);
                if !authorized {
                    log::warn(format_args!(
                        "admin socket: refusing pid {} (uid {}), which is neither root nor an --admin-uid",
                        peer.pid, peer.uid
                    ));
                }
                Side::Admin { authorized }
            }
        };
        let counted = match side {
            Side::Admin { .. } => Counted::Nothing,
            Side::Guest => match by.identify(&peer, &self.registry) {
                Ok(id) => match self.registry.get(id) {
                    Some(instance) => Counted::Instance(id, instance.serial),
                    None => Counted::Unknown,
                },
                Err(refusal) => {
                    // The caller's cgroup is what a runtime's operator needs
                    // to see (which rule would have claimed it); read here
                    // only for a line the throttle lets through.
                    if log_due(self.refusal_logged) {
                        let cgroup = match &peer.cgroup {
                            Some(path) => path.to_string(),
                            None => identity::cgroup_of(peer.pid)
                                .unwrap_or_else(|e| format!("unknown ({e})")),
                        };
                        self.log_throttled(format_args!(
                            "unrecognised caller: {refusal}; its cgroup is {cgroup}"
                        ));
                    }
                    Counted::Unknown
                }
            },
        };
        let mut admitted = self.admit(side, counted);
        if admitted.is_err() && self.reap_fresh() {
            admitted = self.admit(side, counted);
        }
        if let Err((limit, why)) = admitted {
            self.refuse(stream, &peer, NotServed::AtCapacity { limit, why });
            return;
        }
        match side {
            Side::Guest => self.facts.connections.guest += 1,
            Side::Admin { .. } => self.facts.connections.admin += 1,
        }
        match counted {
            Counted::Nothing => {}
            Counted::Unknown => self.unknown_connections += 1,
            Counted::Instance(id, _) => {
                if let Some(instance) = self.registry.get_mut(id) {
                    instance.connections += 1;
                }
            }
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(stream, peer, side, by);
        conn.counted = counted;
        // The connection borrows the server's input buffer on its first
        // drive, just below; returned, that buffer is always empty.
        debug_assert!(self.buffers.input.is_empty());
        self.buffers
            .input
            .extend_from_slice(&self.scratch[..received]);
        conn.received(received > 0, received < self.scratch.len());
        entry.insert(conn);
        if !self.drive(key) {
            // Answered and done: it never needed epoll, and it goes now, not
            // in the sweep, so that its slot under the caps is free for the
            // next connection of this turn. No event can name its key (it
            // was never registered), so the key may be reused at once.
            self.finished.retain(|&k| k != key);
            self.remove_conn(key);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key)
            && let Err(e) = self.poll.registry().register(
                conn.stream_mut(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
        {
            log::warn(format_args!("cannot register a connection with epoll: {e}"));
            self.finished.push(key);
            return;
        }
        self.fresh.push(key);
    }

    /// Looks again at the connections accepted and left open in this turn,
    /// before a cap refuses one more: a client that asks, reads its answer
    /// and closes at once leaves a connection that only the next turn's
    /// events would show closed, and a quick sequential client would
    /// otherwise meet its cap within one turn. Returns whether any closed.
    /// Each connection is looked at once, so this costs at most one `read`
    /// per accepted connection.
    pub(super) fn reap_fresh(&mut self) -> bool {
        let mut reaped = false;
        for key in std::mem::take(&mut self.fresh) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.on_readable(false);
            if !self.drive(key) {
                // Registered, but closing it removes it from epoll and from
                // any event list not yet taken: the key is free at once.
                self.finished.retain(|&k| k != key);
                self.remove_conn(key);
                reaped = true;
            }
        }
        reaped
    }

    /// Whether one more connection from `side` fits under the caps; if
    /// not, why. Guests stop at the connection cap, never above the
    /// open-file limit less [`RESERVED_FDS`] (read again every turn, so a
    /// limit lowered under a running server counts at once). Admin
    /// connections take slots below that ceiling like anyone, and past it
    /// up to [`MAX_ADMIN_CONNECTIONS`] out of the reserve.
    pub(super) fn admit(&self, side: Side, counted: Counted) -> Result<(), (Limit, String)> {
        if let Side::Admin { .. } = side {
            // Below the ceiling like anyone; past it, out of the reserve
            // guests never get, up to MAX_ADMIN_CONNECTIONS.
            if self.conns.len() < self.guest_ceiling()
                || self.facts.connections.admin < MAX_ADMIN_CONNECTIONS
            {
                return Ok(());
            }
            return Err((
                Limit::Connections,
                format!(
                    "guestsock has {} connections open, its limit, and the admin socket's reserve of {MAX_ADMIN_CONNECTIONS} is in use",
                    self.guest_ceiling()
                ),
            ));
        }
        if self.conns.len() >= self.guest_ceiling() {
            return Err((
                Limit::Connections,
                format!(
                    "guestsock has {} connections open, its limit",
                    self.guest_ceiling()
                ),
            ));
        }
        match counted {
            Counted::Nothing => Ok(()),
            Counted::Unknown if self.unknown_connections >= self.limits.max_unknown => Err((
                Limit::Unknown,
                format!(
                    "callers that match no instance have {} connections open, their limit",
                    self.limits.max_unknown
                ),
            )),
            Counted::Unknown => Ok(()),
            Counted::Instance(id, _) => match self.registry.get(id) {
                Some(instance) if instance.connections >= self.limits.max_per_instance => Err((
                    Limit::PerInstance,
                    format!(
                        "instance {:?} has {} connections open, its limit",
                        instance.spec.name, self.limits.max_per_instance
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Open connections past which guests are refused: the operator's cap,
    /// or the open-file limit less [`RESERVED_FDS`] if that is lower.
    pub(super) fn guest_ceiling(&self) -> usize {
        self.max_connections
            .min(self.fd_limit.saturating_sub(RESERVED_FDS).max(1))
    }

    /// Logs a refusal, one line a second at most, so that an attack cannot
    /// flood the log.
    #[track_caller]
    pub(super) fn log_throttled(&mut self, message: std::fmt::Arguments<'_>) {
        log_throttled(&mut self.refusal_logged, message);
    }

    pub(super) fn refuse(
        &mut self,
        stream: mio::net::UnixStream,
        peer: &identity::PeerFacts,
        why: NotServed,
    ) {
        self.log_throttled(format_args!(
            "refusing a connection from pid {} (uid {}): {why}",
            peer.pid, peer.uid
        ));
        if let Some(label) = why.metrics_label() {
            self.metrics.refused(label);
        }
        let mut stream = stream;
        let mut out = Vec::new();
        let response = why.response();
        response.write_to(&mut out, false, false, false);
        let _ = std::io::Write::write(&mut stream, &out);
    }
}
