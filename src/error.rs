//! Why a request was not served, and the one mapping from that reason to its
//! HTTP status, its answer and its metrics label.
//!
//! Owns [`NotServed`]: every error answer either socket gives is built by
//! [`NotServed::response`], so a status is chosen in exactly one function
//! ([`NotServed::status`], cloud-hypervisor's `status_code()`) and a refusal
//! is counted by what went wrong, never by its status. Each layer keeps its
//! own error enum (`RequestError`, `HandshakeError`, `Refusal`,
//! `RegistryError`, `InvalidInstance`); this wraps them. Deciding that a
//! request fails is the business of the layer that finds it; writing the
//! answer is `http::response`'s.

use std::fmt;

use crate::http::request::RequestError;
use crate::http::response::Response;
use crate::instance::{InvalidInstance, KeyRule};
use crate::metrics::{IdentityFailure, Limit, Reason};
use crate::preamble::PreambleError;
use crate::registry::{BatchError, Refusal, RegistryError};
use crate::ws::handshake::HandshakeError;

/// Why a request (or a connection) was not served. Each variant's doc says
/// whose fault it is; its status is [`NotServed::status`]'s, its body the
/// [`fmt::Display`] text (LXD's exact words where LXD's clients compare
/// them).
#[derive(Debug, PartialEq, Eq)]
pub enum NotServed {
    /// The request could not be read; the connection ends after the answer,
    /// since where the next request would start is unknown. The client's
    /// fault.
    Unreadable(RequestError),
    /// A websocket handshake that is not a valid one (RFC 6455 4.2.1). The
    /// client's fault.
    Handshake(HandshakeError),
    /// A query parameter the endpoint does not take (`wait_for_change`,
    /// `timeout_sec`), with what is wrong with it. The client's fault.
    BadQuery(String),
    /// Percent-encoding in a path or query that does not decode to UTF-8;
    /// `what` names the part (`key`, `type`, `device name`). The client's
    /// fault.
    BadPercentEncoding {
        /// The part of the request.
        what: &'static str,
    },
    /// A key or device name in an admin path that cannot name one
    /// (docs/protocol.md section 4). The host's fault.
    BadName {
        /// What the name is for (`key`, `device name`).
        what: &'static str,
        /// The name, decoded.
        name: String,
    },
    /// A body the endpoint does not take (not JSON, not the object it
    /// takes, not UTF-8), with what is wrong with it. The client's fault.
    BadBody(String),
    /// A config entry or device breaking the rules of docs/protocol.md section
    /// 4. The host's fault.
    Invalid(InvalidInstance),
    /// No such path. On the guest socket a config key that is not set is
    /// such a path too (`/1.0/config/{key}`), as in LXD. The client's
    /// fault.
    NoSuchPath,
    /// The path does not take the method; `allow` lists those it takes.
    /// The client's fault.
    MethodNotAllowed {
        /// The methods the path takes, as the `Allow` header lists them.
        allow: &'static str,
    },
    /// Admin: no instance of this name is registered. The host's fault.
    NoSuchInstance(String),
    /// Admin: the instance has no config key of this name. The host's
    /// fault.
    KeyNotSet(String),
    /// Admin: the instance has no device of this name. The host's fault.
    NoSuchDevice(String),
    /// Admin: the instance has a device of this name already (LXD's
    /// `device add` refuses it too). The host's fault.
    DeviceExists(String),
    /// The registry refused a registration or a change: an invalid
    /// description, a name taken, or a match rule another instance holds.
    /// The host's fault.
    Registry(RegistryError),
    /// The registry refused an entry of a batch registration, and so the
    /// whole batch. The host's fault.
    Batch(BatchError),
    /// The guest caller is no instance's: no rule claims it, rules disagree,
    /// or a fact a rule needs could not be proved. It is told only its own
    /// pid and uid. The caller's situation, not a server fault.
    Unidentified(Refusal),
    /// The caller's instance takes requests from its root user only
    /// (`guest_access: root`) and this caller is another uid. The
    /// caller's fault.
    NotRoot,
    /// The caller's instance was gone between identifying it and answering
    /// it. Nobody's fault: the registry cannot change in between today,
    /// and a refusal is safer than a panic if it ever does.
    InstanceVanished,
    /// A guest asked for a config key outside `user.*` and `cloud-init.*`,
    /// which are the host's own. The guest's fault.
    HiddenKey,
    /// `GET /1.0/images/{fingerprint}/export`: guestsock serves no images,
    /// LXD's case of an instance without `security.devlxd.images`. The
    /// guest's (it asked for what this host does not offer).
    NoImages,
    /// `POST /1.0/ubuntu-pro/token`: Ubuntu Pro guest attachment is off, as
    /// on an LXD host without Pro's configuration. The guest's.
    UbuntuProOff,
    /// The admin socket's peer is neither root nor an `--admin-uid`. The
    /// peer's fault (or the operator's, who did not list it).
    NotAdmin {
        /// The peer's uid.
        uid: u32,
    },
    /// The caller's instance has used up its request rate (SECURITY.md).
    /// The caller's fault.
    RateLimited,
    /// A connection cap is reached; `why` names it for the client and the
    /// log. The callers' together (or the operator's caps).
    AtCapacity {
        /// The cap.
        limit: Limit,
        /// Which cap, with its value.
        why: String,
    },
    /// The request was not sent within the header or body timeout (a
    /// slowloris, or a client that stalled). The client's fault.
    TooSlow,
    /// A change sent, on a connection opened before a SIGHUP handoff, to
    /// the old process once it has handed the state to its successor.
    /// Nobody's fault: sent again on a new connection, it reaches the new
    /// process.
    HandingOver,
    /// The change could not be made durable, so it was not made at all;
    /// `0` is the writer's error. The server's (its disk's) fault.
    NotDurable(String),
    /// A waiting request's path no longer gave a plain answer. The
    /// server's fault; it cannot happen for the paths a wait is allowed on.
    WaitUnanswered,
    /// A token request without `Guestsock-Identity: true` (docs/protocol.md
    /// section 9): possibly a program made to fetch a URL for someone else.
    /// The caller's fault.
    NoIdentityHeader,
    /// A token request carrying `X-Forwarded-For` or `Forwarded`: relayed
    /// by a proxy for someone else. The caller's fault.
    ForwardedTokenRequest,
    /// Admin: a rotation would publish more than `limit` keys; retired keys
    /// are dropped as their last tokens expire. The host's (it rotated too
    /// often).
    TooManyKeys {
        /// [`crate::limits::MAX_PUBLISHED_KEYS`].
        limit: usize,
    },
    /// No key could be made (no randomness from the operating system). The
    /// server's.
    NoKey(String),
    /// A token could not be signed, with why. The server's.
    SigningFailed(String),
    /// `guestsock agent`, inside a VM: the connection to the host could not
    /// be opened (nothing listens on the host's port, the vsock device is
    /// missing), with why. Answered by the agent itself, in the guest. The
    /// host's (or the VM's configuration's), not the caller's.
    HostUnreachable(String),
    /// On a VM's own listener, a connection that did not start with the
    /// agent's preamble (docs/protocol.md section 10); closed after the
    /// answer. The fault of whatever connected in the agent's place.
    BadPreamble(PreambleError),
}

