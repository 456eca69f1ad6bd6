//! The embedded default's journal: a group's certificate rows, revocations and audit records
//! in one SQLite transaction, one sync; the records are then written to the audit file
//! without a sync of their own.
//!
//! The ledger keeps a group's records in `audit_pending` until the file holds them durably:
//! a thread syncs the file at most every [`SYNC_INTERVAL`], and each later transaction
//! forgets the records synced by then. So a kill at any point loses nothing: at the next
//! start [`SqliteJournal::open`] writes to the file whatever pending records it lacks. A file
//! that went on without them (a ceremony appended to it after the crash, or it was restored
//! from a backup) gets them inside one `audit.recovered` record instead, so every record
//! stays in the chain. A clean stop syncs the file and empties `audit_pending`.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::params;
use serde_json::json;

use super::audit::{AuditError, AuditLog, DiscardedTail, EarlierRecords};
use super::certificates::{Ledger, LedgerError, insert_certificate, insert_revocation, sqlite};
use super::chain::{AuditChain, AuditEvent, AuditReceipt, Linked, check_record, record_time};
use super::journal::{Change, EntryResults, Journal, JournalEntry, JournalError, audited_events};
use super::reconcile::{
    RECENT_RECORDS, Reconciliation, reconcile, reconcile_recent, report_recent, window_start,
};

/// The longest written records wait for the audit file's sync. They are durable in the
/// ledger meanwhile, so this bounds only how many the ledger keeps pending, and costs no
/// request any time.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The ledger could not be opened or read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The audit file could not be opened, read or completed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The SQLite ledger and the audit file, written as one (see the module's documentation).
pub struct SqliteJournal {
    ledger: Ledger,
    log: AuditLog,
    syncer: Syncer,
}

impl SqliteJournal {
    /// Opens the ledger at `ledger` and the audit file at `audit_log` (reading only its last
    /// record, as [`AuditLog::open_at_tail`] does), and first writes to the file the records
    /// the ledger committed that it lacks. The records before the file's last are left to
    /// the returned check, which the service runs beside its first requests.
    pub fn open(ledger: &Path, audit_log: &Path) -> Result<(Self, EarlierRecords), OpenError> {
        let mut ledger = Ledger::open(ledger)?;
        let (mut log, earlier) = AuditLog::open_at_tail(audit_log)?;
        let pending = {
            let (connection, path) = ledger.writer();
            pending_records(connection, path)?
        };
        complete_the_file(&mut log, &pending)?;
        forget_pending(&mut ledger, u64::MAX)?;
        report_recent(&reconcile_newest(&mut ledger, &log)?);
        let syncer =
            Syncer::start(log.sync_handle()?, log.chain().records()).map_err(|source| {
                AuditError::Io {
                    path: log.path().to_owned(),
                    source,
                }
            })?;
        Ok((
            SqliteJournal {
                ledger,
                log,
                syncer,
            },
            earlier,
        ))
    }

    /// The incomplete last record cut from the audit file at open, if there was one.
    pub fn discarded_tail(&self) -> Option<&DiscardedTail> {
        self.log.discarded_tail()
    }

    /// Makes the group's changes and its audit records durable in one transaction; returns
    /// the records, linked to the chain, and what became of each change.
    fn commit_to_ledger(
        &mut self,
        group: &[JournalEntry],
    ) -> Result<(Linked, Vec<Result<(), LedgerError>>), LedgerError> {
        let synced = self.syncer.synced();
        let chain = self.log.chain().clone();
        let (connection, path) = self.ledger.writer();
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(path))?;
        let mut changes = Vec::with_capacity(group.len());
        for entry in group {
            let made = match &entry.change {
                None => Ok(()),
                Some(Change::Issued(certificate)) => {
                    insert_certificate(&transaction, path, certificate)
                }
                Some(Change::Revoked(revocation)) => {
                    insert_revocation(&transaction, path, revocation)
                }
            };
            match made {
                // The database failed, not the change: the group is not recorded.
                Err(error @ LedgerError::Backend { .. }) => return Err(error),
                made => changes.push(made),
            }
        }
        let linked = chain.link(&record_time(), &audited_events(group, &changes));
        {
            let mut insert = transaction
                .prepare_cached("INSERT INTO audit_pending (seq, line) VALUES (?1, ?2)")
                .map_err(sqlite(path))?;
            for (receipt, line) in linked.receipts.iter().zip(linked.lines.lines()) {
                insert
                    .execute(params![receipt.seq as i64, line])
                    .map_err(sqlite(path))?;
            }
            transaction
                .prepare_cached("DELETE FROM audit_pending WHERE seq <= ?1")
                .and_then(|mut forget| forget.execute(params![synced as i64]))
                .map_err(sqlite(path))?;
        }
        transaction.commit().map_err(sqlite(path))?;
        Ok((linked, changes))
    }
}

