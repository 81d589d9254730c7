//! The identity issuer (docs/protocol.md section 9): its settings, its
//! ECDSA P-256 signing keys and their life (made at first start, rotated on
//! request and on a schedule, retired keys published until their last token
//! expires, then dropped), the key file in the state directory, and the
//! JWKS it publishes.
//!
//! Owns the keys. A private key exists in three places only: in memory
//! (ring's `EcdsaKeyPair`, and its PKCS#8 document to write it again), in
//! the bytes of a key file on their way to the writer thread ([`Secret`],
//! which never prints them), and in `<state-dir>/identity/keys.json` (mode
//! 0600). Nothing here logs a key or formats one into a message.
//!
//! A change of keys goes through the writer like an instance change: it is
//! staged, made durable, and only then signs, is published and announced
//! (`server`). While a change of keys is in flight, tokens wait for it
//! ([`Issuer::mint`] says so), so that a retired key's last token is known
//! when it is retired, and a key never signs before it is on disk. Building
//! a token's bytes is `jwt`'s business; the thread that signs, `signer`'s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::error::NotServed;
use crate::events::Event;
use crate::jwt::{self, Claims, Jwk, JwkSet};
use crate::limits::{
    LOW_S_SIGN_ATTEMPTS, MAX_PUBLISHED_KEYS, MAX_TOKEN_TTL_SECS, ROTATION_RETRY_SECS,
};

/// The version of the key file format written by this build.
const FORMAT_VERSION: u32 = 1;

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The issuer's settings, from `serve`'s `--identity-*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// `iss`: `--identity-issuer`, default `https://<host name>`.
    pub issuer: String,
    /// The SPIFFE trust domain: `--identity-trust-domain`, default the host
    /// name.
    pub trust_domain: String,
    /// The host's name, in `sub` and the `guestsock` claim.
    pub host: String,
    /// `--identity-rotate`: the signing key's lifetime.
    pub rotate_every: Duration,
    /// `--identity-jwks-file`: where the JWKS is also written.
    pub jwks_file: Option<PathBuf>,
}

impl IssuerConfig {
    /// Checks the settings, filling in the defaults: the issuer must be an
    /// http(s) URL without query or fragment (OpenID Connect Discovery 1.0,
    /// section 3), the trust domain and the host name what a SPIFFE ID
    /// allows (SPIFFE-ID 2.1 and 2.2).
    pub fn new(
        host: &str,
        issuer: Option<String>,
        trust_domain: Option<String>,
        rotate_every: Duration,
        jwks_file: Option<PathBuf>,
    ) -> Result<IssuerConfig, String> {
        let issuer = issuer.unwrap_or_else(|| format!("https://{host}"));
        let rest = issuer
            .strip_prefix("https://")
            .or_else(|| issuer.strip_prefix("http://"));
        if rest.is_none_or(|rest| {
            rest.is_empty()
                || rest.starts_with('/')
                || rest
                    .bytes()
                    .any(|b| b <= b' ' || b >= 0x7f || b == b'?' || b == b'#')
        }) {
            return Err(format!(
                "identity issuer {issuer:?} is not an https:// URL without query or fragment; \
                 give one with --identity-issuer"
            ));
        }
        let trust_domain = trust_domain.unwrap_or_else(|| host.to_ascii_lowercase());
        // "Trust domain names ... MUST contain only lowercase letters,
        // numbers, dots, dashes, and underscores" (SPIFFE-ID 2.1).
        if trust_domain.is_empty()
            || trust_domain.len() > 255
            || !trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(format!(
                "identity trust domain {trust_domain:?} is not a SPIFFE trust domain (lowercase \
                 letters, digits, '.', '-', '_'); give one with --identity-trust-domain"
            ));
        }
        // "Path segments MUST contain only letters, numbers, dots, dashes,
        // and underscores", and are neither "." nor ".." (SPIFFE-ID 2.2).
        if host.is_empty()
            || host == "."
            || host == ".."
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "the host name {host:?} cannot be a SPIFFE ID path segment (letters, digits, \
                 '.', '-', '_'); set a plain host name"
            ));
        }
        Ok(IssuerConfig {
            issuer,
            trust_domain,
            host: host.to_owned(),
            rotate_every,
            jwks_file,
        })
    }

    /// The SPIFFE ID of an instance:
    /// `spiffe://<trust domain>/host/<host>/instance/<name>`.
    pub fn subject(&self, instance: &str) -> String {
        format!(
            "spiffe://{}/host/{}/instance/{instance}",
            self.trust_domain, self.host
        )
    }
}