impl NotServed {
    /// The HTTP status: the one place an error becomes a status.
    pub fn status(&self) -> u16 {
        match self {
            NotServed::Unreadable(e) => match e {
                RequestError::Malformed(_)
                | RequestError::BadHost
                | RequestError::RepeatedField { .. } => 400,
                RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
                RequestError::BodyTooLarge { .. } => 413,
                RequestError::UnsupportedTransferEncoding => 501,
            },
            NotServed::Handshake(e) => match e {
                HandshakeError::UnsupportedVersion => 426,
                HandshakeError::MissingUpgrade | HandshakeError::BadKey => 400,
            },
            NotServed::BadQuery(_)
            | NotServed::BadPercentEncoding { .. }
            | NotServed::BadName { .. }
            | NotServed::BadBody(_)
            | NotServed::Invalid(_)
            | NotServed::BadPreamble(_) => 400,
            NotServed::NoSuchPath
            | NotServed::NoSuchInstance(_)
            | NotServed::KeyNotSet(_)
            | NotServed::NoSuchDevice(_) => 404,
            NotServed::MethodNotAllowed { .. } => 405,
            NotServed::DeviceExists(_) | NotServed::TooManyKeys { .. } => 409,
            NotServed::Registry(e) | NotServed::Batch(BatchError { error: e, .. }) => match e {
                RegistryError::Invalid(_) => 400,
                RegistryError::NameTaken(_)
                | RegistryError::Conflict { .. }
                | RegistryError::ListenerTaken { .. } => 409,
            },
            NotServed::NotRoot => 401,
            NotServed::Unidentified(_)
            | NotServed::InstanceVanished
            | NotServed::HiddenKey
            | NotServed::NoImages
            | NotServed::UbuntuProOff
            | NotServed::NotAdmin { .. }
            | NotServed::NoIdentityHeader
            | NotServed::ForwardedTokenRequest => 403,
            NotServed::TooSlow => 408,
            NotServed::RateLimited => 429,
            NotServed::NotDurable(_)
            | NotServed::WaitUnanswered
            | NotServed::NoKey(_)
            | NotServed::SigningFailed(_) => 500,
            NotServed::AtCapacity { .. }
            | NotServed::HandingOver
            | NotServed::HostUnreachable(_) => 503,
        }
    }

