//! The identity endpoints (docs/protocol.md section 9): a guest asks for a
//! token naming its instance; anyone reads the JWKS; the host rotates the
//! signing key.
//!
//! Owns the token request's rules (the `Guestsock-Identity: true` header,
//! no forwarding headers, `audience` and `ttl`) and the answers of the
//! JWKS and admin paths. Who the caller is was decided before (`guest`
//! authorizes a token request like any other); which key signs is
//! `issuer`'s business, and the signature is made off the loop (`signer`).

use std::time::Instant;

use crate::api::Change;
use crate::error::NotServed;
use crate::http::request::{Request, percent_decode};
use crate::http::response::Response;
use crate::issuer::{Issuer, IssuerConfig, unix_now};
use crate::jwt::{Claims, InstanceClaim};
use crate::limits::{
    DEFAULT_TOKEN_TTL_SECS, MAX_AUDIENCE_BYTES, MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS,
};
use crate::registry::Instance;

/// A token to mint: what the guest asked for and what the host knows of
/// it, decided on the loop when the request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mint {
    /// `aud`.
    pub audience: String,
    /// Seconds from `iat` to `exp`.
    pub ttl: u64,
    /// The caller's instance.
    pub instance: String,
    /// Its `type`.
    pub kind: &'static str,
    /// Its `location`.
    pub location: String,
    /// The caller's host uid.
    pub uid: u32,
    /// When the request's first byte arrived (for the latency metrics).
    pub started: Instant,
}

impl Mint {
    /// A token for `instance`'s caller of host uid `uid`.
    pub fn new(instance: &Instance, uid: u32, audience: String, ttl: u64) -> Mint {
        Mint {
            audience,
            ttl,
            instance: instance.spec.name.clone(),
            kind: instance.spec.kind.as_str(),
            location: instance.spec.location.clone().unwrap_or_default(),
            uid,
            started: Instant::now(),
        }
    }

    /// The claims of the token, issued at `iat` and expiring at `exp`;
    /// `jti` is left for the signer to fill with fresh random bits.
    pub fn claims(&self, config: &IssuerConfig, iat: u64, exp: u64) -> Claims {
        Claims {
            iss: config.issuer.clone(),
            sub: config.subject(&self.instance),
            aud: self.audience.clone(),
            iat,
            nbf: iat,
            exp,
            jti: String::new(),
            guestsock: InstanceClaim {
                instance: self.instance.clone(),
                kind: self.kind.to_owned(),
                location: self.location.clone(),
                host: config.host.clone(),
                uid: self.uid,
            },
        }
    }
}

/// The audience and ttl of a token request, once its headers pass: it must
/// carry `Guestsock-Identity: true` (as GCE's metadata server wants
/// `Metadata-Flavor: Google`: a program in the container that can be made
/// to fetch a URL for someone else sends no such header, so it cannot be
/// turned into a token vending machine), and must carry no
/// `X-Forwarded-For` or `Forwarded` (a proxy relaying someone else's
/// request; GCE refuses those too).
pub fn token_request(req: &Request<'_>) -> Result<(String, u64), NotServed> {
    if !req.identity_header {
        return Err(NotServed::NoIdentityHeader);
    }
    if req.forwarded {
        return Err(NotServed::ForwardedTokenRequest);
    }
    token_query(req.query)
}

/// `audience=<aud>[&ttl=<seconds>]`: the audience percent-decoded once,
/// 1 to [`MAX_AUDIENCE_BYTES`] visible ASCII characters (0x21-0x7e); the
/// ttl whole seconds from [`MIN_TOKEN_TTL_SECS`] to [`MAX_TOKEN_TTL_SECS`],
/// [`DEFAULT_TOKEN_TTL_SECS`] if absent. Either given twice is refused
/// rather than one of them guessed. Other parameters are ignored. Pure, for
/// the table test and the `token_query` fuzz target.
pub fn token_query(query: &str) -> Result<(String, u64), NotServed> {
    let mut audience = None;
    let mut ttl = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "audience" => &mut audience,
            "ttl" => &mut ttl,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(NotServed::BadQuery(format!("{name} is given twice")));
        }
    }
    let Some(raw) = audience else {
        return Err(NotServed::BadQuery(
            "audience is required: ?audience=<who the token is for>".into(),
        ));
    };
    let audience = percent_decode(raw).ok_or(NotServed::BadPercentEncoding { what: "audience" })?;
    if audience.is_empty()
        || audience.len() > MAX_AUDIENCE_BYTES
        || !audience.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(NotServed::BadQuery(format!(
            "audience must be 1 to {MAX_AUDIENCE_BYTES} visible ASCII characters (no spaces)"
        )));
    }
    let ttl = match ttl {
        None => DEFAULT_TOKEN_TTL_SECS,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .filter(|secs| (MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(secs))
            .ok_or_else(|| {
                NotServed::BadQuery(format!(
                    "ttl={text:?}: give whole seconds from {MIN_TOKEN_TTL_SECS} to {MAX_TOKEN_TTL_SECS}"
                ))
            })?,
    };
    Ok((audience.into_owned(), ttl))
}

