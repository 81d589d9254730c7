#!/usr/bin/env python3
"""Makes the high-S twin of a guestsock token's signature the way anyone
holding the token could, with no key: ECDSA is malleable, and if (r, s)
signs a message so does (r, n - s). Checks the twin with `cryptography`
(not with guestsock's code) against the key the socket publishes.

    python3 high_s_twin.py SOCKET < token

Prints one JSON object: {"low_s": the token's own S is at most (n - 1) / 2,
"twin": the token with its signature replaced by (r, n - s), "twin_verifies":
cryptography accepts the twin's signature under the published key named by
the token's kid}.
"""
import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verify_token import fetch_jwks

# The order of P-256's group, as FIPS 186-4 D.1.2.3 gives it.
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    token = sys.stdin.read().strip()
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    assert len(raw) == 64, "RFC 7518 3.4: R || S, 32 bytes each"
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin_s = N - s
    kid = json.loads(unb64(header))["kid"]
    jwk = next(k for k in fetch_jwks(sys.argv[1])["keys"] if k["kid"] == kid)
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64(jwk["x"]), "big"),
        int.from_bytes(unb64(jwk["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    signed = f"{header}.{payload}".encode()
    try:
        key.verify(encode_dss_signature(r, twin_s), signed, ec.ECDSA(hashes.SHA256()))
        twin_verifies = True
    except InvalidSignature:
        twin_verifies = False
    twin = raw[:32] + twin_s.to_bytes(32, "big")
    print(
        json.dumps(
            {
                "low_s": s <= (N - 1) // 2,
                "twin": f"{header}.{payload}.{b64(twin)}",
                "twin_verifies": twin_verifies,
            }
        )
    )


if __name__ == "__main__":
    main()
