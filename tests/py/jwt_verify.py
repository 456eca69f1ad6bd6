"""Verifies a JWT-SVID the way an OIDC relying party does, with PyJWT's PyJWKClient: discover
the issuer from its /.well-known/openid-configuration, fetch the JWKS the document names, pick
the key by the token's kid, and check signature, aud, exp, iat, sub and iss. Then checks that
the same relying party refuses what it must: the token with its claims changed (signature no
longer matches), an unsigned `alg: none` token carrying the same kid and claims, and the token
presented to another audience.

usage: jwt_verify.py ISSUER_URL TOKEN AUDIENCE ALG

Prints one JSON object {"header", "claims", "refused": {case: PyJWT's error}}; exits 0 when the
token verifies and every hostile case is refused, 1 otherwise.
"""

import base64
import json
import sys
import urllib.request

import jwt
from jwt import PyJWKClient


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode(token, key, alg, audience, issuer):
    return jwt.decode(
        token,
        key,
        algorithms=[alg],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "sub", "aud", "iss"]},
    )


def main(args):
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    issuer_url, token, audience, alg = args
    with urllib.request.urlopen(issuer_url + "/.well-known/openid-configuration") as answer:
        discovery = json.load(answer)
    if discovery["issuer"] != issuer_url:
        print(f"discovery issuer {discovery['issuer']!r} is not {issuer_url!r}")
        return 1
    client = PyJWKClient(discovery["jwks_uri"])
    signing_key = client.get_signing_key_from_jwt(token)
    header = jwt.get_unverified_header(token)
    claims = decode(token, signing_key, alg, audience, discovery["issuer"])

    head, body, signature = token.split(".")
    forged = dict(claims, sub=claims["sub"] + "-admin")
    tampered = ".".join([head, b64url(json.dumps(forged).encode()), signature])
    none_header = b64url(json.dumps({"alg": "none", "kid": header["kid"], "typ": "JWT"}).encode())
    unsigned = f"{none_header}.{body}."
    refused = {}
    failed = []
    for case, candidate, aud in [
        ("tampered", tampered, audience),
        ("alg_none", unsigned, audience),
        ("other_audience", token, audience + "-other"),
    ]:
        try:
            key = client.get_signing_key_from_jwt(candidate)
            decode(candidate, key, alg, aud, discovery["issuer"])
            failed.append(case)
        except jwt.PyJWTError as error:
            refused[case] = f"{type(error).__name__}: {error}"
    print(json.dumps({"header": header, "claims": claims, "refused": refused, "accepted": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