    /// What the metrics count it as, if anything beyond its status: the
    /// refusals for who asked and those at a limit.
    pub fn metrics_label(&self) -> Option<Reason> {
        let failure = match self {
            NotServed::Unidentified(Refusal::NoInstance { .. } | Refusal::ListenerGone { .. }) => {
                IdentityFailure::NoInstance
            }
            NotServed::Unidentified(Refusal::WrongListener { .. }) => {
                IdentityFailure::WrongListener
            }
            NotServed::Unidentified(Refusal::Ambiguous { .. }) => IdentityFailure::Ambiguous,
            NotServed::Unidentified(Refusal::Unverified { .. }) => IdentityFailure::Unverified,
            NotServed::NotRoot => IdentityFailure::WrongUid,
            NotServed::RateLimited => return Some(Reason::Limit(Limit::Rate)),
            NotServed::AtCapacity { limit, .. } => return Some(Reason::Limit(*limit)),
            NotServed::TooSlow => return Some(Reason::Limit(Limit::Timeout)),
            _ => return None,
        };
        Some(Reason::Identity(failure))
    }

    /// The answer: [`NotServed::status`], the [`fmt::Display`] text as a
    /// plain-text body (LXD's main-API envelope for [`NotServed::NoImages`],
    /// as LXD answers it), and the headers the status calls for.
    pub fn response(&self) -> Response {
        let status = self.status();
        let mut response = match self {
            // The agent's own answer is in the envelope a devlxd client
            // decodes an error from, since no guestsock wrote it.
            NotServed::NoImages | NotServed::HostUnreachable(_) => {
                Response::lxd_api_error(status, &self.to_string())
            }
            _ => Response::error(status, self),
        };
        match self {
            // "The server SHOULD send a Retry-After header field" with 503
            // (RFC 9110 15.6.4), and RFC 6585 4 suggests it with 429: one
            // second, the rate bucket's refill step and the accept retry's
            // order of magnitude.
            NotServed::RateLimited | NotServed::AtCapacity { .. } => {
                response.extra_header = Some("Retry-After: 1");
            }
            // The successor is listening already.
            NotServed::HandingOver => {
                response.extra_header = Some("Retry-After: 0");
                response.close = true;
            }
            // "...the server MUST ... send a |Sec-WebSocket-Version| header
            // field containing the version(s) the server understands"
            // (RFC 6455 4.4).
            NotServed::Handshake(HandshakeError::UnsupportedVersion) => {
                response.extra_header = Some("Sec-WebSocket-Version: 13");
            }
            // "The origin server MUST generate an Allow header field in a
            // 405 response" (RFC 9110 15.5.6).
            NotServed::MethodNotAllowed { allow } => response.allow = Some(allow),
            // The agent closes after it: there is nothing to relay to.
            NotServed::Unreadable(_)
            | NotServed::HostUnreachable(_)
            | NotServed::BadPreamble(_) => response.close = true,
            _ => {}
        }
        response.refused = self.metrics_label();
        response
    }
}

