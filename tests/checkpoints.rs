//! Signed audit checkpoints end to end: `hsmca serve` signs them in the HSM with the key of the
//! checkpoint ceremony, sends them to a witness file and a syslog socket, and records them in
//! the chain; `hsmca audit verify --checkpoint-key --witness` then names a chain cut off or
//! rewritten (and hashed again) by someone who could write the store, on SQLite and on
//! PostgreSQL; openssl verifies a checkpoint by itself; a checkpoint the HSM could not sign is
//! a gap that verify reports.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64ct::Encoding;
use common::appliance::{Appliance, runtime};
use common::load::distinct_csrs;
use common::postgres::Postgres;
use common::{assert_success, stderr, stdout};
use hsmca::ledger::chain::{AuditChain, AuditEvent, GENESIS_HASH};
use serde_json::Value;

/// The checkpoint key the development ceremony makes (deploy/ceremonies/10-*.toml).
const KEY_LABEL: &str = "audit-checkpoint-2026";

/// The `[audit]` section: checkpoints every `interval`, to `witness/checkpoints.jsonl` and,
/// when given, to the syslog socket at `syslog`.
fn audit_section(interval: &str, syslog: Option<&Path>) -> String {
    let mut section = format!(
        "\n[audit]\ncheckpoint_key = \"{KEY_LABEL}\"\ncheckpoint_interval = \"{interval}\"\nwitness_file = \"witness/checkpoints.jsonl\"\n"
    );
    if let Some(syslog) = syslog {
        section.push_str(&format!("witness_syslog = \"{}\"\n", syslog.display()));
    }
    section
}

/// A prepared appliance with checkpoints on (and its witness directory).
fn appliance_with_checkpoints(interval: &str, syslog: Option<&Path>) -> Appliance {
    let appliance = Appliance::prepare();
    std::fs::create_dir_all(appliance.path("witness")).unwrap();
    appliance.write_config(&audit_section(interval, syslog));
    appliance
}

fn public_key(appliance: &Appliance) -> PathBuf {
    appliance.path("ceremony/out/audit-checkpoint-2026.pub.pem")
}

fn witness(appliance: &Appliance) -> PathBuf {
    appliance.path("witness/checkpoints.jsonl")
}

