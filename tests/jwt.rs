//! JWT-SVIDs (`POST /v1/jwt`) signed in SoftHSM2 with the development ceremony's JWT keys,
//! checked by relying parties nobody here wrote (PyJWT's `PyJWKClient`, through OIDC
//! discovery on the public listener, for ES256, RS256 and PS256; py-spiffe, through the
//! public SPIFFE bundle as the trust domain's JWT and X.509 bundles); the refusals, each naming
//! its rule and audited; and the public listener serving nothing but what it publishes.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::appliance::{Appliance, ops_get, runtime};
use common::{python_script, stderr, stdout};
use serde_json::{Value, json};

/// A client with JWT rights (the `limited` dev TLS identity); `istiod` has none.
const JWT_CLIENT: &str = r#"
[[clients]]
name = "workloads"
identity = "spiffe://mesh.example/limited"
profiles = []
trust_domains = ["mesh.example"]
spiffe_path_prefixes = ["/ns/prod"]
max_ttl = "1h"
jwt_audiences = ["payments", "billing"]
jwt_max_ttl = "10m"
requests_per_minute = 100000
burst = 10000
"#;

/// A free port for the public listener: the issuer URL must name it before the start.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `[jwt]` with `active` signing and the RSA key under `rsa_algorithm`, and `[public]`.
fn jwt_sections(port: u16, active: &str, rsa_algorithm: &str) -> String {
    format!(
        r#"
[jwt]
issuer_url = "http://127.0.0.1:{port}"
max_ttl = "30m"
active = "{active}"

[[jwt.keys]]
label = "jwt-es256-2026"
algorithm = "es256"

[[jwt.keys]]
label = "jwt-rs256-2026"
algorithm = "{rsa_algorithm}"

[public]
listen = "127.0.0.1:{port}"
spiffe_bundle_path = "/mesh.example/bundle.json"
{JWT_CLIENT}"#
    )
}

/// An appliance with `[jwt]` and `[public]`, started; returns it and the public URL.
fn start(active: &str) -> (Appliance, String) {
    let mut appliance = Appliance::prepare();
    let port = free_port();
    appliance.write_config(&jwt_sections(port, active, "rs256"));
    appliance.start();
    (appliance, format!("http://127.0.0.1:{port}"))
}

/// `POST /v1/jwt` with `body` as the dev client `client`.
fn request_jwt(appliance: &Appliance, client: &str, body: Value) -> (u16, Value) {
    let response = runtime()
        .block_on(appliance.client(client).send(
            "POST",
            "/v1/jwt",
            Some("application/json"),
            body.to_string().into_bytes(),
        ))
        .unwrap();
    (response.status, response.json().unwrap_or(Value::Null))
}