impl fmt::Display for NotServed {
    /// What the client is told (never an instance's name: see
    /// [`Refusal::guest_message`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotServed::Unreadable(e) => e.fmt(f),
            NotServed::Handshake(e) => f.write_str(e.message()),
            NotServed::BadQuery(why) | NotServed::BadBody(why) => f.write_str(why),
            NotServed::BadPercentEncoding { what } => write!(f, "bad percent-encoding in {what}"),
            NotServed::BadName { what, name } => write!(f, "{what} {name:?} is not {KeyRule}"),
            NotServed::Invalid(e) => e.fmt(f),
            NotServed::NoSuchPath => f.write_str("not found"),
            NotServed::MethodNotAllowed { .. } => f.write_str("method not allowed"),
            NotServed::NoSuchInstance(name) => write!(f, "instance {name:?} not found"),
            NotServed::KeyNotSet(key) => write!(f, "key {key:?} is not set"),
            NotServed::NoSuchDevice(dev) => write!(f, "device {dev:?} does not exist"),
            NotServed::DeviceExists(dev) => write!(f, "device {dev:?} already exists"),
            NotServed::Registry(e) => e.fmt(f),
            NotServed::Batch(e) => write!(f, "nothing registered: {e}"),
            NotServed::Unidentified(refusal) => f.write_str(&refusal.guest_message()),
            // LXD's body exactly: clients compare it.
            NotServed::NotRoot => f.write_str("Access denied for non-root user"),
            NotServed::InstanceVanished => f.write_str("instance vanished"),
            // LXD's body exactly (`api.NewGenericStatusError(403)`, written
            // by `http.Error`): its own test suite, and so clients, compare
            // it.
            NotServed::HiddenKey | NotServed::NoImages => f.write_str("Forbidden"),
            // LXD's `GetGuestToken` refusal, wrapped by
            // `devLXDUbuntuProTokenPostHandler`.
            NotServed::UbuntuProOff => f.write_str(
                "Failed getting an Ubuntu Pro guest token: Guest attachment not allowed",
            ),
            NotServed::NotAdmin { uid } => write!(f, "uid {uid} may not use the admin socket"),
            NotServed::RateLimited => {
                f.write_str("too many requests from this instance; slow down")
            }
            NotServed::AtCapacity { why, .. } => f.write_str(why),
            NotServed::TooSlow => f.write_str("the request was not sent in time"),
            NotServed::HandingOver => f.write_str(
                "this guestsock has handed over to a new process; nothing changed: send the request again on a new connection",
            ),
            NotServed::NotDurable(error) => write!(
                f,
                "the change was not made ({error}); nothing changed, so it can be retried"
            ),
            NotServed::WaitUnanswered => f.write_str("the wait could not be answered"),
            NotServed::NoIdentityHeader => {
                f.write_str("a token request must carry the header Guestsock-Identity: true")
            }
            NotServed::ForwardedTokenRequest => f.write_str(
                "a token request must come from the caller itself, not through a proxy \
                 (X-Forwarded-For or Forwarded)",
            ),
            NotServed::TooManyKeys { limit } => write!(
                f,
                "{limit} keys are published already; a retired key is dropped once its last \
                 token expires, rotate again then"
            ),
            NotServed::NoKey(why) => write!(f, "no new key could be made: {why}"),
            NotServed::SigningFailed(why) => write!(f, "the token could not be signed: {why}"),
            NotServed::HostUnreachable(why) => {
                write!(f, "the host's guestsock cannot be reached: {why}")
            }
            NotServed::BadPreamble(why) => why.fmt(f),
        }
    }
}