/// One signing key: its kid, its encoded JOSE header and the key pair.
/// Its `Debug` shows the kid only.
pub struct SigningKey {
    /// The RFC 7638 thumbprint of its public key.
    pub kid: String,
    /// Its tokens' JOSE header, base64url.
    header: String,
    /// The public key.
    jwk: Jwk,
    /// The key pair (ring's; it never exposes the private half).
    pair: EcdsaKeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// The key in a PKCS#8 document.
    fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not an ECDSA P-256 private key ({e})"))?;
        let jwk = Jwk::p256(pair.public_key().as_ref())
            .ok_or("the public key is not an uncompressed P-256 point")?;
        Ok(SigningKey {
            kid: jwk.kid.clone(),
            header: jwt::encoded_header(&jwk.kid),
            jwk,
            pair,
        })
    }

    /// Signs `claims` (with `jti` filled in) into a compact JWS with a
    /// low-S signature ([`jwt::is_low_s`]), which is all `verify` accepts.
    /// `rng` is the operating system's randomness (ECDSA's nonce).
    ///
    /// ring signs with a random nonce k and does not choose between `s`
    /// and `n - s`; the twin `(r, n - s)` is the signature nonce `-k` gives.
    /// So a signature is made again, on a fresh nonce, until its S is low:
    /// keeping the low-S member of a uniformly drawn pair `{k, -k}` is what
    /// normalizing S (libsecp256k1's `normalize`) publishes too, with no
    /// arithmetic on the signature here. At most [`LOW_S_SIGN_ATTEMPTS`].
    pub fn sign(&self, rng: &SystemRandom, claims: &Claims) -> Result<String, String> {
        let input = jwt::signing_input(&self.header, claims);
        for _ in 0..LOW_S_SIGN_ATTEMPTS {
            let signature = self
                .pair
                .sign(rng, input.as_bytes())
                .map_err(|_| "the signature could not be made (no randomness?)".to_owned())?;
            if jwt::is_low_s(signature.as_ref()) {
                return Ok(format!("{input}.{}", jwt::b64(signature.as_ref())));
            }
        }
        Err(format!(
            "no low-S signature in {LOW_S_SIGN_ATTEMPTS} attempts (the random source is broken)"
        ))
    }
}

/// Bytes that hold a private key: its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// One key of the ring.
#[derive(Debug, Clone)]
pub struct RingKey {
    /// The key.
    pub key: Arc<SigningKey>,
    /// Its PKCS#8 document, to write it again.
    pkcs8: Arc<Secret>,
    /// When it was made, seconds since the epoch.
    pub created: u64,
    /// When it stopped signing; `None` for the signing key.
    pub retired: Option<u64>,
    /// No token it signed expires later than this: for a retired key, when
    /// it is dropped.
    pub tokens_until: u64,
}

/// Every published key, the signing key last.
#[derive(Debug, Clone)]
pub struct KeyRing {
    /// Retired keys, oldest first, then the signing key.
    pub keys: Vec<RingKey>,
}

/// The key file: `<state-dir>/identity/keys.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeys {
    version: u32,
    keys: Vec<StoredKey>,
}

/// One key in the key file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens_until: Option<u64>,
    /// The PKCS#8 document, base64url.
    private_key: String,
}

