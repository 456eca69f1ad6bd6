//! Hostile input the bad-input matrix of docs/security.md lists beyond tests/serve.rs's
//! refusals: each one refused with a clear error, audited, and leaving nothing in the ledger.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};
use common::appliance::{Appliance, p256, runtime, spire_csr, write};
use der::{Decode, Encode};
use hsmca::ledger::certificates::{CertificateStore, Ledger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A workload CSR with these SANs (rcgen encodes what it is given, however hostile).
fn csr_with_sans(sans: Vec<rcgen::SanType>) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&p256()).unwrap().pem().unwrap()
}

fn uri(text: &str) -> rcgen::SanType {
    rcgen::SanType::URI(text.to_string().try_into().unwrap())
}

fn dns(text: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(text.to_string().try_into().unwrap())
}

/// A CSR signed by one key that carries another key: the signature cannot verify.
fn csr_with_mismatched_key() -> String {
    let signed = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let other = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let decode = |pem: &str| {
        x509_cert::request::CertReq::from_der(&der::pem::decode_vec(pem.as_bytes()).unwrap().1)
            .unwrap()
    };
    let mut request = decode(&signed);
    request.info.public_key = decode(&other).info.public_key;
    Base64::encode_string(&request.to_der().unwrap())
}

/// A hostile sign request: what it is, CSR, profile, ttl, and the expected status and code.
type Case = (
    &'static str,
    String,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
);

#[test]
fn hostile_csrs_names_and_ttls_are_refused_and_audited() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let prod = "spiffe://mesh.example/ns/prod";
    let long_id = format!("{prod}/{}", "a".repeat(2100));
    let td_csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    // (what, csr, profile, ttl, status, code)
    let cases: Vec<Case> = vec![
        (
            "mismatched key",
            csr_with_mismatched_key(),
            "issuing-ca",
            None,
            400,
            "bad_csr_signature",
        ),
        (
            "PEM with another label",
            td_csr.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
            "issuing-ca",
            None,
            400,
            "bad_csr",
        ),
        (
            "PEM with broken base64",
            td_csr.replacen("MII", "M!I", 1),
            "issuing-ca",
            None,
            400,
            "bad_csr",
        ),
        (
            "an Ed25519 key the profile does not list",
            spire_csr(
                &rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
                &["spiffe://mesh.example"],
            ),
            "issuing-ca",
            None,
            400,
            "key_type_not_allowed",
        ),
        (
            "SPIFFE ID over 2048 bytes",
            csr_with_sans(vec![uri(&long_id)]),
            "workload",
            None,
            400,
            "invalid_spiffe_id",
        ),
        (
            "two URI SANs",
            csr_with_sans(vec![uri(&format!("{prod}/a")), uri(&format!("{prod}/b"))]),
            "workload",
            None,
            400,
            "san_not_allowed",
        ),
        (
            "userinfo in a SPIFFE ID",
            csr_with_sans(vec![uri("spiffe://evil@mesh.example/ns/prod/a")]),
            "workload",
            None,
            400,
            "invalid_spiffe_id",
        ),
        (
            "port in a SPIFFE ID",
            csr_with_sans(vec![uri("spiffe://mesh.example:443/ns/prod/a")]),
            "workload",
            None,
            400,
            "invalid_spiffe_id",
        ),
        (
            "percent-encoded dot-dot",
            csr_with_sans(vec![uri("spiffe://mesh.example/ns/prod/%2e%2e/x")]),
            "workload",
            None,
            400,
            "invalid_spiffe_id",
        ),
        (
            "a second SAN smuggled into one URI",
            csr_with_sans(vec![uri(
                "spiffe://mesh.example/ns/prod/a,URI:spiffe://evil.example",
            )]),
            "workload",
            None,
            400,
            "invalid_spiffe_id",
        ),
        (
            "a NUL byte in a DNS name",
            csr_with_sans(vec![
                uri(&format!("{prod}/a")),
                // Ends with the allowed suffix, so only the syntax check stands in the way.
                dns("evil.example\0.svc.cluster.local"),
            ]),
            "workload",
            None,
            400,
            "invalid_dns_name",
        ),
        (
            "a wildcard DNS name",
            csr_with_sans(vec![uri(&format!("{prod}/a")), dns("*.svc.cluster.local")]),
            "workload",
            None,
            400,
            "invalid_dns_name",
        ),
        (
            "negative TTL",
            td_csr.clone(),
            "issuing-ca",
            Some("-1h"),
            400,
            "bad_json",
        ),
        (
            "overflowing TTL",
            td_csr.clone(),
            "issuing-ca",
            Some("99999999999999999999h"),
            400,
            "bad_json",
        ),
        (
            "TTL whose seconds overflow",
            td_csr.clone(),
            "issuing-ca",
            Some("5124095576030432h"),
            400,
            "bad_json",
        ),
        (
            "zero TTL",
            td_csr.clone(),
            "issuing-ca",
            Some("0s"),
            400,
            "invalid_ttl",
        ),
    ];
    let count = cases.len();
    for (what, csr, profile, ttl, status, code) in cases {
        let response = rt.block_on(client.sign(&csr, profile, ttl)).unwrap();
        let answer = response.json().unwrap();
        eprintln!("{what}: {} {answer}", response.status);
        assert_eq!(response.status, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(
            !answer["error"]["message"].as_str().unwrap().is_empty(),
            "{what}: no message"
        );
    }
    assert!(appliance.stop().success());
    let refused = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "sign.refused")
        .count();
    assert_eq!(refused, count, "one audit record per refusal");
    let ledger = Ledger::open(&appliance.path("ledger.sqlite")).unwrap();
    assert_eq!(ledger.count().unwrap(), 0);
}

