//! Several `hsmca serve` replicas on one SoftHSM2 token and one PostgreSQL (a real server,
//! started per test, over TLS verify-full): any replica answers any request, and the books
//! are one: every certificate a client received is in the database with its record, no
//! serial twice, one audit chain for the cluster that verifies.

mod common;

use common::appliance::{Appliance, Replica, assert_recorded_in, ops_get, runtime};
use common::load::{Load, distinct_csrs, issued};
use common::postgres::Postgres;
use common::{audit_verify, stderr, stdout};
use hsmca::ledger::certificates::CertificateStore;
use hsmca::ledger::postgres::{PostgresConfig, PostgresLedger};

/// The cluster's audit chain exported to `path`, and the store, as an auditor reads them.
fn books(
    config: &PostgresConfig,
    rt: &tokio::runtime::Runtime,
    path: &std::path::Path,
) -> PostgresLedger {
    let store = rt
        .block_on(PostgresLedger::connect(config, rt.handle().clone()))
        .unwrap();
    let mut out = std::fs::File::create(path).unwrap();
    store.export_audit(&mut out).unwrap();
    store
}

/// The books after the replicas stopped: every answered certificate is in the database with
/// its record and the chain verifies; what is stored beyond the answers (a commit whose answer
/// never arrived) is at most `unanswered`. Returns the store and the exported chain.
fn assert_books(
    appliance: &Appliance,
    config: &PostgresConfig,
    rt: &tokio::runtime::Runtime,
    answers: &[&serde_json::Value],
    unanswered: usize,
) -> (PostgresLedger, std::path::PathBuf) {
    let exported = appliance.path("exported-audit.log");
    let store = books(config, rt, &exported);
    assert_recorded_in(&store, &exported, answers);
    let stored = store.count().unwrap() as usize;
    assert!(
        stored >= answers.len() && stored - answers.len() <= unanswered,
        "stored {stored}, answered {}, at most {unanswered} more allowed",
        answers.len()
    );
    (store, exported)
}