impl KeyRing {
    /// A ring of one new key, made at `now` with the operating system's
    /// randomness.
    fn new_key(now: u64) -> Result<RingKey, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot make a key: no randomness from the operating system".to_owned())?;
        let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
        Ok(RingKey {
            key: Arc::new(key),
            pkcs8: Arc::new(Secret(pkcs8.as_ref().to_vec())),
            created: now,
            retired: None,
            tokens_until: 0,
        })
    }

    /// The key that signs.
    pub fn signing(&self) -> &RingKey {
        // Never empty: every constructor puts a signing key in.
        &self.keys[self.keys.len() - 1]
    }

    /// The key file's bytes.
    pub fn encode(&self) -> Secret {
        let stored = StoredKeys {
            version: FORMAT_VERSION,
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.key.kid.clone(),
                    created: k.created,
                    retired: k.retired,
                    tokens_until: k.retired.map(|_| k.tokens_until),
                    private_key: jwt::b64(&k.pkcs8.0),
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        bytes.push(b'\n');
        Secret(bytes)
    }

    /// Reads a key file's bytes. A retired key is published until its
    /// `tokens_until`; the signing key, which may have signed until the
    /// moment the last server stopped, is taken to have tokens valid until
    /// `now` plus the longest ttl.
    fn decode(bytes: &[u8], now: u64) -> Result<KeyRing, String> {
        let stored: StoredKeys =
            serde_json::from_slice(bytes).map_err(|e| format!("corrupt key file ({e})"))?;
        if stored.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not {FORMAT_VERSION}, which this guestsock reads",
                stored.version
            ));
        }
        if stored.keys.is_empty() || stored.keys.len() > MAX_PUBLISHED_KEYS {
            return Err(format!(
                "holds {} keys; 1 to {MAX_PUBLISHED_KEYS} expected",
                stored.keys.len()
            ));
        }
        let last = stored.keys.len() - 1;
        let mut keys = Vec::with_capacity(stored.keys.len());
        for (i, k) in stored.keys.into_iter().enumerate() {
            let pkcs8 = jwt::unb64(&k.private_key)
                .ok_or_else(|| format!("key {i}: private_key is not base64url"))?;
            let key = SigningKey::from_pkcs8(&pkcs8).map_err(|e| format!("key {i}: {e}"))?;
            if key.kid != k.kid {
                return Err(format!(
                    "key {i}: kid {:?} is not its public key's thumbprint",
                    k.kid
                ));
            }
            if keys.iter().any(|other: &RingKey| other.key.kid == key.kid) {
                return Err(format!("key {i}: kid {:?} appears twice", k.kid));
            }
            let tokens_until = match (i == last, k.retired, k.tokens_until) {
                (true, None, None) => now + MAX_TOKEN_TTL_SECS,
                (false, Some(_), Some(until)) => until,
                (true, ..) => {
                    return Err(format!(
                        "key {i}: the last key signs, so it cannot be retired"
                    ));
                }
                (false, ..) => {
                    return Err(format!(
                        "key {i}: a key before the last must be retired, with tokens_until"
                    ));
                }
            };
            keys.push(RingKey {
                key: Arc::new(key),
                pkcs8: Arc::new(Secret(pkcs8)),
                created: k.created,
                retired: k.retired,
                tokens_until,
            });
        }
        Ok(KeyRing { keys })
    }

    /// The JWK Set of every key, as served: JSON and one `\n`.
    fn jwks(&self) -> Vec<u8> {
        let set = JwkSet {
            keys: self.keys.iter().map(|k| k.key.jwk.clone()).collect(),
        };
        let mut bytes = serde_json::to_vec(&set).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// `ring` with a new signing key made at `now`, the old one retired, and
/// the event announcing it; refused past [`MAX_PUBLISHED_KEYS`].
fn rotated(mut ring: KeyRing, now: u64) -> Result<(KeyRing, Event), NotServed> {
    let published = ring.keys.len();
    if published >= MAX_PUBLISHED_KEYS {
        return Err(NotServed::TooManyKeys {
            limit: MAX_PUBLISHED_KEYS,
        });
    }
    let key = KeyRing::new_key(now).map_err(NotServed::NoKey)?;
    let event = Event::IdentityKey {
        action: "rotated",
        kid: key.key.kid.clone(),
        previous: Some(ring.signing().key.kid.clone()),
    };
    let old = &mut ring.keys[published - 1];
    old.retired = Some(now);
    old.tokens_until = old.tokens_until.max(now);
    ring.keys.push(key);
    Ok((ring, event))
}

/// The issuer: settings, the keys in force, and the change of keys in
/// flight, if any.
#[derive(Debug)]
pub struct Issuer {
    config: IssuerConfig,
    /// The keys in force (durable).
    ring: KeyRing,
    /// The newest staged change of keys, not yet durable.
    staged: Option<Rc<KeyRing>>,
    /// Changes of keys sent to the writer and not yet durable.
    in_flight: usize,
    /// The JWKS of `ring`, as served.
    jwks: Vec<u8>,
    /// After a scheduled rotation failed (no key could be made): not
    /// before this, so that the loop does not spin on it.
    rotation_retry_at: u64,
}

/// What [`Issuer::mint`] gives a token: the key, `iat` and `exp`.
pub type MintKey = (Arc<SigningKey>, u64, u64);

impl Issuer {
    /// The issuer of the key file `stored` (read from `path`), or, with no
    /// file, of a key made now: then the file's bytes come back too, to be
    /// written before anything is signed. A damaged file is an error naming
    /// `path` and the problem.
    pub fn open(
        config: IssuerConfig,
        stored: Option<&[u8]>,
        path: &Path,
        now: u64,
    ) -> Result<(Issuer, Option<Secret>), String> {
        let (ring, made) = match stored {
            Some(bytes) => {
                let ring = KeyRing::decode(bytes, now).map_err(|e| {
                    format!(
                        "{}: {e}; restore it from a backup, or remove it to make a new key \
                         (tokens issued before then will no longer verify)",
                        path.display()
                    )
                })?;
                (ring, None)
            }
            None => {
                let ring = KeyRing {
                    keys: vec![KeyRing::new_key(now)?],
                };
                let bytes = ring.encode();
                (ring, Some(bytes))
            }
        };
        let jwks = ring.jwks();
        Ok((
            Issuer {
                config,
                ring,
                staged: None,
                in_flight: 0,
                jwks,
                rotation_retry_at: 0,
            },
            made,
        ))
    }

    /// The settings.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// The keys in force.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The JWKS as served: JSON and one `\n`.
    pub fn jwks(&self) -> &[u8] {
        &self.jwks
    }

    /// The key, `iat` and `exp` of a token of `ttl` seconds minted at
    /// `now`, counted against the key's last token; `None` while a change
    /// of keys is in flight (the token waits for it).
    pub fn mint(&mut self, now: u64, ttl: u64) -> Option<MintKey> {
        if self.in_flight > 0 {
            return None;
        }
        let last = self.ring.keys.len() - 1;
        let signing = &mut self.ring.keys[last];
        let exp = now + ttl;
        signing.tokens_until = signing.tokens_until.max(exp);
        Some((Arc::clone(&signing.key), now, exp))
    }

    /// The keys every new change builds on: the newest staged, else those
    /// in force.
    fn latest(&self) -> &KeyRing {
        self.staged.as_deref().unwrap_or(&self.ring)
    }

    /// Stages `ring`: it is written next, and tokens wait until it is
    /// durable.
    fn stage(&mut self, ring: KeyRing) -> Rc<KeyRing> {
        let staged = Rc::new(ring);
        self.staged = Some(Rc::clone(&staged));
        self.in_flight += 1;
        staged
    }

    /// `POST /1.0/identity/rotate`: a new signing key, the old one retired
    /// (published until its last token expires). Refused past
    /// [`MAX_PUBLISHED_KEYS`].
    pub fn rotate(&mut self, now: u64) -> Result<(Rc<KeyRing>, Vec<Event>), NotServed> {
        let (ring, event) = rotated(self.latest().clone(), now)?;
        Ok((self.stage(ring), vec![event]))
    }

    /// The change the schedule calls for at `now`, if any: retired keys
    /// whose last token has expired dropped, and a new signing key once the
    /// current one is `--identity-rotate` old. Nothing while a change of
    /// keys is in flight.
    pub fn due(&mut self, now: u64) -> Option<(Rc<KeyRing>, Vec<Event>)> {
        if self.in_flight > 0 || self.next_due().is_none_or(|at| at > now) {
            return None;
        }
        let mut ring = self.ring.clone();
        let mut events = Vec::new();
        ring.keys.retain(|k| {
            let expired = k.retired.is_some() && k.tokens_until <= now;
            if expired {
                events.push(Event::IdentityKey {
                    action: "dropped",
                    kid: k.key.kid.clone(),
                    previous: None,
                });
            }
            !expired
        });
        if self.rotation_due_at(&ring).is_some_and(|at| at <= now) {
            match rotated(ring.clone(), now) {
                Ok((with_new_key, event)) => {
                    ring = with_new_key;
                    events.push(event);
                }
                Err(e) => {
                    self.rotation_retry_at = now + ROTATION_RETRY_SECS;
                    crate::log::error(format_args!(
                        "scheduled key rotation: {e}; trying again in {ROTATION_RETRY_SECS} s"
                    ));
                }
            }
        }
        if events.is_empty() {
            return None;
        }
        Some((self.stage(ring), events))
    }

    /// When the signing key of `ring` is to be replaced: none while the
    /// ring is full (a drop comes first).
    fn rotation_due_at(&self, ring: &KeyRing) -> Option<u64> {
        if ring.keys.len() >= MAX_PUBLISHED_KEYS {
            return None;
        }
        let every = self.config.rotate_every.as_secs().max(1);
        let due = ring.signing().created.saturating_add(every);
        Some(due.max(self.rotation_retry_at))
    }

    /// When the schedule next calls for a change (seconds since the
    /// epoch); `None` while one is in flight (its commit asks again).
    pub fn next_due(&self) -> Option<u64> {
        if self.in_flight > 0 {
            return None;
        }
        let drop = self
            .ring
            .keys
            .iter()
            .filter(|k| k.retired.is_some())
            .map(|k| k.tokens_until)
            .min();
        [drop, self.rotation_due_at(&self.ring)]
            .into_iter()
            .flatten()
            .min()
    }

    /// How long from now until [`Issuer::next_due`].
    pub fn until_due(&self) -> Option<Duration> {
        let at = Duration::from_secs(self.next_due()?);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(at.saturating_sub(now))
    }

    /// A staged change of keys is durable: it is in force from now on. The
    /// signing key's last token is carried over (tokens were minted while
    /// a drop was in flight). Returns whether the JWKS changed.
    pub fn commit(&mut self, staged: &KeyRing) -> bool {
        let mut ring = staged.clone();
        for key in &mut ring.keys {
            if let Some(live) = self.ring.keys.iter().find(|k| k.key.kid == key.key.kid) {
                key.tokens_until = key.tokens_until.max(live.tokens_until);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.staged = None;
        }
        self.ring = ring;
        let jwks = self.ring.jwks();
        let changed = jwks != self.jwks;
        self.jwks = jwks;
        changed
    }

    /// Every change of keys in flight failed to be written: none is made.
    pub fn abandon_pending(&mut self) {
        self.staged = None;
        self.in_flight = 0;
    }

    /// Admin `GET /1.0/identity`: the settings and each key's life (no
    /// private key, ever).
    pub fn describe(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .ring
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kid": k.key.kid,
                    "created": k.created,
                    "retired": k.retired,
                    "published_until": k.retired.map(|_| k.tokens_until),
                })
            })
            .collect();
        serde_json::json!({
            "issuer": self.config.issuer,
            "trust_domain": self.config.trust_domain,
            "host": self.config.host,
            "signing_kid": self.ring.signing().key.kid,
            "rotate_every_secs": self.config.rotate_every.as_secs(),
            "keys": keys,
        })
    }

    /// An issuer with a fresh key in memory only (unit tests, the fuzz
    /// targets' connections).
    pub fn ephemeral(host: &str) -> Issuer {
        let config = IssuerConfig::new(host, None, None, crate::limits::DEFAULT_KEY_ROTATION, None)
            .expect("a plain host name");
        let (issuer, _) =
            Issuer::open(config, None, Path::new("memory"), unix_now()).expect("a new key");
        issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(rotate: u64) -> Issuer {
        let config =
            IssuerConfig::new("host1", None, None, Duration::from_secs(rotate), None).unwrap();
        Issuer::open(config, None, Path::new("k"), 1000).unwrap().0
    }

    /// Every token the issuer signs is low-S (ring alone gives a high S
    /// half the time: 64 tokens all low by chance is 2^-64), and verifies.
    #[test]
    fn tokens_are_signed_with_low_s() {
        let i = issuer(86_400);
        let key = &i.ring().signing().key;
        let rng = SystemRandom::new();
        let claims = Claims {
            iss: "https://host1".into(),
            sub: "spiffe://host1/host/host1/instance/c1".into(),
            aud: "a".into(),
            iat: 1000,
            nbf: 1000,
            exp: 1600,
            jti: "j".into(),
            guestsock: jwt::InstanceClaim {
                instance: "c1".into(),
                kind: "container".into(),
                location: String::new(),
                host: "host1".into(),
                uid: 0,
            },
        };
        for _ in 0..64 {
            let token = key.sign(&rng, &claims).unwrap();
            let signature = jwt::unb64(token.rsplit('.').next().unwrap()).unwrap();
            assert!(jwt::is_low_s(&signature), "{token}");
            assert_eq!(
                jwt::verify(
                    &token,
                    std::slice::from_ref(&key.jwk),
                    1000,
                    jwt::Expected::default()
                ),
                Ok(claims.clone())
            );
        }
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c = IssuerConfig::new("Host-1", None, None, Duration::from_secs(1), None).unwrap();
        assert_eq!(c.issuer, "https://Host-1");
        assert_eq!(c.trust_domain, "host-1");
        assert_eq!(c.subject("c1"), "spiffe://host-1/host/Host-1/instance/c1");
        for (host, issuer, domain) in [
            ("h", Some("ftp://x"), None),
            ("h", Some("https://"), None),
            ("h", Some("https://x?q=1"), None),
            ("h", Some("https://x#f"), None),
            ("h", Some("https://x y"), None),
            ("h", None, Some("Upper")),
            ("h", None, Some("a/b")),
            ("h/x", None, None),
            ("..", None, None),
        ] {
            assert!(
                IssuerConfig::new(
                    host,
                    issuer.map(str::to_owned),
                    domain.map(str::to_owned),
                    Duration::from_secs(1),
                    None
                )
                .is_err(),
                "{host} {issuer:?} {domain:?}"
            );
        }
    }

    #[test]
    fn rotation_waits_for_durability_and_retires_until_the_last_token() {
        let mut i = issuer(86_400);
        let first = i.ring().signing().key.kid.clone();
        let (_, iat, exp) = i.mint(1000, 600).unwrap();
        assert_eq!((iat, exp), (1000, 1600));
        let (staged, events) = i.rotate(1100).unwrap();
        assert_eq!(
            events,
            vec![Event::IdentityKey {
                action: "rotated",
                kid: staged.signing().key.kid.clone(),
                previous: Some(first.clone())
            }]
        );
        assert!(i.mint(1100, 600).is_none(), "tokens wait for the new key");
        assert_eq!(
            i.ring().signing().key.kid,
            first,
            "not in force before durable"
        );
        assert!(i.commit(&staged));
        let (key, ..) = i.mint(1101, 60).unwrap();
        assert_ne!(key.kid, first);
        assert_eq!(i.ring().keys[0].retired, Some(1100));
        assert_eq!(i.ring().keys[0].tokens_until, 1600);
        assert_eq!(
            i.next_due(),
            Some(1600),
            "the old key goes when its last token does"
        );
        assert!(i.due(1599).is_none());
        let (staged, events) = i.due(1600).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(staged.keys.len(), 1);
        i.commit(&staged);
        let jwks: JwkSet = serde_json::from_slice(i.jwks()).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].kid, i.ring().signing().key.kid);
    }

    #[test]
    fn the_schedule_rotates_and_an_abandoned_change_leaves_the_keys() {
        let mut i = issuer(3600);
        assert_eq!(i.next_due(), Some(4600));
        let first = i.ring().signing().key.kid.clone();
        let (staged, events) = i.due(4600).unwrap();
        assert_eq!(events[0].kind(), "identity-key");
        assert_eq!(staged.keys.len(), 2);
        assert!(i.next_due().is_none(), "nothing more while in flight");
        i.abandon_pending();
        assert_eq!(i.ring().signing().key.kid, first);
        assert!(i.mint(4600, 60).is_some());
    }

    #[test]
    fn the_ring_is_bounded() {
        let mut i = issuer(86_400);
        for n in 1..MAX_PUBLISHED_KEYS {
            let (staged, _) = i.rotate(1000 + n as u64).unwrap();
            i.commit(&staged);
        }
        assert!(matches!(i.rotate(2000), Err(NotServed::TooManyKeys { .. })));
        // A full ring rotates on schedule only once a drop makes room.
        assert_eq!(i.rotation_due_at(&i.ring), None);
    }

    #[test]
    fn the_key_file_round_trips_and_damage_is_named() {
        let mut i = issuer(86_400);
        let (staged, _) = i.rotate(1100).unwrap();
        i.commit(&staged);
        let bytes = i.ring().encode();
        let text = String::from_utf8(bytes.0.clone()).unwrap();
        assert!(
            !format!("{bytes:?}").contains("private"),
            "Debug never shows it"
        );
        let ring = KeyRing::decode(&bytes.0, 5000).unwrap();
        let kids = |r: &KeyRing| r.keys.iter().map(|k| k.key.kid.clone()).collect::<Vec<_>>();
        assert_eq!(kids(&ring), kids(i.ring()));
        assert_eq!(ring.signing().tokens_until, 5000 + MAX_TOKEN_TTL_SECS);
        let other = issuer(1).ring().encode();
        let other_key = {
            let v: serde_json::Value = serde_json::from_slice(&other.0).unwrap();
            v["keys"][0]["private_key"].as_str().unwrap().to_owned()
        };
        let first_key = {
            let v: serde_json::Value = serde_json::from_slice(&bytes.0).unwrap();
            v["keys"][1]["private_key"].as_str().unwrap().to_owned()
        };
        for (damaged, needle) in [
            (
                text.replacen("\"version\": 1", "\"version\": 2", 1),
                "format version 2",
            ),
            (text[..text.len() / 2].to_owned(), "corrupt key file"),
            (String::new(), "corrupt key file"),
            (
                text.replacen(&first_key, &other_key, 1),
                "is not its public key's thumbprint",
            ),
            (
                text.replacen(&first_key, "AAAA", 1),
                "not an ECDSA P-256 private key",
            ),
            (
                text.replacen("\"kid\"", "\"bogus\": 1, \"kid\"", 1),
                "corrupt key file",
            ),
        ] {
            let err = KeyRing::decode(damaged.as_bytes(), 0).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let config = IssuerConfig::new("h", None, None, Duration::from_secs(1), None).unwrap();
        let err =
            Issuer::open(config, Some(b"{"), Path::new("/s/identity/keys.json"), 0).unwrap_err();
        assert!(
            err.starts_with("/s/identity/keys.json: corrupt key file"),
            "{err}"
        );
    }
}