impl Journal for SqliteJournal {
    fn commit(&mut self, group: &[JournalEntry]) -> Result<EntryResults, JournalError> {
        if let Some(source) = self.syncer.take_failure() {
            return Err(JournalError::Audit(AuditError::Io {
                path: self.log.path().to_owned(),
                source,
            }));
        }
        let (linked, changes) = self
            .commit_to_ledger(group)
            .map_err(JournalError::Unavailable)?;
        let last = linked.next.records();
        let receipts = self.log.write(linked, false).map_err(JournalError::Audit)?;
        self.syncer.written(last);
        Ok(changes
            .into_iter()
            .zip(receipts)
            .map(|(made, receipt)| made.map(|()| receipt))
            .collect())
    }
}

impl Drop for SqliteJournal {
    /// A clean stop: the file synced, and the ledger's pending records forgotten.
    fn drop(&mut self) {
        let synced = self.syncer.stop();
        if let Err(error) = forget_pending(&mut self.ledger, synced) {
            tracing::warn!(%error, "the ledger keeps audit records the file holds already; the next start checks them again");
        }
    }
}

/// How many records the ledger at `ledger` committed beyond the first `records` of its audit
/// file: a file read while hsmca serve runs may lag by [`SYNC_INTERVAL`], one left by a
/// crash until serve starts again and writes them.
pub fn committed_beyond(ledger: &Path, records: u64) -> Result<u64, LedgerError> {
    let mut ledger = Ledger::open(ledger)?;
    let (connection, path) = ledger.writer();
    let pending = pending_records(connection, path)?;
    Ok(pending.iter().filter(|(seq, _)| *seq > records).count() as u64)
}

/// Matches the certificates of the ledger at `ledger` with the `sign.issued` records of the
/// audit file at `audit_log` and those the ledger committed beyond it, and says how many
/// those are. Exact while no hsmca serve writes; one that does may commit between the
/// reads, and a repeat tells a passing difference from a lasting one.
pub fn reconcile_store(
    ledger: &Path,
    audit_log: &Path,
) -> Result<(Reconciliation, u64), OpenError> {
    let store = read_store(ledger, audit_log)?;
    let unwritten = store.records.len() as u64 - store.in_file;
    let reconciliation = reconcile(store.serials, store.records.iter().map(String::as_str));
    Ok((reconciliation, unwritten))
}

/// The whole chain of the SQLite store: the audit file's records, then those the ledger
/// committed beyond them (a crash, or the last fraction of a second of a running service).
pub fn chain_records(ledger: &Path, audit_log: &Path) -> Result<Vec<String>, OpenError> {
    read_store(ledger, audit_log).map(|store| store.records)
}

/// What [`read_store`] read of the SQLite store.
struct StoreContents {
    /// The ledger's certificate serials.
    serials: Vec<String>,
    /// The chain's records, as [`chain_records`] reads them.
    records: Vec<String>,
    /// How many of them the audit file holds.
    in_file: u64,
}

