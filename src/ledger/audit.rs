//! The tamper-evident audit log: one JSON record per line, fsynced before `append` returns.
//!
//! Each record ends with its own `hash` (SHA-256 of the record's text before that field) and
//! carries the `prev` hash of the record before it, plus a sequence number `seq` that counts
//! from one. So an edited record fails its own hash, a removed, inserted or moved record breaks the
//! sequence, and a record edited *and* re-hashed breaks the chain at the next line; [`verify`]
//! names the first line where any of this shows.
//!
//! A hash chain cannot notice the loss of its newest records on its own: compare the head
//! hash [`verify`] returns with one kept elsewhere (ceremony transcripts record it).
//!
//! ```text
//! {"seq":1,"time":"2026-11-23T12:00:00Z","prev":"000…0","event":"ceremony.root","actor":"…","details":{…},"hash":"9f2c…"}
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;

/// The `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The closing field of every record: `,"hash":"` + 64 hex digits + `"}`.
const HASH_FIELD: &str = ",\"hash\":\"";
const HASH_FIELD_LEN: usize = HASH_FIELD.len() + 64 + 2;

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

/// The fields [`verify`] needs back from a record.
#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    prev: String,
}

/// Where an appended record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReceipt {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash, the new head of the chain.
    pub hash: String,
}

/// What a successful [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLog {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record ([`GENESIS_HASH`] for an empty log).
    pub head: String,
}

/// Why the audit log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Another process holds the log open for writing.
    #[error(
        "audit log {path} is in use by another hsmca process: stop it first, records must be appended by one writer"
    )]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// A record fails verification.
    #[error("audit log {path} is broken at line {line}: {reason}")]
    Tampered {
        /// The log file.
        path: PathBuf,
        /// The first bad line, counting from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// An audit log open for appending. One writer per file, enforced with an exclusive lock.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    head: String,
    next_seq: u64,
    discarded_tail: Option<DiscardedTail>,
}

/// An incomplete last record that [`AuditLog::open`] cut off: a write interrupted by a crash.
/// Records are acknowledged only after their write and sync complete, so nothing anyone was
/// told about is lost; the bytes are kept beside the log for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscardedTail {
    /// How many bytes were cut.
    pub bytes: u64,
    /// Where they were saved.
    pub saved_to: PathBuf,
}

