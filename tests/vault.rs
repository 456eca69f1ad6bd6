//! The Vault PKI-compatible endpoints: the real `hvac` client, byte-exact replays of the
//! requests SPIRE and cert-manager send, and refusals in Vault's shape; certificates checked
//! with openssl and pyca `cryptography`.

mod common;

use std::path::Path;
use std::process::Command;

use common::appliance::{Appliance, p256, runtime, spire_csr, write};
use common::{assert_success, audit_verify, openssl_verify_chain, python_script, stdout};
use serde_json::{Value, json};

/// The Vault section the tests use; `extra` lands inside `[vault]`.
fn vault_config(extra: &str) -> String {
    format!(
        r#"
[vault]
mount = "pki"
sign_intermediate_profile = "issuing-ca"
{extra}

[vault.roles]
workload = "workload"
"#
    )
}

fn workload_csr_pem() -> String {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://mesh.example/ns/prod/sa/web"
            .to_string()
            .try_into()
            .unwrap(),
    )];
    params.serialize_request(&p256()).unwrap().pem().unwrap()
}

#[test]
fn hvac_logs_in_with_its_certificate_signs_and_reads_the_ca() {
    let mut appliance = Appliance::prepare();
    appliance.write_config(&vault_config(""));
    appliance.start();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let intermediate_csr = write(dir, "intermediate.csr", &spire_csr(&p256(), &[]));
    let workload_csr = write(dir, "workload.csr", &workload_csr_pem());
    let output = python_script(
        "vault_hvac.py",
        &[
            Path::new(&appliance.url),
            &appliance.path("tls/tls-ca.pem"),
            &appliance.path("tls/istiod.pem"),
            &appliance.path("tls/istiod-key.pem"),
            &intermediate_csr,
            &workload_csr,
            dir,
        ],
    );
    assert_success(&output, "vault_hvac.py");
    let summary: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(summary["login_policies"], json!(["default", "istiod"]));
    assert_eq!(summary["login_renewable"], true);
    assert_eq!(summary["lookup_identity"], "spiffe://mesh.example/istiod");
    assert!(summary["lookup_ttl"].as_u64().unwrap() > 3500);
    assert_eq!(
        summary["renewed_lease"].as_u64().unwrap() / 60,
        29,
        "{summary}"
    );
    assert_eq!(summary["intermediate_issuing_ca_is_chain_1"], true);
    assert_eq!(summary["intermediate_chain_0_is_certificate"], true);
    assert_eq!(
        summary["intermediate_chain_len"], 3,
        "new cert, online CA, root"
    );
    assert_eq!(
        summary["workload_warnings"],
        json!(["Endpoint ignored these unrecognized parameters: [made_up]"])
    );
    assert_eq!(
        summary["workload_serial"].as_str().unwrap().len(),
        17 * 3 - 1
    );
    // `list_certificates`: the serials of what this client was issued, in Vault's form.
    let mut listed: Vec<&str> = summary["listed_serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|serial| serial.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut issued = [
        summary["intermediate_serial"].as_str().unwrap(),
        summary["workload_serial"].as_str().unwrap(),
    ];
    issued.sort_unstable();
    assert_eq!(listed, issued);

    let root = appliance.root_pem();
    assert_eq!(
        std::fs::read_to_string(dir.join("intermediate-root.pem")).unwrap(),
        std::fs::read_to_string(&root).unwrap(),
        "ca_chain ends with the root"
    );
    openssl_verify_chain(
        &root,
        &dir.join("intermediate-chain.pem"),
        &dir.join("intermediate.pem"),
    );
    openssl_verify_chain(
        &root,
        &dir.join("workload-chain.pem"),
        &dir.join("workload.pem"),
    );
    for chain in ["intermediate-chain.pem", "workload-chain.pem"] {
        let output = python_script("chain_check.py", &[&root, &dir.join(chain)]);
        assert_success(&output, chain);
    }
    let output = python_script(
        "leaf_rules.py",
        &[
            &dir.join("workload.pem"),
            Path::new("spiffe://mesh.example/ns/prod/sa/web"),
        ],
    );
    assert_success(&output, "leaf_rules.py");
    // The common_name became a DNS SAN (exclude_cn_from_sans was not set).
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("workload.pem"))
        .output()
        .unwrap();
    assert!(
        stdout(&text).contains("DNS:web.prod.svc.cluster.local"),
        "{}",
        stdout(&text)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        std::fs::read_to_string(appliance.path("ceremony/out/online-p256-2026.pem")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca_chain.pem")).unwrap(),
        format!(
            "{}{}",
            std::fs::read_to_string(appliance.path("ceremony/out/online-p256-2026.pem")).unwrap(),
            std::fs::read_to_string(&root).unwrap()
        )
    );
    assert!(appliance.stop().success());
    let records = appliance.audit_records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "vault.login")
            .count(),
        1
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "vault.renew")
            .count(),
        1
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "sign.issued")
            .count(),
        2
    );
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}

