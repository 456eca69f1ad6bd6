//! The signing appliance end to end: the real `hsmca serve` as a child process on a fresh
//! SoftHSM2 token with the development hierarchy, real mTLS, and its certificates checked by
//! openssl, pyca `cryptography` and pkilint.

mod common;

use std::path::Path;
use std::process::Command;

use common::appliance::{Appliance, TRUST_DOMAIN, p256, rsa2048, runtime, spire_csr, write};
use common::{
    assert_pkilint_clean, audit_verify, openssl_text, openssl_verify_chain, pem_blocks,
    python_script, stderr, stdout,
};
use hsmca::ledger::certificates::{CertificateStore, Ledger};
use serde_json::Value;

fn assert_script_ok(script: &str, args: &[&Path]) {
    let output = python_script(script, args);
    assert!(
        output.status.success(),
        "{script} failed:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
}

/// Issues under `profile` and writes certificate, chain and roots into `dir` as
/// `<name>.pem`, `<name>-chain.pem`, `<name>-roots.pem`; returns the answer.
fn issue(
    appliance: &Appliance,
    client: &str,
    csr: &str,
    profile: &str,
    dir: &Path,
    name: &str,
) -> Value {
    let response = runtime()
        .block_on(appliance.client(client).sign(csr, profile, None))
        .unwrap();
    let answer = response.json().unwrap();
    assert_eq!(response.status, 200, "{answer}");
    write(
        dir,
        &format!("{name}.pem"),
        answer["certificate"].as_str().unwrap(),
    );
    write(
        dir,
        &format!("{name}-chain.pem"),
        answer["chain"].as_str().unwrap(),
    );
    write(
        dir,
        &format!("{name}-roots.pem"),
        answer["roots"].as_str().unwrap(),
    );
    answer
}

#[test]
fn issued_certificates_pass_openssl_pyca_and_pkilint_and_are_all_recorded() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let td_id = format!("spiffe://{TRUST_DOMAIN}");
    let workload_id = format!("spiffe://{TRUST_DOMAIN}/ns/prod/sa/web");

    let mut serials = Vec::new();
    for (client, name, key, profile) in [
        ("spire", "spire-p256", p256(), "issuing-ca"),
        ("spire", "spire-rsa", rsa2048(), "issuing-ca"),
        ("istiod", "spire-p256-under-rsa", p256(), "issuing-ca-rsa"),
    ] {
        let answer = issue(
            &appliance,
            client,
            &spire_csr(&key, &[&td_id]),
            profile,
            dir,
            name,
        );
        serials.push(answer["serial"].as_str().unwrap().to_owned());
        let cert = dir.join(format!("{name}.pem"));
        let chain = dir.join(format!("{name}-chain.pem"));
        openssl_verify_chain(&appliance.root_pem(), &chain, &cert);
        assert_script_ok("chain_check.py", &[&appliance.root_pem(), &chain]);
        // The issuing CA sits under the online intermediate (the chain's second certificate).
        let issuer = write(
            dir,
            &format!("{name}-issuer.pem"),
            &pem_blocks(&std::fs::read_to_string(&chain).unwrap())[1],
        );
        assert_script_ok("ca_rules.py", &[&issuer, &cert, Path::new("0")]);
        assert_pkilint_clean("certificate", &[&cert]);
        let text = openssl_text(&cert);
        assert!(text.contains("URI:spiffe://mesh.example\n"), "{text}");
        assert!(
            text.contains("Subject: C=US, O=SPIFFE")
                || text.contains("Subject: C = US, O = SPIFFE"),
            "{text}"
        );
    }
    // No profile adds name constraints unless it says so (tests/mesh_verifiers.rs covers
    // the ones that do).
    for name in ["spire-p256", "spire-rsa", "spire-p256-under-rsa"] {
        assert!(!openssl_text(&dir.join(format!("{name}.pem"))).contains("Name Constraints"));
    }

    // A workload leaf, with a DNS name inside the client's suffixes.
    let leaf_key = p256();
    let mut params =
        rcgen::CertificateParams::new(vec!["web.prod.svc.cluster.local".into()]).unwrap();
    params.subject_alt_names.insert(
        0,
        rcgen::SanType::URI(workload_id.clone().try_into().unwrap()),
    );
    let csr = params.serialize_request(&leaf_key).unwrap().pem().unwrap();
    let answer = issue(&appliance, "istiod", &csr, "workload", dir, "leaf");
    serials.push(answer["serial"].as_str().unwrap().to_owned());
    let leaf = dir.join("leaf.pem");
    openssl_verify_chain(&appliance.root_pem(), &dir.join("leaf-chain.pem"), &leaf);
    assert_script_ok(
        "chain_check.py",
        &[&appliance.root_pem(), &dir.join("leaf-chain.pem")],
    );
    assert_script_ok("leaf_rules.py", &[&leaf, Path::new(&workload_id)]);
    assert_pkilint_clean("certificate", &[&leaf]);
    // The default TTL is the profile's 1 h; notBefore is backdated.
    let not_after = answer["not_after"].as_str().unwrap();
    assert!(not_after.ends_with('Z'), "{not_after}");

    // hsmca request --layout istio: the files load together.
    let istio = dir.join("istio");
    hsmca_request(&appliance, "istio", &istio);
    openssl_verify_chain(
        &istio.join("root-cert.pem"),
        &istio.join("cert-chain.pem"),
        &istio.join("ca-cert.pem"),
    );
    assert_eq!(
        public_key_of(
            &["x509", "-noout", "-pubkey", "-in"],
            &istio.join("ca-cert.pem")
        ),
        public_key_of(&["pkey", "-pubout", "-in"], &istio.join("ca-key.pem")),
        "ca-key.pem does not match ca-cert.pem"
    );
    let cert_chain = pem_blocks(&std::fs::read_to_string(istio.join("cert-chain.pem")).unwrap());
    assert_eq!(
        cert_chain.len(),
        3,
        "cert-chain.pem is ca-cert, intermediate, root"
    );
    assert_eq!(
        cert_chain[0],
        std::fs::read_to_string(istio.join("ca-cert.pem")).unwrap()
    );
    assert_eq!(
        cert_chain[2],
        std::fs::read_to_string(istio.join("root-cert.pem")).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(istio.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let linkerd = dir.join("linkerd");
    hsmca_request(&appliance, "linkerd", &linkerd);
    openssl_verify_chain(
        &linkerd.join("ca.crt"),
        &linkerd.join("issuer.crt"),
        &linkerd.join("issuer.crt"),
    );
    assert!(
        openssl_text(&linkerd.join("issuer.crt")).contains("CN = identity.linkerd.cluster.local")
    );

    // Bundles and chains as published.
    let rt = runtime();
    let client = appliance.client("stranger"); // reading the bundle needs no policy entry
    let bundle = rt
        .block_on(client.send("GET", "/v1/bundle", None, vec![]))
        .unwrap();
    assert_eq!(bundle.status, 200);
    assert_eq!(
        String::from_utf8(bundle.body).unwrap(),
        std::fs::read_to_string(appliance.root_pem()).unwrap()
    );
    let spiffe = rt
        .block_on(client.send("GET", "/v1/bundle/spiffe", None, vec![]))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(spiffe["spiffe_sequence"], 1);
    assert_eq!(spiffe["spiffe_refresh_hint"], 300);
    let key = &spiffe["keys"][0];
    assert_eq!(
        (
            key["use"].as_str(),
            key["kty"].as_str(),
            key["crv"].as_str()
        ),
        (Some("x509-svid"), Some("EC"), Some("P-256"))
    );
    assert!(key.get("kid").is_none());
    let chain = rt
        .block_on(client.send("GET", "/v1/chain/online-rsa2048", None, vec![]))
        .unwrap();
    assert_eq!(
        String::from_utf8(chain.body).unwrap(),
        std::fs::read_to_string(appliance.path("ceremony/out/online-rsa2048-2026.pem")).unwrap()
    );
    let unknown = rt
        .block_on(client.send("GET", "/v1/chain/nope", None, vec![]))
        .unwrap();
    assert_eq!(
        (
            unknown.status,
            unknown.json().unwrap()["error"]["code"].as_str()
        ),
        (404, Some("unknown_issuer"))
    );
    let ready = rt
        .block_on(client.send("GET", "/readyz", None, vec![]))
        .unwrap();
    assert_eq!(ready.status, 200);
    let metrics = String::from_utf8(
        rt.block_on(client.send("GET", "/metrics", None, vec![]))
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains("hsmca_certificates_issued_total{profile=\"issuing-ca\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("hsmca_hsm_queue_depth 0"), "{metrics}");

    let status = appliance.stop();
    assert!(
        status.success(),
        "exit {status:?}\n{}",
        appliance.server_log()
    );
    // Every certificate a client received has its ledger row and its audit record.
    let ledger = Ledger::open(&appliance.path("ledger.sqlite")).unwrap();
    assert_eq!(ledger.count().unwrap(), 6);
    let records = appliance.audit_records();
    for serial in &serials {
        let row = ledger.find(serial).unwrap().expect("ledger row");
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "sign.issued" && r["details"]["serial"] == serial.as_str())
        );
        assert!(!row.der.is_empty());
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "sign.issued")
            .count(),
        6
    );
    assert_eq!(records.last().unwrap()["event"], "service.stopped");
    let verified = audit_verify(&appliance.path("audit.log"));
    assert!(verified.status.success(), "{}", stderr(&verified));
}

/// `hsmca request` as istiod, writing `layout` into `out_dir`.
fn hsmca_request(appliance: &Appliance, layout: &str, out_dir: &Path) {
    let output = appliance
        .hsmca_as("istiod", "request")
        .args(["--trust-domain", TRUST_DOMAIN, "--layout", layout])
        .arg("--out-dir")
        .arg(out_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "hsmca request --layout {layout}: {}{}",
        stdout(&output),
        stderr(&output)
    );
}

/// The public key (PEM) in `file`, as `openssl ARGS… file` prints it.
fn public_key_of(args: &[&str], file: &Path) -> String {
    let output = Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

/// A CSR made by openssl with `key_args` (e.g. `["-newkey", "rsa:1024"]`), as PEM.
fn openssl_csr(dir: &Path, name: &str, key_args: &[&str]) -> String {
    let csr = dir.join(format!("{name}.csr"));
    let output = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/C=US/O=SPIFFE"])
        .args(["-addext", "subjectAltName=URI:spiffe://mesh.example"])
        .args(key_args)
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(output.status.success(), "openssl req: {}", stderr(&output));
    std::fs::read_to_string(csr).unwrap()
}

fn workload_csr(id: &str) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
    params.serialize_request(&p256()).unwrap().pem().unwrap()
}

#[test]
fn bad_requests_are_refused_with_a_clear_error_and_audited() {
    use base64ct::{Base64, Encoding};
    let mut appliance = Appliance::prepare();
    // A client with a tiny rate, to see the rate rule refuse.
    appliance.write_config(
        r#"
[[clients]]
name = "limited"
identity = "spiffe://mesh.example/limited"
profiles = ["issuing-ca"]
trust_domains = ["mesh.example"]
max_ttl = "24h"
requests_per_minute = 1
burst = 2
"#,
    );
    appliance.start();
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let td_csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let der = der::pem::decode_vec(td_csr.as_bytes()).unwrap().1;
    let mut forged = der.clone();
    let at = forged.windows(6).position(|w| w == b"SPIFFE").unwrap();
    forged[at + 5] = b'F';
    let sign = |client: &str, csr: &str, profile: &str, ttl: Option<&str>| {
        rt.block_on(appliance.client(client).sign(csr, profile, ttl))
            .unwrap()
    };
    let raw = |content_type: &str, body: Vec<u8>| {
        rt.block_on(
            appliance
                .client("istiod")
                .send("POST", "/v1/sign", Some(content_type), body),
        )
        .unwrap()
    };
    let cases = vec![
        (
            "another profile",
            sign(
                "spire",
                &workload_csr("spiffe://mesh.example/ns/prod/a"),
                "workload",
                None,
            ),
            403,
            "policy_denied",
            "client.profiles",
        ),
        (
            "another trust domain",
            sign(
                "spire",
                &spire_csr(&p256(), &["spiffe://other.example"]),
                "issuing-ca",
                None,
            ),
            403,
            "policy_denied",
            "client.trust_domains",
        ),
        (
            "ttl over the client's max",
            sign("spire", &td_csr, "issuing-ca", Some("72h")),
            403,
            "policy_denied",
            "client.max_ttl",
        ),
        (
            "ttl over the profile's max",
            sign("istiod", &td_csr, "issuing-ca", Some("9000h")),
            400,
            "ttl_over_max",
            "max_ttl",
        ),
        (
            "path outside the prefixes",
            sign(
                "istiod",
                &workload_csr("spiffe://mesh.example/ns/dev/a"),
                "workload",
                None,
            ),
            403,
            "policy_denied",
            "client.spiffe_path_prefixes",
        ),
        (
            "unknown client",
            sign("stranger", &td_csr, "issuing-ca", None),
            403,
            "policy_denied",
            "rule clients",
        ),
        (
            "unknown profile",
            sign("istiod", &td_csr, "nope", None),
            400,
            "unknown_profile",
            "nope",
        ),
        (
            "forged CSR signature",
            sign(
                "istiod",
                &Base64::encode_string(&forged),
                "issuing-ca",
                None,
            ),
            400,
            "bad_csr_signature",
            "proof of possession",
        ),
        (
            "RSA-1024 key",
            sign(
                "istiod",
                &openssl_csr(tmp.path(), "rsa1024", &["-newkey", "rsa:1024"]),
                "issuing-ca",
                None,
            ),
            400,
            "weak_or_unsupported_key",
            "1024",
        ),
        (
            "P-192 key",
            sign(
                "istiod",
                &openssl_csr(
                    tmp.path(),
                    "p192",
                    &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime192v1"],
                ),
                "issuing-ca",
                None,
            ),
            400,
            "weak_or_unsupported_key",
            "key",
        ),
        (
            "garbage",
            sign("istiod", "hello, CA", "issuing-ca", None),
            400,
            "bad_csr",
            "neither a PEM",
        ),
        (
            "truncated DER",
            sign(
                "istiod",
                &Base64::encode_string(&der[..der.len() / 2]),
                "issuing-ca",
                None,
            ),
            400,
            "bad_csr",
            "CSR",
        ),
        (
            "1 MiB body",
            raw("application/json", vec![b' '; 1 << 20]),
            413,
            "body_too_large",
            "65536",
        ),
        (
            "wrong content type",
            raw("text/plain", b"{}".to_vec()),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "not a sign request",
            raw(
                "application/json",
                br#"{"csr":"x","profile":"workload","admin":true}"#.to_vec(),
            ),
            400,
            "bad_json",
            "unknown field",
        ),
        (
            "upper-case trust domain",
            sign(
                "istiod",
                &spire_csr(&p256(), &["spiffe://Mesh.example"]),
                "issuing-ca",
                None,
            ),
            400,
            "invalid_spiffe_id",
            "lower-case",
        ),
        (
            "dot-dot segment",
            sign(
                "istiod",
                &workload_csr("spiffe://mesh.example/ns/prod/../x"),
                "workload",
                None,
            ),
            400,
            "invalid_spiffe_id",
            "'..'",
        ),
        (
            "query",
            sign(
                "istiod",
                &workload_csr("spiffe://mesh.example/ns/prod?x=1"),
                "workload",
                None,
            ),
            400,
            "invalid_spiffe_id",
            "query",
        ),
        (
            "trailing slash",
            sign(
                "istiod",
                &workload_csr("spiffe://mesh.example/ns/prod/"),
                "workload",
                None,
            ),
            400,
            "invalid_spiffe_id",
            "trailing",
        ),
        (
            "a path on a CA",
            sign(
                "istiod",
                &spire_csr(&p256(), &["spiffe://mesh.example/ca"]),
                "issuing-ca",
                None,
            ),
            400,
            "san_not_allowed",
            "without a path",
        ),
        (
            "DNS name outside the suffixes",
            sign(
                "istiod",
                &{
                    let mut params =
                        rcgen::CertificateParams::new(vec!["evil.example.com".into()]).unwrap();
                    params.subject_alt_names.insert(
                        0,
                        rcgen::SanType::URI(
                            "spiffe://mesh.example/ns/prod/a"
                                .to_string()
                                .try_into()
                                .unwrap(),
                        ),
                    );
                    params.serialize_request(&p256()).unwrap().pem().unwrap()
                },
                "workload",
                None,
            ),
            403,
            "policy_denied",
            "client.dns_suffixes",
        ),
    ];
    let mut refusals = 0;
    for (what, response, status, code, mention) in cases {
        let answer = response.json().unwrap();
        assert_eq!(response.status, status, "{what}: {answer}");
        refusals += 1;
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention),
            "{what}: {message:?} should mention {mention:?}"
        );
    }
    // The rate rule: `limited` has a burst of 2, then waits.
    for _ in 0..2 {
        assert_eq!(sign("limited", &td_csr, "issuing-ca", None).status, 200);
    }
    let limited = sign("limited", &td_csr, "issuing-ca", None);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json().unwrap()["error"]["code"], "rate_limited");
    assert!(limited.retry_after.is_some());
    refusals += 1;

    assert!(appliance.stop().success());
    let records = appliance.audit_records();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "sign.refused")
        .collect();
    assert_eq!(refused.len(), refusals, "one audit record per refusal");
    assert!(
        refused
            .iter()
            .any(|r| r["details"]["code"] == "bad_csr_signature")
    );
    assert!(
        refused
            .iter()
            .any(|r| r["details"]["code"] == "body_too_large")
    );
    let ledger = Ledger::open(&appliance.path("ledger.sqlite")).unwrap();
    assert_eq!(
        ledger.count().unwrap(),
        2,
        "only the two accepted requests are in the ledger"
    );
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}

