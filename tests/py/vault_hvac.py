"""Drives hsmca's Vault-compatible endpoints with the real `hvac` client.

usage: vault_hvac.py URL TLS_CA CLIENT_CERT CLIENT_KEY INTERMEDIATE_CSR WORKLOAD_CSR OUT_DIR

Logs in with the TLS client certificate (auth/cert), looks the token up, renews it, signs the
intermediate CSR (`sign_intermediate`, with SPIRE's fields), signs the workload CSR under the
`workload` role (`sign_certificate`), lists its certificates (`list_certificates`), reads the
CA certificate and chain, and writes what came
back into OUT_DIR (intermediate.pem, intermediate-chain.pem, workload.pem,
workload-chain.pem, ca.pem, ca_chain.pem, summary.json). Any hvac exception fails it.
"""

import json
import os
import sys

import hvac


def main(args):
    if len(args) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    url, tls_ca, cert, key, intermediate_csr, workload_csr, out = args
    client = hvac.Client(url=url, cert=(cert, key), verify=tls_ca)
    # The CA for the server comes from the client's `verify`; the certificate files are ours.
    login = client.auth.cert.login(cert_pem=cert, key_pem=key)
    assert client.is_authenticated(), "not authenticated after cert login"
    me = client.auth.token.lookup_self()["data"]
    renewed = client.auth.token.renew_self(increment="30m")["auth"]

    with open(intermediate_csr) as f:
        csr = f.read()
    intermediate = client.secrets.pki.sign_intermediate(
        csr=csr,
        common_name="",
        extra_params={"organization": "SPIFFE", "country": "US", "uri_sans": "spiffe://mesh.example", "ttl": "3600"},
    )["data"]
    with open(workload_csr) as f:
        csr = f.read()
    workload = client.secrets.pki.sign_certificate(
        name="workload",
        csr=csr,
        common_name="web.prod.svc.cluster.local",
        extra_params={"uri_sans": "spiffe://mesh.example/ns/prod/sa/web", "ttl": "1h", "made_up": "x"},
    )
    listed = client.secrets.pki.list_certificates()["data"]["keys"]
    ca = client.secrets.pki.read_ca_certificate()
    ca_chain = client.secrets.pki.read_ca_certificate_chain()

    def write(name, text):
        with open(os.path.join(out, name), "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    write("intermediate.pem", intermediate["certificate"])
    write("intermediate-chain.pem", "\n".join(intermediate["ca_chain"][:-1]))
    write("intermediate-root.pem", intermediate["ca_chain"][-1])
    write("workload.pem", workload["data"]["certificate"])
    write("workload-chain.pem", "\n".join([workload["data"]["certificate"]] + workload["data"]["ca_chain"][:-1]))
    write("ca.pem", ca)
    write("ca_chain.pem", ca_chain)
    summary = {
        "login_policies": login["auth"]["policies"],
        "login_renewable": login["auth"]["renewable"],
        "lookup_ttl": me["ttl"],
        "lookup_identity": me["meta"]["identity"],
        "renewed_lease": renewed["lease_duration"],
        "intermediate_issuing_ca_is_chain_1": intermediate["issuing_ca"] == intermediate["ca_chain"][1],
        "intermediate_chain_0_is_certificate": intermediate["ca_chain"][0] == intermediate["certificate"],
        "intermediate_chain_len": len(intermediate["ca_chain"]),
        "workload_warnings": workload["warnings"],
        "workload_serial": workload["data"]["serial_number"],
        "intermediate_serial": intermediate["serial_number"],
        "listed_serials": listed,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
