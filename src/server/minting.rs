//! Identity tokens on the loop (docs/protocol.md section 9): a token asked
//! for is given its key and times here and handed to the signer thread;
//! its answer is released when the signature comes back. Also the keys'
//! schedule (rotation and drops, made durable like any change) and the
//! JWKS file.
//!
//! The loop spends no signature: a neighbour's request is answered while
//! tokens are signed on the other thread.

use super::*;

use crate::http::response::Response;
use crate::issuer::unix_now;
use crate::signer::SignJob;

impl Server {
    /// Sends token `ticket` to the signer, with the signing key and its
    /// times; or, while a change of keys is in flight, keeps it until that
    /// change is durable (or abandoned).
    pub(super) fn submit_mint(&mut self, ticket: u64, mint: Mint) {
        match self.issuer.mint(unix_now(), mint.ttl) {
            Some((key, iat, exp)) => {
                let claims = mint.claims(self.issuer.config(), iat, exp);
                self.signer.submit(SignJob {
                    ticket,
                    key,
                    claims,
                });
            }
            None => self.deferred_mints.push((ticket, mint)),
        }
    }

    /// Tokens kept while keys changed go now.
    pub(super) fn release_deferred_mints(&mut self) {
        for (ticket, mint) in std::mem::take(&mut self.deferred_mints) {
            self.submit_mint(ticket, mint);
        }
    }

    /// Takes the signer's tokens and answers the connections waiting for
    /// them (a connection gone, or its key reused, is skipped).
    pub(super) fn take_signed(&mut self) {
        while let Ok(Signed { ticket, token }) = self.signed.try_recv() {
            let Some((key, started)) = self.minting.remove(&ticket) else {
                continue;
            };
            let response = match token {
                Ok(token) => {
                    self.metrics.tokens_minted += 1;
                    Response::jwt(token)
                }
                Err(why) => {
                    log::error(format_args!("identity token not signed: {why}"));
                    NotServed::SigningFailed(why).response()
                }
            };
            self.metrics.request(
                "/1.0/identity/token",
                response.status,
                started.elapsed().as_secs_f64(),
            );
            let stopping = self.stopping.is_some();
            if let Some(conn) = self.conns.get_mut(key)
                && conn.mints(ticket)
            {
                conn.finish_mint(response, stopping);
                self.drive(key);
            }
        }
    }

    /// Stages the change of keys the schedule calls for now, if any.
    pub(super) fn keys_due(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if let Some((staged, events)) = self.issuer.due(unix_now()) {
            self.apply(Change::Keys { staged, events });
        }
    }

    /// Has the writer thread write the JWKS to `--identity-jwks-file`, if
    /// given, off the loop: a temporary file renamed over it, so a web
    /// server publishing it reads the old set or the new one, never half of
    /// one. A failure is logged; the socket still serves the new set.
    pub(super) fn write_jwks_file(&mut self) {
        let Some(path) = self.issuer.config().jwks_file.clone() else {
            return;
        };
        let bytes = self.issuer.jwks().to_vec();
        self.writer.submit(Job::Publish { path, bytes });
    }
}
