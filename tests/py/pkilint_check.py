"""Lints certificates or CRLs with pkilint's RFC 5280 linters, through its Python API: the
validators that `lint_pkix_cert lint` runs for a certificate, and those that
`lint_crl lint -t CRL -p PKIX` runs for a CRL.

usage: pkilint_check.py {certificate|crl} FILE [FILE ...]

FILE is DER or PEM; a PEM file may hold several documents, each linted. Every finding is
printed (severity, code, node path, message), then one line per file:
"FILE: N findings, M failing". Exit status: 0 when no finding of severity WARNING or above
(WARNING, ERROR, FATAL) remains, 1 otherwise or when a file cannot be read or decoded,
2 on a usage error. NOTICE and INFO findings are printed but never fail.

One exception, and only one: pkilint's URI syntax check knows only web schemes and reports
`pkix.invalid_uri_syntax` for every SPIFFE ID, so that finding is tolerated when the URI
value of the node it concerns is a SPIFFE ID (`spiffe://` followed by a trust domain and
path as the SPIFFE specification allows) outside nameConstraints. Every other finding counts.
"""

import base64
import re
import sys

from pkilint import loader, pkix
from pkilint.pkix import certificate, crl, extension, general_name, name
from pkilint.validation import ValidationFindingSeverity

FAILING = ValidationFindingSeverity.WARNING  # this severity and the graver ones fail

# A SPIFFE ID as the SPIFFE ID specification (and src/pki/spiffe.rs) has it: a trust domain
# of 1 to 255 bytes of [a-z0-9._-], then path segments of [A-Za-z0-9._-], none empty, "." or
# "..", no trailing "/", no query or fragment; 2048 bytes at most in all.
SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]{1,255}(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+)*")


def certificate_validator():
    """As pkilint/bin/lint_pkix_cert.py builds it."""
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def crl_validator():
    """As pkilint/bin/lint_crl.py builds it for `-t CRL -p PKIX` (the type only matters to
    the CA/B Forum profile, which adds validators; the PKIX profile adds none)."""
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


KINDS = {
    # kind: (document loader, PEM label, validator factory)
    "certificate": (loader.RFC5280CertificateDocumentLoader(), "CERTIFICATE", certificate_validator),
    "crl": (loader.RFC5280CertificateListDocumentLoader(), "X509 CRL", crl_validator),
}


def is_tolerated(code, node):
    """The one tolerated finding: the URI syntax check on a SPIFFE ID. Decided on the value
    of the node the finding concerns, never on the code or message alone. Not inside
    nameConstraints, where pkilint checks (rightly) that a URI constraint is a host name
    (RFC 5280 4.2.1.10), so a `spiffe://` value there is a real error."""
    if code != "pkix.invalid_uri_syntax" or general_name.is_nameconstraints_child_node(node):
        return False
    value = str(node.pdu)
    return len(value.encode()) <= 2048 and SPIFFE_ID.fullmatch(value) is not None


def documents(kind, path):
    """The DER documents of a file: the whole file when it is DER, else each PEM block with
    the kind's label (a PEM file may hold several)."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x30"):
        return [data]
    label = KINDS[kind][1].encode()
    blocks = re.findall(
        rb"-----BEGIN " + label + rb"-----(.*?)-----END " + label + rb"-----", data, re.DOTALL
    )
    if not blocks:
        raise ValueError(f'neither DER nor PEM with a "BEGIN {KINDS[kind][1]}" block')
    return [base64.b64decode(b"".join(block.split()), validate=True) for block in blocks]


def lint(kind, path):
    """Prints the findings on one file and its summary line; returns how many fail."""
    document_loader, _, make_validator = KINDS[kind]
    try:
        docs = [
            document_loader.load_der_document(der, path, path)
            for der in documents(kind, path)
        ]
    except (OSError, ValueError) as e:
        print(f"  FAIL: cannot load {kind}: {type(e).__name__}: {e}")
        print(f"{path}: 0 findings, 1 failing")
        return 1
    total = failing = 0
    for index, doc in enumerate(docs):
        where = f" (document {index + 1} of {len(docs)})" if len(docs) > 1 else ""
        try:
            results = make_validator().validate(doc.root)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # pyasn1-fasder panics (a BaseException) on some inputs
            print(f"  FAIL: pkilint crashed{where}: {type(e).__name__}: {e}")
            total += 1
            failing += 1
            continue
        for result in results:
            for description in result.finding_descriptions:
                severity, code = description.finding.severity, description.finding.code
                total += 1
                if severity > FAILING:
                    mark = "ok"
                elif is_tolerated(code, result.node):
                    mark = "tolerated (SPIFFE ID)"
                else:
                    mark = "FAIL"
                    failing += 1
                message = f": {description.message}" if description.message else ""
                print(f"  {mark}: {severity.name} {code} at {result.node.path}{where}{message}")
    print(f"{path}: {total} findings, {failing} failing")
    return failing


def main(args):
    if len(args) < 2 or args[0] not in KINDS:
        print(__doc__, file=sys.stderr)
        return 2
    failing = sum([lint(args[0], path) for path in args[1:]])
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
