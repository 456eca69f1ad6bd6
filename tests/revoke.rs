//! Revocation: officers revoke through the API or `hsmca revoke`, the issuer's CRL is
//! re-signed in the HSM at once, and outside tools (openssl, pkilint) agree with it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::appliance::{Appliance, p256, runtime, spire_csr, write};
use common::{assert_pkilint_clean, assert_success, audit_verify, stderr, stdout};
use serde_json::json;

/// Issues an issuing CA under `profile` as `client`; returns (serial, cert path, chain path).
fn issue(
    appliance: &Appliance,
    client: &str,
    profile: &str,
    dir: &Path,
    name: &str,
) -> (String, PathBuf, PathBuf) {
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let response = runtime()
        .block_on(appliance.client(client).sign(&csr, profile, None))
        .unwrap();
    let answer = response.json().unwrap();
    assert_eq!(response.status, 200, "{answer}");
    let cert = write(
        dir,
        &format!("{name}.pem"),
        answer["certificate"].as_str().unwrap(),
    );
    // The chain without the new certificate: the online intermediate.
    let chain = answer["chain"].as_str().unwrap();
    let intermediates = common::pem_blocks(chain)[1..].concat();
    let chain = write(dir, &format!("{name}-chain.pem"), &intermediates);
    (answer["serial"].as_str().unwrap().to_owned(), cert, chain)
}

/// `hsmca revoke` as `tls_name`; returns the process output.
fn hsmca_revoke(
    appliance: &Appliance,
    tls_name: &str,
    serial: &str,
    reason: &str,
    issuer: Option<&str>,
) -> std::process::Output {
    let mut command = appliance.hsmca_as(tls_name, "revoke");
    command.args(["--serial", serial, "--reason", reason]);
    if let Some(issuer) = issuer {
        command.args(["--issuer", issuer]);
    }
    command.output().unwrap()
}

