"""Checks a leaf X509-SVID against the SPIFFE rules in DESIGN.md with pyca `cryptography`.

usage: leaf_rules.py CERT.pem SPIFFE_ID

basicConstraints critical cA=false; keyUsage critical digitalSignature only; EKU exactly
serverAuth + clientAuth; exactly one URI SAN, equal to SPIFFE_ID; SKI and AKI present.
Exits 1 on the first rule broken.
"""

import sys

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID


def main(args):
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        ext = cert.extensions
        bc = ext.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and not bc.value.ca, "basicConstraints must be critical cA=false"
        ku = ext.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature, "keyUsage critical digitalSignature"
        assert not (ku.value.key_cert_sign or ku.value.crl_sign), "a leaf cannot sign certificates"
        assert not (ku.value.content_commitment or ku.value.data_encipherment), "extra keyUsage"
        eku = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}, f"EKU {eku}"
        uris = ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        assert uris == [args[1]], f"URI SANs {uris}, expected [{args[1]}]"
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
        ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except (AssertionError, x509.ExtensionNotFound) as e:
        print(f"{args[0]}: {type(e).__name__}: {e}")
        return 1
    print(f"{args[0]}: leaf X509-SVID rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