/// The path of the JWK Set: public, so no caller's identity or rate is
/// asked for it.
pub const JWKS_PATH: &str = "/1.0/identity/jwks";

/// `GET /1.0/identity/jwks`, on either socket and for any caller (public
/// keys are public): the JWK Set of every published key. Raw JSON on the
/// guest socket; the admin socket envelopes it like every admin answer.
pub fn jwks(req: &Request<'_>, issuer: &Issuer) -> Response {
    match req.method {
        "GET" | "HEAD" => Response::json_bytes(issuer.jwks().to_vec()),
        _ => NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
    }
}

/// The admin socket's identity paths: `GET /1.0/identity` (the settings and
/// each key's life), `GET /1.0/identity/jwks`, and `POST
/// /1.0/identity/rotate` (a new signing key, answered once it is durable).
pub fn admin(req: &Request<'_>, issuer: &mut Issuer) -> (Response, Option<Change>) {
    let read = matches!(req.method, "GET" | "HEAD");
    match req.path {
        "/1.0/identity" if read => (Response::json(&issuer.describe()), None),
        JWKS_PATH => (jwks(req, issuer), None),
        "/1.0/identity/rotate" if req.method == "POST" => {
            let retired = issuer.ring().signing().key.kid.clone();
            match issuer.rotate(unix_now()) {
                Ok((staged, events)) => {
                    let kid = staged.signing().key.kid.clone();
                    (
                        Response::json(&serde_json::json!({"kid": kid, "retired": retired})),
                        Some(Change::Keys { staged, events }),
                    )
                }
                Err(error) => (error.response(), None),
            }
        }
        "/1.0/identity" => (
            NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
            None,
        ),
        "/1.0/identity/rotate" => (
            NotServed::MethodNotAllowed { allow: "POST" }.response(),
            None,
        ),
        _ => (NotServed::NoSuchPath.response(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule of the query, with the status each breach gets.
    #[test]
    fn token_query_table() {
        let long = "a".repeat(MAX_AUDIENCE_BYTES);
        let too_long = "a".repeat(MAX_AUDIENCE_BYTES + 1);
        let ok: &[(&str, &str, u64)] = &[
            ("audience=vault", "vault", 600),
            (
                "audience=https://vault.example/v1&ttl=60",
                "https://vault.example/v1",
                60,
            ),
            ("ttl=3600&audience=a", "a", 3600),
            ("audience=%7E!&ttl=0600", "~!", 600),
            ("audience=a+b", "a+b", 600),
            ("x=1&audience=a&&y", "a", 600),
            (&format!("audience={long}"), &long, 600),
        ];
        for &(query, audience, ttl) in ok {
            assert_eq!(
                token_query(query),
                Ok((audience.to_owned(), ttl)),
                "{query}"
            );
        }
        let bad = [
            "",
            "ttl=60",
            "audience",
            "audience=",
            "audience=a&audience=b",
            "audience=a%20b",
            "audience=a&ttl=1&ttl=60",
            &format!("audience={too_long}"),
            "audience=%zz",
            "audience=%FF",
            "audience=%00",
            "audience=a%0Ab",
            "audience=\u{e9}",
            "audience=a&ttl=59",
            "audience=a&ttl=3601",
            "audience=a&ttl=",
            "audience=a&ttl=+60",
            "audience=a&ttl=-60",
            "audience=a&ttl=60s",
            "audience=a&ttl=1e3",
            "audience=a&ttl=99999999999999999999999",
        ];
        for query in bad {
            let error = token_query(query).expect_err(query);
            assert_eq!(error.status(), 400, "{query}: {error}");
        }
    }
}