/// Connects with TLS presenting no client certificate, sends a request and returns what came
/// back: an HTTP answer, or the error that ended the connection.
fn request_without_client_certificate(appliance: &Appliance) -> Result<String, String> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = appliance.tls_client(None);
    let address = appliance.url.trim_start_matches("https://").to_owned();
    runtime().block_on(async move {
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET /v1/bundle HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })
}

#[test]
fn tls_refuses_clients_without_a_certificate_from_the_client_ca_and_audits_them() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let anonymous = request_without_client_certificate(&appliance);
    assert!(
        anonymous
            .as_ref()
            .is_err_and(|e| e.contains("CertificateRequired")),
        "{anonymous:?}"
    );
    // Same identity, but a certificate from a TLS CA the appliance does not trust.
    let outsider = runtime().block_on(appliance.client_from("other-tls", "istiod").send(
        "GET",
        "/v1/bundle",
        None,
        vec![],
    ));
    let error = outsider.unwrap_err();
    assert!(error.contains("alert"), "{error}");
    // The trusted one still gets in.
    let trusted = appliance.get("istiod", "/v1/bundle");
    assert_eq!(trusted.status, 200);
    assert!(appliance.stop().success());
    let refused: Vec<String> = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "tls.refused")
        .map(|r| r["details"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("no client certificate"), "{refused:?}");
    // Both development TLS CAs have the same name, so webpki finds the trusted one and the
    // outsider's signature fails under it.
    assert!(
        refused[1].contains("client certificate refused: BadSignature"),
        "{refused:?}"
    );
}

