//! How the audit chain is made and checked, wherever its records are kept: each record is
//! one line of JSON that ends with its own `hash` (SHA-256 of the text before that field)
//! and carries the `prev` hash of the record before it and a sequence number `seq` counting
//! from one. [`super::audit`] keeps the records in a file, the PostgreSQL backend in its
//! database.

use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;

/// The `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The closing field of every record: `,"hash":"` + 64 hex digits + `"}`.
pub(super) const HASH_FIELD: &str = ",\"hash\":\"";
/// The length of the closing field.
pub(super) const HASH_FIELD_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// Something that happened, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened, dotted: `ceremony.root`, `sign.issued`, `sign.refused`, ...
    pub event: String,
    /// Who did it: an officer's name, a client identity, `hsmca` for the service itself.
    pub actor: String,
    /// The event's particulars.
    pub details: serde_json::Value,
}

/// The record as it is serialised, field order fixed by declaration order.
#[derive(Serialize)]
struct RecordBody<'a> {
    seq: u64,
    time: String,
    prev: &'a str,
    event: &'a str,
    actor: &'a str,
    details: &'a serde_json::Value,
}

/// The fields verification needs back from a record.
#[derive(Deserialize)]
pub(super) struct ChainFields {
    /// Its sequence number.
    pub(super) seq: u64,
    /// The hash of the record before it.
    pub(super) prev: String,
}

/// Where an appended record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReceipt {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash, the new head of the chain.
    pub hash: String,
}

/// The end of a chain, which the next record links to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditChain {
    head: String,
    next_seq: u64,
}

/// Records linked to a chain, not yet durable: the chain moves on to `next` only once
/// `lines` are written.
pub struct Linked {
    /// The records, one per line, each ending with a line end.
    pub lines: String,
    /// Where each record lands.
    pub receipts: Vec<AuditReceipt>,
    /// The chain after them.
    pub next: AuditChain,
}

impl AuditChain {
    /// The chain after `records` records, the last hashing to `head` ([`GENESIS_HASH`] for
    /// none).
    pub fn after(records: u64, head: String) -> Self {
        AuditChain {
            head,
            next_seq: records + 1,
        }
    }

    /// The hash of the newest record.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// How many records the chain holds.
    pub fn records(&self) -> u64 {
        self.next_seq - 1
    }

    /// The records of `events` at `time`, in order, each carrying the hash of the one
    /// before it and its own.
    pub fn link(&self, time: &str, events: &[AuditEvent]) -> Linked {
        let mut head = self.head.clone();
        let mut seq = self.next_seq;
        let mut lines = String::new();
        let mut receipts = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_string(&RecordBody {
                seq,
                time: time.to_owned(),
                prev: &head,
                event: &event.event,
                actor: &event.actor,
                details: &event.details,
            })
            .expect("an audit record always serialises");
            let hash = sha256_hex(body.as_bytes());
            lines.push_str(&body[..body.len() - 1]); // the hash field closes the record instead
            lines.push_str(HASH_FIELD);
            lines.push_str(&hash);
            lines.push_str("\"}\n");
            receipts.push(AuditReceipt {
                seq,
                hash: hash.clone(),
            });
            head = hash;
            seq += 1;
        }
        Linked {
            lines,
            receipts,
            next: AuditChain {
                head,
                next_seq: seq,
            },
        }
    }
}

/// The time a record appended now carries (RFC 3339, UTC, seconds).
pub fn record_time() -> String {
    der::DateTime::from_system_time(std::time::SystemTime::now())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Checks a whole chain, oldest record first: returns the number of records and the head
/// hash, or the first bad record's sequence number (counting from 1) and what is wrong.
pub fn verify_records<'a>(
    records: impl IntoIterator<Item = &'a str>,
) -> Result<(u64, String), (u64, String)> {
    let mut head = GENESIS_HASH.to_owned();
    let mut count = 0;
    for record in records {
        count += 1;
        head = check_record(record, count, &head).map_err(|reason| (count, reason))?;
    }
    Ok((count, head))
}

/// Checks one record against its position and its predecessor's hash; returns its hash.
pub(super) fn check_record(record: &str, seq: u64, prev: &str) -> Result<String, String> {
    let (fields, claimed) = parse_record(record)?;
    if fields.seq != seq {
        return Err(format!(
            "sequence number {} where {seq} belongs: records were removed, inserted or reordered",
            fields.seq
        ));
    }
    if fields.prev != prev {
        return Err(if seq == 1 {
            "the first record does not start the chain: records before it were removed".into()
        } else {
            format!(
                "the record does not chain to line {}: that line was rewritten, or records were replaced",
                seq - 1
            )
        });
    }
    Ok(claimed.to_owned())
}

/// Checks a record against its own hash; returns its chain fields and the hash.
pub(super) fn parse_record(record: &str) -> Result<(ChainFields, &str), String> {
    let split = record
        .len()
        .checked_sub(HASH_FIELD_LEN)
        .filter(|&at| record.is_char_boundary(at))
        .ok_or("not an audit record (too short)")?;
    let (body, hash_field) = record.split_at(split);
    let claimed = hash_field
        .strip_prefix(HASH_FIELD)
        .and_then(|rest| rest.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("the record does not end with its hash")?;
    let body = format!("{body}}}");
    if sha256_hex(body.as_bytes()) != claimed {
        return Err("the record's content does not match its hash: it was edited".into());
    }
    let fields: ChainFields =
        serde_json::from_str(&body).map_err(|e| format!("not an audit record: {e}"))?;
    Ok((fields, claimed))
}