/// The ledger's certificate serials, and the chain's records as [`chain_records`] reads them.
fn read_store(ledger: &Path, audit_log: &Path) -> Result<StoreContents, OpenError> {
    let io = |source| AuditError::Io {
        path: audit_log.to_owned(),
        source,
    };
    // The file's length first: rows committed before the ledger is read below have their
    // records in the file up to here, or still pending in the ledger.
    let length = std::fs::metadata(audit_log).map_err(io)?.len();
    let mut ledger = Ledger::open(ledger)?;
    let (serials, pending) = {
        let (connection, path) = ledger.writer();
        let transaction = connection.transaction().map_err(sqlite(path))?;
        let serials = transaction
            .prepare("SELECT serial FROM certificates")
            .and_then(|mut select| {
                select
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sqlite(path))?;
        let pending = pending_records(&transaction, path)?;
        (serials, pending)
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(File::open(audit_log).map_err(io)?, length),
        &mut text,
    )
    .map_err(io)?;
    let mut records: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect();
    let in_file = records.len() as u64;
    records.extend(
        pending
            .into_iter()
            .filter(|(seq, _)| *seq > in_file)
            .map(|(_, line)| line),
    );
    Ok(StoreContents {
        serials,
        records,
        in_file,
    })
}

/// The check at start: the certificates issued since the oldest of the file's newest
/// [`RECENT_RECORDS`] records, matched with the `sign.issued` records among them. Run before
/// the service writes, with the file complete.
fn reconcile_newest(ledger: &mut Ledger, log: &AuditLog) -> Result<Reconciliation, OpenError> {
    let records = log.last_records(RECENT_RECORDS)?;
    let first_seq = log.chain().records() + 1 - records.len() as u64;
    let (connection, path) = ledger.writer();
    let rows = connection
        .prepare("SELECT serial, issued_at FROM certificates WHERE issued_at >= ?1")
        .and_then(|mut select| {
            select
                .query_map(params![window_start(&records).saturating_sub(1)], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(sqlite(path))?;
    Ok(reconcile_recent(rows, &records, first_seq))
}

/// The pending records of the ledger reached through `connection` (a transaction derefs to
/// one), oldest first; `path` names the ledger in errors.
fn pending_records(
    connection: &rusqlite::Connection,
    path: &Path,
) -> Result<Vec<(u64, String)>, LedgerError> {
    let mut select = connection
        .prepare("SELECT seq, line FROM audit_pending ORDER BY seq")
        .map_err(sqlite(path))?;
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)?.unsigned_abs(), row.get(1)?))
        })
        .map_err(sqlite(path))?;
    rows.collect::<Result<_, _>>().map_err(sqlite(path))
}

/// Forgets the pending records up to `seq`, which the file holds durably.
fn forget_pending(ledger: &mut Ledger, seq: u64) -> Result<(), LedgerError> {
    let (connection, path) = ledger.writer();
    connection
        .execute(
            "DELETE FROM audit_pending WHERE seq <= ?1",
            params![seq.min(i64::MAX as u64) as i64],
        )
        .map(|_| ())
        .map_err(sqlite(path))
}

/// Writes to the file, and syncs, the `pending` records it lacks: as they are, when they
/// continue its chain; inside one `audit.recovered` record when the file went on without
/// them.
fn complete_the_file(log: &mut AuditLog, pending: &[(u64, String)]) -> Result<(), AuditError> {
    let Some(&(first, _)) = pending.first() else {
        return Ok(());
    };
    let records = log.chain().records();
    // The file's records from `first` on, to compare with the pending ones it should hold.
    let in_file = if first <= records {
        log.last_records(records - first + 1)?
    } else {
        Vec::new()
    };
    let held = |seq: u64, line: &str| {
        seq >= first && in_file.get((seq - first) as usize).map(String::as_str) == Some(line)
    };
    let missing: Vec<&(u64, String)> = pending
        .iter()
        .filter(|(seq, line)| !held(*seq, line))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(linked) = continuation(log.chain(), &missing) {
        tracing::warn!(
            records = missing.len(),
            log = %log.path().display(),
            "the audit file lacked records the ledger had committed (hsmca stopped between the two writes): written now"
        );
        return log.write(linked, true).map(|_| ());
    }
    let lines: Vec<&str> = missing.iter().map(|(_, line)| line.as_str()).collect();
    tracing::error!(
        records = lines.len(),
        log = %log.path().display(),
        "the audit file went on without records the ledger had committed (it was appended to, or restored, after hsmca stopped): they are kept inside an audit.recovered record"
    );
    log.append_all(&[AuditEvent {
        event: "audit.recovered".into(),
        actor: "hsmca".into(),
        details: json!({
            "reason": "records committed with the ledger were missing from the audit file, which had gone on without them",
            "records": lines,
        }),
    }])
    .map(|_| ())
}

