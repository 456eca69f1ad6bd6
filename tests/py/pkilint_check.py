"""Lints certificates or CRLs with pkilint's RFC 5280 linters (`lint_pkix_cert`, and
`lint_crl -t CRL -p PKIX`), failing on any finding of severity WARNING or above.

usage: pkilint_check.py {certificate|crl} FILE [FILE ...]

One exception, and only one: pkilint's URI syntax check knows only web schemes and reports
`pkix.invalid_uri_syntax` for every `spiffe://` URI, so that finding is dropped when the
URI it concerns is a SPIFFE ID. Every other finding is printed and fails the run.
"""

import json
import os
import subprocess
import sys

LINTERS = {
    "certificate": ["lint_pkix_cert", "lint"],
    "crl": ["lint_crl", "lint", "-t", "CRL", "-p", "PKIX"],
}


def is_tolerated(finding):
    """pkilint names the offending URI in the message: `Invalid URI syntax: "spiffe://..."`."""
    message = finding.get("message") or ""
    return finding["code"] == "pkix.invalid_uri_syntax" and message.startswith('Invalid URI syntax: "spiffe://')


def lint(kind, path):
    bin_dir = os.path.dirname(sys.executable)
    command = [os.path.join(bin_dir, LINTERS[kind][0]), *LINTERS[kind][1:], "-s", "WARNING", "-f", "JSON", path]
    run = subprocess.run(command, capture_output=True, text=True)
    try:
        results = json.loads(run.stdout)["results"]
    except (json.JSONDecodeError, KeyError):
        print(f"{path}: pkilint failed to run: {run.stdout}{run.stderr}")
        return 1
    failing = 0
    total = 0
    for result in results:
        for finding in result["finding_descriptions"]:
            total += 1
            tolerated = is_tolerated(finding)
            failing += not tolerated
            mark = "tolerated (spiffe URI)" if tolerated else "FAIL"
            print(f"  {mark}: {finding['severity']} {finding['code']} at {result['node_path']}: {finding['message']}")
    print(f"{path}: {total} findings, {failing} failing")
    return failing


def main(args):
    if len(args) < 2 or args[0] not in LINTERS:
        print(__doc__, file=sys.stderr)
        return 2
    failing = sum(lint(args[0], path) for path in args[1:])
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