/// Logs in over `auth/cert/login` as `client` and returns the token.
fn login(appliance: &Appliance, client: &str) -> String {
    let response = runtime()
        .block_on(appliance.client(client).send_with_headers(
            "PUT",
            "/v1/auth/cert/login",
            &[("x-vault-request", "true")],
            br#"{"name":""}"#.to_vec(),
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    response.json().unwrap()["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Splits a PEM bundle into its blocks, without trailing newlines (Vault's form).
fn pem_block_of(text: &str) -> String {
    text.trim_end().to_owned()
}

#[test]
fn spire_and_cert_manager_requests_replayed_byte_for_byte_get_what_they_read() {
    // cert-manager uses a token configured ahead: only its SHA-256 is in the config.
    let cm_token = "hvs.cert-manager-static-token";
    let mut appliance = Appliance::prepare();
    appliance.write_config(&vault_config(&format!(
        "[[vault.static_tokens]]\nsha256 = \"{}\"\nidentity = \"spiffe://mesh.example/istiod\"\n",
        hsmca::digest::sha256_hex(cm_token.as_bytes())
    )));
    appliance.start();
    let rt = runtime();
    let token = login(&appliance, "spire");
    let spire = appliance.client("spire");

    // SPIRE's vault UpstreamAuthority: lookup-self, then sign-intermediate with its fields.
    let lookup = rt
        .block_on(spire.send_with_headers(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("x-vault-token", &token), ("x-vault-request", "true")],
            vec![],
        ))
        .unwrap();
    assert_eq!(lookup.status, 200);
    assert_eq!(lookup.json().unwrap()["data"]["id"], token.as_str());
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let body = format!(
        r#"{{"common_name":"","country":"US","csr":{},"organization":"SPIFFE","ttl":"3600","uri_sans":"spiffe://mesh.example"}}"#,
        serde_json::to_string(&csr).unwrap()
    );
    let response = rt
        .block_on(spire.send_with_headers(
            "PUT",
            "/v1/pki/root/sign-intermediate",
            &[("x-vault-token", &token), ("x-vault-request", "true")],
            body.into_bytes(),
        ))
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.json());
    let answer = response.json().unwrap();
    for key in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(answer.get(key).is_some(), "envelope lacks {key}: {answer}");
    }
    assert_eq!(answer["warnings"], Value::Null);
    let data = &answer["data"];
    let chain: Vec<&str> = data["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(chain[0], data["certificate"].as_str().unwrap());
    assert_eq!(chain[1], data["issuing_ca"].as_str().unwrap());
    assert_eq!(
        *chain.last().unwrap(),
        pem_block_of(&std::fs::read_to_string(appliance.root_pem()).unwrap())
    );
    let tmp = tempfile::tempdir().unwrap();
    let cert = write(tmp.path(), "spire.pem", &format!("{}\n", chain[0]));
    let intermediates = write(tmp.path(), "chain.pem", &format!("{}\n", chain[1]));
    openssl_verify_chain(&appliance.root_pem(), &intermediates, &cert);
    let text = stdout(
        &Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap(),
    );
    assert!(text.contains("URI:spiffe://mesh.example\n"), "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    // The TTL was honoured: one hour.
    let expiration = data["expiration"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3590..=now + 3610).contains(&expiration),
        "{expiration} vs {now}"
    );

    // cert-manager's Vault issuer: health, then sign/<role> with a Go duration and string
    // booleans (as istiod through istio-csr would be served).
    let health = appliance.get("istiod", "/v1/sys/health");
    assert_eq!(health.status, 200);
    // cert-manager's request, as it sends it, for a Certificate with `duration`.
    let cert_manager_sign = |ttl: &str| {
        let body = format!(
            r#"{{"alt_names":"web.prod.svc.cluster.local","common_name":"","csr":{},"exclude_cn_from_sans":"true","ip_sans":"","ttl":"{ttl}","uri_sans":"spiffe://mesh.example/ns/prod/sa/web"}}"#,
            serde_json::to_string(&workload_csr_pem()).unwrap()
        );
        rt.block_on(appliance.client("istiod").send_with_headers(
            "POST",
            "/v1/pki/sign/workload",
            &[
                ("x-vault-token", cm_token),
                ("content-type", "application/json"),
            ],
            body.into_bytes(),
        ))
        .unwrap()
    };
    let response = cert_manager_sign("2160h0m0s");
    // 2160h is over the workload profile's 24h: refused in Vault's shape, audited.
    assert_eq!(response.status, 400);
    let errors = response.json().unwrap();
    assert!(
        errors["errors"][0].as_str().unwrap().contains("max_ttl"),
        "{errors}"
    );
    assert_eq!(
        errors.as_object().unwrap().len(),
        1,
        "only `errors`: {errors}"
    );
    let response = cert_manager_sign("24h0m0s");
    assert_eq!(response.status, 200, "{:?}", response.json());
    let data = response.json().unwrap()["data"].clone();
    let leaf = write(
        tmp.path(),
        "leaf.pem",
        &format!("{}\n", data["certificate"].as_str().unwrap()),
    );
    let cm_chain: Vec<&str> = data["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cm_chain.len(), 2, "issuer, root");
    let untrusted = write(tmp.path(), "cm-chain.pem", &format!("{}\n", cm_chain[0]));
    openssl_verify_chain(&appliance.root_pem(), &untrusted, &leaf);
    // cert/<serial> finds it in the ledger, with Vault's colon-separated serial.
    let serial = data["serial_number"].as_str().unwrap();
    let found = rt
        .block_on(appliance.client("istiod").send(
            "GET",
            &format!("/v1/pki/cert/{serial}"),
            None,
            vec![],
        ))
        .unwrap();
    assert_eq!(found.status, 200);
    assert_eq!(
        found.json().unwrap()["data"]["certificate"],
        data["certificate"]
    );
    assert!(appliance.stop().success());
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}

#[test]
fn vault_refusals_use_vaults_shape_and_are_audited() {
    let mut appliance = Appliance::prepare();
    // Tokens from login expire at once: the expired-token case without waiting.
    appliance.write_config(&vault_config("token_ttl = \"0s\"\n"));
    appliance.start();
    let rt = runtime();
    let spire = appliance.client("spire");
    let expired = login(&appliance, "spire");
    let csr = serde_json::to_string(&spire_csr(&p256(), &["spiffe://mesh.example"])).unwrap();
    let sign = |token: &str, body: String| {
        rt.block_on(spire.send_with_headers(
            "PUT",
            "/v1/pki/root/sign-intermediate",
            &[("x-vault-token", token)],
            body.into_bytes(),
        ))
        .unwrap()
    };
    let body = format!(r#"{{"csr":{csr},"ttl":"3600"}}"#);
    for (what, token) in [
        ("bad token", "hvs.not-a-token"),
        ("expired token", expired.as_str()),
        ("no token", ""),
    ] {
        let response = sign(token, body.clone());
        assert_eq!(response.status, 403, "{what}");
        assert_eq!(
            response.json().unwrap(),
            json!({"errors": ["permission denied"]}),
            "{what}"
        );
        // Listing certificates needs a living token too.
        let listed = rt
            .block_on(spire.send_with_headers(
                "LIST",
                "/v1/pki/certs",
                &[("x-vault-token", token)],
                vec![],
            ))
            .unwrap();
        assert_eq!(listed.status, 403, "LIST with {what}");
    }
    appliance.stop();

    // With living tokens: a token used by another client, a trust domain outside the
    // policy, a bad CSR.
    appliance.write_config(&vault_config(""));
    appliance.start();
    let spire = appliance.client("spire");
    let istiod_token = login(&appliance, "istiod");
    let spire_token = login(&appliance, "spire");
    let sign = |token: &str, body: String| {
        rt.block_on(spire.send_with_headers(
            "PUT",
            "/v1/pki/root/sign-intermediate",
            &[("x-vault-token", token)],
            body.into_bytes(),
        ))
        .unwrap()
    };
    let response = sign(&istiod_token, body.clone());
    assert_eq!(
        (response.status, response.json().unwrap()),
        (403, json!({"errors": ["permission denied"]}))
    );
    let response = sign(
        &spire_token,
        format!(r#"{{"csr":{csr},"uri_sans":"spiffe://other.example"}}"#),
    );
    assert_eq!(response.status, 403);
    let errors = response.json().unwrap();
    assert!(
        errors["errors"][0]
            .as_str()
            .unwrap()
            .contains("client.trust_domains"),
        "{errors}"
    );
    let response = sign(&spire_token, r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}"#.into());
    assert_eq!(response.status, 400);
    assert!(
        response.json().unwrap()["errors"][0]
            .as_str()
            .unwrap()
            .contains("CSR")
    );
    assert!(appliance.stop().success());

    let records = appliance.audit_records();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "sign.refused")
        .collect();
    assert_eq!(
        refused.len(),
        6,
        "3 token refusals, wrong client, trust domain, bad CSR"
    );
    assert!(refused.iter().any(|r| {
        r["details"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    }));
    assert!(refused.iter().any(|r| {
        r["details"]["message"]
            .as_str()
            .unwrap()
            .contains("another client")
    }));
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}

#[test]
fn guessing_vault_tokens_is_rate_limited_per_client_identity_and_audited() {
    let mut appliance = Appliance::prepare();
    appliance.write_config(&vault_config(""));
    appliance.start();
    let rt = runtime();
    let spire_token = login(&appliance, "spire");
    let istiod_token = login(&appliance, "istiod");
    let csr = serde_json::to_string(&spire_csr(&p256(), &["spiffe://mesh.example"])).unwrap();
    let body = format!(r#"{{"csr":{csr},"ttl":"3600"}}"#);
    let sign = |client: &str, token: &str| {
        rt.block_on(appliance.client(client).send_with_headers(
            "PUT",
            "/v1/pki/root/sign-intermediate",
            &[("x-vault-token", token)],
            body.clone().into_bytes(),
        ))
        .unwrap()
    };
    for guess in 0..10 {
        let response = sign("istiod", &format!("hvs.guess-{guess}"));
        assert_eq!(response.status, 403, "guess {guess}");
    }
    // The limit is reached: even istiod's real token is not checked now.
    let limited = sign("istiod", &istiod_token);
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.json().unwrap(),
        json!({"errors": ["rate limit quota exceeded"]})
    );
    let retry: u64 = limited.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another identity is not affected.
    assert_eq!(sign("spire", &spire_token).status, 200);
    assert!(appliance.stop().success());
    let reasons: Vec<String> = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "sign.refused")
        .map(|r| r["details"]["message"].to_string())
        .collect();
    assert_eq!(reasons.len(), 11, "{reasons:?}");
    assert!(
        reasons[10].contains("too many bad Vault tokens"),
        "{reasons:?}"
    );
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}