impl AuditLog {
    /// Opens (creating with mode 0600 if absent) and verifies the log; a broken log is never
    /// appended to. An incomplete last record, which only an interrupted write leaves, is cut
    /// off and saved beside the log (see [`AuditLog::discarded_tail`]): every complete record
    /// must still verify.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        if file.try_lock().is_err() {
            return Err(AuditError::Locked {
                path: path.to_owned(),
            });
        }
        let (verified, torn) = scan(path, true)?;
        let discarded_tail = torn
            .map(|torn| discard_torn_tail(&file, path, torn))
            .transpose()
            .map_err(io)?;
        Ok(AuditLog {
            file,
            path: path.to_owned(),
            head: verified.head,
            next_seq: verified.records + 1,
            discarded_tail,
        })
    }

    /// The incomplete last record cut off when the log was opened, if there was one.
    pub fn discarded_tail(&self) -> Option<&DiscardedTail> {
        self.discarded_tail.as_ref()
    }

    /// Appends a record and makes it durable before returning.
    pub fn append(&mut self, event: &AuditEvent) -> Result<AuditReceipt, AuditError> {
        let mut receipts = self.append_all(std::slice::from_ref(event))?;
        Ok(receipts.pop().expect("one receipt per event"))
    }

    /// Appends records in order with one write and one sync (group commit): all of them are
    /// durable when this returns. After a failure part of the batch may be on disk: the caller
    /// must stop appending until the log is reopened, which verifies it again.
    pub fn append_all(&mut self, events: &[AuditEvent]) -> Result<Vec<AuditReceipt>, AuditError> {
        let time = der::DateTime::from_system_time(SystemTime::now())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut head = self.head.clone();
        let mut seq = self.next_seq;
        let mut lines = String::new();
        let mut receipts = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_string(&RecordBody {
                seq,
                time: time.clone(),
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
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(lines.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.head = head;
        self.next_seq = seq;
        Ok(receipts)
    }

    /// The hash of the newest record.
    pub fn head(&self) -> &str {
        &self.head
    }
}

/// Checks every record of the log; the error names the first bad line.
pub fn verify(path: &Path) -> Result<VerifiedLog, AuditError> {
    scan(path, false).map(|(verified, _)| verified)
}

/// An incomplete last record: the bytes after the last line end.
struct TornTail {
    /// Where it starts: the length of the log without it.
    offset: u64,
    bytes: Vec<u8>,
}

/// Checks every record; with `keep_torn_tail`, an incomplete last line is returned instead of
/// failing the check.
fn scan(path: &Path, keep_torn_tail: bool) -> Result<(VerifiedLog, Option<TornTail>), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut head = GENESIS_HASH.to_owned();
    let mut records = 0u64;
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 {
            break;
        }
        let line_number = records + 1;
        let tampered = |reason: String| AuditError::Tampered {
            path: path.to_owned(),
            line: line_number,
            reason,
        };
        let Some(record) = line.strip_suffix(b"\n") else {
            if keep_torn_tail {
                let bytes = std::mem::take(&mut line);
                return Ok((
                    VerifiedLog { records, head },
                    Some(TornTail { offset, bytes }),
                ));
            }
            return Err(tampered(
                "the last record is incomplete (no line end): a write was interrupted or the file was cut".into(),
            ));
        };
        let record = std::str::from_utf8(record)
            .map_err(|_| tampered("not an audit record (not UTF-8)".into()))?;
        head = check_record(record, line_number, &head).map_err(tampered)?;
        records = line_number;
        offset += read as u64;
    }
    Ok((VerifiedLog { records, head }, None))
}

/// Saves `torn` as `<log>.torn-<unix seconds>-<offset>` (never overwriting), then cuts it
/// from the log and syncs.
fn discard_torn_tail(file: &File, path: &Path, torn: TornTail) -> std::io::Result<DiscardedTail> {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut saved_to = path.as_os_str().to_owned();
    saved_to.push(format!(".torn-{seconds}-{}", torn.offset));
    let saved_to = PathBuf::from(saved_to);
    crate::files::create_new_file(&saved_to, &torn.bytes, crate::files::PRIVATE)?;
    file.set_len(torn.offset)?;
    file.sync_all()?;
    tracing::warn!(
        log = %path.display(),
        bytes = torn.bytes.len(),
        saved_to = %saved_to.display(),
        "the audit log ended with an incomplete record (an interrupted write): cut it off and saved it"
    );
    Ok(DiscardedTail {
        bytes: torn.bytes.len() as u64,
        saved_to,
    })
}

