"""Checks CA certificates against the consumer rules in DESIGN.md with pyca `cryptography`,
independently of hsmca's own code.

usage: ca_rules.py ISSUER.pem CERT.pem PATHLEN|none [ISSUER.pem CERT.pem PATHLEN|none ...]

For each triple: basicConstraints critical cA=true with the given pathLen, keyUsage critical
and exactly keyCertSign + cRLSign, no extendedKeyUsage, a subject key identifier, an
authority key identifier equal to the issuer's subject key identifier, the issuer name equal
to the issuer's subject (DER), and a signature that verifies with the issuer's key. Prints
one line per certificate and exits 1 on the first rule broken.
"""

import sys

from cryptography import x509
from cryptography.x509.oid import ExtensionOID


def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def check(issuer_path, cert_path, path_len):
    issuer, cert = load(issuer_path), load(cert_path)
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca, "basicConstraints must be critical with cA=true"
    expected = None if path_len == "none" else int(path_len)
    assert bc.value.path_length == expected, f"pathLen {bc.value.path_length}, expected {expected}"
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical, "keyUsage must be critical"
    usages = {
        name
        for name in (
            "digital_signature", "content_commitment", "key_encipherment",
            "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
        )
        if getattr(ku.value, name)
    }
    assert usages == {"key_cert_sign", "crl_sign"}, f"keyUsage {sorted(usages)}"
    try:
        ext.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE)
        raise AssertionError("a CA certificate must not carry extendedKeyUsage")
    except x509.ExtensionNotFound:
        pass
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical and ski.value.digest, "subjectKeyIdentifier missing"
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki.value.key_identifier == issuer_ski, "AKI differs from the issuer's SKI"
    assert cert.issuer.public_bytes() == issuer.subject.public_bytes(), "issuer name differs"
    cert.verify_directly_issued_by(issuer)
    print(f"{cert_path}: CA rules hold (pathLen {expected})")


def main(args):
    if len(args) % 3 != 0 or not args:
        print(__doc__, file=sys.stderr)
        return 2
    for i in range(0, len(args), 3):
        try:
            check(*args[i : i + 3])
        except (AssertionError, x509.ExtensionNotFound, ValueError) as e:
            print(f"{args[i + 1]}: {type(e).__name__}: {e}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