/// The JSON object a check of tests/py prints; `failed` says what its failing exit means.
fn python_verdict(script: &str, args: &[&Path], failed: &str) -> Value {
    let output = python_script(script, args);
    assert!(
        output.status.success(),
        "{failed}:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    serde_json::from_str(stdout(&output).trim()).unwrap()
}

/// PyJWT's verdict on `token` for `audience` with `alg`, through discovery at `issuer`.
fn pyjwt(issuer: &str, token: &str, audience: &str, alg: &str) -> Value {
    let args = [issuer, token, audience, alg].map(Path::new);
    python_verdict(
        "jwt_verify.py",
        &args,
        "PyJWT refused a token or accepted a forgery",
    )
}

fn hsmca_reload(appliance: &Appliance) {
    let output = appliance.hsmca_as("officer", "reload").output().unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn jwt_svids_verify_with_pyjwt_through_oidc_discovery_for_es256_rs256_and_ps256() {
    let (mut appliance, public) = start("jwt-es256-2026");
    let id = "spiffe://mesh.example/ns/prod/sa/web";

    // ES256, the default TTL (5 min, under the client's 10).
    let (status, answer) = request_jwt(
        &appliance,
        "limited",
        json!({ "spiffe_id": id, "audience": ["payments"] }),
    );
    assert_eq!(status, 200, "{answer}");
    let es256_token = answer["token"].as_str().unwrap().to_owned();
    let verdict = pyjwt(&public, &es256_token, "payments", "ES256");
    let claims = &verdict["claims"];
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["aud"], json!(["payments"]));
    assert_eq!(claims["iss"], public.as_str());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert_eq!(verdict["header"]["alg"], "ES256");
    assert_eq!(verdict["header"]["typ"], "JWT");
    let es256_kid = verdict["header"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(answer["kid"], es256_kid.as_str());
    for (case, error) in [
        ("tampered", "InvalidSignatureError"),
        ("alg_none", "InvalidAlgorithmError"),
        ("other_audience", "InvalidAudienceError"),
    ] {
        let refusal = verdict["refused"][case].as_str().unwrap_or_default();
        assert!(refusal.starts_with(error), "{case}: {verdict}");
    }

    // The SPIFFE bundle carries both JWT keys beside the x509 root, the same on the mTLS
    // API and on the public listener's configured path.
    let bundle = appliance.get("istiod", "/v1/bundle/spiffe").json().unwrap();
    let keys = bundle["keys"].as_array().unwrap();
    assert_eq!(
        keys.iter().filter(|k| k["use"] == "x509-svid").count(),
        1,
        "{bundle}"
    );
    let jwt_keys: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(jwt_keys.len(), 2, "{bundle}");
    assert!(jwt_keys.iter().all(|k| k["kid"].is_string()));
    assert!(
        jwt_keys
            .iter()
            .any(|k| k["kid"] == es256_kid.as_str() && k["crv"] == "P-256")
    );
    assert!(jwt_keys.iter().any(|k| k["kty"] == "RSA"));
    let (status, public_bundle) = ops_get(&public, "/mesh.example/bundle.json");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&public_bundle).unwrap(),
        bundle
    );

    // py-spiffe reads the public bundle as the trust domain's JWT and X.509 bundles and
    // validates the token with it, as a workload of another trust domain would.
    let bundle_url = format!("{public}/mesh.example/bundle.json");
    let args = [
        bundle_url.as_str(),
        "mesh.example",
        es256_token.as_str(),
        "payments",
    ];
    let spiffe = python_verdict(
        "spiffe_bundle_check.py",
        &args.map(Path::new),
        "py-spiffe refused the bundle or the token, or accepted a forgery",
    );
    assert_eq!(spiffe["spiffe_id"], id);
    assert_eq!(spiffe["audience"], json!(["payments"]));
    let mut kids: Vec<&str> = jwt_keys
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    kids.sort();
    assert_eq!(spiffe["jwt_kids"], json!(kids));
    let root_der = keys.iter().find(|k| k["use"] == "x509-svid").unwrap()["x5c"][0].clone();
    assert_eq!(spiffe["x509_authorities"], json!([root_der]));
    assert!(
        spiffe["refused"]["other_audience"].is_string()
            && spiffe["refused"]["tampered"].is_string(),
        "{spiffe}"
    );

    // Audited with the token's digest, never the token; counted.
    let records = appliance.audit_records();
    let issued: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "jwt.issued")
        .collect();
    assert_eq!(issued.len(), 1);
    let details = &issued[0]["details"];
    assert_eq!(details["spiffe_id"], id);
    assert_eq!(details["audience"], json!(["payments"]));
    assert_eq!(details["kid"], es256_kid.as_str());
    assert_eq!(details["exp"], claims["exp"]);
    assert_eq!(
        details["sha256"],
        hsmca::digest::sha256_hex(es256_token.as_bytes()).as_str()
    );
    let signature = es256_token.rsplit('.').next().unwrap();
    assert!(
        !std::fs::read_to_string(appliance.path("audit.log"))
            .unwrap()
            .contains(signature)
    );
    let (_, metrics) = appliance.ops_get("/metrics");
    assert!(
        metrics.contains("hsmca_jwt_requests_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );

    // RS256 after a reload makes the RSA key active; the ES256 key stays published, so its
    // token still verifies.
    appliance.write_config(&jwt_sections(
        public.rsplit(':').next().unwrap().parse().unwrap(),
        "jwt-rs256-2026",
        "rs256",
    ));
    hsmca_reload(&appliance);
    let (status, answer) = request_jwt(
        &appliance,
        "limited",
        json!({ "spiffe_id": id, "audience": ["billing", "payments"], "ttl": "10m" }),
    );
    assert_eq!(status, 200, "{answer}");
    let token = answer["token"].as_str().unwrap();
    let verdict = pyjwt(&public, token, "billing", "RS256");
    assert_eq!(verdict["header"]["alg"], "RS256");
    assert_ne!(verdict["header"]["kid"], es256_kid.as_str());
    assert_eq!(
        verdict["claims"]["exp"].as_u64().unwrap() - verdict["claims"]["iat"].as_u64().unwrap(),
        600
    );
    pyjwt(&public, &es256_token, "payments", "ES256");

    // PS256 with the same RSA key.
    appliance.write_config(&jwt_sections(
        public.rsplit(':').next().unwrap().parse().unwrap(),
        "jwt-rs256-2026",
        "ps256",
    ));
    hsmca_reload(&appliance);
    let (status, answer) = request_jwt(
        &appliance,
        "limited",
        json!({ "spiffe_id": id, "audience": ["payments"] }),
    );
    assert_eq!(status, 200, "{answer}");
    let verdict = pyjwt(
        &public,
        answer["token"].as_str().unwrap(),
        "payments",
        "PS256",
    );
    assert_eq!(verdict["header"]["alg"], "PS256");

    let (_, discovery) = ops_get(&public, "/.well-known/openid-configuration");
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256", "PS256"])
    );
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let verify = common::audit_verify(&appliance.path("audit.log"));
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn jwt_refusals_name_their_rule_and_are_audited_and_the_public_listener_serves_nothing_else() {
    let (mut appliance, public) = start("jwt-es256-2026");
    let web = "spiffe://mesh.example/ns/prod/sa/web";
    let cases: [(&str, Value, u16, &str, &str); 11] = [
        (
            "limited",
            json!({ "spiffe_id": "spiffe://mesh.example/ns/production/sa/web", "audience": ["payments"] }),
            403,
            "policy_denied",
            "client.spiffe_path_prefixes",
        ),
        (
            "limited",
            json!({ "spiffe_id": "spiffe://other.example/ns/prod/sa/web", "audience": ["payments"] }),
            403,
            "policy_denied",
            "client.trust_domains",
        ),
        (
            "limited",
            json!({ "spiffe_id": web, "audience": ["payments", "admin"] }),
            403,
            "policy_denied",
            "client.jwt_audiences",
        ),
        (
            "limited",
            json!({ "spiffe_id": web, "audience": [] }),
            400,
            "bad_audience",
            "at least one",
        ),
        (
            "limited",
            json!({ "spiffe_id": web, "audience": ["payments"], "ttl": "11m" }),
            403,
            "policy_denied",
            "client.jwt_max_ttl",
        ),
        (
            "limited",
            json!({ "spiffe_id": web, "audience": ["payments"], "ttl": "31m" }),
            400,
            "ttl_over_max",
            "[jwt] max_ttl",
        ),
        (
            "istiod",
            json!({ "spiffe_id": web, "audience": ["payments"] }),
            403,
            "policy_denied",
            "client.jwt_audiences",
        ),
        (
            "stranger",
            json!({ "spiffe_id": web, "audience": ["payments"] }),
            403,
            "policy_denied",
            "clients",
        ),
        (
            "limited",
            json!({ "spiffe_id": "spiffe://mesh.example/ns/prod/../admin", "audience": ["payments"] }),
            400,
            "invalid_spiffe_id",
            "'..'",
        ),
        (
            "limited",
            json!({ "spiffe_id": "spiffe://mesh.example", "audience": ["payments"] }),
            400,
            "invalid_spiffe_id",
            "trust domain",
        ),
        (
            "limited",
            json!({ "spiffe_id": web, "audience": ["payments"], "alg": "none" }),
            400,
            "bad_json",
            "unknown field",
        ),
    ];
    for (client, body, status, code, names) in &cases {
        let (got, answer) = request_jwt(&appliance, client, body.clone());
        assert_eq!(got, *status, "{client} {body}: {answer}");
        assert_eq!(answer["error"]["code"], *code, "{client} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{client} {body}: {message}");
    }
    let records = appliance.audit_records();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "jwt.refused")
        .collect();
    assert_eq!(refused.len(), cases.len());
    assert_eq!(
        refused[2]["details"]["audience"],
        json!(["payments", "admin"])
    );
    assert_eq!(refused[0]["details"]["code"], "policy_denied");
    assert!(records.iter().all(|r| r["event"] != "jwt.issued"));
    let (_, metrics) = appliance.ops_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "hsmca_jwt_requests_total{{outcome=\"refused\"}} {}",
            cases.len()
        )),
        "{metrics}"
    );

    // The public listener: what it publishes, and nothing else, whatever the method.
    for path in [
        "/mesh.example/bundle.json",
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
    ] {
        assert_eq!(ops_get(&public, path).0, 200, "{path}");
    }
    for path in [
        "/v1/jwt",
        "/v1/sign",
        "/v1/revoke",
        "/v1/reload",
        "/v1/bundle/spiffe",
        "/metrics",
        "/healthz",
        "/v1/pki/ca/pem",
    ] {
        assert_eq!(ops_get(&public, path).0, 404, "GET {path}");
        assert_eq!(post(&public, path), 404, "POST {path}");
    }
    let (_, jwks) = ops_get(&public, "/.well-known/jwks.json");
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["use"] == "sig" && k["kid"].is_string() && k.get("d").is_none())
    );
    assert!(appliance.stop().success(), "{}", appliance.server_log());
}