fn witness_lines(appliance: &Appliance) -> Vec<Value> {
    std::fs::read_to_string(witness(appliance))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits (up to 20 s) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `hsmca audit verify` with `args`, the checkpoint key and the witness file.
fn verify_with_checkpoints(appliance: &Appliance, args: &[&str]) -> Output {
    verify_against(appliance, args, &witness(appliance))
}

/// `hsmca audit verify` with `args`, the checkpoint key and the witness at `witness`.
fn verify_against(appliance: &Appliance, args: &[&str], witness: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hsmca"))
        .args(["audit", "verify"])
        .args(args)
        .arg("--checkpoint-key")
        .arg(public_key(appliance))
        .arg("--witness")
        .arg(witness)
        .env_remove("HSMCA_CONFIG")
        .output()
        .unwrap()
}

/// Issues `count` issuing-CA certificates as istiod.
fn issue(appliance: &Appliance, count: usize) {
    let rt = runtime();
    let client = appliance.client("istiod");
    for csr in distinct_csrs(count) {
        let response = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
        assert_eq!(response.status, 200, "{:?}", response.json());
    }
}

/// The chain `lines` with record `seq`'s details edited by `edit` and every record from it
/// on hashed again: what someone who can write the store and knows the format can make.
fn rewritten(lines: &[String], seq: usize, edit: impl Fn(&mut Value)) -> Vec<String> {
    let mut chain = if seq == 1 {
        AuditChain::after(0, GENESIS_HASH.into())
    } else {
        let before: Value = serde_json::from_str(&lines[seq - 2]).unwrap();
        AuditChain::after(seq as u64 - 1, before["hash"].as_str().unwrap().into())
    };
    let mut out = lines[..seq - 1].to_vec();
    for (index, line) in lines.iter().enumerate().skip(seq - 1) {
        let mut record: Value = serde_json::from_str(line).unwrap();
        if index == seq - 1 {
            edit(&mut record["details"]);
        }
        let linked = chain.link(
            record["time"].as_str().unwrap(),
            &[AuditEvent {
                event: record["event"].as_str().unwrap().into(),
                actor: record["actor"].as_str().unwrap().into(),
                details: record["details"].clone(),
            }],
        );
        out.push(linked.lines.trim_end().to_owned());
        chain = linked.next;
    }
    out
}

#[test]
fn checkpoints_are_signed_witnessed_and_name_a_cut_or_rewritten_chain() {
    let dir = tempfile::tempdir().unwrap();
    let syslog_path = dir.path().join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let mut appliance = appliance_with_checkpoints("1h", Some(&syslog_path));
    appliance.start();
    // The checkpoint at start covers what was recorded before it.
    wait_until("the checkpoint at start", || {
        witness_lines(&appliance).len() == 1
    });
    assert_eq!(
        appliance.metric("hsmca_audit_checkpoints_total{result=\"signed\"}"),
        1
    );
    assert_ne!(
        appliance.metric("hsmca_audit_checkpoint_last_signed_seconds"),
        0
    );
    issue(&appliance, 3);
    let status = appliance.stop();
    assert!(status.success(), "{}", appliance.server_log());

    // At stop, one more: it vouches for the stop record, and its own record ends the chain.
    let records = appliance.audit_records();
    let witnessed = witness_lines(&appliance);
    assert_eq!(witnessed.len(), 2, "{witnessed:?}");
    let stopped = records
        .iter()
        .rposition(|r| r["event"] == "service.stopped")
        .unwrap();
    assert_eq!(witnessed[1]["seq"], records[stopped]["seq"]);
    assert_eq!(witnessed[1]["hash"], records[stopped]["hash"]);
    assert_eq!(records.last().unwrap()["event"], "audit.checkpoint");
    assert_eq!(records.last().unwrap()["details"], witnessed[1]);
    let started = records
        .iter()
        .position(|r| r["event"] == "service.started")
        .unwrap();
    assert_eq!(witnessed[0]["seq"], records[started]["seq"]);

    // Syslog got the same two, as auth.notice messages that carry the checkpoint's JSON.
    syslog.set_nonblocking(true).unwrap();
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = syslog.recv(&mut buffer) {
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (message, checkpoint) in messages.iter().zip(&witnessed) {
        let json = &message[message.find("{\"seq\":").unwrap()..];
        assert!(message.starts_with("<37>hsmca["), "{message}");
        assert_eq!(&serde_json::from_str::<Value>(json).unwrap(), checkpoint);
    }
    // A syslog export is a witness too.
    let syslog_export = dir.path().join("auth.log");
    std::fs::write(&syslog_export, messages.join("\n")).unwrap();

    // The intact chain passes, from the file and through the configured store.
    let log = appliance.path("audit.log");
    let passed = verify_with_checkpoints(&appliance, &[log.to_str().unwrap()]);
    assert_success(&passed, "audit verify with checkpoints");
    assert!(
        stdout(&passed).contains("checkpoints: 2 in the chain and 2 witnessed hold"),
        "{}",
        stdout(&passed)
    );
    let config = appliance.config_path();
    let passed = verify_with_checkpoints(&appliance, &["--config", config.to_str().unwrap()]);
    assert_success(&passed, "audit verify --config with checkpoints");
    let passed = verify_against(&appliance, &[log.to_str().unwrap()], &syslog_export);
    assert_success(&passed, "audit verify against the syslog export");
    assert!(
        stdout(&passed).contains("2 witnessed hold"),
        "{}",
        stdout(&passed)
    );

    // The report says what the checkpoints found.
    let report = appliance
        .token
        .hsmca_command(&["report", "--since", "2000-01-01", "--until", "2100-01-01"])
        .arg("--config")
        .arg(&config)
        .arg("--checkpoint-key")
        .arg(public_key(&appliance))
        .arg("--witness")
        .arg(witness(&appliance))
        .output()
        .unwrap();
    assert_success(&report, "report");
    assert!(
        stdout(&report).contains("Checkpoints: 2 in the chain and 2 witnessed hold"),
        "{}",
        stdout(&report)
    );
    assert!(
        stdout(&report).contains("| audit.checkpoint | 2 |"),
        "{}",
        stdout(&report)
    );

    // An exported copy cut by its last two records (the stop and its checkpoint): the chain
    // still verifies on its own, the witness names the cut.
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let cut = dir.path().join("cut.log");
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    assert_success(&common::audit_verify(&cut), "the cut chain alone");
    let refused = verify_with_checkpoints(&appliance, &[cut.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stop_seq = records[stopped]["seq"].as_u64().unwrap();
    let expected = format!(
        "vouches for record {stop_seq}, but the chain ends at record {}",
        stop_seq - 1
    );
    assert!(
        stdout(&refused).contains("TRUNCATED") && stdout(&refused).contains(&expected),
        "{}",
        stdout(&refused)
    );
    assert!(
        stderr(&refused).contains("does not hold what its checkpoints vouch for"),
        "{}",
        stderr(&refused)
    );

    // The store's own file, rewritten from the second issuance on and hashed again (with
    // its checkpoint records, which the rewriter cannot sign again): named with the record
    // the stop checkpoint vouches for, after the last record still checkpointed.
    let second_issue = records
        .iter()
        .filter(|r| r["event"] == "sign.issued")
        .nth(1)
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let forged = rewritten(&lines, second_issue as usize, |details| {
        details["client"] = "someone-else".into();
    });
    std::fs::write(&log, forged.join("\n") + "\n").unwrap();
    assert_success(&common::audit_verify(&log), "the rehashed chain alone");
    let refused = verify_with_checkpoints(&appliance, &["--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    let out = stdout(&refused);
    let started_seq = records[started]["seq"].as_u64().unwrap();
    let expected =
        format!("REWRITTEN: record {stop_seq} is not the one the witness's checkpoint on line 2");
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains(&format!(
            "after record {started_seq} (checkpointed and still intact)"
        )),
        "{out}"
    );
}

#[test]
fn a_checkpoint_the_hsm_cannot_sign_is_a_gap_that_verify_reports() {
    let mut appliance = Appliance::prepare();
    std::fs::create_dir_all(appliance.path("witness")).unwrap();
    let control = appliance.use_fault_module(|text| format!("{text}{}", audit_section("1s", None)));
    appliance.start();
    wait_until("the checkpoint at start", || {
        witness_lines(&appliance).len() == 1
    });
    // The HSM goes away; a request is refused (and audited), so there is something new to
    // checkpoint, and the checkpoint cannot be signed either.
    std::fs::write(&control, "* CKR_DEVICE_REMOVED\n").unwrap();
    let rt = runtime();
    let response = rt
        .block_on(
            appliance
                .client("istiod")
                .sign(&distinct_csrs(1)[0], "issuing-ca", None),
        )
        .unwrap();
    assert_eq!(response.status, 503, "{:?}", response.json());
    wait_until("an audit.checkpoint_failed record", || {
        appliance
            .audit_records()
            .iter()
            .any(|r| r["event"] == "audit.checkpoint_failed")
    });
    assert!(appliance.metric("hsmca_audit_checkpoints_total{result=\"failed\"}") >= 1);
    assert_eq!(witness_lines(&appliance).len(), 1);
    // Back: the next try (within a second) covers the gap.
    std::fs::write(&control, "").unwrap();
    wait_until("a checkpoint after the HSM returned", || {
        witness_lines(&appliance).len() >= 2
    });
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let records = appliance.audit_records();
    let failed = records
        .iter()
        .find(|r| r["event"] == "audit.checkpoint_failed")
        .unwrap();
    assert!(
        failed["details"]["error"]
            .as_str()
            .unwrap()
            .contains("CKR_DEVICE_REMOVED"),
        "{failed}"
    );
    let log = appliance.path("audit.log");
    let passed = verify_with_checkpoints(&appliance, &[log.to_str().unwrap()]);
    assert_success(&passed, "a chain with a checkpoint gap still verifies");
    let out = stdout(&passed);
    assert!(
        out.contains(&format!(
            "gap: record {} ({}) says a checkpoint could not be signed",
            failed["seq"],
            failed["time"].as_str().unwrap()
        )),
        "{out}"
    );
}

#[test]
fn a_checkpoint_verifies_with_openssl_alone() {
    let mut appliance = appliance_with_checkpoints("1h", None);
    appliance.start();
    wait_until("the checkpoint at start", || {
        witness_lines(&appliance).len() == 1
    });
    assert!(appliance.stop().success());
    let checkpoint = &witness_lines(&appliance)[0];
    // What docs/operations.md tells an auditor to do, without hsmca.
    let message = format!(
        "hsmca audit checkpoint\nseq {}\nhash {}\ntime {}\n",
        checkpoint["seq"],
        checkpoint["hash"].as_str().unwrap(),
        checkpoint["time"].as_str().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let signature = dir.path().join("checkpoint.sig");
    std::fs::write(
        &signature,
        base64ct::Base64::decode_vec(checkpoint["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let openssl = |text: &str| {
        let file = dir.path().join("checkpoint.txt");
        std::fs::write(&file, text).unwrap();
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public_key(&appliance))
            .arg("-signature")
            .arg(&signature)
            .arg(&file)
            .output()
            .unwrap()
    };
    let verified = openssl(&message);
    assert_success(&verified, "openssl dgst -verify");
    assert_eq!(stdout(&verified).trim(), "Verified OK");
    let other = message.replace(
        &format!("seq {}\n", checkpoint["seq"]),
        &format!("seq {}\n", checkpoint["seq"].as_u64().unwrap() + 1),
    );
    assert!(!openssl(&other).status.success(), "another sequence number");
    // The fingerprint in the checkpoint is the SHA-256 of the key's DER SubjectPublicKeyInfo.
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(public_key(&appliance))
        .output()
        .unwrap();
    assert_success(&der, "openssl pkey");
    assert_eq!(
        checkpoint["key"].as_str().unwrap(),
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &der.stdout
        ))
    );
}

#[test]
fn a_checkpoint_key_needs_a_witness_and_must_be_in_the_hsm() {
    let appliance = Appliance::prepare();
    let refuse = |section: &str, expected: &str| {
        appliance.write_config(section);
        let output = appliance
            .serve_command()
            .output()
            .expect("hsmca serve runs");
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    };
    refuse(
        &format!("\n[audit]\ncheckpoint_key = \"{KEY_LABEL}\"\n"),
        "checkpoint_key needs a witness outside the store",
    );
    refuse(
        "\n[audit]\nwitness_file = \"witness.jsonl\"\n",
        "names a witness but no checkpoint_key",
    );
    refuse(
        "\n[audit]\ncheckpoint_key = \"no-such-key\"\nwitness_file = \"witness.jsonl\"\n",
        "audit.checkpoint_key \"no-such-key\" cannot be used",
    );
    refuse(
        &format!(
            "\n[audit]\ncheckpoint_key = \"{KEY_LABEL}\"\nwitness_file = \"missing-dir/witness.jsonl\"\n"
        ),
        "witness file",
    );
    refuse(
        &format!(
            "\n[audit]\ncheckpoint_key = \"{KEY_LABEL}\"\nwitness_syslog = \"/nonexistent/log\"\n"
        ),
        "syslog socket /nonexistent/log",
    );
    // Pointed at the audit file, it would write checkpoints into the chain it vouches for.
    refuse(
        &format!("\n[audit]\ncheckpoint_key = \"{KEY_LABEL}\"\nwitness_file = \"./audit.log\"\n"),
        "is the store's own",
    );
    assert!(
        !appliance.path("audit.log").exists(),
        "refused before the store is opened"
    );
}

#[test]
fn a_postgresql_chain_cut_by_its_administrator_is_named_by_the_witness() {
    let server = Postgres::start(false);
    let mut appliance = Appliance::prepare();
    std::fs::create_dir_all(appliance.path("witness")).unwrap();
    appliance.use_postgres(&server, false);
    let config = std::fs::read_to_string(appliance.config_path()).unwrap();
    std::fs::write(appliance.config_path(), config + &audit_section("1h", None)).unwrap();
    appliance.start();
    wait_until("the checkpoint at start", || {
        witness_lines(&appliance).len() == 1
    });
    issue(&appliance, 2);
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let config = appliance.config_path();
    let config = config.to_str().unwrap();
    assert_success(
        &verify_with_checkpoints(&appliance, &["--config", config]),
        "the intact PostgreSQL chain",
    );
    // Whoever administers the database deletes the newest records and moves the head back:
    // the chain is intact on its own, but shorter than the witness saw it.
    let last = witness_lines(&appliance)[1]["seq"].as_u64().unwrap();
    let keep = last - 1;
    server.psql(&format!(
        "DELETE FROM audit_records WHERE seq > {keep};
         UPDATE audit_head SET seq = {keep}, hash = (SELECT substring(line from '\"hash\":\"([0-9a-f]{{64}})\"}}$') FROM audit_records WHERE seq = {keep});"
    ));
    let chain_only = appliance
        .token
        .hsmca_command(&["audit", "verify", "--config", config])
        .output()
        .unwrap();
    assert_success(&chain_only, "the cut chain alone");
    let refused = verify_with_checkpoints(&appliance, &["--config", config]);
    assert!(!refused.status.success());
    assert!(
        stdout(&refused).contains(&format!(
            "TRUNCATED: the witness's checkpoint on line 2 (signed {}) vouches for record {last}, but the chain ends at record {keep}",
            witness_lines(&appliance)[1]["time"].as_str().unwrap()
        )),
        "{}",
        stdout(&refused)
    );
}
