//! The PostgreSQL store against a real server (Debian's `postgresql`, started per test by
//! `common::postgres`): TLS verify-full, the password from a private file, migrations
//! applied once in one transaction even when replicas start together, a clear refusal for
//! each way the connection can be wrong; the certificate store's contract, the same on
//! SQLite and PostgreSQL, and what must hold when several replicas write at once.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::appliance::runtime;
use common::postgres::{PASSWORD, Postgres};
use hsmca::ledger::Store;
use hsmca::ledger::audit::{self, AuditEvent};
use hsmca::ledger::certificates::{
    CertificateFilter, CertificateStore, IssuedCertificate, Ledger, LedgerError, NewRevocation,
    Revocation, StoredCrl,
};
use hsmca::ledger::journal::{Change, Journal, JournalEntry, JournalError};
use hsmca::ledger::postgres::{PostgresConfig, PostgresError, PostgresLedger, schema_version};
use hsmca::ledger::sqlite_journal::SqliteJournal;
use hsmca::pki::RevocationReason;

fn settings(server: &Postgres, dir: &std::path::Path, extra: &str) -> PostgresConfig {
    toml::from_str(&format!(
        "postgres = \"{}\"\npassword_file = \"{}\"\n{extra}",
        server.url(),
        server.password_file(dir).display()
    ))
    .unwrap()
}

fn verify_full(server: &Postgres) -> String {
    format!("ca_file = \"{}\"\n", server.ca_file().display())
}