#[test]
fn two_replicas_serve_under_load_and_keep_one_set_of_books() {
    let server = Postgres::start(true);
    let mut appliance = Appliance::prepare();
    let config = appliance.use_postgres(&server, true);
    appliance.start();
    let mut b: Replica = appliance.start_replica("b");
    let rt = runtime();
    for ops in [&appliance.ops_url, &b.ops_url] {
        assert_eq!(ops_get(ops, "/readyz").0, 200, "{ops}");
    }

    // 16 connections on each replica for two seconds.
    let csrs = distinct_csrs(64);
    let loads = [
        Load::start(&rt, &appliance.client("istiod"), 16, &csrs, "issuing-ca"),
        Load::start(
            &rt,
            &appliance.client_of(&b.url, "tls", "istiod"),
            16,
            &csrs,
            "issuing-ca",
        ),
    ];
    std::thread::sleep(std::time::Duration::from_secs(2));
    let outcomes: Vec<_> = loads.into_iter().map(|load| load.finish(&rt)).collect();
    for (name, outcome) in ["a", "b"].iter().zip(&outcomes) {
        assert!(
            !issued(outcome).is_empty() && issued(outcome).len() == outcome.len(),
            "replica {name}: {} of {} issued",
            issued(outcome).len(),
            outcome.len()
        );
    }
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    assert!(b.stop().success(), "{}", b.log());

    let answers: Vec<_> = outcomes.iter().flat_map(|o| issued(o)).collect();
    // Nothing else was stored, and no serial twice.
    let (_, exported) = assert_books(&appliance, &config, &rt, &answers, 0);
    let serials: std::collections::HashSet<&str> = answers
        .iter()
        .map(|a| a["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), answers.len());
    // One chain holds both replicas' starts and stops.
    let events: Vec<String> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for event in ["service.started", "service.stopped"] {
        assert_eq!(events.iter().filter(|e| *e == event).count(), 2, "{event}");
    }

    // The operator's view: `hsmca audit verify --config` checks the database's chain, and
    // `hsmca audit export` writes the file an auditor verifies anywhere.
    let audit = |args: &[&str]| {
        let config = appliance.config_path();
        let mut all = vec!["--config", config.to_str().unwrap(), "audit"];
        all.extend_from_slice(args);
        appliance.token.hsmca_command(&all).output().unwrap()
    };
    let verified = audit(&["verify"]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains(&format!("{} records, chain intact", events.len())),
        "{}",
        stdout(&verified)
    );
    let certificates = server.psql("SELECT count(*) FROM certificates");
    // The auditor's report counts the cluster's issuances from the one chain.
    let report = appliance
        .token
        .hsmca_command(&[
            "--config",
            appliance.config_path().to_str().unwrap(),
            "report",
            "--since",
            "2000-01-01",
            "--until",
            "2100-01-01",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", stderr(&report));
    let counts: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    assert!(
        counts["chain"].as_str().unwrap().starts_with("intact"),
        "{counts}"
    );
    let issued: u64 = counts["issued"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(issued.to_string(), certificates, "{counts}");
    assert!(
        stdout(&verified).contains(&format!(
            "{certificates} certificates and {certificates} sign.issued records, one to one"
        )),
        "{}",
        stdout(&verified)
    );
    let out = appliance.path("auditor.log");
    let exported = audit(&["export", "--out", out.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(audit_verify(&out).status.success());
    let again = audit(&["export", "--out", out.to_str().unwrap()]);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    // Someone with write access to the database deletes the newest certificate: the chain is
    // intact, but its sign.issued record has no row any more.
    let deleted = server.psql(
        "DELETE FROM certificates WHERE serial = (SELECT serial FROM certificates
             WHERE serial NOT IN (SELECT serial FROM revocations)
             ORDER BY issued_at DESC, serial LIMIT 1) RETURNING serial",
    );
    let lost = audit(&["verify"]);
    assert!(!lost.status.success());
    assert!(
        stderr(&lost).contains(&format!(
            "1 sign.issued records without a certificate row ({})",
            deleted.lines().next().unwrap().trim()
        )),
        "{}",
        stderr(&lost)
    );
    // A replica starting now says the same, from its check of the newest records.
    let mut c = appliance.start_replica("c");
    let expected = format!(
        "1 sign.issued records without a certificate row ({})",
        deleted.lines().next().unwrap().trim()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !c.log().contains(&expected) {
        assert!(
            std::time::Instant::now() < deadline,
            "no word of the deleted row in 30 s: {}",
            c.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(c.stop().success(), "{}", c.log());
    // Someone with write access to the database edits a record, then cuts the newest one.
    server.psql(
        r#"UPDATE audit_records SET line = replace(line, '"actor":"', '"actor":"x') WHERE seq = 3"#,
    );
    let broken = audit(&["verify"]);
    assert!(!broken.status.success());
    assert!(
        stderr(&broken).contains("broken at record 3"),
        "{}",
        stderr(&broken)
    );
    server.psql("DELETE FROM audit_records WHERE seq >= 3");
    let cut = audit(&["verify"]);
    assert!(
        stderr(&cut).contains("records were removed"),
        "{}",
        stderr(&cut)
    );
}

/// How many of `outcomes` were refused; each refusal must be a 503, with one of `codes`
/// unless that is empty, and no connection may have been lost.
fn refusals(outcomes: &[common::load::Outcome], codes: &[&str]) -> usize {
    let mut refused = 0;
    for outcome in outcomes {
        match outcome {
            common::load::Outcome::Issued(_) => {}
            common::load::Outcome::Refused(status, body) => {
                assert_eq!(*status, 503, "{body}");
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(codes.is_empty() || codes.contains(&code), "{body}");
                refused += 1;
            }
            common::load::Outcome::Lost(error) => panic!("a connection was lost: {error}"),
        }
    }
    refused
}

/// Asserts that the last requests of the load were issued: the replica recovered by itself.
fn assert_issuing_at_the_end(outcomes: &[common::load::Outcome]) {
    assert!(
        outcomes
            .iter()
            .rev()
            .take(4)
            .all(|o| matches!(o, common::load::Outcome::Issued(_))),
        "the last requests were not issued"
    );
}

/// Polls `/readyz` at `ops_url` (every 50 ms, at most 20 s) until it answers `status`.
fn wait_ready(ops_url: &str, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (now, body) = ops_get(ops_url, "/readyz");
        if now == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {now} (waiting for {status}): {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_database_outage_under_load_refuses_with_503_and_recovers_without_a_restart() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    let config = appliance.use_postgres(&server, false);
    appliance.start();
    let rt = runtime();
    let load = Load::start(
        &rt,
        &appliance.client("istiod"),
        8,
        &distinct_csrs(32),
        "issuing-ca",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.pg_ctl("stop");
    wait_ready(&appliance.ops_url, 503);
    let (_, why) = ops_get(&appliance.ops_url, "/readyz");
    assert!(why.contains("the ledger cannot be reached"), "{why}");
    server.pg_ctl("start");
    wait_ready(&appliance.ops_url, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let outcomes = load.finish(&rt);

    // Refusals during the outage are 503 ledger_unavailable; nothing was lost, and issuing
    // went on afterwards.
    // The certificate's record failed, or then the record of that failure.
    let refused = refusals(&outcomes, &["ledger_unavailable", "audit_unavailable"]);
    assert!(refused > 0, "the outage refused nothing");
    assert_issuing_at_the_end(&outcomes);
    let answers = issued(&outcomes);
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    assert_books(&appliance, &config, &rt, &answers, 0);
}

/// A Vault request as SPIRE sends it, with `token` if given, to the replica at `url`.
fn vault(
    appliance: &Appliance,
    rt: &tokio::runtime::Runtime,
    url: &str,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: Vec<u8>,
) -> hsmca::api::client::Response {
    let client = appliance.client_of(url, "tls", "spire");
    let mut headers = vec![("x-vault-request", "true")];
    if let Some(token) = token {
        headers.push(("x-vault-token", token));
    }
    rt.block_on(client.send_with_headers(method, path, &headers, body))
        .unwrap()
}

#[test]
fn a_vault_token_from_one_replica_works_on_another_and_after_a_restart() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    let storage = server.storage_section(appliance.dir.path(), false);
    appliance.write_config_with(|text| {
        let text = text.replace(Appliance::SQLITE_STORAGE, &storage);
        format!("{text}\n[vault]\nmount = \"pki\"\nsign_intermediate_profile = \"issuing-ca\"\n")
    });
    appliance.start();
    let b = appliance.start_replica("b");
    let rt = runtime();
    // SPIRE logs in through the load balancer, which sends it to replica A...
    let login = vault(
        &appliance,
        &rt,
        &appliance.url,
        ("PUT", "/v1/auth/cert/login"),
        None,
        br#"{"name":""}"#.to_vec(),
    );
    assert_eq!(login.status, 200);
    let token = login.json().unwrap()["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // ...and signs on replica B.
    let csr = common::appliance::spire_csr(&common::appliance::p256(), &["spiffe://mesh.example"]);
    let body = serde_json::json!({ "csr": csr, "uri_sans": "spiffe://mesh.example", "ttl": "" })
        .to_string()
        .into_bytes();
    let sign_intermediate = ("PUT", "/v1/pki/root/sign-intermediate");
    let signed = vault(
        &appliance,
        &rt,
        &b.url,
        sign_intermediate,
        Some(&token),
        body.clone(),
    );
    assert_eq!(signed.status, 200, "{:?}", signed.json());
    // A restart of A keeps the token.
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    appliance.start();
    let lookup = vault(
        &appliance,
        &rt,
        &appliance.url,
        ("GET", "/v1/auth/token/lookup-self"),
        Some(&token),
        vec![],
    );
    assert_eq!(lookup.status, 200, "{:?}", lookup.json());
    let signed = vault(
        &appliance,
        &rt,
        &appliance.url,
        sign_intermediate,
        Some(&token),
        body,
    );
    assert_eq!(signed.status, 200);
    // Only its hash is in the database.
    assert_eq!(
        server.psql(&format!(
            "SELECT count(*) FROM vault_tokens WHERE token_sha256 = '{}'",
            hsmca::digest::sha256_hex(token.as_bytes())
        )),
        "1"
    );
    drop(b);
}

#[test]
fn a_revocation_on_one_replica_is_in_the_crl_the_other_serves_within_the_recheck_bound() {
    let server = Postgres::start(true);
    let mut appliance = Appliance::prepare();
    appliance.use_postgres(&server, true);
    appliance.start();
    let b = appliance.start_replica("b");
    let rt = runtime();
    // Both replicas started, and the issuer has one CRL: B found A's and served it.
    let crls_of =
        |issuer: &str| appliance.get_at(&b.url, "stranger", &format!("/v1/crl/{issuer}.pem"));
    assert_eq!(crls_of("online-p256").status, 200);
    let numbers = server
        .psql("SELECT string_agg(number::text, ',' ORDER BY issuer_key_id, number) FROM crls");
    assert_eq!(numbers, "1,1", "one CRL per issuer");

    // A certificate issued by B, revoked on A.
    let csr = common::appliance::spire_csr(&common::appliance::p256(), &["spiffe://mesh.example"]);
    let issued = rt
        .block_on(
            appliance
                .client_of(&b.url, "tls", "spire")
                .sign(&csr, "issuing-ca", None),
        )
        .unwrap()
        .json()
        .unwrap();
    let serial = issued["serial"].as_str().unwrap().to_owned();
    let revoked = appliance.revoke(&appliance.url, &serial, "key-compromise");
    assert_eq!(revoked.status, 200, "{:?}", revoked.json());
    let revoked_at = std::time::Instant::now();
    // B's CRL lists it within CRL_RECHECK (5 s), plus the time of one fetch.
    let pem = appliance.path("b-crl.pem");
    loop {
        let answer = crls_of("online-p256");
        assert_eq!(answer.status, 200);
        std::fs::write(&pem, &answer.body).unwrap();
        let text = stdout(
            &std::process::Command::new("openssl")
                .args(["crl", "-noout", "-text", "-in"])
                .arg(&pem)
                .output()
                .unwrap(),
        );
        if text.to_lowercase().contains(&serial.to_lowercase()) {
            break;
        }
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(7),
            "replica B still serves a CRL without {serial}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        server.psql("SELECT count(*) FROM crls WHERE number = 2"),
        "1",
        "the revocation's CRL was signed once"
    );
    drop(b);
}

/// `N` distinct free TCP ports on 127.0.0.1 (held together while chosen, so none repeats).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// haproxy in TCP mode in front of the replicas (TLS passes through; mTLS ends at hsmca),
/// health-checking each one's `/readyz` on its operations listener. Stopped when dropped.
struct LoadBalancer {
    child: std::process::Child,
    url: String,
}

impl LoadBalancer {
    /// Listens on a free port and balances over `replicas`: (name, TLS port, ops port).
    fn start(dir: &std::path::Path, port: u16, replicas: &[(&str, u16, u16)]) -> LoadBalancer {
        let servers: String = replicas
            .iter()
            .map(|(name, tls, ops)| format!("  server {name} 127.0.0.1:{tls} check port {ops}\n"))
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 2000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\n\
                 frontend tls\n  bind 127.0.0.1:{port}\n  default_backend hsmca\n\n\
                 backend hsmca\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  default-server inter 200ms fall 2 rise 2\n{servers}"
            ),
        )
        .unwrap();
        let check = std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&config)
            .output()
            .expect("haproxy is not installed: tests/run.sh installs the Debian package haproxy");
        assert!(check.status.success(), "{}", stderr(&check));
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Listening once a TCP connect succeeds (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        LoadBalancer {
            child,
            url: format!("https://127.0.0.1:{port}"),
        }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates issued by the replica whose operations listener is `ops_url`, by its
/// `/metrics`.
fn issued_by(ops_url: &str) -> u64 {
    let (_, metrics) = ops_get(ops_url, "/metrics");
    metrics
        .lines()
        .filter(|line| line.starts_with("hsmca_certificates_issued_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn behind_haproxy_a_replica_killed_under_load_costs_only_its_in_flight_requests_and_rejoins() {
    let server = Postgres::start(false);
    let appliance = Appliance::prepare();
    let config = appliance.use_postgres(&server, false);
    // Each replica on fixed ports, so the load balancer finds a restarted one again.
    let text = std::fs::read_to_string(appliance.config_path()).unwrap();
    let [a_tls, a_ops, b_tls, b_ops, balancer_port] = free_ports();
    let mut ports = Vec::new();
    for (name, tls, ops) in [("a", a_tls, a_ops), ("b", b_tls, b_ops)] {
        // ops_listen first: "listen = …" is also the end of "ops_listen = …".
        let own = text
            .replace(
                "ops_listen = \"127.0.0.1:0\"",
                &format!("ops_listen = \"127.0.0.1:{ops}\""),
            )
            .replace(
                "\nlisten = \"127.0.0.1:0\"",
                &format!("\nlisten = \"127.0.0.1:{tls}\""),
            );
        assert_ne!(own, text);
        std::fs::write(appliance.path(&format!("{name}.toml")), own).unwrap();
        ports.push((name, tls, ops));
    }
    let a = appliance.start_replica_with("a", &appliance.path("a.toml"));
    let mut b = appliance.start_replica_with("b", &appliance.path("b.toml"));
    let balancer = LoadBalancer::start(appliance.dir.path(), balancer_port, &ports);
    let rt = runtime();
    let connections = 64;
    let load = Load::start(
        &rt,
        &appliance.client_of(&balancer.url, "tls", "istiod"),
        connections,
        &distinct_csrs(64),
        "issuing-ca",
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        issued_by(&a.ops_url) > 0 && issued_by(&b.ops_url) > 0,
        "both replicas serve"
    );
    b.kill9();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let b = appliance.start_replica_with("b", &appliance.path("b.toml"));
    let mut outcomes = load.finish(&rt);
    // The load balancer finds B healthy again and sends it new connections (the old ones
    // stay on A: keep-alive); its counters start at 0.
    let csrs = distinct_csrs(8);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while issued_by(&b.ops_url) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted replica got no work"
        );
        let fresh = Load::start(
            &rt,
            &appliance.client_of(&balancer.url, "tls", "istiod"),
            8,
            &csrs,
            "issuing-ca",
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        outcomes.extend(fresh.finish(&rt));
    }
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, common::load::Outcome::Lost(_)))
        .count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            common::load::Outcome::Refused(status, body) => Some((status, body)),
            _ => None,
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    // Only the requests in flight on B's connections when it died fail: at most one per
    // connection, whichever replica the connection was on.
    assert!(
        lost <= connections,
        "{lost} requests lost with {connections} connections"
    );
    let answers = issued(&outcomes);
    eprintln!(
        "issued {}, lost when B was killed {lost}, of {} requests",
        answers.len(),
        outcomes.len()
    );
    drop(balancer);
    let mut a = a;
    assert!(a.stop().success(), "{}", a.log());
    let mut b = b;
    assert!(b.stop().success(), "{}", b.log());
    // What was stored but never answered is at most what was lost (committed just before the
    // kill, the answer cut off with the connection).
    assert_books(&appliance, &config, &rt, &answers, lost);
}

#[test]
fn backend_connections_cut_mid_transaction_never_let_a_certificate_out_unrecorded() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    let config = appliance.use_postgres(&server, false);
    appliance.start();
    let rt = runtime();
    let load = Load::start(
        &rt,
        &appliance.client("istiod"),
        16,
        &distinct_csrs(32),
        "issuing-ca",
    );
    // Every connection hsmca holds, cut ten times, 150 ms apart, whatever it is doing.
    let mut cut = 0;
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        cut += server
            .psql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'hsmca') AS cut")
            .parse::<u32>()
            .unwrap();
    }
    // Ready again (the pool reconnected), then some requests on the healed connections.
    wait_ready(&appliance.ops_url, 200);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let outcomes = load.finish(&rt);
    assert!(cut > 0, "no backend was cut");
    let refused = refusals(&outcomes, &[]);
    let answers = issued(&outcomes);
    eprintln!(
        "backends cut {cut}; issued {}, refused {refused}",
        answers.len()
    );
    // Issuing went on after the cuts.
    assert_issuing_at_the_end(&outcomes);
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    // A commit whose answer was cut may have happened: such certificates are recorded, never
    // handed out, and no more than the refusals.
    assert_books(&appliance, &config, &rt, &answers, refused);
}

#[test]
fn a_replica_starting_on_a_tampered_chain_refuses_to_issue() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    appliance.use_postgres(&server, false);
    appliance.start();
    let csr = common::appliance::spire_csr(&common::appliance::p256(), &["spiffe://mesh.example"]);
    let rt = runtime();
    let issue = |appliance: &Appliance| {
        rt.block_on(appliance.client("spire").sign(&csr, "issuing-ca", None))
            .unwrap()
    };
    assert_eq!(issue(&appliance).status, 200);
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    // Someone with write access to the database edits a record while no replica runs.
    server.psql(
        r#"UPDATE audit_records SET line = replace(line, '"actor":"', '"actor":"x') WHERE seq = 2"#,
    );
    appliance.start();
    // The check beside the first requests finds it: /readyz names it, nothing is issued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = ops_get(&appliance.ops_url, "/readyz");
        if status == 503 {
            assert!(body.contains("broken at record 2"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {status}: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let refused = issue(&appliance);
    assert_eq!(refused.status, 503, "{:?}", refused.json());
}
