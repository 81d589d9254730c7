#!/usr/bin/env python3
"""Verifies a guestsock identity token the way a third party would, with an
implementation nobody in this project wrote: PyJWT (with `cryptography` for
ES256), against the JWK Set fetched from guestsock's socket.

    python3 verify_token.py SOCKET AUDIENCE ISSUER [AT] < token

SOCKET is either socket (both serve GET /1.0/identity/jwks; the admin one
wraps it in LXD's envelope). AT, if given, is the verifier's clock in
seconds since the epoch (PyJWT reads the clock through
`datetime.now`, which is replaced for that), to check expiry without
waiting for it.

Prints one JSON object: {"ok": true, "header": ..., "claims": ..., "kids":
[...], "thumbprints_ok": bool} or {"ok": false, "error": <PyJWT's exception
class>, ...}. "thumbprints_ok" says each published kid is its key's RFC 7638
thumbprint, computed here with hashlib.
"""
import base64
import datetime
import hashlib
import json
import socket
import sys

import jwt
import jwt.api_jwt


def fetch_jwks(path):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    conn.sendall(b"GET /1.0/identity/jwks HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ")[1]
    if status != b"200":
        raise SystemExit(f"GET /1.0/identity/jwks: {head!r} {body!r}")
    document = json.loads(body)
    # The admin socket's answer is in LXD's envelope.
    return document.get("metadata", document)


def thumbprint(key):
    canonical = json.dumps(
        {"crv": key["crv"], "kty": key["kty"], "x": key["x"], "y": key["y"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def main():
    path, audience, issuer = sys.argv[1], sys.argv[2], sys.argv[3]
    if len(sys.argv) > 4:
        at = float(sys.argv[4])

        class Clock(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.datetime.fromtimestamp(at, tz)

        jwt.api_jwt.datetime = Clock
    token = sys.stdin.read().strip()
    jwks = fetch_jwks(path)
    kids = [key["kid"] for key in jwks["keys"]]
    thumbprints_ok = all(thumbprint(key) == key["kid"] for key in jwks["keys"])
    result = {"kids": kids, "thumbprints_ok": thumbprints_ok}
    try:
        header = jwt.get_unverified_header(token)
        result["header"] = header
        keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
        if header.get("kid") not in keys:
            raise jwt.exceptions.PyJWKSetError(f"no published key has kid {header.get('kid')}")
        claims = jwt.decode(
            token,
            key=keys[header["kid"]],
            algorithms=["ES256"],
            audience=audience,
            issuer=issuer,
            options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]},
        )
        result.update(ok=True, claims=claims)
    except jwt.exceptions.PyJWTError as e:
        result.update(ok=False, error=type(e).__name__, message=str(e))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
