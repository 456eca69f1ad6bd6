//! `hsmca ledger migrate`: an appliance that ran on SQLite moves to PostgreSQL (a real server,
//! started by the test) with its certificates, revocations, CRL numbers, bundle sequence,
//! Vault tokens and audit chain, and goes on there; a non-empty target and a broken chain are
//! refused, leaving the target as it was.

mod common;

use common::appliance::{Appliance, p256, runtime, spire_csr};
use common::postgres::Postgres;
use common::{stderr, stdout};

const SQLITE: &str = Appliance::SQLITE_STORAGE;

#[test]
fn an_sqlite_appliance_moves_to_postgres_with_its_chain_and_goes_on_there() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    appliance
        .write_config("\n[vault]\nmount = \"pki\"\nsign_intermediate_profile = \"issuing-ca\"\n");
    appliance.start();
    let rt = runtime();
    let csr = || spire_csr(&p256(), &["spiffe://mesh.example"]);
    let mut serials = Vec::new();
    for _ in 0..3 {
        let answer = rt
            .block_on(appliance.client("spire").sign(&csr(), "issuing-ca", None))
            .unwrap()
            .json()
            .unwrap();
        serials.push(answer["serial"].as_str().unwrap().to_owned());
    }
    let revoked = appliance
        .revoke(&appliance.url, &serials[0], "superseded")
        .json()
        .unwrap();
    let crl_number = revoked["crl_number"].as_u64().expect("a CRL was signed");
    let login = rt
        .block_on(appliance.client("spire").send_with_headers(
            "PUT",
            "/v1/auth/cert/login",
            &[("x-vault-request", "true")],
            br#"{"name":""}"#.to_vec(),
        ))
        .unwrap()
        .json()
        .unwrap();
    let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let records_before = appliance.audit_records().len();

    // The configuration to move to: the same, with [storage] on PostgreSQL.
    let postgres = server.storage_section(appliance.dir.path(), false);
    let sqlite_config = std::fs::read_to_string(appliance.config_path()).unwrap();
    let pg_config = appliance.path("hsmca-pg.toml");
    std::fs::write(&pg_config, sqlite_config.replace(SQLITE, &postgres)).unwrap();
    let migrate = || {
        appliance
            .token
            .hsmca_command(&["--config", appliance.config_path().to_str().unwrap()])
            .args(["ledger", "migrate", "--to", pg_config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let migrated = migrate();
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    assert!(
        stdout(&migrated).contains(&format!(
            "copied 3 certificates, 1 revocations, 3 CRLs and {records_before} audit records"
        )),
        "{}",
        stdout(&migrated)
    );
    // Once only: the target is not empty any more.
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not empty (certificates)"),
        "{}",
        stderr(&again)
    );

    // The appliance goes on on PostgreSQL: the same chain, the revocation, the CRL number,
    // the bundle sequence and the Vault token carried over.
    appliance.write_config_with(|_| sqlite_config.replace(SQLITE, &postgres));
    appliance.start();
    let answer = rt
        .block_on(appliance.client("spire").sign(&csr(), "issuing-ca", None))
        .unwrap();
    assert_eq!(answer.status, 200);
    let lookup = rt
        .block_on(appliance.client("spire").send_with_headers(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("x-vault-request", "true"), ("x-vault-token", &token)],
            vec![],
        ))
        .unwrap();
    assert_eq!(lookup.status, 200, "{:?}", lookup.json());
    let bundle = appliance
        .get("stranger", "/v1/bundle/spiffe")
        .json()
        .unwrap();
    assert_eq!(bundle["spiffe_sequence"], 1);
    let revoke_again = appliance
        .revoke(&appliance.url, &serials[1], "superseded")
        .json()
        .unwrap();
    assert_eq!(revoke_again["crl_number"].as_u64(), Some(crl_number + 1));
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let verified = appliance
        .token
        .hsmca_command(&[
            "--config",
            appliance.config_path().to_str().unwrap(),
            "audit",
            "verify",
        ])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stderr(&verified));
    // The SQLite records, then this run's: service.started, sign.issued, vault lookup is not
    // audited, revoke, crl.published, service.stopped.
    let count: usize = server
        .psql("SELECT count(*) FROM audit_records")
        .parse()
        .unwrap();
    assert!(count > records_before, "{count} <= {records_before}");
    assert!(
        stdout(&verified).contains(&format!("{count} records, chain intact")),
        "{}",
        stdout(&verified)
    );
    assert!(
        stdout(&verified).contains("sign.issued records, one to one"),
        "{}",
        stdout(&verified)
    );
    assert_eq!(
        server.psql(&format!(
            "SELECT reason FROM revocations WHERE serial = '{}'",
            serials[0]
        )),
        "superseded"
    );
}

#[test]
fn a_broken_chain_is_not_migrated_and_the_target_stays_empty() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    appliance.start();
    let answer = runtime()
        .block_on(appliance.client("spire").sign(
            &spire_csr(&p256(), &["spiffe://mesh.example"]),
            "issuing-ca",
            None,
        ))
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(appliance.stop().success());
    // An edit inside the log.
    let log = appliance.path("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"actor\":\"", "\"actor\":\"x", 2)).unwrap();
    let pg_config = appliance.path("hsmca-pg.toml");
    std::fs::write(
        &pg_config,
        std::fs::read_to_string(appliance.config_path())
            .unwrap()
            .replace(SQLITE, &server.storage_section(appliance.dir.path(), false)),
    )
    .unwrap();
    let migrated = appliance
        .token
        .hsmca_command(&["--config", appliance.config_path().to_str().unwrap()])
        .args(["ledger", "migrate", "--to", pg_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!migrated.status.success());
    assert!(
        stderr(&migrated).contains("is broken at line 1"),
        "{}",
        stderr(&migrated)
    );
    assert_eq!(server.psql("SELECT count(*) FROM certificates"), "0");
    assert_eq!(server.psql("SELECT count(*) FROM audit_records"), "0");
}