/// Checks one record against its position and its predecessor's hash; returns its hash.
fn check_record(record: &str, seq: u64, prev: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            event: "test.event".into(),
            actor: format!("officer-{n}"),
            details: serde_json::json!({ "n": n, "note": "ünïcode and \"quotes\"" }),
        }
    }

    /// A log of `n` records, and its lines.
    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 1..=n {
            log.append(&event(i)).unwrap();
        }
        let lines = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (dir, path, lines)
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    fn broken_line(path: &Path) -> (u64, String) {
        match verify(path) {
            Err(AuditError::Tampered { line, reason, .. }) => (line, reason),
            other => panic!("expected a tampered log, got {other:?}"),
        }
    }

    #[test]
    fn an_untouched_log_verifies_and_reopens_at_its_head() {
        let (_dir, path, lines) = log_with(5);
        assert_eq!(lines.len(), 5);
        let verified = verify(&path).unwrap();
        assert_eq!(verified.records, 5);
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), verified.head);
        let receipt = log.append(&event(6)).unwrap();
        assert_eq!(receipt.seq, 6);
        assert_eq!(verify(&path).unwrap().head, receipt.hash);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn an_edited_record_is_named() {
        let (_dir, path, mut lines) = log_with(4);
        lines[2] = lines[2].replace("officer-3", "officer-X");
        rewrite(&path, &lines);
        let (line, reason) = broken_line(&path);
        assert_eq!(line, 3);
        assert!(reason.contains("was edited"), "{reason}");
    }

    #[test]
    fn an_edited_and_rehashed_record_breaks_the_next_link() {
        let (_dir, path, mut lines) = log_with(4);
        let body = lines[1][..lines[1].len() - HASH_FIELD_LEN].replace("officer-2", "officer-X");
        let hash = sha256_hex(format!("{body}}}").as_bytes());
        lines[1] = format!("{body}{HASH_FIELD}{hash}\"}}");
        rewrite(&path, &lines);
        let (line, reason) = broken_line(&path);
        assert_eq!(line, 3);
        assert!(reason.contains("does not chain to line 2"), "{reason}");
    }

    #[test]
    fn removed_inserted_and_reordered_records_are_named() {
        let (_dir, path, lines) = log_with(5);

        let mut removed = lines.clone();
        removed.remove(2);
        rewrite(&path, &removed);
        assert_eq!(broken_line(&path).0, 3);

        let mut first_removed = lines.clone();
        first_removed.remove(0);
        rewrite(&path, &first_removed);
        assert_eq!(broken_line(&path).0, 1);

        let mut inserted = lines.clone();
        inserted.insert(1, lines[3].clone());
        rewrite(&path, &inserted);
        assert_eq!(broken_line(&path).0, 2);

        let mut reordered = lines.clone();
        reordered.swap(3, 4);
        rewrite(&path, &reordered);
        let (line, reason) = broken_line(&path);
        assert_eq!(line, 4);
        assert!(
            reason.contains("sequence number 5 where 4 belongs"),
            "{reason}"
        );
    }

    #[test]
    fn a_torn_last_record_is_reported_and_cut_off_and_saved_when_opened_for_appending() {
        let (_dir, path, lines) = log_with(2);
        let mut text = lines.join("\n");
        text.push('\n');
        let complete = text.len() as u64;
        // Cut inside a multi-byte character too: the tail need not be UTF-8.
        let torn = "{\"seq\":3,\"actor\":\"é".as_bytes();
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&torn[..torn.len() - 1]);
        std::fs::write(&path, &bytes).unwrap();
        let (line, reason) = broken_line(&path);
        assert_eq!(line, 3);
        assert!(reason.contains("incomplete"), "{reason}");

        let mut log = AuditLog::open(&path).unwrap();
        let discarded = log.discarded_tail().unwrap().clone();
        assert_eq!(discarded.bytes, torn.len() as u64 - 1);
        assert_eq!(
            std::fs::read(&discarded.saved_to).unwrap(),
            &torn[..torn.len() - 1]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), complete);
        let receipt = log.append(&event(3)).unwrap();
        assert_eq!(receipt.seq, 3);
        drop(log);
        assert_eq!(verify(&path).unwrap().records, 3);
        assert!(AuditLog::open(&path).unwrap().discarded_tail().is_none());
    }

    #[test]
    fn only_the_last_record_may_be_torn() {
        let (_dir, path, lines) = log_with(3);
        let mut broken = lines.clone();
        broken[1].truncate(20);
        rewrite(&path, &broken);
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Tampered { line: 2, .. })
        ));
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for garbage in [
            "{}\n",
            "x\n",
            "é\n",
            &format!("{{\"seq\":1{HASH_FIELD}{}\"}}\n", "z".repeat(64)),
        ] {
            std::fs::write(&path, garbage).unwrap();
            assert_eq!(broken_line(&path).0, 1, "{garbage:?}");
        }
    }

    #[test]
    fn one_writer_at_a_time() {
        let (_dir, path, _lines) = log_with(1);
        let _writer = AuditLog::open(&path).unwrap();
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Locked { .. })
        ));
    }
}