/// `POST path` with a JSON body on a plain-HTTP listener: the status.
fn post(base: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = r#"{"spiffe_id":"spiffe://mesh.example/ns/prod/sa/web","audience":["payments"]}"#;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_public_listener_limits_its_rate_and_drops_connections_that_send_nothing() {
    let mut appliance = Appliance::prepare();
    let port = free_port();
    appliance.write_config_with(|text| {
        let text = text.replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
        format!(
            "{text}{}",
            jwt_sections(port, "jwt-es256-2026", "rs256").replace(
                "[public]\n",
                "[public]\nrequests_per_minute = 60\nburst = 5\n"
            )
        )
    });
    appliance.start();
    let public = format!("http://127.0.0.1:{port}");

    // A silent connection is closed once the header-read timeout (1 s here) has passed.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let opened = Instant::now();
    let read = std::io::Read::read(&mut silent, &mut [0u8; 64]);
    let after = opened.elapsed();
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?} after {after:?}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&after),
        "closed after {after:?}"
    );

    // Five at once, then 429 (one more a second after that).
    let answers: Vec<(u16, String)> = (0..8)
        .map(|_| ops_get(&public, "/.well-known/openid-configuration"))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(&statuses[..5], [200; 5], "{statuses:?}");
    let limited: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .map(|(_, body)| body)
        .collect();
    assert!(!limited.is_empty(), "{statuses:?}");
    assert!(
        limited.iter().all(|body| body.contains("\"rate_limited\"")),
        "{limited:?}"
    );
    assert!(appliance.stop().success(), "{}", appliance.server_log());
}

