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

use super::chain::{AuditChain, Linked, check_record, parse_record};
pub use super::chain::{AuditEvent, AuditReceipt, GENESIS_HASH};

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
    /// The last record, the only one [`AuditLog::open_at_tail`] reads, fails its own hash.
    #[error(
        "audit log {path}: its last record is broken ({reason}); `hsmca audit verify` names the first bad line"
    )]
    BrokenLastRecord {
        /// The log file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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
    chain: AuditChain,
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
        let file = open_for_appending(path)?;
        let (verified, torn) = scan(path, true, u64::MAX)?;
        let discarded_tail = torn
            .map(|torn| discard_torn_tail(&file, path, torn))
            .transpose()
            .map_err(|source| io_error(path, source))?;
        Ok(AuditLog {
            file,
            path: path.to_owned(),
            chain: AuditChain::after(verified.records, verified.head),
            discarded_tail,
        })
    }

    /// Opens the log like [`AuditLog::open`] but reads only its last record (and cuts a torn
    /// tail), so opening takes the same time however long the log is; the records before it
    /// are checked later by [`EarlierRecords::verify`], which the signing service runs beside
    /// its first requests and which stops issuance if it fails.
    pub fn open_at_tail(path: &Path) -> Result<(Self, EarlierRecords), AuditError> {
        let file = open_for_appending(path)?;
        let tail = read_tail(path).map_err(|source| io_error(path, source))?;
        let discarded_tail = tail
            .torn
            .map(|torn| discard_torn_tail(&file, path, torn))
            .transpose()
            .map_err(|source| io_error(path, source))?;
        let (records, head) = match &tail.last_record {
            None => (0, GENESIS_HASH.to_owned()),
            Some(record) => {
                let broken = |reason: String| AuditError::BrokenLastRecord {
                    path: path.to_owned(),
                    reason,
                };
                let text = std::str::from_utf8(record)
                    .map_err(|_| broken("not an audit record (not UTF-8)".into()))?;
                let (fields, hash) = parse_record(text).map_err(broken)?;
                (fields.seq, hash.to_owned())
            }
        };
        let earlier = EarlierRecords {
            path: path.to_owned(),
            length: tail.complete_length,
            expected: VerifiedLog {
                records,
                head: head.clone(),
            },
        };
        let log = AuditLog {
            file,
            path: path.to_owned(),
            chain: AuditChain::after(records, head),
            discarded_tail,
        };
        Ok((log, earlier))
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
        let linked = self.chain.link(&super::chain::record_time(), events);
        self.write(linked, true)
    }

    /// Writes `linked`, records linked to this log's chain, and syncs if `sync`: records
    /// that are durable elsewhere already (the SQLite ledger's pending records,
    /// [`super::sqlite_journal`]) are synced later, through [`AuditLog::sync_handle`]. After
    /// a failure the caller must stop writing, as after [`AuditLog::append_all`].
    pub(super) fn write(
        &mut self,
        linked: Linked,
        sync: bool,
    ) -> Result<Vec<AuditReceipt>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(linked.lines.as_bytes()).map_err(io)?;
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        self.chain = linked.next;
        Ok(linked.receipts)
    }

    /// A second handle on the log's file, for syncing what [`AuditLog::write`] left unsynced
    /// from another thread.
    pub(super) fn sync_handle(&self) -> Result<File, AuditError> {
        self.file
            .try_clone()
            .map_err(|source| io_error(&self.path, source))
    }

    /// The end of the chain, which the next record links to.
    pub(super) fn chain(&self) -> &AuditChain {
        &self.chain
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last `count` records of the log (fewer if it has fewer), oldest first, read
    /// backwards from its end.
    pub(super) fn last_records(&self, count: u64) -> Result<Vec<String>, AuditError> {
        last_lines(&self.path, count).map_err(|source| io_error(&self.path, source))
    }

    /// The hash of the newest record.
    pub fn head(&self) -> &str {
        self.chain.head()
    }
}