/// The `missing` records as they are, if they continue `chain` exactly.
fn continuation(chain: &AuditChain, missing: &[&(u64, String)]) -> Option<Linked> {
    let mut head = chain.head().to_owned();
    let mut seq = chain.records();
    let mut lines = String::new();
    let mut receipts = Vec::with_capacity(missing.len());
    for (record_seq, line) in missing {
        seq += 1;
        if *record_seq != seq {
            return None;
        }
        head = check_record(line, seq, &head).ok()?;
        lines.push_str(line);
        lines.push('\n');
        receipts.push(AuditReceipt {
            seq,
            hash: head.clone(),
        });
    }
    Some(Linked {
        lines,
        receipts,
        next: AuditChain::after(seq, head),
    })
}

/// Syncs the audit file behind the writer, on a thread of its own.
struct Syncer {
    shared: Arc<SyncShared>,
    thread: Option<JoinHandle<()>>,
}

struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
}

struct SyncState {
    /// The last record written to the file.
    written: u64,
    /// The last record synced.
    synced: u64,
    stopping: bool,
    /// Why a sync failed; from then on nothing is synced.
    failure: Option<std::io::Error>,
}

impl Syncer {
    /// Starts syncing `file`, which holds `synced` records durably.
    fn start(file: File, synced: u64) -> std::io::Result<Self> {
        let shared = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                written: synced,
                synced,
                stopping: false,
                failure: None,
            }),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run(&file)
            })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Records up to `seq` were written to the file.
    fn written(&self, seq: u64) {
        let mut state = self.shared.lock();
        // Only a thread with nothing to sync is woken: one already gathering records picks
        // these up when its interval ends, and a wake-up per group would cost a thread switch
        // per group for nothing.
        let idle = state.written <= state.synced;
        state.written = seq;
        drop(state);
        if idle {
            self.shared.wake.notify_one();
        }
    }

    /// The last record the file holds durably.
    fn synced(&self) -> u64 {
        self.shared.lock().synced
    }

    /// Why a sync failed, once.
    fn take_failure(&self) -> Option<std::io::Error> {
        self.shared.lock().failure.take()
    }

    /// Syncs what was written, stops the thread, and returns the last record synced.
    fn stop(&mut self) -> u64 {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.synced()
    }
}