/// PyJWT's verdicts on every token of `tokens`, through discovery at `issuer`.
fn pyjwt_many(issuer: &str, tokens: &[String], audience: &str) -> Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), tokens.join("\n") + "\n").unwrap();
    let args = [Path::new(issuer), Path::new(audience), file.path()];
    python_verdict("jwt_verify_many.py", &args, "the PyJWT check failed")
}

/// The `alg` of a token's header.
fn alg_of(token: &str) -> String {
    use base64ct::Encoding;
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&base64ct::Base64UrlUnpadded::decode_vec(header).unwrap()).unwrap();
    header["alg"].as_str().unwrap().to_owned()
}

#[test]
fn rotation_under_load_keeps_every_token_verifiable_until_the_old_key_is_retired() {
    let port = free_port();
    let mut appliance = Appliance::prepare();
    appliance.write_config(&jwt_sections(port, "jwt-es256-2026", "rs256"));
    appliance.start();
    let public = format!("http://127.0.0.1:{port}");
    let rt = runtime();
    let client = appliance.client("limited");
    let stop = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let body =
        json!({ "spiffe_id": "spiffe://mesh.example/ns/prod/sa/web", "audience": ["payments"] })
            .to_string()
            .into_bytes();
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, tokens, failures, body) = (
                client.clone(),
                stop.clone(),
                tokens.clone(),
                failures.clone(),
                body.clone(),
            );
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = client
                        .send("POST", "/v1/jwt", Some("application/json"), body.clone())
                        .await;
                    match answer {
                        Ok(response) if response.status == 200 => {
                            let token = response.json().unwrap()["token"]
                                .as_str()
                                .unwrap()
                                .to_owned();
                            tokens.lock().unwrap().push(token);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    let count_of = |alg: &str| {
        tokens
            .lock()
            .unwrap()
            .iter()
            .filter(|token| alg_of(token) == alg)
            .count()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Both keys are published; ES256 signs. Switch to RS256 by reload, under load.
    wait_for("ES256 tokens", &|| count_of("ES256") >= 100);
    appliance.write_config(&jwt_sections(port, "jwt-rs256-2026", "rs256"));
    hsmca_reload(&appliance);
    wait_for("RS256 tokens", &|| count_of("RS256") >= 100);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    let tokens = tokens.lock().unwrap().clone();
    // For the team's notes, not asserted: what 4 connections got across the reload.
    eprintln!(
        "{} JWT-SVIDs in {:?} from 4 connections, across a reload",
        tokens.len(),
        started.elapsed()
    );

    // The books: one jwt.issued record per token handed out, by its SHA-256, and no other.
    let mut audited: Vec<String> = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "jwt.issued")
        .map(|r| r["details"]["sha256"].as_str().unwrap().to_owned())
        .collect();
    let mut handed_out: Vec<String> = tokens
        .iter()
        .map(|token| hsmca::digest::sha256_hex(token.as_bytes()))
        .collect();
    audited.sort();
    handed_out.sort();
    assert_eq!(
        audited, handed_out,
        "every token handed out is audited, and only those"
    );

    // Until the old key is retired, every token verifies against the published JWKS.
    let verdict = pyjwt_many(&public, &tokens, "payments");
    assert_eq!(verdict["refused"], json!([]), "{verdict}");
    let verified = &verdict["verified"];
    assert_eq!(
        verified["ES256"].as_u64().unwrap() + verified["RS256"].as_u64().unwrap(),
        tokens.len() as u64,
        "{verdict}"
    );

    // Retired (its key removed from [[jwt.keys]], reloaded): the old tokens no longer verify,
    // the new ones still do.
    let retired = jwt_sections(port, "jwt-rs256-2026", "rs256").replace(
        "[[jwt.keys]]\nlabel = \"jwt-es256-2026\"\nalgorithm = \"es256\"\n\n",
        "",
    );
    assert!(!retired.contains("jwt-es256-2026"), "{retired}");
    appliance.write_config(&retired);
    hsmca_reload(&appliance);
    let verdict = pyjwt_many(&public, &tokens, "payments");
    let refused = verdict["refused"].as_array().unwrap();
    assert_eq!(
        refused.len(),
        tokens
            .iter()
            .filter(|token| alg_of(token) == "ES256")
            .count(),
        "{verdict}"
    );
    assert!(refused.iter().all(|r| r["alg"] == "ES256"), "{verdict}");
    assert_eq!(
        verdict["verified"]["RS256"].as_u64().unwrap() as usize,
        tokens.len() - refused.len()
    );
    assert!(appliance.stop().success(), "{}", appliance.server_log());
}
