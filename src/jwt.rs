//! JSON Web Tokens as guestsock issues and checks them (docs/protocol.md
//! section 9): ES256 compact JWS (RFC 7515, with RFC 7518 3.4's fixed
//! 64-byte signature), claims in SPIFFE's JWT-SVID profile, and public keys
//! as JWKs (RFC 7517) named by their RFC 7638 thumbprint.
//!
//! Owns a token's bytes: the JOSE header, the claims object, the signing
//! input, and verification (for `guestsock identity verify` and the tests).
//! Every cryptographic operation is ring's (ECDSA P-256 with SHA-256, SHA-256
//! for thumbprints); nothing here is hand-written cryptography. Which key
//! signs, and when, is `issuer`'s business; the thread that signs,
//! `signer`'s.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// base64url without padding (RFC 7515 2, "Base64url Encoding").
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` for anything else.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// The `guestsock` claim: what the host knows of the token's holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceClaim {
    /// The instance's name.
    pub instance: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The instance's `location`.
    pub location: String,
    /// The host's name.
    pub host: String,
    /// The caller's uid, as the host sees it.
    pub uid: u32,
}

/// A token's claims, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The issuer URL.
    pub iss: String,
    /// The SPIFFE ID naming host and instance.
    pub sub: String,
    /// The audience, one string (JWT-SVID allows a list; guestsock issues
    /// exactly the one the guest asked for).
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before: `iat`.
    pub nbf: u64,
    /// Expires at: `iat` plus the ttl.
    pub exp: u64,
    /// 128 random bits, base64url: the token's unique id.
    pub jti: String,
    /// The instance facts.
    pub guestsock: InstanceClaim,
}

/// One public key as a JWK (RFC 7517 4, RFC 7518 6.2.1), members in the
/// order docs/protocol.md section 9 lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The point's x coordinate, 32 bytes, base64url.
    pub x: String,
    /// The point's y coordinate, 32 bytes, base64url.
    pub y: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub usage: String,
    /// `ES256`.
    pub alg: String,
}

/// A JWK Set (RFC 7517 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// The JWK of a P-256 public key in SEC 1 uncompressed form
    /// (`0x04 || x || y`, what ring's `KeyPair::public_key` gives); `None`
    /// for anything else.
    pub fn p256(public_key: &[u8]) -> Option<Jwk> {
        let point = public_key.strip_prefix(&[4])?;
        if point.len() != 64 {
            return None;
        }
        let (x, y) = (b64(&point[..32]), b64(&point[32..]));
        Some(Jwk {
            kid: thumbprint(&x, &y),
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            usage: "sig".into(),
            alg: "ES256".into(),
        })
    }

    /// The key as ring takes it for verification: SEC 1 uncompressed.
    fn sec1(&self) -> Option<Vec<u8>> {
        if self.kty != "EC" || self.crv != "P-256" {
            return None;
        }
        let (x, y) = (unb64(&self.x)?, unb64(&self.y)?);
        if x.len() != 32 || y.len() != 32 {
            return None;
        }
        Some([&[4u8][..], &x, &y].concat())
    }
}

/// The RFC 7638 thumbprint of a P-256 key: SHA-256 over the required
/// members in lexicographic order, no whitespace (RFC 7638 3.2), base64url.
/// x and y are base64url, so they need no JSON escaping.
pub fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// The encoded JOSE header of a token signed by key `kid`:
/// `{"alg":"ES256","kid":"<kid>","typ":"JWT"}`, base64url.
pub fn encoded_header(kid: &str) -> String {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'static str,
        kid: &'a str,
        typ: &'static str,
    }
    let json = serde_json::to_vec(&Header {
        alg: "ES256",
        kid,
        typ: "JWT",
    })
    .unwrap_or_default();
    b64(&json)
}

/// The JWS signing input (RFC 7515 5.1, step 5):
/// `BASE64URL(header) || '.' || BASE64URL(claims)`.
pub fn signing_input(encoded_header: &str, claims: &Claims) -> String {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    format!("{encoded_header}.{}", b64(&json))
}

/// Half the order n of P-256's group, rounded down: `(n - 1) / 2`,
/// big-endian. n is FIPS 186-4 D.1.2.3's (SEC 2 2.4.2's `secp256r1`):
/// `FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632551`.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a fixed-form ES256 signature (`R || S`, 32 bytes each, RFC 7518
/// 3.4) has its S in the lower half of the group order: `S <= (n - 1) / 2`.
///
/// ECDSA is malleable: if `(r, s)` is a signature of a message, so is its
/// twin `(r, n - s)`, which anyone can compute from a token without the
/// key; exactly one of the two is "low-S". It is not a forgery (the claims
/// are the ones the host signed), but it is a second spelling of the same
/// token, which a verifier that keeps a token's bytes (a replay cache, a
/// revocation list) would take for another token. guestsock mints low-S
/// signatures only, so `verify` accepts those only. Comparing two public
/// numbers of fixed width, big-endian, is a comparison of their bytes in
/// order; nothing secret is involved.
pub fn is_low_s(signature: &[u8]) -> bool {
    signature.len() == 64 && signature[32..] <= HALF_ORDER[..]
}

/// Why a token did not verify. The token's fault in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Not three base64url parts with a JSON header and claims.
    Malformed(&'static str),
    /// A header whose `alg` is not `ES256` (RFC 8725 3.1: the algorithm is
    /// fixed by the verifier, never taken from the token).
    Algorithm(String),
    /// No published key has the header's `kid`.
    UnknownKey(String),
    /// The signature does not verify with that key.
    BadSignature,
    /// The signature verifies but its S is the high one ([`is_low_s`]): the
    /// malleated twin of the signature guestsock made, not one it made.
    HighS,
    /// `exp` has passed.
    Expired {
        /// The token's `exp`.
        exp: u64,
    },
    /// `nbf` is still to come.
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
    },
    /// `aud` is not the audience the verifier expects.
    WrongAudience(String),
    /// `iss` is not the host's issuer.
    WrongIssuer(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Malformed(why) => write!(f, "not a token: {why}"),
            VerifyError::Algorithm(alg) => write!(f, "algorithm {alg:?} is not ES256"),
            VerifyError::UnknownKey(kid) => {
                write!(
                    f,
                    "no published key has kid {kid:?} (dropped, or another issuer's)"
                )
            }
            VerifyError::BadSignature => f.write_str("the signature does not verify"),
            VerifyError::HighS => f.write_str(
                "the signature is the high-S twin of a signature (ECDSA malleability); \
                 guestsock signs with low S only",
            ),
            VerifyError::Expired { exp } => write!(f, "expired at {exp}"),
            VerifyError::NotYetValid { nbf } => write!(f, "not valid before {nbf}"),
            VerifyError::WrongAudience(aud) => write!(f, "issued for audience {aud:?}"),
            VerifyError::WrongIssuer(iss) => write!(f, "issued by {iss:?}"),
        }
    }
}

/// What a verifier insists on besides the signature and the times.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected<'a> {
    /// The issuer; `None` accepts any.
    pub issuer: Option<&'a str>,
    /// The audience; `None` accepts any.
    pub audience: Option<&'a str>,
}

/// Verifies a compact JWS against `keys` at time `now` (seconds since the
/// epoch): the header must say ES256 and name a key of the set, the
/// signature must verify and be low-S ([`is_low_s`]), `nbf <= now < exp`, and the issuer and audience
/// must be the expected ones. Returns the claims.
pub fn verify(
    token: &str,
    keys: &[Jwk],
    now: u64,
    expected: Expected<'_>,
) -> Result<Claims, VerifyError> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
    }
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated parts"));
    };
    let header_json = unb64(header).ok_or(VerifyError::Malformed("header is not base64url"))?;
    let header_value: Header = serde_json::from_slice(&header_json)
        .map_err(|_| VerifyError::Malformed("header is not a JOSE header"))?;
    if header_value.alg != "ES256" {
        return Err(VerifyError::Algorithm(header_value.alg));
    }
    let kid = header_value.kid.unwrap_or_default();
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
    let sec1 = key.sec1().ok_or(VerifyError::UnknownKey(kid))?;
    let signature = unb64(signature).ok_or(VerifyError::Malformed("signature is not base64url"))?;
    let signed = &token.trim()[..header.len() + 1 + payload.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &sec1)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    if !is_low_s(&signature) {
        return Err(VerifyError::HighS);
    }
    let claims_json = unb64(payload).ok_or(VerifyError::Malformed("claims are not base64url"))?;
    let claims: Claims = serde_json::from_slice(&claims_json)
        .map_err(|_| VerifyError::Malformed("claims are not guestsock's"))?;
    if now >= claims.exp {
        return Err(VerifyError::Expired { exp: claims.exp });
    }
    if now < claims.nbf {
        return Err(VerifyError::NotYetValid { nbf: claims.nbf });
    }
    if expected.issuer.is_some_and(|iss| iss != claims.iss) {
        return Err(VerifyError::WrongIssuer(claims.iss));
    }
    if expected.audience.is_some_and(|aud| aud != claims.aud) {
        return Err(VerifyError::WrongAudience(claims.aud));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn key() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let jwk = Jwk::p256(pair.public_key().as_ref()).unwrap();
        (pair, jwk)
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://host1".into(),
            sub: "spiffe://host1/host/host1/instance/c1".into(),
            aud: "vault".into(),
            iat: 1000,
            nbf: 1000,
            exp: 1600,
            jti: "abc".into(),
            guestsock: InstanceClaim {
                instance: "c1".into(),
                kind: "container".into(),
                location: "host1".into(),
                host: "host1".into(),
                uid: 0,
            },
        }
    }

    /// A token signed by ring directly, its signature's S low or high as
    /// asked (ring makes either, one half of the time each).
    fn token_with(pair: &EcdsaKeyPair, jwk: &Jwk, claims: &Claims, low_s: bool) -> String {
        let input = signing_input(&encoded_header(&jwk.kid), claims);
        loop {
            let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            assert_eq!(
                sig.as_ref().len(),
                64,
                "RFC 7518 3.4: R || S, 32 bytes each"
            );
            if is_low_s(sig.as_ref()) == low_s {
                return format!("{input}.{}", b64(sig.as_ref()));
            }
        }
    }

    fn token(pair: &EcdsaKeyPair, jwk: &Jwk, claims: &Claims) -> String {
        token_with(pair, jwk, claims, true)
    }

    /// `HALF_ORDER` is P-256's n (FIPS 186-4 D.1.2.3, written here again
    /// from the standard) shifted right by one bit; S at it is low, one
    /// above it high.
    #[test]
    fn half_order_is_half_of_p256s_n() {
        let n = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
        let n: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&n[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut half = [0u8; 32];
        let mut carry = 0;
        for (out, byte) in half.iter_mut().zip(&n) {
            *out = carry << 7 | byte >> 1;
            carry = byte & 1;
        }
        assert_eq!(half, HALF_ORDER);
        let r = [0x11u8; 32];
        let at = [&r[..], &HALF_ORDER].concat();
        assert!(is_low_s(&at));
        let mut above = HALF_ORDER;
        above[31] += 1;
        assert!(!is_low_s(&[&r[..], &above].concat()));
        assert!(is_low_s(&[&r[..], &[0; 32]].concat()));
        assert!(!is_low_s(&[&r[..], &[0xff; 32]].concat()));
        assert!(!is_low_s(&at[..63]), "not the fixed 64-byte form");
    }

    /// A high-S signature verifies as ECDSA (ring accepts it) but is the
    /// twin of the low-S one, and `verify` refuses it.
    #[test]
    fn a_high_s_signature_is_refused() {
        let (pair, jwk) = key();
        let high = token_with(&pair, &jwk, &claims(), false);
        let (input, signature) = high.rsplit_once('.').unwrap();
        assert!(
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &jwk.sec1().unwrap())
                .verify(input.as_bytes(), &unb64(signature).unwrap())
                .is_ok(),
            "ring accepts it as a signature"
        );
        assert_eq!(
            verify(&high, std::slice::from_ref(&jwk), 1000, Expected::default()),
            Err(VerifyError::HighS)
        );
        let low = token(&pair, &jwk, &claims());
        assert_eq!(
            verify(&low, &[jwk], 1000, Expected::default()),
            Ok(claims())
        );
    }

    /// RFC 7638's rules on RFC 7517 A.1's example P-256 key, the expected
    /// value computed outside this code: `printf
    /// '{"crv":"P-256","kty":"EC","x":"<x>","y":"<y>"}' | openssl dgst -sha256
    /// -binary | base64 | tr '+/' '-_' | tr -d =`.
    #[test]
    fn thumbprint_is_rfc_7638s() {
        let x = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
        let y = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";
        assert_eq!(
            thumbprint(x, y),
            "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s"
        );
    }

    #[test]
    fn a_token_verifies_and_each_defect_is_named() {
        let (pair, jwk) = key();
        let good = token(&pair, &jwk, &claims());
        let keys = [jwk.clone()];
        let exact = Expected {
            issuer: Some("https://host1"),
            audience: Some("vault"),
        };
        assert_eq!(verify(&good, &keys, 1000, exact), Ok(claims()));
        assert_eq!(
            verify(&good, &keys, 1599, Expected::default()),
            Ok(claims())
        );
        // The claims changed under the same signature (uid 0 claimed by
        // another uid).
        let forged = Claims {
            guestsock: InstanceClaim {
                uid: 1000,
                ..claims().guestsock
            },
            ..claims()
        };
        let signature = good.rsplit('.').next().unwrap();
        let tampered = format!(
            "{}.{signature}",
            signing_input(&encoded_header(&jwk.kid), &forged)
        );
        let table: Vec<(String, u64, Expected<'_>, VerifyError)> = vec![
            (
                good.clone(),
                1600,
                exact,
                VerifyError::Expired { exp: 1600 },
            ),
            (
                good.clone(),
                999,
                exact,
                VerifyError::NotYetValid { nbf: 1000 },
            ),
            (
                good.clone(),
                1000,
                Expected {
                    audience: Some("other"),
                    ..exact
                },
                VerifyError::WrongAudience("vault".into()),
            ),
            (
                good.clone(),
                1000,
                Expected {
                    issuer: Some("https://x"),
                    ..exact
                },
                VerifyError::WrongIssuer("https://host1".into()),
            ),
            (tampered.clone(), 1000, exact, VerifyError::BadSignature),
            (
                "a.b".into(),
                1000,
                exact,
                VerifyError::Malformed("not three dot-separated parts"),
            ),
        ];
        for (token, now, expected, error) in table {
            assert_eq!(verify(&token, &keys, now, expected), Err(error), "{token}");
        }
        // Another key with the same kid cannot stand in for it.
        let (_, other) = key();
        let impostor = Jwk {
            kid: jwk.kid.clone(),
            ..other
        };
        assert_eq!(
            verify(&good, &[impostor], 1000, exact),
            Err(VerifyError::BadSignature)
        );
        assert!(matches!(
            verify(&good, &[], 1000, exact),
            Err(VerifyError::UnknownKey(_))
        ));
        // alg=none and friends are refused before any key is looked at.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            good.split('.').nth(1).unwrap()
        );
        assert_eq!(
            verify(&none, &keys, 1000, exact),
            Err(VerifyError::Algorithm("none".into()))
        );
    }

    #[test]
    fn header_and_jwk_have_the_protocols_shape() {
        let (_, jwk) = key();
        let header = String::from_utf8(unb64(&encoded_header(&jwk.kid)).unwrap()).unwrap();
        assert_eq!(
            header,
            format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, jwk.kid)
        );
        let json = serde_json::to_string(&jwk).unwrap();
        assert!(
            json.starts_with(r#"{"kty":"EC","crv":"P-256","x":""#)
                && json.ends_with(r#"","use":"sig","alg":"ES256"}"#),
            "{json}"
        );
        assert_eq!(jwk.kid, thumbprint(&jwk.x, &jwk.y));
        assert_eq!(Jwk::p256(&[4; 64]), None);
    }
}
