//! Crash consistency: under load on 64 connections, the service is killed with SIGKILL at
//! random moments and restarted, again and again. Afterwards every certificate any client
//! received is in the ledger (byte for byte) and in the audit log, every ledger row has its
//! audit record and every record its row, the audit log verifies, and no serial repeats.
//!
//! `HSMCA_CRASH_ROUNDS` sets the number of kills (default 20).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::appliance::{Appliance, runtime};
use common::load::{Load, Outcome, distinct_csrs, issued};
use hsmca::ledger::certificates::{CertificateStore, Ledger};

/// A random time to let the load run before the kill, 50 to 1049 ms.
fn random_moment() -> Duration {
    let mut bytes = [0u8; 2];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    Duration::from_millis(50 + u64::from(u16::from_le_bytes(bytes)) % 1000)
}

#[test]
fn sigkill_under_load_loses_no_issued_certificate_and_repeats_no_serial() {
    let rounds: usize = std::env::var("HSMCA_CRASH_ROUNDS")
        .map(|n| n.parse().expect("HSMCA_CRASH_ROUNDS is a number"))
        .unwrap_or(20);
    let mut appliance = Appliance::prepare();
    let rt = runtime();
    let csrs = distinct_csrs(64);
    let mut outcomes: Vec<Outcome> = Vec::new();
    for round in 1..=rounds {
        appliance.start();
        let load = Load::start(&rt, &appliance.client("istiod"), 64, &csrs, "issuing-ca");
        let moment = random_moment();
        std::thread::sleep(moment);
        appliance.kill9();
        let round_outcomes = load.finish(&rt);
        eprintln!(
            "round {round}: killed after {} ms, {} certificates received",
            moment.as_millis(),
            issued(&round_outcomes).len()
        );
        outcomes.extend(round_outcomes);
    }
    // It starts once more after the last kill, and stops cleanly; its check at start finds
    // the newest certificates and records one to one.
    let log_before = appliance.server_log().len();
    appliance.start();
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let last_run = appliance.server_log()[log_before..].to_owned();
    assert!(
        last_run.contains("the newest certificates and their sign.issued records match one to one"),
        "{last_run}"
    );

    let received = issued(&outcomes);
    assert!(
        received.len() >= rounds,
        "only {} certificates in {rounds} rounds: the load did not run",
        received.len()
    );
    let serials: HashSet<&str> = received
        .iter()
        .map(|answer| answer["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), received.len(), "a serial was issued twice");
    appliance.assert_recorded(&received);
    // Rows for certificates signed but never delivered (killed before the answer) may exist;
    // fewer rows than deliveries may not. Every row has its `sign.issued` record and every
    // record its row, whenever the kill came: they commit in one transaction.
    let ledger = Ledger::open(&appliance.path("ledger.sqlite")).unwrap();
    let rows = ledger.count().unwrap();
    assert!(rows >= received.len() as u64);
    let row_serials: HashSet<String> = ledger
        .snapshot()
        .unwrap()
        .certificates
        .into_iter()
        .map(|(certificate, _)| certificate.serial)
        .collect();
    let records = appliance.audit_records();
    let audited_serials: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "sign.issued")
        .map(|r| r["details"]["serial"].as_str().unwrap())
        .collect();
    assert_eq!(
        audited_serials.len(),
        row_serials.len(),
        "one record per row"
    );
    assert!(
        audited_serials
            .iter()
            .all(|serial| row_serials.contains(*serial)),
        "a sign.issued record without its row"
    );
    let torn_tails = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "audit.torn_tail_discarded")
        .count();
    eprintln!(
        "{rounds} kills: {} certificates received, {rows} ledger rows, {torn_tails} torn audit tails cut off",
        received.len()
    );
    // A certificate row deleted while hsmca is stopped: the check at the next start names its
    // serial (and issuance goes on).
    let deleted: String = rusqlite::Connection::open(appliance.path("ledger.sqlite"))
        .unwrap()
        .query_row(
            "DELETE FROM certificates WHERE serial = (SELECT serial FROM certificates ORDER BY issued_at DESC, serial LIMIT 1) RETURNING serial",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let log_before = appliance.server_log().len();
    appliance.start();
    assert!(appliance.stop().success());
    let last_run = appliance.server_log()[log_before..].to_owned();
    assert!(
        last_run.contains(&format!(
            "1 sign.issued records without a certificate row ({deleted})"
        )),
        "{last_run}"
    );
    // Anything other than a certificate or a lost connection means a crash leaked into an
    // answer.
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Refused(..)))
        .collect();
    assert!(refused.is_empty(), "refusals under load: {refused:?}");
}

#[test]
fn sigterm_the_moment_the_service_says_it_serves_still_stops_cleanly() {
    let mut appliance = Appliance::prepare();
    for _ in 0..5 {
        appliance.start();
        // No pause: the handlers must be in place before the "serving" line.
        assert!(appliance.stop().success(), "{}", appliance.server_log());
        let records = appliance.audit_records();
        assert_eq!(records.last().unwrap()["event"], "service.stopped");
    }
}