#[test]
fn serve_refuses_to_start_on_a_broken_configuration_and_says_why() {
    let appliance = Appliance::prepare();
    type ConfigEdit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, ConfigEdit, &str)> = vec![
        (
            "issuer key missing from the HSM",
            Box::new(|c| c.replace("key_label = \"online-p256-2026\"", "key_label = \"gone\"")),
            "issuer online-p256",
        ),
        (
            "issuer certificate not matching its key",
            Box::new(|c| {
                c.replace(
                    "key_label = \"online-p256-2026\"",
                    "key_label = \"online-rsa2048-2026\"",
                )
            }),
            "issuer online-p256",
        ),
        (
            "issuer expiring inside the max TTL",
            Box::new(|c| c.replacen("max_ttl = \"2160h\"", "max_ttl = \"50000h\"", 1)),
            "inside profile issuing-ca's max_ttl",
        ),
        (
            "unknown config key",
            Box::new(|c| c.replace("[storage]", "[storage]\nledgr = \"x\"")),
            "unknown field `ledgr`",
        ),
        (
            "profile naming an unknown issuer",
            Box::new(|c| c.replacen("issuer = \"online-p256\"", "issuer = \"online-p384\"", 1)),
            "issuer \"online-p384\" is not defined",
        ),
        (
            "client naming an unknown profile",
            Box::new(|c| c.replace("profiles = [\"issuing-ca\"]", "profiles = [\"issuing\"]")),
            "profile \"issuing\" is not defined",
        ),
        (
            "server key readable by others",
            Box::new(|c| c),
            "readable by group or others",
        ),
    ];
    for (what, edit, expected) in cases {
        appliance.write_config_with(edit);
        let key = appliance.path("tls/server-key.pem");
        let readable = what == "server key readable by others";
        if readable {
            set_mode(&key, 0o644);
        }
        let output = appliance.serve_command().output().unwrap();
        if readable {
            set_mode(&key, 0o600);
        }
        let message = stderr(&output);
        assert!(!output.status.success(), "{what}: started anyway");
        assert!(message.contains(expected), "{what}: {message}");
        assert!(stdout(&output).is_empty(), "{what}: {}", stdout(&output));
    }
    // A PIN file readable by others is refused before any login.
    appliance.write_config("");
    set_mode(&appliance.token.pin_file(), 0o644);
    let output = appliance.serve_command().output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("chmod 600"), "{}", stderr(&output));
    assert!(!stderr(&output).contains(&appliance.token.user_pin()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn sigterm_during_a_burst_finishes_in_flight_requests_and_loses_no_record() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut appliance = Appliance::prepare();
    // The burst is about draining, not shedding: room for all of it at once.
    appliance
        .write_config_with(|text| text.replace("[server]\n", "[server]\nmax_in_flight = 512\n"));
    appliance.start();
    let pid = appliance.pid();
    let client = appliance.client("istiod");
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let issued = Arc::new(AtomicUsize::new(0));
    let rt = runtime();
    // 300 requests at once; SIGTERM goes out when the 20th certificate has come back.
    let results: Vec<Result<(u16, Value), String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let (client, csr, issued) = (client.clone(), csr.clone(), issued.clone());
                tokio::spawn(async move {
                    let response = client.sign(&csr, "issuing-ca", Some("1h")).await?;
                    if response.status == 200 && issued.fetch_add(1, Ordering::SeqCst) == 19 {
                        common::appliance::send_signal(pid, "TERM");
                    }
                    Ok((response.status, response.json()?))
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    let status = appliance.wait();
    assert!(
        status.success(),
        "exit {status:?}\n{}",
        appliance.server_log()
    );

    let answered: Vec<&Value> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|(status, _)| *status == 200)
        .map(|(_, answer)| answer)
        .collect();
    let failed_otherwise: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(answered.len() >= 20, "{} certificates", answered.len());
    assert!(
        failed_otherwise.is_empty(),
        "answers other than 200 or a closed connection: {failed_otherwise:?}"
    );
    appliance.assert_recorded(&answered);
    let records = appliance.audit_records();
    assert_eq!(records.last().unwrap()["event"], "service.stopped");
    let tmp = tempfile::tempdir().unwrap();
    let cert = write(
        tmp.path(),
        "cert.pem",
        answered[0]["certificate"].as_str().unwrap(),
    );
    let chain = write(
        tmp.path(),
        "chain.pem",
        answered[0]["chain"].as_str().unwrap(),
    );
    openssl_verify_chain(&appliance.root_pem(), &chain, &cert);
}

#[test]
fn an_hsm_outage_fails_readiness_and_signing_with_503_and_the_service_recovers() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    assert_eq!(
        rt.block_on(client.sign(&csr, "issuing-ca", None))
            .unwrap()
            .status,
        200
    );

    // The token disappears from the module's token directory.
    let tokens = appliance.token.dir.path().join("tokens");
    let away = appliance.token.dir.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let ready = rt
        .block_on(client.send("GET", "/readyz", None, vec![]))
        .unwrap();
    assert_eq!(ready.status, 503);
    let ready = ready.json().unwrap();
    assert!(
        ready["failures"].to_string().contains("cannot sign"),
        "{ready}"
    );
    let refused = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
    assert_eq!(refused.status, 503, "{:?}", refused.json());
    assert_eq!(refused.json().unwrap()["error"]["code"], "hsm_unavailable");
    assert!(refused.retry_after.is_some());

    // It comes back: the service finds it again without a restart.
    std::fs::rename(&away, &tokens).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let ready = rt
            .block_on(client.send("GET", "/readyz", None, vec![]))
            .unwrap();
        if ready.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready 15 s after the token returned: {:?}\n{}",
            ready.json(),
            appliance.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let answer = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert!(appliance.stop().success());
    let records = appliance.audit_records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "sign.failed" && r["details"]["code"] == "hsm_unavailable")
            .count(),
        1
    );
    assert!(audit_verify(&appliance.path("audit.log")).status.success());
}

