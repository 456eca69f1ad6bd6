//! Signed checkpoints of the audit chain, and how they are checked.
//!
//! The hash chain finds an edited, removed or reordered record, but not its newest records cut
//! off, nor a chain rewritten from some record on and hashed again by someone who can write
//! the store. A checkpoint closes that gap: it names a record of the chain (its sequence
//! number, which is also the number of records up to it, and its hash), is signed inside the
//! HSM by a key that signs nothing else, and is kept twice: as an `audit.checkpoint` record in
//! the chain itself, and by witnesses outside the store (`super::witness`). Whoever can
//! rewrite the store can rewrite neither the HSM's signature nor the witness, so
//! [`CheckpointCheck`] names a truncation or rewrite behind the newest witnessed checkpoint
//! by its sequence number.
//!
//! The signed message is plain text, so that an auditor checks a checkpoint with openssl
//! alone ([`Checkpoint::signed_text`], docs/operations.md).

use std::fmt::{self, Write as _};

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};

use super::chain::parse_record;
use crate::hsm::{PublicKey, SignatureAlgorithm};

/// The event of a checkpoint record; its details are a [`Checkpoint`].
pub const CHECKPOINT_EVENT: &str = "audit.checkpoint";
/// The event of a checkpoint that could not be signed (the HSM was unavailable): a gap in the
/// checkpoints that `hsmca audit verify` reports.
pub const CHECKPOINT_FAILED_EVENT: &str = "audit.checkpoint_failed";
/// The event of a checkpoint a witness did not take (its file or socket failed).
pub const WITNESS_FAILED_EVENT: &str = "audit.witness_failed";

/// A signed statement that the audit chain's record `seq` has hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The sequence number of the record it vouches for: the chain held `seq` records then.
    pub seq: u64,
    /// That record's hash (lower-case hex).
    pub hash: String,
    /// When it was signed (RFC 3339, UTC).
    pub time: String,
    /// The checkpoint key: lower-case hex SHA-256 of its SubjectPublicKeyInfo.
    pub key: String,
    /// The signature algorithm, as hsmca names it (`ecdsa-p256-sha256`, …).
    pub algorithm: String,
    /// The signature over [`Checkpoint::signed_text`], base64, in its X.509 encoding (DER
    /// for ECDSA), as `openssl dgst -verify` reads it.
    pub signature: String,
}

/// Why a checkpoint's signature is not good.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFault {
    /// It names another key than the one given to check it.
    #[error("it was signed by key {found}, not by the checkpoint key {expected}")]
    OtherKey {
        /// The key it names.
        found: String,
        /// The key given.
        expected: String,
    },
    /// Its algorithm is not one hsmca signs with, or not one the key makes.
    #[error("its algorithm {0:?} does not fit the checkpoint key")]
    Algorithm(String),
    /// The signature is not base64.
    #[error("its signature is not base64")]
    Encoding,
    /// The signature does not verify.
    #[error("its signature does not verify: the checkpoint was forged or edited")]
    Invalid,
}

impl Checkpoint {
    /// The text the HSM signs: four lines, each ending with a line feed.
    pub fn signed_text(seq: u64, hash: &str, time: &str) -> String {
        format!("hsmca audit checkpoint\nseq {seq}\nhash {hash}\ntime {time}\n")
    }

    /// A checkpoint of record `seq` with `hash`, signed at `time` by `key` with
    /// `algorithm`; `signature` is what the HSM returned for [`Checkpoint::signed_text`].
    pub fn new(
        seq: u64,
        hash: String,
        time: String,
        key: &PublicKey,
        algorithm: SignatureAlgorithm,
        signature: &[u8],
    ) -> Self {
        Checkpoint {
            seq,
            hash,
            time,
            key: key.sha256_fingerprint(),
            algorithm: algorithm.name().to_owned(),
            signature: Base64::encode_string(signature),
        }
    }

    /// Checks the signature with `key`, on the host.
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureFault> {
        let expected = key.sha256_fingerprint();
        if self.key != expected {
            return Err(SignatureFault::OtherKey {
                found: self.key.clone(),
                expected,
            });
        }
        let algorithm: SignatureAlgorithm = self
            .algorithm
            .parse()
            .map_err(|_| SignatureFault::Algorithm(self.algorithm.clone()))?;
        if !algorithm.works_with(key.key_type()) {
            return Err(SignatureFault::Algorithm(self.algorithm.clone()));
        }
        let signature =
            Base64::decode_vec(&self.signature).map_err(|_| SignatureFault::Encoding)?;
        let text = Self::signed_text(self.seq, &self.hash, &self.time);
        if key.verify(algorithm, text.as_bytes(), &signature) {
            Ok(())
        } else {
            Err(SignatureFault::Invalid)
        }
    }
}

