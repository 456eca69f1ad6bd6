"""Verifies many JWT-SVIDs as an OIDC relying party does, with PyJWT's PyJWKClient: discovery
from ISSUER_URL, the JWKS it names (fetched anew, as a relying party does for an unknown kid),
each token's key by its kid, its algorithm from the header (only ES256, RS256 and PS256 are
allowed), and signature, aud, exp, iat, sub and iss.

usage: jwt_verify_many.py ISSUER_URL AUDIENCE TOKENS_FILE   (one token per line)

Prints one JSON object {"verified": {alg: count}, "refused": [{"line", "alg", "error"}]}; exits
0 whether or not tokens were refused (the caller decides what it expected).
"""

import json
import sys
import urllib.request

import jwt
from jwt import PyJWKClient

ALLOWED = {"ES256", "RS256", "PS256"}


def main(args):
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    issuer_url, audience, tokens_file = args
    with urllib.request.urlopen(issuer_url + "/.well-known/openid-configuration") as answer:
        discovery = json.load(answer)
    client = PyJWKClient(discovery["jwks_uri"], cache_keys=False, cache_jwk_set=False)
    verified, refused = {}, []
    with open(tokens_file) as tokens:
        for line, token in enumerate(tokens, start=1):
            token = token.strip()
            alg = jwt.get_unverified_header(token).get("alg")
            try:
                if alg not in ALLOWED:
                    raise jwt.InvalidAlgorithmError(f"{alg} is not allowed")
                key = client.get_signing_key_from_jwt(token)
                jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=audience,
                    issuer=discovery["issuer"],
                    options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                )
                verified[alg] = verified.get(alg, 0) + 1
            except (jwt.PyJWTError, jwt.PyJWKClientError) as error:
                refused.append({"line": line, "alg": alg, "error": f"{type(error).__name__}: {error}"})
    print(json.dumps({"verified": verified, "refused": refused}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