#[test]
fn replicas_starting_together_migrate_the_schema_once_over_verified_tls() {
    let server = Postgres::start(true);
    let dir = tempfile::tempdir().unwrap();
    let config = settings(&server, dir.path(), &verify_full(&server));
    let rt = runtime();
    // Three replicas at once: the advisory lock lets one migrate, the others find it done.
    let pools =
        rt.block_on(async { futures::future::join_all((0..3).map(|_| config.connect())).await });
    for pool in pools {
        let pool = pool.unwrap();
        let client = rt.block_on(pool.get()).unwrap();
        let row = rt
            .block_on(client.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            ))
            .unwrap();
        assert!(row.get::<_, bool>(0), "the connection is not TLS");
    }
    // Every step once, in order.
    assert_eq!(
        server.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM hsmca_schema"),
        (1..=schema_version())
            .map(|version| version.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    for table in [
        "certificates",
        "revocations",
        "crls",
        "bundles",
        "audit_records",
        "audit_head",
        "vault_tokens",
    ] {
        assert_eq!(
            server.psql(&format!("SELECT count(*) >= 0 FROM {table}")),
            "t"
        );
    }
    // A restart migrates nothing more.
    rt.block_on(config.connect()).unwrap();
    assert_eq!(
        server.psql("SELECT count(*) FROM hsmca_schema"),
        schema_version().to_string()
    );
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_with_a_clear_line() {
    let server = Postgres::start(false);
    let dir = tempfile::tempdir().unwrap();
    let config = settings(&server, dir.path(), "sslmode = \"disable\"\n");
    let rt = runtime();
    rt.block_on(config.connect()).unwrap();
    let newer = schema_version() + 1;
    server.psql(&format!(
        "INSERT INTO hsmca_schema (version, what) VALUES ({newer}, 'from the future')"
    ));
    let error = rt.block_on(config.connect()).unwrap_err();
    assert!(
        matches!(error, PostgresError::SchemaTooNew { found, .. } if found == newer),
        "{error}"
    );
    let line = error.to_string();
    assert!(
        line.contains(&format!(
            "schema is at version {newer}, newer than this hsmca knows"
        )),
        "{line}"
    );
}

#[test]
fn wrong_credentials_tls_and_a_stopped_server_are_refused_without_leaking_the_password() {
    let server = Postgres::start(true);
    let other = Postgres::start(true); // its CA did not issue `server`'s certificate
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let no_secret = |error: &PostgresError| {
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        shown
    };

    // A group-readable password file is refused before it is read.
    let config = settings(&server, dir.path(), &verify_full(&server));
    let password_file = config.password_file.clone().unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = rt.block_on(config.connect()).unwrap_err();
    assert!(no_secret(&error).contains("chmod 600"), "{error}");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A wrong password.
    std::fs::write(&password_file, "not the password\n").unwrap();
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(!shown.contains("not the password"), "{shown}");

    // A server whose certificate the configured CA did not issue.
    let config = settings(&server, dir.path(), &verify_full(&other));
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");

    // The server stopped: a prompt, clear refusal naming where it looked.
    let config = settings(&server, dir.path(), &verify_full(&server));
    rt.block_on(config.connect()).unwrap();
    server.pg_ctl("stop");
    let started = std::time::Instant::now();
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("127.0.0.1:{}/hsmca", server.port)),
        "{shown}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // And it is back once the server is.
    server.pg_ctl("start");
    rt.block_on(config.connect()).unwrap();
}

fn certificate(serial: &str) -> IssuedCertificate {
    IssuedCertificate {
        serial: serial.into(),
        issuer_key_id: "6c51eb35".into(),
        subject: "O=SPIFFE,C=US".into(),
        sans: vec!["spiffe://example.org".into()],
        profile: "issuing-ca".into(),
        client: "spiffe://example.org/spire-server".into(),
        not_before: 1_795_000_000,
        not_after: 1_795_086_400,
        der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
    }
}

fn crl(number: u64) -> StoredCrl {
    StoredCrl {
        number,
        this_update: 1,
        next_update: 2,
        der: vec![number as u8],
    }
}

/// What became of each change of `group`, committed by `journal`.
fn commit(journal: &mut dyn Journal, group: &[JournalEntry]) -> Vec<Result<(), LedgerError>> {
    journal
        .commit(group)
        .unwrap()
        .into_iter()
        .map(|made| made.map(|_| ()))
        .collect()
}

/// What every certificate store guarantees, whatever the database: `journal` writes into
/// `store`.
fn the_store_contract_holds(journal: &mut dyn Journal, store: &mut dyn CertificateStore) {
    let made = commit(journal, &[issued("01"), issued("02")]);
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    assert_eq!(store.count().unwrap(), 2);
    assert_eq!(store.find("02").unwrap(), Some(certificate("02")));
    assert_eq!(store.find("03").unwrap(), None);
    // A repeated serial fails alone; the rest of its group is stored.
    let made = commit(journal, &[issued("03"), issued("01")]);
    assert!(made[0].is_ok(), "{made:?}");
    assert!(
        matches!(&made[1], Err(LedgerError::DuplicateSerial { serial }) if serial == "01"),
        "{made:?}"
    );
    assert_eq!(store.find("03").unwrap(), Some(certificate("03")));

    let made = commit(
        journal,
        &[
            revoked("02", RevocationReason::KeyCompromise, 100),
            revoked("02", RevocationReason::Superseded, 200),
            revoked("09", RevocationReason::Superseded, 200),
        ],
    );
    assert!(made[0].is_ok(), "{made:?}");
    assert!(
        matches!(
            made[1],
            Err(LedgerError::AlreadyRevoked {
                revoked_at: 100,
                ..
            })
        ),
        "{made:?}"
    );
    assert!(
        matches!(made[2], Err(LedgerError::UnknownSerial { .. })),
        "{made:?}"
    );
    assert_eq!(
        store.revoked("6c51eb35").unwrap(),
        vec![Revocation {
            serial: "02".into(),
            reason: RevocationReason::KeyCompromise,
            revoked_at: 100
        }]
    );
    assert!(store.revoked("other").unwrap().is_empty());

    // The inventory: every filter narrows, revocations come with their certificate.
    let serials = |filter: CertificateFilter, now: i64| -> Vec<String> {
        store
            .list(&filter, now)
            .unwrap()
            .into_iter()
            .map(|listed| listed.serial)
            .collect()
    };
    let issued_at = 1_795_000_000;
    assert_eq!(
        serials(CertificateFilter::default(), issued_at),
        ["01", "02", "03"]
    );
    let revoked = store
        .list(
            &CertificateFilter {
                revoked_only: true,
                ..CertificateFilter::default()
            },
            issued_at,
        )
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial, "02");
    assert_eq!(revoked[0].revoked, Some(("key-compromise".into(), 100)));
    assert_eq!(revoked[0].sans, ["spiffe://example.org"]);
    let by = |client: &str, profile: &str, issuer: &str| CertificateFilter {
        client: Some(client.into()),
        profile: Some(profile.into()),
        issuer_key_id: Some(issuer.into()),
        ..CertificateFilter::default()
    };
    assert_eq!(
        serials(
            by(
                "spiffe://example.org/spire-server",
                "issuing-ca",
                "6c51eb35"
            ),
            issued_at
        )
        .len(),
        3
    );
    assert!(
        serials(
            by("spiffe://example.org/other", "issuing-ca", "6c51eb35"),
            issued_at
        )
        .is_empty()
    );
    assert!(
        serials(
            by("spiffe://example.org/spire-server", "workload", "6c51eb35"),
            issued_at
        )
        .is_empty()
    );
    assert!(
        serials(
            by("spiffe://example.org/spire-server", "issuing-ca", "aa"),
            issued_at
        )
        .is_empty()
    );
    // They expire at 1_795_086_400: within a day of issue, not within an hour; once expired,
    // no longer "expiring".
    let expiring = |before: i64, now: i64| {
        serials(
            CertificateFilter {
                expiring_before: Some(before),
                ..CertificateFilter::default()
            },
            now,
        )
        .len()
    };
    assert_eq!(expiring(issued_at + 86_400, issued_at), 3);
    assert_eq!(expiring(issued_at + 3_600, issued_at), 0);
    assert_eq!(expiring(1_795_086_400 + 86_400, 1_795_086_400), 0);

    assert_eq!(store.latest_crl("6c51eb35").unwrap(), None);
    assert_eq!(store.next_crl_number("6c51eb35").unwrap(), 1);
    store.store_crl("6c51eb35", &crl(1)).unwrap();
    store.store_crl("6c51eb35", &crl(2)).unwrap();
    assert!(matches!(
        store.store_crl("6c51eb35", &crl(2)),
        Err(LedgerError::CrlNumber { last: 2, .. })
    ));
    assert_eq!(store.latest_crl("6c51eb35").unwrap(), Some(crl(2)));
    assert_eq!(store.next_crl_number("6c51eb35").unwrap(), 3);

    assert_eq!(store.bundle_sequence("a").unwrap(), 1);
    assert_eq!(store.bundle_sequence("a").unwrap(), 1);
    assert_eq!(store.bundle_sequence("b").unwrap(), 2);
    assert_eq!(store.bundle_sequence("a").unwrap(), 3);

    // One replica at a time holds an issuer's CRL lease; it lapses, or is given up.
    assert!(store.lease_crl("6c51eb35", "replica-a", 100, 130).unwrap());
    assert!(!store.lease_crl("6c51eb35", "replica-b", 110, 140).unwrap());
    assert!(
        store
            .lease_crl("other-issuer", "replica-b", 110, 140)
            .unwrap()
    );
    assert!(store.lease_crl("6c51eb35", "replica-a", 120, 150).unwrap());
    assert!(store.lease_crl("6c51eb35", "replica-b", 150, 180).unwrap());
    store.release_crl("6c51eb35", "replica-a").unwrap(); // not its lease: no effect
    assert!(!store.lease_crl("6c51eb35", "replica-a", 160, 190).unwrap());
    store.release_crl("6c51eb35", "replica-b").unwrap();
    assert!(store.lease_crl("6c51eb35", "replica-a", 160, 190).unwrap());
}