/// Reads until the server closes the stream; returns how long that took (`Err` if it did not
/// within 20 s).
async fn time_until_closed(mut stream: impl AsyncReadExt + Unpin) -> Result<Duration, ()> {
    let started = Instant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut sink)).await {
        Ok(_) => Ok(started.elapsed()),
        Err(_) => Err(()),
    }
}

#[test]
fn slow_clients_are_cut_off_at_the_header_timeout() {
    let mut appliance = Appliance::prepare();
    appliance.write_config_with(|text| {
        text.replace(
            "shutdown_grace = \"20s\"",
            "shutdown_grace = \"20s\"\nheader_read_timeout = \"1s\"",
        )
    });
    appliance.start();
    let address = appliance.url.trim_start_matches("https://").to_owned();
    let config = Arc::new(appliance.tls_client(Some((
        &appliance.path("tls/istiod.pem"),
        &appliance.path("tls/istiod-key.pem"),
    ))));
    let rt = runtime();
    // A connection that never starts TLS.
    let silent = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        time_until_closed(stream).await
    });
    // A trusted client that completes the handshake, then sends half a request head.
    let dribbling = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .unwrap();
        tls.write_all(b"POST /v1/sign HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        time_until_closed(tls).await
    });
    for (what, closed) in [("no TLS", silent), ("half a header", dribbling)] {
        let after = closed.unwrap_or_else(|()| panic!("{what}: still open after 20 s"));
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after {after:?}"
        );
    }
    // The service is still there for everyone else.
    let answer = appliance.get("istiod", "/v1/bundle");
    assert_eq!(answer.status, 200);
    assert!(appliance.stop().success());
}

#[test]
fn an_expired_client_certificate_is_refused_at_the_handshake_and_audited() {
    let mut appliance = Appliance::prepare();
    // A second client CA the appliance trusts, with an expired client certificate under it
    // for a client that has a policy entry.
    let ca_key = p256();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hostile test client CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let client_key = p256();
    let mut client_params = rcgen::CertificateParams::default();
    client_params.subject_alt_names = vec![uri("spiffe://mesh.example/istiod")];
    client_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    client_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let dir = appliance.path("expired");
    std::fs::create_dir(&dir).unwrap();
    let cert = write(&dir, "client.pem", &client_cert.pem());
    let key = write(&dir, "client-key.pem", &client_key.serialize_pem());
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(appliance.path("tls/tls-ca.pem")).unwrap(),
        ca_cert.pem()
    );
    write(&appliance.path("tls"), "client-cas.pem", &bundle);
    appliance.write_config_with(|text| {
        text.replace(
            "client_ca = \"tls/tls-ca.pem\"",
            "client_ca = \"tls/client-cas.pem\"",
        )
    });
    appliance.start();
    let client = hsmca::api::client::Client::new(
        &appliance.url,
        &cert,
        &key,
        &appliance.path("tls/tls-ca.pem"),
    )
    .unwrap();
    let rt = runtime();
    let refused = rt.block_on(client.send("GET", "/v1/bundle", None, vec![]));
    let error = refused.unwrap_err();
    assert!(error.contains("alert"), "{error}");
    // The same CA bundle still admits the dev clients.
    let admitted = appliance.get("istiod", "/v1/bundle");
    assert_eq!(admitted.status, 200);
    assert!(appliance.stop().success());
    let reasons: Vec<String> = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "tls.refused")
        .map(|r| r["details"]["reason"].to_string())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("Expired"), "{reasons:?}");
}

#[test]
fn extensions_a_csr_requests_are_never_copied() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let tmp = tempfile::tempdir().unwrap();
    let csr = tmp.path().join("req.csr");
    let output = std::process::Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=workload"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args([
            "-addext",
            "subjectAltName=URI:spiffe://mesh.example/ns/prod/a",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE,pathlen:5"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .args(["-addext", "extendedKeyUsage=codeSigning"])
        .args(["-addext", "nameConstraints=permitted;DNS:evil.example"])
        .arg("-keyout")
        .arg(tmp.path().join("req.key"))
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    common::assert_success(&output, "openssl req");
    let rt = runtime();
    let response = rt
        .block_on(appliance.client("istiod").sign(
            &std::fs::read_to_string(&csr).unwrap(),
            "workload",
            None,
        ))
        .unwrap();
    let answer = response.json().unwrap();
    assert_eq!(response.status, 200, "{answer}");
    let cert = write(
        tmp.path(),
        "cert.pem",
        answer["certificate"].as_str().unwrap(),
    );
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext"])
        .arg("basicConstraints,keyUsage,extendedKeyUsage,nameConstraints")
        .arg("-in")
        .arg(&cert)
        .output()
        .unwrap();
    common::assert_success(&output, "openssl x509");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(!text.contains("Code Signing"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(appliance.stop().success());
    appliance.assert_recorded(&[&answer]);
}