/// Where a checkpoint was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The chain's `audit.checkpoint` record with this sequence number.
    Chain(u64),
    /// This line (counting from 1) of the witness.
    Witness(usize),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Chain(seq) => write!(f, "the checkpoint in record {seq}"),
            Source::Witness(line) => write!(f, "the witness's checkpoint on line {line}"),
        }
    }
}

/// Something a check of the checkpoints found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The chain ends before the record a checkpoint vouches for: records were cut off.
    Truncated {
        /// Where the checkpoint was read.
        source: Source,
        /// The record it vouches for.
        covers: u64,
        /// When it was signed.
        time: String,
        /// How many records the chain holds.
        records: u64,
    },
    /// The chain's record differs from the one a checkpoint vouches for: the chain was
    /// rewritten at or before it (and hashed again after, or the chain check would have
    /// named the record).
    Rewritten {
        /// Where the checkpoint was read.
        source: Source,
        /// The record it vouches for.
        covers: u64,
        /// When it was signed.
        time: String,
        /// The newest record below `covers` that a checkpoint still vouches for, if any: the
        /// rewrite begins after it.
        intact_up_to: Option<u64>,
    },
    /// A checkpoint whose signature is not good.
    BadSignature {
        /// Where it was read.
        source: Source,
        /// What is wrong.
        fault: SignatureFault,
    },
    /// A witness line that should hold a checkpoint and does not parse as one.
    Unreadable {
        /// The witness line (counting from 1).
        line: usize,
        /// The parser's explanation.
        reason: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Truncated {
                source,
                covers,
                time,
                records,
            } => write!(
                f,
                "TRUNCATED: {source} (signed {time}) vouches for record {covers}, but the chain ends at record {records}: records {} to {covers} at least were cut off",
                records + 1
            ),
            Finding::Rewritten {
                source,
                covers,
                time,
                intact_up_to,
            } => {
                write!(
                    f,
                    "REWRITTEN: record {covers} is not the one {source} (signed {time}) vouches for: the chain was rewritten at or before record {covers}"
                )?;
                match intact_up_to {
                    Some(seq) => write!(f, ", after record {seq} (checkpointed and still intact)"),
                    None => write!(f, " (no earlier checkpoint still holds)"),
                }
            }
            Finding::BadSignature { source, fault } => write!(f, "FORGED: {source}: {fault}"),
            Finding::Unreadable { line, reason } => {
                write!(f, "UNREADABLE: witness line {line}: {reason}")
            }
        }
    }
}

/// A checkpoint the service could not sign, as its `audit.checkpoint_failed` record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCheckpoint {
    /// The failure record's sequence number.
    pub record: u64,
    /// When it failed.
    pub time: String,
    /// Why.
    pub error: String,
}

/// A witness read: its checkpoints with their line numbers, and what could not be read.
#[derive(Debug, Default)]
pub struct Witness {
    /// The checkpoints, each with its line number (from 1).
    pub checkpoints: Vec<(usize, Checkpoint)>,
    /// Lines that should hold a checkpoint and do not parse.
    pub unreadable: Vec<Finding>,
    /// Lines without a checkpoint (other messages of a syslog file).
    pub skipped: usize,
}

/// What marks a checkpoint in a line of a witness: the start of its JSON.
const CHECKPOINT_START: &str = "{\"seq\":";

impl Witness {
    /// Reads a witness: the file hsmca appends to (one checkpoint per line, as JSON), or a
    /// syslog or journal export, whose lines carry the checkpoint's JSON after a prefix.
    /// Lines without a checkpoint are skipped and counted; a line that starts like one and
    /// does not parse is unreadable.
    pub fn read(text: &str) -> Self {
        let mut witness = Witness::default();
        for (index, line) in text.lines().enumerate() {
            let Some(start) = line.find(CHECKPOINT_START) else {
                witness.skipped += 1;
                continue;
            };
            match serde_json::from_str::<Checkpoint>(&line[start..]) {
                Ok(checkpoint) => witness.checkpoints.push((index + 1, checkpoint)),
                Err(error) => witness.unreadable.push(Finding::Unreadable {
                    line: index + 1,
                    reason: error.to_string(),
                }),
            }
        }
        witness
    }
}