impl SyncShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, file: &File) {
        loop {
            let mut state = self
                .wake
                .wait_while(self.lock(), |s| s.written <= s.synced && !s.stopping)
                .unwrap_or_else(|e| e.into_inner());
            if state.written <= state.synced {
                return; // stopping, and everything is synced
            }
            // Let more records come, so that one sync serves them all; a stop cuts it short.
            state = self
                .wake
                .wait_timeout_while(state, SYNC_INTERVAL, |s| !s.stopping)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let target = state.written;
            drop(state);
            let synced = file.sync_data();
            let mut state = self.lock();
            match synced {
                Ok(()) => state.synced = target,
                Err(error) => {
                    tracing::error!(%error, "the audit file could not be synced");
                    state.failure = Some(error);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::audit;
    use crate::ledger::certificates::sample_certificate;

    fn issued(serial: &str) -> JournalEntry {
        JournalEntry {
            change: Some(Change::Issued(sample_certificate(serial))),
            event: AuditEvent {
                event: "sign.issued".into(),
                actor: "c".into(),
                details: json!({ "serial": serial }),
            },
        }
    }

    struct Files {
        _dir: tempfile::TempDir,
        ledger: std::path::PathBuf,
        log: std::path::PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        Files {
            ledger: dir.path().join("ledger.sqlite"),
            log: dir.path().join("audit.log"),
            _dir: dir,
        }
    }

    fn open(files: &Files) -> SqliteJournal {
        SqliteJournal::open(&files.ledger, &files.log).unwrap().0
    }

    fn pending(files: &Files) -> Vec<(u64, String)> {
        let mut ledger = Ledger::open(&files.ledger).unwrap();
        let (connection, path) = ledger.writer();
        pending_records(connection, path).unwrap()
    }

    fn lines(files: &Files) -> Vec<String> {
        std::fs::read_to_string(&files.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Stops `journal`, then puts back in the ledger the last `records` records as a kill
    /// before their sync would have left them pending.
    fn crash(journal: SqliteJournal, files: &Files, records: usize) {
        drop(journal);
        let all = lines(files);
        let connection = rusqlite::Connection::open(&files.ledger).unwrap();
        for (seq, line) in (1..).zip(&all).skip(all.len() - records) {
            connection
                .execute(
                    "INSERT INTO audit_pending (seq, line) VALUES (?1, ?2)",
                    params![seq, line],
                )
                .unwrap();
        }
    }

    #[test]
    fn a_clean_stop_leaves_the_file_whole_and_nothing_pending() {
        let files = files();
        let mut journal = open(&files);
        journal.commit(&[issued("01"), issued("02")]).unwrap();
        journal.commit(&[issued("03")]).unwrap();
        assert_eq!(pending(&files).len(), 3, "committed, not yet synced");
        drop(journal);
        assert!(pending(&files).is_empty());
        assert_eq!(audit::verify(&files.log).unwrap().records, 3);
    }

    #[test]
    fn records_a_crash_kept_from_the_file_are_written_at_the_next_start() {
        let files = files();
        let mut journal = open(&files);
        journal.commit(&[issued("01"), issued("02")]).unwrap();
        let before_last = std::fs::metadata(&files.log).unwrap().len();
        journal.commit(&[issued("03")]).unwrap();
        crash(journal, &files, 1);
        let written = lines(&files);
        // The kill came while the last record was half written.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&files.log)
            .unwrap();
        file.set_len(before_last + 10).unwrap();
        drop(file);

        let journal = open(&files);
        assert!(journal.discarded_tail().is_some());
        assert_eq!(lines(&files), written, "the same records, byte for byte");
        assert_eq!(audit::verify(&files.log).unwrap().records, 3);
        assert!(pending(&files).is_empty());
    }

    #[test]
    fn records_a_file_went_on_without_are_kept_in_a_recovered_record() {
        let files = files();
        let mut journal = open(&files);
        journal.commit(&[issued("01")]).unwrap();
        crash(journal, &files, 1);
        let lost = lines(&files);
        // The file is restored from an older backup (empty), and a ceremony appends to it.
        std::fs::write(&files.log, "").unwrap();
        audit::AuditLog::open(&files.log)
            .unwrap()
            .append(&AuditEvent {
                event: "ceremony.root".into(),
                actor: "officer".into(),
                details: json!({}),
            })
            .unwrap();

        let mut journal = open(&files);
        let records = lines(&files);
        assert_eq!(records.len(), 2);
        let recovered: serde_json::Value = serde_json::from_str(&records[1]).unwrap();
        assert_eq!(recovered["event"], "audit.recovered");
        assert_eq!(recovered["details"]["records"], json!(lost));
        // The chain goes on from there.
        journal.commit(&[issued("02")]).unwrap();
        drop(journal);
        assert_eq!(audit::verify(&files.log).unwrap().records, 3);
    }

    #[test]
    fn a_taken_serial_fails_alone_and_is_audited_as_unrecorded() {
        let files = files();
        let mut journal = open(&files);
        journal.commit(&[issued("01")]).unwrap();
        let made = journal.commit(&[issued("02"), issued("01")]).unwrap();
        assert!(made[0].is_ok());
        assert!(matches!(made[1], Err(LedgerError::DuplicateSerial { .. })));
        drop(journal);
        let records = lines(&files);
        assert!(
            records[2].contains("\"sign.issued.unrecorded\""),
            "{}",
            records[2]
        );
        assert_eq!(audit::verify(&files.log).unwrap().records, 3);
    }
}
