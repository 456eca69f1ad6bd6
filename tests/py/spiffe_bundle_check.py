"""Reads a SPIFFE bundle the way a workload in another trust domain does, with the `spiffe`
package (py-spiffe): the document at BUNDLE_URL as the trust domain's JWT bundle (its
`jwt-svid` keys, by kid) and X.509 bundle (its `x509-svid` entries' certificates), then
validates a JWT-SVID against the JWT bundle for AUDIENCE, and checks that it refuses the token
for another audience and with its payload changed.

usage: spiffe_bundle_check.py BUNDLE_URL TRUST_DOMAIN TOKEN AUDIENCE

Prints one JSON object {"jwt_kids", "x509_authorities", "spiffe_id", "audience", "refused"};
exits 0 when the token validates and both hostile cases are refused, 1 otherwise.
"""

import base64
import json
import sys
import urllib.request

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtBundle, JwtSvid, TrustDomain, X509Bundle


def main(args):
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    url, trust_domain, token, audience = args
    with urllib.request.urlopen(url) as answer:
        document = answer.read()
    domain = TrustDomain(trust_domain)
    keys = json.loads(document)["keys"]
    # py-spiffe 0.3 parses a JWT bundle from a JWKS of JWT authorities only (every key with a
    # kid), as the Workload API hands them out, and an X.509 bundle from certificates: so the
    # SPIFFE bundle is split by `use`, as go-spiffe's spiffebundle.Parse does.
    jwt_keys = [key for key in keys if key.get("use") == "jwt-svid"]
    jwt_bundle = JwtBundle.parse(domain, json.dumps({"keys": jwt_keys}).encode())
    x509_der = b"".join(
        base64.b64decode(key["x5c"][0]) for key in keys if key.get("use") == "x509-svid"
    )
    x509_bundle = X509Bundle.parse_raw(domain, x509_der)
    svid = JwtSvid.parse_and_validate(token, jwt_bundle, {audience})
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = claims["sub"] + "-admin"
    changed = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused, accepted = {}, []
    for case, candidate, aud in [
        ("other_audience", token, audience + "-other"),
        ("tampered", f"{head}.{changed}.{signature}", audience),
    ]:
        try:
            JwtSvid.parse_and_validate(candidate, jwt_bundle, {aud})
            accepted.append(case)
        except Exception as error:  # py-spiffe raises its own error types per check
            refused[case] = f"{type(error).__name__}: {error}"
    print(
        json.dumps(
            {
                "jwt_kids": sorted(jwt_bundle.jwt_authorities.keys()),
                "x509_authorities": [
                    base64.b64encode(c.public_bytes(Encoding.DER)).decode()
                    for c in x509_bundle.x509_authorities
                ],
                "spiffe_id": str(svid.spiffe_id),
                "audience": sorted(svid.audience),
                "refused": refused,
                "accepted": accepted,
            }
        )
    )
    return 1 if accepted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
