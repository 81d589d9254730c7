//! The signer thread: every token's signature is made here, off the event
//! loop, so that minting (one ECDSA signature, tens of microseconds) never
//! holds up another connection.
//!
//! Owns the thread and its two channels. The loop sends a [`SignJob`] (the
//! key and the claims, decided on the loop), the thread fills in the `jti`
//! from the operating system's randomness, signs, and sends back a
//! [`Signed`], waking the loop through the same `mio::Waker` the state
//! writer uses. The queue holds at most one job per open guest connection
//! (a connection asks nothing more while its token is being signed), so the
//! connection caps bound it.

use std::io;
use std::iter;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use ring::rand::{SecureRandom, SystemRandom};

use crate::issuer::SigningKey;
use crate::jwt::{self, Claims};
use crate::log;

/// Random bytes in a token's `jti`: 16, the 128 bits docs/protocol.md
/// section 9 asks for at least.
const JTI_BYTES: usize = 16;

/// One token to sign.
#[derive(Debug)]
pub struct SignJob {
    /// Names the connection waiting for it (the server's).
    pub ticket: u64,
    /// The key to sign with, chosen on the loop.
    pub key: Arc<SigningKey>,
    /// The claims, `jti` still empty.
    pub claims: Claims,
}

/// A signed token, or why there is none.
#[derive(Debug)]
pub struct Signed {
    /// The job's ticket.
    pub ticket: u64,
    /// The compact JWS, or the error.
    pub token: Result<String, String>,
}

/// Fills in `claims.jti` with fresh random bits and signs the claims with
/// `key`: the whole cost of a token.
pub fn sign(rng: &SystemRandom, key: &SigningKey, mut claims: Claims) -> Result<String, String> {
    let mut jti = [0u8; JTI_BYTES];
    rng.fill(&mut jti)
        .map_err(|_| "no randomness from the operating system".to_owned())?;
    claims.jti = jwt::b64(&jti);
    key.sign(rng, &claims)
}

/// The event loop's handle on the signer thread.
#[derive(Debug)]
pub struct Signer {
    jobs: Option<Sender<SignJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Signer {
    /// Starts the thread; `wake` is called after each token, once it is on
    /// [`Signed`]'s channel.
    pub fn spawn(wake: Arc<dyn Fn() + Send + Sync>) -> io::Result<(Signer, Receiver<Signed>)> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<SignJob>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("guestsock-signer".into())
            .spawn(move || run(jobs_rx, done_tx, wake))?;
        Ok((
            Signer {
                jobs: Some(jobs_tx),
                thread: Some(thread),
            },
            done_rx,
        ))
    }

    /// Queues a token to sign.
    pub fn submit(&self, job: SignJob) {
        if let Some(jobs) = &self.jobs {
            // Only fails if the thread died; the waiting answer then stays
            // unsent, and the connection is closed when the server stops.
            let _ = jobs.send(job);
        }
    }

    /// Stops taking jobs and waits for those queued.
    pub fn finish(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn(format_args!("the signer thread panicked"));
        }
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The thread: signs each job in turn, reporting and waking the loop after
/// each, so that a burst of tokens is answered as each is ready.
fn run(jobs: Receiver<SignJob>, done: Sender<Signed>, wake: Arc<dyn Fn() + Send + Sync>) {
    let rng = SystemRandom::new();
    while let Ok(first) = jobs.recv() {
        for job in iter::once(first).chain(jobs.try_iter()) {
            let token = sign(&rng, &job.key, job.claims);
            if done
                .send(Signed {
                    ticket: job.ticket,
                    token,
                })
                .is_err()
            {
                return;
            }
            wake();
        }
    }
}
