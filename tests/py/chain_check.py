"""Verifies a certificate chain with pyca `cryptography`, independently of hsmca's own code.

usage: chain_check.py ROOTS.pem CHAIN.pem

CHAIN.pem holds a certificate first, then each issuer up to (not including) a root; ROOTS.pem
holds one or more self-signed roots. Every link must verify (signature by the next
certificate's key, issuer name equal to its subject, AKI equal to its SKI) and lie inside its
issuer's validity, and the last one must be issued by one of the roots. Prints one line per
link; exits 1 on the first broken link.
"""

import sys

from cryptography import x509


def load_all(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def ski(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def aki(cert):
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def check_link(child, parent):
    assert child.issuer.public_bytes() == parent.subject.public_bytes(), "issuer name differs"
    assert aki(child) == ski(parent), "AKI differs from the issuer's SKI"
    assert parent.not_valid_before_utc <= child.not_valid_before_utc, "starts before its issuer"
    assert child.not_valid_after_utc <= parent.not_valid_after_utc, "outlives its issuer"
    bc = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca, "the issuer is not a CA"
    child.verify_directly_issued_by(parent)


def main(args):
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    roots, chain = load_all(args[0]), load_all(args[1])
    try:
        for child, parent in zip(chain, chain[1:]):
            check_link(child, parent)
            print(f"{child.subject.rfc4514_string()} <- {parent.subject.rfc4514_string()}: ok")
        top = chain[-1]
        errors = []
        for root in roots:
            try:
                check_link(top, root)
                print(f"{top.subject.rfc4514_string()} <- root {root.subject.rfc4514_string()}: ok")
                return 0
            except (AssertionError, ValueError, x509.ExtensionNotFound) as e:
                errors.append(f"{root.subject.rfc4514_string()}: {e}")
        raise AssertionError("no root issued the chain: " + "; ".join(errors))
    except (AssertionError, ValueError, x509.ExtensionNotFound, Exception) as e:
        print(f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