impl std::error::Error for NotServed {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::BodyKind;

    fn invalid() -> InvalidInstance {
        InvalidInstance {
            field: "name".into(),
            reason: "bad".into(),
        }
    }

    /// One variant: its status, its body (without the final `\n`), its one
    /// extra header, and its metrics label.
    type Row = (
        NotServed,
        u16,
        &'static str,
        Option<&'static str>,
        Option<Reason>,
    );

    /// Every variant.
    fn table() -> Vec<Row> {
        use IdentityFailure as I;
        let exact_host = "an HTTP/1.1 request needs exactly one Host header";
        vec![
            (
                NotServed::Unreadable(RequestError::Malformed("bad")),
                400,
                "bad",
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::BadHost),
                400,
                exact_host,
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::RepeatedField {
                    name: "Content-Length",
                }),
                400,
                "the header field Content-Length appears more than once; send it once",
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::HeadTooLarge),
                431,
                "request head too large",
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::TooManyHeaders),
                431,
                "too many header fields",
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::BodyTooLarge { limit: 16 }),
                413,
                "request body larger than 16 bytes",
                None,
                None,
            ),
            (
                NotServed::Unreadable(RequestError::UnsupportedTransferEncoding),
                501,
                "Transfer-Encoding is not supported; send Content-Length",
                None,
                None,
            ),
            (
                NotServed::Handshake(HandshakeError::MissingUpgrade),
                400,
                "a websocket request needs Upgrade: websocket and Connection: upgrade",
                None,
                None,
            ),
            (
                NotServed::Handshake(HandshakeError::BadKey),
                400,
                "Sec-WebSocket-Key must be 16 bytes in base64",
                None,
                None,
            ),
            (
                NotServed::Handshake(HandshakeError::UnsupportedVersion),
                426,
                "only Sec-WebSocket-Version 13 is supported",
                Some("Sec-WebSocket-Version: 13"),
                None,
            ),
            (NotServed::BadQuery("q".into()), 400, "q", None, None),
            (
                NotServed::BadPercentEncoding { what: "type" },
                400,
                "bad percent-encoding in type",
                None,
                None,
            ),
            (
                NotServed::BadName {
                    what: "key",
                    name: "a b".into(),
                },
                400,
                "key \"a b\" is not 1-255 printable ASCII characters without spaces or any of / ? # % \" \\",
                None,
                None,
            ),
            (NotServed::BadBody("b".into()), 400, "b", None, None),
            (NotServed::Invalid(invalid()), 400, "name: bad", None, None),
            (NotServed::NoSuchPath, 404, "not found", None, None),
            (
                NotServed::MethodNotAllowed { allow: "GET" },
                405,
                "method not allowed",
                None,
                None,
            ),
            (
                NotServed::NoSuchInstance("c1".into()),
                404,
                "instance \"c1\" not found",
                None,
                None,
            ),
            (
                NotServed::KeyNotSet("user.x".into()),
                404,
                "key \"user.x\" is not set",
                None,
                None,
            ),
            (
                NotServed::NoSuchDevice("eth0".into()),
                404,
                "device \"eth0\" does not exist",
                None,
                None,
            ),
            (
                NotServed::DeviceExists("eth0".into()),
                409,
                "device \"eth0\" already exists",
                None,
                None,
            ),
            (
                NotServed::Registry(RegistryError::Invalid(invalid())),
                400,
                "name: bad",
                None,
                None,
            ),
            (
                NotServed::Registry(RegistryError::NameTaken("c1".into())),
                409,
                "an instance named \"c1\" exists already",
                None,
                None,
            ),
            (
                NotServed::Registry(RegistryError::Conflict {
                    other: "c2".into(),
                    detail: "uid 7".into(),
                }),
                409,
                "match rule conflicts with instance \"c2\": uid 7",
                None,
                None,
            ),
            (
                NotServed::Batch(BatchError {
                    index: 3,
                    name: "c4".into(),
                    error: RegistryError::Conflict {
                        other: "c2".into(),
                        detail: "uid 7".into(),
                    },
                }),
                409,
                "nothing registered: instances[3] (\"c4\"): match rule conflicts with instance \"c2\": uid 7",
                None,
                None,
            ),
            (
                NotServed::Unidentified(Refusal::NoInstance { pid: 7, uid: 8 }),
                403,
                "pid 7 (uid 8) is not part of any registered instance",
                None,
                Some(Reason::Identity(I::NoInstance)),
            ),
            (
                NotServed::Unidentified(Refusal::Ambiguous {
                    pid: 7,
                    uid: 8,
                    first: "secret-a".into(),
                    second: "secret-b".into(),
                }),
                403,
                "pid 7 (uid 8) matches more than one instance; refusing to guess",
                None,
                Some(Reason::Identity(I::Ambiguous)),
            ),
            (
                NotServed::Unidentified(Refusal::Unverified {
                    pid: 7,
                    uid: 8,
                    reason: "why",
                }),
                403,
                "pid 7 (uid 8) could not be identified: why",
                None,
                Some(Reason::Identity(I::Unverified)),
            ),
            (
                NotServed::NotRoot,
                401,
                "Access denied for non-root user",
                None,
                Some(Reason::Identity(I::WrongUid)),
            ),
            (
                NotServed::InstanceVanished,
                403,
                "instance vanished",
                None,
                None,
            ),
            (NotServed::HiddenKey, 403, "Forbidden", None, None),
            (
                NotServed::NoImages,
                403,
                "",
                Some("X-Content-Type-Options: nosniff"),
                None,
            ),
            (
                NotServed::UbuntuProOff,
                403,
                "Failed getting an Ubuntu Pro guest token: Guest attachment not allowed",
                None,
                None,
            ),
            (
                NotServed::NotAdmin { uid: 1000 },
                403,
                "uid 1000 may not use the admin socket",
                None,
                None,
            ),
            (
                NotServed::RateLimited,
                429,
                "too many requests from this instance; slow down",
                Some("Retry-After: 1"),
                Some(Reason::Limit(Limit::Rate)),
            ),
            (
                NotServed::AtCapacity {
                    limit: Limit::PerInstance,
                    why: "full".into(),
                },
                503,
                "full",
                Some("Retry-After: 1"),
                Some(Reason::Limit(Limit::PerInstance)),
            ),
            (
                NotServed::TooSlow,
                408,
                "the request was not sent in time",
                None,
                Some(Reason::Limit(Limit::Timeout)),
            ),
            (
                NotServed::HandingOver,
                503,
                "this guestsock has handed over to a new process; nothing changed: send the request again on a new connection",
                Some("Retry-After: 0"),
                None,
            ),
            (
                NotServed::NotDurable("disk full".into()),
                500,
                "the change was not made (disk full); nothing changed, so it can be retried",
                None,
                None,
            ),
            (
                NotServed::WaitUnanswered,
                500,
                "the wait could not be answered",
                None,
                None,
            ),
            (
                NotServed::NoIdentityHeader,
                403,
                "a token request must carry the header Guestsock-Identity: true",
                None,
                None,
            ),
            (
                NotServed::ForwardedTokenRequest,
                403,
                "a token request must come from the caller itself, not through a proxy (X-Forwarded-For or Forwarded)",
                None,
                None,
            ),
            (
                NotServed::TooManyKeys { limit: 32 },
                409,
                "32 keys are published already; a retired key is dropped once its last token expires, rotate again then",
                None,
                None,
            ),
            (
                NotServed::NoKey("x".into()),
                500,
                "no new key could be made: x",
                None,
                None,
            ),
            (
                NotServed::SigningFailed("x".into()),
                500,
                "the token could not be signed: x",
                None,
                None,
            ),
            (
                NotServed::HostUnreachable("Connection refused (os error 111)".into()),
                503,
                "the host's guestsock cannot be reached: Connection refused (os error 111)",
                Some("X-Content-Type-Options: nosniff"),
                None,
            ),
            (
                NotServed::BadPreamble(PreambleError::UnknownVersion),
                400,
                "the agent's preamble is of a version this guestsock does not read",
                None,
                None,
            ),
        ]
    }

    #[test]
    fn every_reason_has_its_status_body_headers_and_label() {
        for (error, status, body, header, label) in table() {
            let r = error.response();
            assert_eq!(r.status, status, "{error:?}");
            assert_eq!(error.status(), status, "{error:?}");
            assert_eq!(error.metrics_label(), label, "{error:?}");
            assert_eq!(r.refused, label, "{error:?}");
            assert_eq!(r.extra_header, header, "{error:?}");
            assert_eq!(
                r.allow,
                match error {
                    NotServed::MethodNotAllowed { allow } => Some(allow),
                    _ => None,
                },
                "{error:?}"
            );
            assert_eq!(
                r.close,
                matches!(
                    error,
                    NotServed::Unreadable(_)
                        | NotServed::HandingOver
                        | NotServed::HostUnreachable(_)
                        | NotServed::BadPreamble(_)
                ),
                "{error:?}"
            );
            let text = String::from_utf8(r.body).unwrap();
            match error {
                NotServed::NoImages => {
                    assert_eq!(r.kind, BodyKind::Json);
                    assert!(
                        text.contains(r#""error_code":403,"error":"Forbidden""#),
                        "{text}"
                    );
                }
                NotServed::HostUnreachable(_) => {
                    assert_eq!(r.kind, BodyKind::Json);
                    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(json["type"], "error", "{text}");
                    assert_eq!(json["error_code"], status, "{text}");
                    assert_eq!(json["error"], body, "{text}");
                }
                _ => {
                    assert_eq!(r.kind, BodyKind::Error);
                    assert_eq!(text, format!("{body}\n"), "{error:?}");
                }
            }
        }
    }

    #[test]
    fn the_table_has_every_variant() {
        // A variant added to the enum fails to compile here until it is
        // named, and then fails this test until the table has it.
        let name = |e: &NotServed| match e {
            NotServed::Unreadable(_) => 0,
            NotServed::Handshake(_) => 1,
            NotServed::BadQuery(_) => 2,
            NotServed::BadPercentEncoding { .. } => 3,
            NotServed::BadName { .. } => 4,
            NotServed::BadBody(_) => 5,
            NotServed::Invalid(_) => 6,
            NotServed::NoSuchPath => 7,
            NotServed::MethodNotAllowed { .. } => 8,
            NotServed::NoSuchInstance(_) => 9,
            NotServed::KeyNotSet(_) => 10,
            NotServed::NoSuchDevice(_) => 11,
            NotServed::DeviceExists(_) => 12,
            NotServed::Registry(_) => 13,
            NotServed::Unidentified(_) => 14,
            NotServed::NotRoot => 15,
            NotServed::InstanceVanished => 16,
            NotServed::HiddenKey => 17,
            NotServed::NoImages => 18,
            NotServed::UbuntuProOff => 19,
            NotServed::NotAdmin { .. } => 20,
            NotServed::RateLimited => 21,
            NotServed::AtCapacity { .. } => 22,
            NotServed::TooSlow => 23,
            NotServed::NotDurable(_) => 24,
            NotServed::WaitUnanswered => 25,
            NotServed::NoIdentityHeader => 26,
            NotServed::ForwardedTokenRequest => 27,
            NotServed::TooManyKeys { .. } => 28,
            NotServed::NoKey(_) => 29,
            NotServed::SigningFailed(_) => 30,
            NotServed::Batch(_) => 31,
            NotServed::HandingOver => 32,
            NotServed::HostUnreachable(_) => 33,
            NotServed::BadPreamble(_) => 34,
        };
        let mut seen = [false; 35];
        for (error, ..) in table() {
            seen[name(&error)] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn the_guest_is_never_told_an_instance_name() {
        let error = NotServed::Unidentified(Refusal::Ambiguous {
            pid: 7,
            uid: 8,
            first: "secret-a".into(),
            second: "secret-b".into(),
        });
        let body = String::from_utf8(error.response().body).unwrap();
        assert!(!body.contains("secret"), "{body}");
    }
}