fn replica(
    server: &Postgres,
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> PostgresLedger {
    let config = settings(server, dir, "sslmode = \"disable\"\n");
    rt.block_on(PostgresLedger::connect(&config, rt.handle().clone()))
        .unwrap()
}

#[test]
fn sqlite_and_postgres_keep_the_same_contract() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let (mut journal, _) = SqliteJournal::open(&ledger, &dir.path().join("audit.log")).unwrap();
    the_store_contract_holds(&mut journal, &mut Ledger::open(&ledger).unwrap());
    let server = Postgres::start(false);
    let rt = runtime();
    let mut postgres = replica(&server, dir.path(), &rt);
    the_store_contract_holds(&mut postgres.clone(), &mut postgres);
    // A reason this version does not know is an error, never read as another one.
    server.psql("INSERT INTO revocations (serial, reason, revoked_at, officer) VALUES ('01', 'bogus', 300, 'officer')");
    let store = replica(&server, dir.path(), &rt);
    assert!(matches!(
        store.revoked("6c51eb35"),
        Err(LedgerError::UnknownReason { reason, .. }) if reason == "bogus"
    ));
}

#[test]
fn replicas_writing_at_once_never_share_a_serial_a_crl_number_or_a_revocation() {
    let server = Postgres::start(false);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let replicas: Vec<PostgresLedger> = (0..4).map(|_| replica(&server, dir.path(), &rt)).collect();
    let rounds = 20u64;
    let outcomes = std::thread::scope(|scope| {
        let workers: Vec<_> = replicas
            .into_iter()
            .enumerate()
            .map(|(index, mut store)| {
                scope.spawn(move || {
                    let mut won = (0, 0, 0);
                    for round in 1..=rounds {
                        // Every replica tries the same serial and the same revocation: exactly
                        // one may win each.
                        let serial = format!("{round:02x}");
                        match commit(&mut store, &[issued(&serial)]).remove(0) {
                            Ok(()) => won.0 += 1,
                            Err(LedgerError::DuplicateSerial { .. }) => {}
                            Err(other) => panic!("record: {other}"),
                        }
                        // Publishing as a replica does: read the next number, store the CRL;
                        // a replica that was overtaken in between is refused.
                        let next = store.next_crl_number("6c51eb35").unwrap();
                        match store.store_crl("6c51eb35", &crl(next)) {
                            Ok(()) => won.1 += 1,
                            Err(LedgerError::CrlNumber { .. }) => {}
                            Err(other) => panic!("store_crl: {other}"),
                        }
                        // The serial is there by now, whichever replica wrote it.
                        loop {
                            let revocation =
                                revoked(&serial, RevocationReason::Superseded, index as i64);
                            match commit(&mut store, &[revocation]).remove(0) {
                                Ok(()) => {
                                    won.2 += 1;
                                    break;
                                }
                                Err(LedgerError::AlreadyRevoked { .. }) => break,
                                Err(LedgerError::UnknownSerial { .. }) => std::thread::yield_now(),
                                Err(other) => panic!("revoke: {other}"),
                            }
                        }
                    }
                    won
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect::<Vec<_>>()
    });
    let total = outcomes.iter().fold((0, 0, 0), |sum, won| {
        (sum.0 + won.0, sum.1 + won.1, sum.2 + won.2)
    });
    assert_eq!((total.0, total.2), (rounds, rounds), "{outcomes:?}");
    assert_eq!(
        server.psql("SELECT count(*) FROM certificates"),
        rounds.to_string()
    );
    // Every CRL stored took the number after the last: 1, 2, 3, ... with no repeat and no
    // gap, however the replicas interleaved.
    assert!(total.1 >= rounds, "{outcomes:?}");
    assert_eq!(
        server.psql("SELECT string_agg(number::text, ',' ORDER BY number) FROM crls"),
        (1..=total.1)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM revocations"),
        rounds.to_string()
    );
}

fn issued(serial: &str) -> JournalEntry {
    JournalEntry {
        change: Some(Change::Issued(certificate(serial))),
        event: AuditEvent {
            event: "sign.issued".into(),
            actor: "spiffe://example.org/spire-server".into(),
            details: serde_json::json!({ "serial": serial }),
        },
    }
}

fn revoked(serial: &str, reason: RevocationReason, revoked_at: i64) -> JournalEntry {
    JournalEntry {
        change: Some(Change::Revoked(NewRevocation {
            revocation: Revocation {
                serial: serial.into(),
                reason,
                revoked_at,
            },
            officer: "officer".into(),
        })),
        event: AuditEvent {
            event: "revoke".into(),
            actor: "officer".into(),
            details: serde_json::json!({ "serial": serial }),
        },
    }
}

fn refused() -> JournalEntry {
    JournalEntry {
        change: None,
        event: AuditEvent {
            event: "sign.refused".into(),
            actor: "spiffe://example.org/stranger".into(),
            details: serde_json::json!({ "rule": "no_policy" }),
        },
    }
}

/// What every journal guarantees: a group's records in order with contiguous sequence
/// numbers, a taken serial failing alone and audited as unrecorded.
fn the_journal_contract_holds(journal: &mut dyn Journal) {
    let first = journal
        .commit(&[issued("01"), refused(), issued("02")])
        .unwrap();
    let seqs: Vec<u64> = first.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let second = journal.commit(&[issued("03"), issued("01")]).unwrap();
    assert_eq!(second[0].as_ref().unwrap().seq, 4);
    assert!(
        matches!(&second[1], Err(LedgerError::DuplicateSerial { serial }) if serial == "01"),
        "{second:?}"
    );
}

#[test]
fn sqlite_with_the_file_and_postgres_journal_alike() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.log");
    let (mut sqlite, _) =
        SqliteJournal::open(&dir.path().join("ledger.sqlite"), &log_path).unwrap();
    the_journal_contract_holds(&mut sqlite);
    drop(sqlite);
    let file_records: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();

    let server = Postgres::start(false);
    let rt = runtime();
    let mut postgres = replica(&server, dir.path(), &rt);
    the_journal_contract_holds(&mut postgres);
    let exported = dir.path().join("exported.log");
    let mut out = std::fs::File::create(&exported).unwrap();
    assert_eq!(postgres.export_audit(&mut out).unwrap(), 5);
    drop(out);
    assert_eq!(audit::verify(&exported).unwrap().records, 5);
    let postgres_records: Vec<serde_json::Value> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // The same events, in the same order, in both backends.
    let events = |records: &[serde_json::Value]| -> Vec<String> {
        records
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(events(&file_records), events(&postgres_records));
    assert_eq!(
        events(&postgres_records),
        [
            "sign.issued",
            "sign.refused",
            "sign.issued",
            "sign.issued",
            "sign.issued.unrecorded"
        ]
    );
    assert_eq!(server.psql("SELECT count(*) FROM certificates"), "3");
}

#[test]
fn replicas_share_one_audit_chain_and_no_certificate_is_stored_without_its_record() {
    let server = Postgres::start(false);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let groups = 25;
    std::thread::scope(|scope| {
        for index in 0..4 {
            let mut journal = replica(&server, dir.path(), &rt);
            scope.spawn(move || {
                for group in 0..groups {
                    let entries: Vec<JournalEntry> = (0..4)
                        .map(|n| issued(&format!("{index:02x}{group:04x}{n:02x}")))
                        .chain([refused()])
                        .collect();
                    for result in journal.commit(&entries).unwrap() {
                        result.unwrap();
                    }
                }
            });
        }
    });
    let store = replica(&server, dir.path(), &rt);
    let exported = dir.path().join("exported.log");
    let mut out = std::fs::File::create(&exported).unwrap();
    assert_eq!(store.export_audit(&mut out).unwrap(), 4 * groups * 5);
    drop(out);
    assert_eq!(audit::verify(&exported).unwrap().records, 4 * groups * 5);
    // Every stored certificate has its sign.issued record, and nothing else was stored.
    assert_eq!(
        server.psql(
            "SELECT count(*) FROM certificates c WHERE NOT EXISTS (
                 SELECT 1 FROM audit_records a
                 WHERE a.line::json->>'event' = 'sign.issued'
                   AND a.line::json->'details'->>'serial' = c.serial)"
        ),
        "0"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM certificates"),
        (4 * groups * 4).to_string()
    );
}

#[test]
fn an_outage_refuses_groups_without_writing_and_the_journal_recovers_without_a_restart() {
    let server = Postgres::start(false);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut journal = replica(&server, dir.path(), &rt);
    journal.commit(&[issued("01")]).unwrap();
    server.pg_ctl("stop");
    let error = journal.commit(&[issued("02"), refused()]).unwrap_err();
    assert!(matches!(error, JournalError::Unavailable(_)), "{error}");
    server.pg_ctl("start");
    // The pool replaces the broken connection; the chain goes on from the last committed
    // record, and the refused group left nothing behind.
    let receipts = journal.commit(&[issued("02")]).unwrap();
    assert_eq!(receipts[0].as_ref().unwrap().seq, 2);
    assert_eq!(server.psql("SELECT count(*) FROM certificates"), "2");
    assert_eq!(server.psql("SELECT max(seq) FROM audit_records"), "2");
}

/// Whether a second operation started on `store` while a first one is under way runs beside
/// it (true), or waits for it (false, after the first gave up waiting for it).
fn operations_overlap(store: &Store) -> bool {
    let (entered, is_entered) = std::sync::mpsc::channel();
    let (second_ran, has_second_run) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let first = scope.spawn(move || {
            store.blocking(|_| {
                entered.send(()).unwrap();
                Ok(has_second_run
                    .recv_timeout(std::time::Duration::from_secs(2))
                    .is_ok())
            })
        });
        is_entered.recv().unwrap();
        let second = scope.spawn(move || {
            store.blocking(|_| {
                let _ = second_ran.send(());
                Ok(())
            })
        });
        let overlapped = first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
        overlapped
    })
}

#[test]
fn a_replicas_store_operations_run_side_by_side_on_postgresql_and_take_turns_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::new(Box::new(
        Ledger::open(&dir.path().join("ledger.sqlite")).unwrap(),
    ));
    assert!(!operations_overlap(&sqlite));
    let server = Postgres::start(false);
    let rt = runtime();
    let postgres = Store::new(Box::new(replica(&server, dir.path(), &rt)));
    assert!(operations_overlap(&postgres));
}
