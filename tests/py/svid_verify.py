"""Verifies a leaf with pyca `cryptography`'s path builder (x509.verification), the way a
Python relying party does: not a link-by-link check but the library's own policy.

usage: svid_verify.py ROOTS.pem CHAIN.pem LEAF.pem

ROOTS.pem holds the trust anchors, CHAIN.pem the intermediates the peer presents (extra
certificates, such as the root, are ignored by path building), LEAF.pem the end-entity
certificate. Verifies it as a client certificate (the one verifier that accepts a leaf whose
only name is a URI). Prints "ok" or the verifier's refusal; exits 0 or 1.
"""

import sys

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError


def load_all(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def main(args):
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    roots, chain, (leaf,) = load_all(args[0]), load_all(args[1]), load_all(args[2])
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    try:
        verifier.verify(leaf, chain)
    except VerificationError as e:
        print(f"refused: {e}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