#[test]
fn a_service_started_on_an_audit_log_edited_before_its_last_record_stops_issuing() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let response = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
    assert_eq!(response.status, 200, "{:?}", response.json());
    assert!(appliance.stop().success(), "{}", appliance.server_log());

    // Rewrite an early record; the last one stays intact, so the log opens at its tail and
    // the service starts, but the check of the records before it finds the edit.
    let log = appliance.path("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let edited = lines[1].replacen("\"actor\":\"", "\"actor\":\"X", 1);
    assert_ne!(edited, lines[1]);
    let mut tampered = lines.clone();
    tampered[1] = &edited;
    std::fs::write(&log, tampered.join("\n") + "\n").unwrap();

    appliance.start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        let (status, body) = appliance.ops_get("/readyz");
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready on a broken audit log: {body}\n{}",
            appliance.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(body.contains("audit.log is broken at line 2"), "{body}");
    let client = appliance.client("istiod");
    let refused = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
    let answer = refused.json().unwrap();
    assert_eq!(refused.status, 503, "{answer}");
    // The refusal cannot be audited either, and says so.
    assert_eq!(answer["error"]["code"], "audit_unavailable", "{answer}");
    assert!(
        appliance
            .server_log()
            .contains("refusing all further issuance"),
        "{}",
        appliance.server_log()
    );
    appliance.stop();
}
