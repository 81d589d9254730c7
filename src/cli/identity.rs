//! The identity token commands (docs/identity.md): `token`, a guest's
//! request for a token of its own instance, and `identity`, the host's
//! side: the published keys, rotating them, verifying a token and an
//! OpenID Connect discovery document for verifiers.
//!
//! Owns their arguments and output. Signing and the keys' life are the
//! server's (`issuer`, `signer`); a token's bytes and their verification,
//! `jwt`'s; `serve`'s identity flags, `cli::serve`'s; reaching either
//! socket and wording a failure to, `cli`'s.

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::sockets::{AdminSocket, GuestSocketArg, PathOrigin, guest_refusal, guest_remedy};
use super::stdio::{print_json, read_stdin, write_stdout};
use crate::client::{self, encode_segment};
use crate::limits::{DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};

/// `guestsock token AUDIENCE`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct TokenArgs {
    /// Who the token is for.
    #[arg(
        value_name = "AUDIENCE",
        help = "Who the token is for (its `aud`), like https://vault.example.com"
    )]
    pub audience: String,
    /// `--ttl`.
    #[arg(long, value_name = "S", help = format!(
        "Seconds until it expires, {MIN_TOKEN_TTL_SECS} to {MAX_TOKEN_TTL_SECS} \
         [default: {DEFAULT_TOKEN_TTL_SECS}]"
    ))]
    pub ttl: Option<u64>,
    /// The guest socket.
    #[command(flatten)]
    pub socket: GuestSocketArg,
}

/// `guestsock identity ...`.
#[derive(Debug, PartialEq, Subcommand)]
pub enum IdentityCall {
    /// Print the JWK Set of every published key (what verifiers fetch)
    Jwks,
    /// Make a new signing key now; the old one stays published until its last token expires
    Rotate {
        /// `--quiet`.
        #[arg(
            long,
            short,
            help = "Print nothing on success; the exit status says it"
        )]
        quiet: bool,
    },
    /// Check a token against the host's keys and print its claims; exits non-zero if it does not verify
    Verify {
        /// The token; `-` reads it from standard input.
        #[arg(value_name = "TOKEN|-")]
        token: String,
        /// `--audience`.
        #[arg(long, value_name = "A", help = "Also insist on this audience")]
        audience: Option<String>,
    },
    /// Print an OpenID Connect discovery document for the issuer (serve it at <issuer>/.well-known/openid-configuration)
    Discovery {
        /// `--jwks-uri`.
        #[arg(
            long,
            value_name = "URL",
            help = "Where the JWKS is published (a web server serving --identity-jwks-file)"
        )]
        jwks_uri: String,
    },
}

/// `guestsock token AUDIENCE`: a guest-side token request; the token goes
/// to standard output (no newline, as served), an error status to standard
/// error with a non-zero exit.
pub(super) fn token(
    socket: &Path,
    origin: PathOrigin,
    audience: &str,
    ttl: Option<u64>,
) -> Result<(), String> {
    let mut path = format!("/1.0/identity/token?audience={}", encode_segment(audience));
    if let Some(ttl) = ttl {
        path.push_str(&format!("&ttl={ttl}"));
    }
    let reply = client::call_with(socket, "GET", &path, &["Guestsock-Identity: true"], b"")
        .map_err(|e| guest_remedy(e, origin))?;
    if reply.status == 200 {
        write_stdout(&reply.body, "the token")
    } else {
        Err(guest_refusal(&reply))
    }
}

/// `guestsock identity ...`: the host's side of identity tokens.
pub(super) fn identity(admin: &AdminSocket, call: IdentityCall) -> Result<(), String> {
    match call {
        IdentityCall::Jwks => print_json(&admin.call("GET", "/1.0/identity/jwks", b"")?),
        IdentityCall::Rotate { quiet } => {
            let rotated = admin.call("POST", "/1.0/identity/rotate", b"")?;
            if !quiet {
                println!(
                    "identity key rotated: {} signs from now on; {} stays published until its last token expires",
                    rotated["kid"].as_str().unwrap_or_default(),
                    rotated["retired"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        IdentityCall::Verify { token, audience } => {
            let token = if token == "-" {
                String::from_utf8(read_stdin("the token")?)
                    .map_err(|_| "the token on standard input is not text".to_owned())?
            } else {
                token
            };
            let settings = admin.call("GET", "/1.0/identity", b"")?;
            let jwks: crate::jwt::JwkSet =
                serde_json::from_value(admin.call("GET", "/1.0/identity/jwks", b"")?)
                    .map_err(|e| format!("the server's JWKS is not a JWK Set: {e}"))?;
            let expected = crate::jwt::Expected {
                issuer: settings["issuer"].as_str(),
                audience: audience.as_deref(),
            };
            let claims =
                crate::jwt::verify(&token, &jwks.keys, crate::issuer::unix_now(), expected)
                    .map_err(|e| format!("the token does not verify: {e}"))?;
            let claims = serde_json::to_string_pretty(&claims).unwrap_or_default();
            println!("{claims}");
            Ok(())
        }
        IdentityCall::Discovery { jwks_uri } => {
            if !(jwks_uri.starts_with("https://") || jwks_uri.starts_with("http://")) {
                return Err(format!("--jwks-uri {jwks_uri:?} is not an http(s) URL"));
            }
            let settings = admin.call("GET", "/1.0/identity", b"")?;
            let document =
                discovery_document(settings["issuer"].as_str().unwrap_or_default(), &jwks_uri);
            println!(
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// An OpenID Connect discovery document (OpenID Connect Discovery 1.0,
/// section 3) for guestsock's tokens: the issuer, where its keys are, and
/// what its tokens are. Like Kubernetes' service account issuer discovery,
/// it has no `authorization_endpoint`: tokens come from the guest socket,
/// not from a URL, and verifiers only read `issuer` and `jwks_uri`.
pub fn discovery_document(issuer: &str, jwks_uri: &str) -> Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "guestsock"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::command;

    #[test]
    fn identity_commands() {
        assert_eq!(
            command("token https://vault --ttl 60 --socket /s"),
            Command::Token(TokenArgs {
                audience: "https://vault".into(),
                ttl: Some(60),
                socket: GuestSocketArg {
                    socket: Some("/s".into()),
                },
            })
        );
        assert!(matches!(
            command("identity verify TOKEN --audience a"),
            Command::Identity {
                call: IdentityCall::Verify { .. },
                ..
            }
        ));
        let document = discovery_document("https://h.example", "https://h.example/jwks.json");
        assert_eq!(document["issuer"], "https://h.example");
        assert_eq!(
            document["id_token_signing_alg_values_supported"][0],
            "ES256"
        );
    }
}