/// What [`CheckpointCheck::finish`] found.
#[derive(Debug)]
pub struct CheckpointReport {
    /// Records in the chain.
    pub records: u64,
    /// Checkpoint records in the chain whose signature and record held.
    pub chain_checkpoints: u64,
    /// Witnessed checkpoints whose signature and record held.
    pub witnessed: u64,
    /// The newest record a good checkpoint (in the chain or witnessed) vouches for.
    pub newest_covered: Option<u64>,
    /// Checkpoints the service could not sign.
    pub failed: Vec<FailedCheckpoint>,
    /// Lines of the witness without a checkpoint.
    pub witness_lines_skipped: usize,
    /// What is wrong, in the order found.
    pub findings: Vec<Finding>,
}

impl CheckpointReport {
    /// True when nothing is wrong (failed checkpoints are gaps, not faults).
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// One line: what holds, or the first thing wrong (for the top of `hsmca report`).
    pub fn summary(&self) -> String {
        match self.findings.first() {
            Some(first) => format!(
                "BROKEN: {first}{}",
                match self.findings.len() {
                    1 => String::new(),
                    n => format!(" (and {} more findings: run hsmca audit verify)", n - 1),
                }
            ),
            None => format!(
                "{} in the chain and {} witnessed hold; newest checkpointed record {}; {} gaps (checkpoints not signed)",
                self.chain_checkpoints,
                self.witnessed,
                self.newest_covered
                    .map_or_else(|| "none".to_owned(), |seq| seq.to_string()),
                self.failed.len()
            ),
        }
    }

    /// The report's lines, for `hsmca audit verify`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checkpoints: {} in the chain and {} witnessed hold, signed by the checkpoint key",
            self.chain_checkpoints, self.witnessed
        );
        match self.newest_covered {
            Some(seq) => {
                let _ = writeln!(
                    out,
                    "newest checkpointed record: {seq} of {} (later ones, the newest checkpoint's own record among them, are covered by the next checkpoint)",
                    self.records
                );
            }
            None => {
                let _ = writeln!(out, "no record is checkpointed yet");
            }
        }
        if self.witness_lines_skipped > 0 {
            let _ = writeln!(
                out,
                "witness: {} lines without a checkpoint skipped",
                self.witness_lines_skipped
            );
        }
        for failed in &self.failed {
            let _ = writeln!(
                out,
                "gap: record {} ({}) says a checkpoint could not be signed: {}",
                failed.record, failed.time, failed.error
            );
        }
        for finding in &self.findings {
            let _ = writeln!(out, "{finding}");
        }
        out
    }
}

/// Checks the checkpoints of a chain: fed every record in order ([`CheckpointCheck::record`]),
/// then the witness ([`CheckpointCheck::finish`]). Keeps 32 bytes per record, to match
/// checkpoints with the records they vouch for.
pub struct CheckpointCheck<'a> {
    key: &'a PublicKey,
    hashes: Vec<[u8; 32]>,
    chain_checkpoints: Vec<(u64, Checkpoint)>,
    failed: Vec<FailedCheckpoint>,
    findings: Vec<Finding>,
}

/// The fields of a record the check reads.
#[derive(Deserialize)]
struct RecordFields {
    time: String,
    event: String,
    details: serde_json::Value,
}

