//! `hsmca audit verify` on a real log file: intact, then tampered in each way; and on the
//! configured SQLite store, whose ledger may hold records the file has not received yet.

mod common;

use std::path::Path;

use common::audit_verify as verify;
use hsmca::ledger::audit::{AuditEvent, AuditLog};
use hsmca::ledger::journal::{Journal, JournalEntry};
use hsmca::ledger::sqlite_journal::SqliteJournal;

fn rewrite(path: &Path, lines: &[&str]) {
    std::fs::write(path, format!("{}\n", lines.join("\n"))).unwrap();
}

#[test]
fn audit_verify_passes_an_intact_log_and_names_the_first_tampered_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    let mut head = String::new();
    for n in 1..=4 {
        head = log
            .append(&AuditEvent {
                event: "ceremony.test".into(),
                actor: format!("officer {n}"),
                details: serde_json::json!({ "step": n }),
            })
            .unwrap()
            .hash;
    }
    drop(log);

    let out = verify(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "audit log {}: 4 records, chain intact\nhead: {head}\n",
            path.display()
        )
    );

    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let edited = lines[1].replace("officer 2", "officer 9");
    let cases: [(Vec<&str>, u64); 4] = [
        (vec![lines[0], &edited, lines[2], lines[3]], 2),
        (vec![lines[0], lines[1], lines[3]], 3),
        (vec![lines[0], lines[2], lines[1], lines[2], lines[3]], 2),
        (vec![lines[0], lines[1], lines[3], lines[2]], 3),
    ];
    for (tampered, bad_line) in cases {
        rewrite(&path, &tampered);
        let out = verify(&path);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!(
                "error: audit log {} is broken at line {bad_line}: ",
                path.display()
            )),
            "{stderr}"
        );
    }
}

#[test]
fn the_configured_sqlite_stores_chain_is_verified_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&log_path).unwrap();
    for n in 1..=3 {
        log.append(&AuditEvent {
            event: "sign.refused".into(),
            actor: "istiod".into(),
            details: serde_json::json!({ "n": n }),
        })
        .unwrap();
    }
    drop(log);
    let config = dir.path().join("hsmca.toml");
    std::fs::write(
        &config,
        "[hsm]\nmodule = \"/nonexistent.so\"\ntoken_label = \"t\"\npin_env = \"PIN\"\n\n[storage]\nledger = \"ledger.sqlite\"\naudit_log = \"audit.log\"\n",
    )
    .unwrap();
    let hsmca = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hsmca"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    // Neither needs the HSM: the module in the config does not even exist.
    let verified = hsmca(&["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("3 records, chain intact\nhead: ")
            && String::from_utf8_lossy(&verified.stdout)
                .contains("0 certificates and 0 sign.issued records, one to one"),
        "{verified:?}"
    );
    let out = dir.path().join("export.log");
    let exported = hsmca(&["audit", "export", "--out", out.to_str().unwrap()]);
    assert!(exported.status.success(), "{exported:?}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&log_path).unwrap()
    );

    // A record committed in the ledger that the file lost (as a crash between the two
    // writes leaves it): the file still verifies, and verify says what the ledger holds more.
    let length = std::fs::metadata(&log_path).unwrap().len();
    let (mut journal, _) =
        SqliteJournal::open(&dir.path().join("ledger.sqlite"), &log_path).unwrap();
    journal
        .commit(&[JournalEntry {
            change: None,
            event: AuditEvent {
                event: "sign.refused".into(),
                actor: "istiod".into(),
                details: serde_json::json!({}),
            },
        }])
        .unwrap();
    // Stopped the way a kill stops it: nothing of its clean stop runs.
    std::mem::forget(journal);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log_path)
        .unwrap()
        .set_len(length)
        .unwrap();
    let verified = hsmca(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout.contains("3 records, chain intact"), "{stdout}");
    assert!(
        stdout.contains("the ledger holds 1 more committed records, not in the file yet"),
        "{stdout}"
    );

    // A certificate row that no sign.issued record accounts for is named.
    rusqlite::Connection::open(dir.path().join("ledger.sqlite"))
        .unwrap()
        .execute(
            "INSERT INTO certificates (serial, issuer_key_id, subject, sans, profile, client, not_before, not_after, der)
             VALUES ('0abc', 'aa', 'O=x', '[]', 'issuing-ca', 'istiod', 0, 1, x'00')",
            [],
        )
        .unwrap();
    let mismatch = hsmca(&["audit", "verify"]);
    assert_eq!(mismatch.status.code(), Some(1), "{mismatch:?}");
    assert!(
        String::from_utf8_lossy(&mismatch.stderr)
            .contains("1 certificates without a sign.issued record (0abc)"),
        "{mismatch:?}"
    );
}