/// The issuer's CRL as PEM, written to `dir/name`.
fn fetch_crl(appliance: &Appliance, issuer: &str, dir: &Path, name: &str) -> PathBuf {
    let response = runtime()
        .block_on(appliance.client("spire").send(
            "GET",
            &format!("/v1/crl/{issuer}.pem"),
            None,
            vec![],
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    write(dir, name, &String::from_utf8(response.body).unwrap())
}

fn crl_text(crl: &Path) -> String {
    let output = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(crl)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

/// `openssl verify -crl_check` of `cert` under the root, through `chain`, against `crl`.
fn verify_with_crl(
    appliance: &Appliance,
    chain: &Path,
    crl: &Path,
    cert: &Path,
) -> std::process::Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-crl_check")
        .arg("-CAfile")
        .arg(appliance.root_pem())
        .arg("-untrusted")
        .arg(chain)
        .arg("-CRLfile")
        .arg(crl)
        .arg(cert)
        .output()
        .unwrap()
}

#[test]
fn an_officer_revokes_and_the_hsm_signed_crl_says_so_to_openssl_and_pkilint() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The gauge of CA certificates inside the expiry margin (30 days; these live two days
    // at most): none before any is issued, then one per certificate, less the revoked; and
    // the newest's validity.
    let expiring_cas = |appliance: &Appliance| -> Vec<String> {
        let (status, metrics) = appliance.ops_get("/metrics");
        assert_eq!(status, 200);
        metrics
            .lines()
            .filter(|line| line.starts_with("hsmca_client_ca_expiring{"))
            .map(str::to_owned)
            .collect()
    };
    assert!(expiring_cas(&appliance).is_empty());
    let (revoked, revoked_cert, chain) = issue(&appliance, "spire", "issuing-ca", dir, "a");
    let (kept_serial, kept_cert, _) = issue(&appliance, "spire", "issuing-ca", dir, "b");
    assert_eq!(
        expiring_cas(&appliance),
        ["hsmca_client_ca_expiring{client=\"spiffe://mesh.example/spire\"} 2"]
    );
    let (_, metrics) = appliance.ops_get("/metrics");
    let newest = |name: &str| -> i64 {
        let prefix = format!("{name}{{client=\"spiffe://mesh.example/spire\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    let lifetime = newest("hsmca_client_ca_newest_not_after_seconds")
        - newest("hsmca_client_ca_newest_not_before_seconds");
    assert!((3_600..=30 * 86_400).contains(&lifetime), "{lifetime}");
    // Every series the shipped alert rules and dashboard read is exported.
    for file in [
        "deploy/monitoring/alerts.yaml",
        "deploy/monitoring/grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(common::repo_path(file)).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .match_indices("hsmca_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(names.len() > 5, "{file}: {names:?}");
        for name in names {
            assert!(
                metrics.contains(name),
                "{file} uses {name}, which /metrics lacks"
            );
        }
    }
    // Certificates point at the issuer's CRL.
    let text = stdout(
        &Command::new("openssl")
            .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
            .arg(&kept_cert)
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("URI:http://pki.example.org/crl/online-p256.crl"),
        "{text}"
    );

    let before = fetch_crl(&appliance, "online-p256", dir, "crl-1.pem");
    assert!(
        crl_text(&before).contains("No Revoked Certificates"),
        "{}",
        crl_text(&before)
    );
    assert!(
        verify_with_crl(&appliance, &chain, &before, &revoked_cert)
            .status
            .success()
    );

    // The officer revokes with the CLI.
    let output = hsmca_revoke(
        &appliance,
        "officer",
        &revoked,
        "key-compromise",
        Some("online-p256"),
    );
    assert_success(&output, "hsmca revoke");
    assert!(
        stdout(&output).contains("CRL number 2"),
        "{}",
        stdout(&output)
    );

    assert_eq!(
        expiring_cas(&appliance),
        ["hsmca_client_ca_expiring{client=\"spiffe://mesh.example/spire\"} 1"]
    );
    let after = fetch_crl(&appliance, "online-p256", dir, "crl-2.pem");
    let text = crl_text(&after);
    assert!(text.contains(&revoked.to_uppercase()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
    assert_pkilint_clean("crl", &[&after]);
    let rejected = verify_with_crl(&appliance, &chain, &after, &revoked_cert);
    assert!(!rejected.status.success());
    assert!(
        stdout(&rejected).contains("certificate revoked")
            || stderr(&rejected).contains("certificate revoked"),
        "{}{}",
        stdout(&rejected),
        stderr(&rejected)
    );
    let accepted = verify_with_crl(&appliance, &chain, &after, &kept_cert);
    assert!(
        accepted.status.success(),
        "{}{}",
        stdout(&accepted),
        stderr(&accepted)
    );
    // The DER form is the same CRL.
    let der = appliance.get("spire", "/v1/crl/online-p256");
    assert_eq!(der.status, 200);
    assert_eq!(
        hsmca::pki::to_pem("X509 CRL", &der.body),
        std::fs::read_to_string(&after).unwrap()
    );

    // Every way a revocation is refused, each audited.
    let (other_issuer, _, _) = issue(&appliance, "istiod", "issuing-ca-rsa", dir, "c");
    let revoke = |client: &str, body: serde_json::Value| {
        let response = runtime()
            .block_on(appliance.client(client).send(
                "POST",
                "/v1/revoke",
                Some("application/json"),
                body.to_string().into_bytes(),
            ))
            .unwrap();
        (
            response.status,
            response.json().unwrap()["error"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    };
    assert_eq!(
        revoke(
            "spire",
            json!({"serial": other_issuer, "reason": "superseded"})
        ),
        (403, "not_an_officer".into())
    );
    assert_eq!(
        revoke(
            "officer",
            json!({"serial": "0badc0de", "reason": "superseded"})
        ),
        (404, "unknown_serial".into())
    );
    assert_eq!(
        revoke(
            "officer",
            json!({"serial": revoked, "reason": "superseded"})
        ),
        (409, "already_revoked".into())
    );
    assert_eq!(
        revoke(
            "officer",
            json!({"serial": other_issuer, "reason": "superseded", "issuer": "online-p256"})
        ),
        (409, "other_issuer".into())
    );
    assert_eq!(
        revoke(
            "officer",
            json!({"serial": other_issuer, "reason": "because"})
        ),
        (400, "bad_reason".into())
    );
    let output = hsmca_revoke(&appliance, "istiod", &other_issuer, "superseded", None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not_an_officer"),
        "{}",
        stderr(&output)
    );
    assert!(appliance.stop().success());

    let records = appliance.audit_records();
    let count = |event: &str| records.iter().filter(|r| r["event"] == event).count();
    assert_eq!(count("revoke"), 1);
    assert_eq!(count("revoke.refused"), 6);
    let revocation = records.iter().find(|r| r["event"] == "revoke").unwrap();
    assert_eq!(revocation["actor"], "spiffe://mesh.example/officer");
    assert_eq!(revocation["details"]["officer"], "Alice (security officer)");
    assert_eq!(revocation["details"]["reason"], "key-compromise");
    assert_eq!(
        count("crl.published"),
        3,
        "two issuers at start, then one revocation"
    );
    assert!(audit_verify(&appliance.path("audit.log")).status.success());

    // The inventory, read from the ledger with the appliance stopped (no HSM needed).
    let config = appliance.config_path();
    let certs = |args: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap(), "certs"];
        all.extend_from_slice(args);
        appliance.token.hsmca_command(&all).output().unwrap()
    };
    let listed = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        let output = certs(&all);
        assert_success(&output, "hsmca certs list");
        stdout(&output)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    // Sorted: the list is in the order the rows were recorded, to the second.
    let serials = |listed: &[serde_json::Value]| -> Vec<String> {
        let mut serials: Vec<String> = listed
            .iter()
            .map(|c| c["serial"].as_str().unwrap().to_owned())
            .collect();
        serials.sort();
        serials
    };
    let sorted = |mut serials: Vec<String>| {
        serials.sort();
        serials
    };
    let everything = listed(&[]);
    assert_eq!(
        serials(&everything),
        sorted(vec![
            revoked.clone(),
            kept_serial.clone(),
            other_issuer.clone()
        ])
    );
    let revoked_only = listed(&["--revoked"]);
    assert_eq!(serials(&revoked_only), std::slice::from_ref(&revoked));
    assert_eq!(revoked_only[0]["revoked"]["reason"], "key-compromise");
    assert_eq!(revoked_only[0]["issuer"], "online-p256");
    let istiod = everything
        .iter()
        .find(|c| c["serial"] == other_issuer.as_str())
        .unwrap()["client"]
        .as_str()
        .unwrap();
    assert_eq!(
        serials(&listed(&["--client", istiod])),
        std::slice::from_ref(&other_issuer)
    );
    assert_eq!(
        serials(&listed(&[
            "--issuer",
            "online-p256",
            "--profile",
            "issuing-ca"
        ])),
        sorted(vec![revoked.clone(), kept_serial.clone()])
    );
    assert!(listed(&["--expiring-within", "1m"]).is_empty());
    assert_eq!(listed(&["--expiring-within", "87600h"]).len(), 3);
    let unknown = certs(&["list", "--issuer", "nope"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no issuer \"nope\""),
        "{}",
        stderr(&unknown)
    );
    let table = stdout(&certs(&["list"]));
    assert!(
        table.contains("3 certificates") && table.contains("key-compromise"),
        "{table}"
    );
    let shown = certs(&["show", &revoked]);
    assert_success(&shown, "hsmca certs show");
    let shown = stdout(&shown);
    assert!(shown.contains("revoked:    at "), "{shown}");
    assert!(
        shown.contains(std::fs::read_to_string(&revoked_cert).unwrap().trim()),
        "{shown}"
    );
    // The auditor's report of the period: counts equal what this test did.
    let report = |since: &str, until: &str, format: &str| {
        let output = appliance
            .token
            .hsmca_command(&[
                "--config",
                config.to_str().unwrap(),
                "report",
                "--since",
                since,
                "--until",
                until,
                "--format",
                format,
            ])
            .output()
            .unwrap();
        assert_success(&output, "hsmca report");
        stdout(&output)
    };
    let counts: serde_json::Value =
        serde_json::from_str(&report("2000-01-01", "2100-01-01", "json")).unwrap();
    let total = |kind: &str| -> u64 {
        counts[kind]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert!(
        counts["chain"].as_str().unwrap().starts_with("intact"),
        "{counts}"
    );
    assert_eq!(
        counts["issued"]["spire / issuing-ca / online-p256"], 2,
        "{counts}"
    );
    assert_eq!(total("issued"), 3, "{counts}");
    assert_eq!(counts["revocations"], json!({"key-compromise": 1}));
    assert_eq!(total("crls"), 3, "{counts}");
    assert_eq!(
        counts["refused"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.starts_with("revoke.refused / "))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum::<u64>(),
        6,
        "{counts}"
    );
    assert!(report("2000-01-01", "2000-01-02", "md").contains("Records in the period: 0"));
    let missing = certs(&["show", "0badc0de"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no certificate with serial 0badc0de"),
        "{}",
        stderr(&missing)
    );

    // The CRL number survives a restart: the stored CRL is served, not a new number 1.
    appliance.start();
    let again = fetch_crl(&appliance, "online-p256", dir, "crl-3.pem");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&after).unwrap()
    );
    assert!(appliance.stop().success());
}