impl<'a> CheckpointCheck<'a> {
    /// A check with the checkpoint key's public key.
    pub fn new(key: &'a PublicKey) -> Self {
        CheckpointCheck {
            key,
            hashes: Vec::new(),
            chain_checkpoints: Vec::new(),
            failed: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Takes the chain's next record, which the chain check has passed.
    pub fn record(&mut self, line: &str) {
        let seq = self.hashes.len() as u64 + 1;
        let Ok((_, hash)) = parse_record(line) else {
            // The chain check names it; keep the numbering.
            self.hashes.push([0; 32]);
            return;
        };
        let mut bytes = [0; 32];
        let _ = hex::decode_to_slice(hash, &mut bytes);
        self.hashes.push(bytes);
        if !line.contains("\"event\":\"audit.checkpoint") {
            return;
        }
        let Ok(fields) = serde_json::from_str::<RecordFields>(line) else {
            return;
        };
        match fields.event.as_str() {
            CHECKPOINT_EVENT => match serde_json::from_value::<Checkpoint>(fields.details) {
                Ok(checkpoint) => self.chain_checkpoints.push((seq, checkpoint)),
                Err(error) => self.findings.push(Finding::BadSignature {
                    source: Source::Chain(seq),
                    fault: SignatureFault::Algorithm(format!("unreadable checkpoint: {error}")),
                }),
            },
            CHECKPOINT_FAILED_EVENT => self.failed.push(FailedCheckpoint {
                record: seq,
                time: fields.time,
                error: fields.details["error"]
                    .as_str()
                    .unwrap_or("(not stated)")
                    .to_owned(),
            }),
            _ => {}
        }
    }

    /// Checks every checkpoint of the chain and of `witness` against the chain fed so far.
    pub fn finish(mut self, witness: Option<Witness>) -> CheckpointReport {
        let records = self.hashes.len() as u64;
        let (witnessed, skipped) = match witness {
            Some(witness) => {
                self.findings.extend(witness.unreadable);
                (witness.checkpoints, witness.skipped)
            }
            None => (Vec::new(), 0),
        };
        let all = self
            .chain_checkpoints
            .iter()
            .map(|(seq, checkpoint)| (Source::Chain(*seq), checkpoint))
            .chain(
                witnessed
                    .iter()
                    .map(|(line, checkpoint)| (Source::Witness(*line), checkpoint)),
            );
        // First every signature and whether its record holds; then each broken one is placed
        // after the newest record that a good checkpoint still vouches for.
        let mut holding = Vec::new();
        let mut broken = Vec::new();
        let (mut in_chain, mut in_witness) = (0, 0);
        for (source, checkpoint) in all {
            if let Err(fault) = checkpoint.verify(self.key) {
                self.findings.push(Finding::BadSignature { source, fault });
                continue;
            }
            if checkpoint.seq == 0 || checkpoint.seq > records {
                broken.push((source, checkpoint, false));
            } else if hex::encode(self.hashes[checkpoint.seq as usize - 1]) != checkpoint.hash {
                broken.push((source, checkpoint, true));
            } else {
                holding.push(checkpoint.seq);
                match source {
                    Source::Chain(_) => in_chain += 1,
                    Source::Witness(_) => in_witness += 1,
                }
            }
        }
        for (source, checkpoint, within) in broken {
            let (covers, time) = (checkpoint.seq, checkpoint.time.clone());
            self.findings.push(if within {
                Finding::Rewritten {
                    source,
                    covers,
                    time,
                    intact_up_to: holding.iter().copied().filter(|&s| s < covers).max(),
                }
            } else {
                Finding::Truncated {
                    source,
                    covers,
                    time,
                    records,
                }
            });
        }
        CheckpointReport {
            records,
            chain_checkpoints: in_chain,
            witnessed: in_witness,
            newest_covered: holding.iter().copied().max(),
            failed: self.failed,
            witness_lines_skipped: skipped,
            findings: self.findings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::KeyType;
    use crate::ledger::chain::{AuditChain, AuditEvent, GENESIS_HASH};
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    struct Signer {
        pair: EcdsaKeyPair,
        public: PublicKey,
    }

    impl Signer {
        fn new() -> Self {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
            let params = crate::hsm::ec_params(KeyType::EcdsaP256).unwrap();
            let public =
                PublicKey::from_ec_attributes(&params, pair.public_key().as_ref()).unwrap();
            Signer { pair, public }
        }

        fn checkpoint(&self, seq: u64, hash: &str) -> Checkpoint {
            let time = "2026-12-02T10:00:00Z".to_owned();
            let text = Checkpoint::signed_text(seq, hash, &time);
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let signature = self.pair.sign(&rng, text.as_bytes()).unwrap();
            Checkpoint::new(
                seq,
                hash.to_owned(),
                time,
                &self.public,
                SignatureAlgorithm::EcdsaP256Sha256,
                signature.as_ref(),
            )
        }
    }

    /// A chain of `n` records, a checkpoint of the newest appended every `every` records.
    fn chain(signer: &Signer, n: u64, every: u64, salt: &str) -> Vec<String> {
        let mut chain = AuditChain::after(0, GENESIS_HASH.into());
        let mut lines = Vec::new();
        let mut append = |chain: &mut AuditChain, event: AuditEvent| {
            let linked = chain.link("2026-12-02T10:00:00Z", &[event]);
            lines.push(linked.lines.trim_end().to_owned());
            *chain = linked.next;
        };
        for i in 1..=n {
            let event = AuditEvent {
                event: "sign.issued".into(),
                actor: "client".into(),
                details: serde_json::json!({ "i": i, "salt": salt }),
            };
            append(&mut chain, event);
            if i % every == 0 {
                let checkpoint = signer.checkpoint(chain.records(), chain.head());
                let event = AuditEvent {
                    event: CHECKPOINT_EVENT.into(),
                    actor: "hsmca".into(),
                    details: serde_json::to_value(checkpoint).unwrap(),
                };
                append(&mut chain, event);
            }
        }
        lines
    }

    fn check(signer: &Signer, lines: &[String], witness: &str) -> CheckpointReport {
        let mut check = CheckpointCheck::new(&signer.public);
        for line in lines {
            check.record(line);
        }
        check.finish(Some(Witness::read(witness)))
    }

    /// The checkpoints of `lines` as the witness file holds them.
    fn witness_of(lines: &[String]) -> String {
        lines
            .iter()
            .filter_map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                (record["event"] == CHECKPOINT_EVENT).then(|| {
                    let checkpoint: Checkpoint =
                        serde_json::from_value(record["details"].clone()).unwrap();
                    format!("{}\n", serde_json::to_string(&checkpoint).unwrap())
                })
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_holds_every_checkpoint() {
        let signer = Signer::new();
        let lines = chain(&signer, 10, 3, "a");
        let report = check(&signer, &lines, &witness_of(&lines));
        assert!(report.is_clean(), "{}", report.render());
        assert_eq!((report.chain_checkpoints, report.witnessed), (3, 3));
        // Records 1-3, then checkpoint 4; 5-7, 8; 9-11, 12; then record 13.
        assert_eq!(report.newest_covered, Some(11));
        assert_eq!(report.records, 13);
    }

    #[test]
    fn a_cut_chain_is_named_by_the_witnessed_record() {
        let signer = Signer::new();
        let lines = chain(&signer, 10, 3, "a");
        let witness = witness_of(&lines);
        let report = check(&signer, &lines[..9], &witness);
        let truncated: Vec<_> = report
            .findings
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Finding::Truncated {
                        covers: 11,
                        records: 9,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(truncated.len(), 1, "{}", report.render());
        assert!(
            report.render().contains("records 10 to 11"),
            "{}",
            report.render()
        );
    }

    #[test]
    fn a_rewritten_and_rehashed_chain_is_placed_after_the_last_record_that_holds() {
        let signer = Signer::new();
        let lines = chain(&signer, 10, 3, "a");
        let witness = witness_of(&lines);
        // The same records with other contents from record 5 on, hashed again, without the
        // later checkpoints (the rewriter cannot sign them).
        let mut forged: Vec<String> = lines[..4].to_vec();
        let mut chain = AuditChain::after(4, {
            let (_, hash) = parse_record(&lines[3]).unwrap();
            hash.to_owned()
        });
        for i in 5..=9 {
            let linked = chain.link(
                "2026-12-02T10:00:00Z",
                &[AuditEvent {
                    event: "sign.issued".into(),
                    actor: "client".into(),
                    details: serde_json::json!({ "i": i, "salt": "forged" }),
                }],
            );
            forged.push(linked.lines.trim_end().to_owned());
            chain = linked.next;
        }
        let report = check(&signer, &forged, &witness);
        let rewritten: Vec<_> = report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Rewritten {
                    covers,
                    intact_up_to,
                    ..
                } => Some((*covers, *intact_up_to)),
                _ => None,
            })
            .collect();
        assert_eq!(rewritten, vec![(7, Some(3))], "{}", report.render());
    }

    #[test]
    fn a_forged_or_foreign_checkpoint_is_refused() {
        let signer = Signer::new();
        let other = Signer::new();
        let lines = chain(&signer, 4, 2, "a");
        let mut forged = signer.checkpoint(1, "00");
        forged.hash = parse_record(&lines[0]).unwrap().1.to_owned();
        let foreign = other.checkpoint(1, parse_record(&lines[0]).unwrap().1);
        let witness = format!(
            "{}\n{}\nDec  2 10:00:00 host hsmca[1]: audit.checkpoint {{\"seq\": oops\n",
            serde_json::to_string(&forged).unwrap(),
            serde_json::to_string(&foreign).unwrap()
        );
        let report = check(&signer, &lines, &witness);
        let faults: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
        assert_eq!(faults.len(), 3, "{faults:?}");
        assert!(
            faults[0].starts_with("UNREADABLE: witness line 3"),
            "{faults:?}"
        );
        assert!(faults[1].contains("does not verify"), "{faults:?}");
        assert!(
            faults[2].contains("not by the checkpoint key"),
            "{faults:?}"
        );
    }

    #[test]
    fn syslog_lines_carry_checkpoints_after_their_prefix() {
        let signer = Signer::new();
        let lines = chain(&signer, 3, 3, "a");
        let witness: String = witness_of(&lines)
            .lines()
            .map(|line| format!("Dec  2 10:00:00 host hsmca[7]: audit.checkpoint {line}\nDec  2 10:00:01 host sshd[9]: other\n"))
            .collect();
        let report = check(&signer, &lines, &witness);
        assert!(report.is_clean(), "{}", report.render());
        assert_eq!((report.witnessed, report.witness_lines_skipped), (1, 1));
    }
}