/// Checks every record of the log; the error names the first bad line.
pub fn verify(path: &Path) -> Result<VerifiedLog, AuditError> {
    scan(path, false, u64::MAX).map(|(verified, _)| verified)
}

/// The part of a log that [`AuditLog::open_at_tail`] found but did not check.
#[derive(Debug)]
pub struct EarlierRecords {
    path: PathBuf,
    /// The log's length when opened: the records appended since are not part of the check.
    length: u64,
    /// The last record as opened.
    expected: VerifiedLog,
}

impl EarlierRecords {
    /// Checks every record up to the one the log was opened at: the chain must be intact
    /// and end in exactly that record.
    pub fn verify(&self) -> Result<VerifiedLog, AuditError> {
        let (verified, _) = scan(&self.path, false, self.length)?;
        if verified != self.expected {
            return Err(AuditError::Tampered {
                path: self.path.clone(),
                line: verified.records,
                reason: format!(
                    "the chain ends in record {} ({}), but the log was opened at record {} ({}): it was rewritten while hsmca ran",
                    verified.records, verified.head, self.expected.records, self.expected.head
                ),
            });
        }
        Ok(verified)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens (creating with mode 0600 if absent) for appending, with the one-writer lock.
fn open_for_appending(path: &Path) -> Result<File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    if file.try_lock().is_err() {
        return Err(AuditError::Locked {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// The end of a log: its last complete record and what follows it.
struct Tail {
    /// The last complete record, without its line end.
    last_record: Option<Vec<u8>>,
    /// The length of the log up to and including that record's line end.
    complete_length: u64,
    /// Bytes after the last line end: an interrupted write.
    torn: Option<TornTail>,
}

/// Reads the log backwards from its end until the start of its last complete record.
fn read_tail(path: &Path) -> std::io::Result<Tail> {
    let file = File::open(path)?;
    let length = file.metadata()?.len();
    // `bytes` holds the log from `start` to its end.
    let mut bytes = Vec::new();
    let mut start = length;
    loop {
        let line_end = |within: &[u8]| within.iter().rposition(|&b| b == b'\n');
        if let Some(last) = line_end(&bytes) {
            // The last record runs from the line end before it, or from the log's start.
            let before = line_end(&bytes[..last]);
            if before.is_some() || start == 0 {
                let first = before.map_or(0, |at| at + 1);
                let torn = (last + 1 < bytes.len()).then(|| TornTail {
                    offset: start + last as u64 + 1,
                    bytes: bytes[last + 1..].to_vec(),
                });
                return Ok(Tail {
                    last_record: Some(bytes[first..last].to_vec()),
                    complete_length: start + last as u64 + 1,
                    torn,
                });
            }
        } else if start == 0 {
            // No line end in the whole log: no complete record at all.
            let torn = (!bytes.is_empty()).then_some(TornTail { offset: 0, bytes });
            return Ok(Tail {
                last_record: None,
                complete_length: 0,
                torn,
            });
        }
        start = read_chunk_before(&file, start, &mut bytes)?;
    }
}

/// Reads up to 64 KiB of `file` before `start` onto the front of `bytes`, which holds the
/// file from `start` on; returns where `bytes` now starts.
fn read_chunk_before(file: &File, start: u64, bytes: &mut Vec<u8>) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 64 * 1024;
    let read_from = start.saturating_sub(CHUNK);
    let mut chunk = vec![0; (start - read_from) as usize];
    file.read_exact_at(&mut chunk, read_from)?;
    chunk.extend_from_slice(bytes);
    *bytes = chunk;
    Ok(read_from)
}

/// The last `count` complete lines of the file at `path` (which ends with a line end, or is
/// empty), without their line ends, oldest first.
fn last_lines(path: &Path, count: u64) -> std::io::Result<Vec<String>> {
    let file = File::open(path)?;
    let mut start = file.metadata()?.len();
    let mut bytes = Vec::new();
    // One more line end than lines wanted marks where the first of them starts.
    while start > 0 && (bytes.iter().filter(|&&b| b == b'\n').count() as u64) <= count {
        start = read_chunk_before(&file, start, &mut bytes)?;
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(count as usize);
    Ok(lines[skip..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect())
}

/// An incomplete last record: the bytes after the last line end.
struct TornTail {
    /// Where it starts: the length of the log without it.
    offset: u64,
    bytes: Vec<u8>,
}

/// Checks every record; with `keep_torn_tail`, an incomplete last line is returned instead of
/// failing the check.
fn scan(
    path: &Path,
    keep_torn_tail: bool,
    limit: u64,
) -> Result<(VerifiedLog, Option<TornTail>), AuditError> {
    use std::io::Read;
    let io = |source| io_error(path, source);
    let mut reader = BufReader::new(File::open(path).map_err(io)?.take(limit));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_hex;
    use crate::ledger::chain::{HASH_FIELD, HASH_FIELD_LEN};

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
    fn opening_at_the_tail_finds_the_same_head_and_checks_the_rest_afterwards() {
        // Records longer than the backward read's chunk, so the tail read crosses chunks.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..3 {
            let mut long = event(i);
            long.details = serde_json::json!({ "padding": "p".repeat(100_000) });
            log.append(&long).unwrap();
        }
        log.append(&event(4)).unwrap();
        drop(log);
        let verified = verify(&path).unwrap();
        let (mut log, earlier) = AuditLog::open_at_tail(&path).unwrap();
        assert_eq!(log.head(), verified.head);
        // Appending goes on from the head; the check covers what was there when opened.
        assert_eq!(log.append(&event(5)).unwrap().seq, 5);
        assert_eq!(earlier.verify().unwrap(), verified);
        assert_eq!(verify(&path).unwrap().records, 5);

        // An empty log opens at the genesis hash.
        let empty = dir.path().join("empty.jsonl");
        let (log, earlier) = AuditLog::open_at_tail(&empty).unwrap();
        assert_eq!(log.head(), GENESIS_HASH);
        assert_eq!(earlier.verify().unwrap().records, 0);
    }

    #[test]
    fn opening_at_the_tail_cuts_a_torn_record_and_refuses_a_broken_last_one() {
        let (_dir, path, lines) = log_with(3);
        let mut torn = lines.join("\n");
        torn.push_str("\n{\"seq\":4,\"ti");
        std::fs::write(&path, &torn).unwrap();
        let (log, earlier) = AuditLog::open_at_tail(&path).unwrap();
        assert!(log.discarded_tail().is_some());
        assert_eq!(earlier.verify().unwrap().records, 3);
        drop(log);

        // A first record cut mid-write: no complete record at all.
        let first_only = path.with_extension("first");
        std::fs::write(&first_only, "{\"seq\":1,\"ti").unwrap();
        let (log, earlier) = AuditLog::open_at_tail(&first_only).unwrap();
        assert_eq!(log.head(), GENESIS_HASH);
        assert!(log.discarded_tail().is_some());
        assert_eq!(earlier.verify().unwrap().records, 0);
        assert_eq!(std::fs::metadata(&first_only).unwrap().len(), 0);
        drop(log);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("officer-3", "officer-X");
        rewrite(&path, &edited);
        assert!(matches!(
            AuditLog::open_at_tail(&path),
            Err(AuditError::BrokenLastRecord { .. })
        ));
    }

    #[test]
    fn a_record_edited_before_the_tail_is_found_by_the_later_check() {
        let (_dir, path, lines) = log_with(4);
        let mut edited = lines.clone();
        edited[1] = edited[1].replace("officer-2", "officer-X");
        rewrite(&path, &edited);
        // The last record is intact, so the log opens; the check of the rest fails.
        let (_log, earlier) = AuditLog::open_at_tail(&path).unwrap();
        assert!(matches!(
            earlier.verify(),
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
