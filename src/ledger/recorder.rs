//! Group commit for the signing service: one thread owns the journal (the certificate store
//! and the audit chain), takes every pending entry at once, writes their certificates,
//! revocations and audit records in one transaction, and only then answers each caller. A
//! certificate is handed to its requester only after its row and its audit record are
//! durable; batching keeps that from costing a disk sync per request.
//!
//! A caller that knows an entry is on its way (a certificate being signed in the HSM right
//! now) says so with [`Recorder::expect`]; the writer then waits up to [`LINGER`] for the
//! entries announced when it woke before it commits, so under load one pair of syncs
//! serves many requests. With nothing announced it commits at once, so a lone request
//! never waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::audit::{AuditError, AuditEvent, AuditReceipt};
use super::certificates::LedgerError;
use super::journal::{Change, Journal, JournalEntry, JournalError};

/// The most entries written in one group.
const MAX_GROUP: usize = 1024;

/// The longest the writer holds a group open for announced entries. A commit costs about
/// this much on the machines measured (docs/performance.md), so waiting longer would add
/// more latency than it saves.
pub const LINGER: Duration = Duration::from_millis(1);

/// Why an entry was not recorded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RecordError {
    /// The ledger refused the entry's change (a serial taken, a certificate revoked
    /// already); its audit record says so.
    #[error("the change could not be recorded in the ledger: {0}")]
    Ledger(#[source] Arc<LedgerError>),
    /// The audit log could not be written; the recorder stops until restarted. Every entry
    /// of the group gets the same error.
    #[error("the audit log could not be written: {0}")]
    Audit(#[source] Arc<AuditError>),
    /// Nothing of the entry's group was written: the database could not be reached or its
    /// transaction failed. The recorder goes on; a later entry may succeed.
    #[error("the ledger cannot be reached: {0}")]
    Unavailable(#[source] Arc<LedgerError>),
    /// The recorder is stopped (shutting down, or after an audit log failure).
    #[error("the ledger and audit recorder is stopped")]
    Stopped,
}

struct Entry {
    entry: JournalEntry,
    reply: Answer,
}

/// What the writer calls with an entry's outcome, on its own thread, once the entry's group
/// is durable (or refused). It must be quick: the rest of the group waits for it.
pub type Answer = Box<dyn FnOnce(Result<AuditReceipt, RecordError>) + Send>;

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Groups written.
    pub groups: AtomicU64,
    /// Entries written.
    pub entries: AtomicU64,
}

/// Whether the recorder may still write: it may until it has a reason to stop, and the
/// first reason is kept.
#[derive(Debug, Default)]
struct Health(Mutex<Option<String>>);

impl Health {
    fn stopped_because(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_ok(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn stop(&self, why: String) {
        tracing::error!(reason = %why, "refusing all further issuance until hsmca is restarted");
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    }
}

/// The handle callers use; the writer thread runs until the handle is shut down.
pub struct Recorder {
    submitter: Submitter,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Health>,
    stats: Arc<RecorderStats>,
    announced: Arc<AtomicUsize>,
    newest: Arc<Mutex<Option<AuditReceipt>>>,
}

/// Hands entries to the writer from any thread ([`Recorder::submitter`]). It does not keep
/// the writer running: once the recorder is shut down, entries are answered
/// [`RecordError::Stopped`].
#[derive(Clone)]
pub struct Submitter(Arc<Mutex<Option<mpsc::Sender<Entry>>>>);

impl Submitter {
    /// Queues `event`, and `change` if there is one, to be recorded durably and together;
    /// `answer` gets the audit record's receipt on the writer's thread once both are on disk.
    pub fn submit(&self, change: Option<Change>, event: AuditEvent, answer: Answer) {
        let entry = Entry {
            entry: JournalEntry { change, event },
            reply: answer,
        };
        let refused = match self.sender().as_ref() {
            Some(sender) => sender.send(entry).err().map(|refused| refused.0),
            None => Some(entry),
        };
        if let Some(entry) = refused {
            (entry.reply)(Err(RecordError::Stopped));
        }
    }

    /// Lets go of the writer, for every clone: it writes what is queued and ends, and later
    /// entries are answered [`RecordError::Stopped`].
    fn close(&self) {
        drop(self.sender().take());
    }

    fn sender(&self) -> MutexGuard<'_, Option<mpsc::Sender<Entry>>> {
        // A panic while the lock was held left only an `Option` behind it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An entry announced to the writer ([`Recorder::expect`]); dropping it, recorded or not,
/// withdraws the announcement.
#[must_use = "the announcement lasts as long as this value"]
pub struct Expected(Arc<AtomicUsize>);

impl Drop for Expected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Recorder {
    /// Starts the writer thread over `journal`.
    pub fn start(journal: Box<dyn Journal>) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let health = Arc::new(Health::default());
        let stats = Arc::new(RecorderStats::default());
        let announced = Arc::new(AtomicUsize::new(0));
        let newest = Arc::new(Mutex::new(None));
        let writer = Writer {
            journal,
            health: health.clone(),
            newest: newest.clone(),
            stats: stats.clone(),
            announced: announced.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Recorder {
            submitter: Submitter(Arc::new(Mutex::new(Some(sender)))),
            thread: Mutex::new(Some(thread)),
            health,
            stats,
            announced,
            newest,
        })
    }

    /// The newest audit record this recorder wrote (on PostgreSQL, other replicas may have
    /// written later ones): what a checkpoint of this replica vouches for.
    pub fn newest(&self) -> Option<AuditReceipt> {
        self.newest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Announces an entry that will be recorded shortly; drop the returned value just
    /// before calling [`Recorder::record`] (or when the entry will not come after all).
    pub fn expect(&self) -> Expected {
        self.announced.fetch_add(1, Ordering::Relaxed);
        Expected(self.announced.clone())
    }

    /// Entries announced ([`Recorder::expect`]) and not yet withdrawn.
    pub fn announced(&self) -> usize {
        self.announced.load(Ordering::Relaxed)
    }

    /// Records `event`, and `change` if there is one, durably and together. Returns the
    /// audit record's receipt once both are on disk.
    pub async fn record(
        &self,
        change: Option<Change>,
        event: AuditEvent,
    ) -> Result<AuditReceipt, RecordError> {
        let (reply, response) = oneshot::channel();
        self.submitter.submit(
            change,
            event,
            Box::new(move |result| {
                let _ = reply.send(result);
            }),
        );
        response.await.unwrap_or(Err(RecordError::Stopped))
    }

    /// A handle that records from any thread, for a caller whose entry is ready on a thread
    /// other than the one that waits for the answer.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// Why the recorder stopped, once it has (a failed write, a broken audit chain); from
    /// then on the service must not issue until restarted.
    pub fn stopped_because(&self) -> Option<String> {
        self.health.stopped_because()
    }

    /// Runs `check` of the audit chain the service started on (the file's records before
    /// the one it was opened at, or the database's chain) on a thread of its own, while
    /// entries are written; it returns how many records it checked, or what is broken. If the
    /// chain is broken the recorder stops, as after a failed write, and nothing more is
    /// issued.
    pub fn verify_in_background(
        &self,
        check: Box<dyn FnOnce() -> Result<u64, String> + Send>,
    ) -> std::io::Result<()> {
        let health = self.health.clone();
        std::thread::Builder::new()
            .name("audit-verify".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match check() {
                    Ok(records) => tracing::info!(
                        records,
                        millis = started.elapsed().as_millis() as u64,
                        "audit chain verified up to where this run started appending"
                    ),
                    Err(error) => health.stop(error),
                }
            })?;
        Ok(())
    }

    /// Group and entry counters.
    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// Writes everything already queued, then stops the writer thread; later entries are
    /// refused as [`RecordError::Stopped`].
    pub fn shutdown(&self) {
        self.submitter.close();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    journal: Box<dyn Journal>,
    health: Arc<Health>,
    newest: Arc<Mutex<Option<AuditReceipt>>>,
    stats: Arc<RecorderStats>,
    announced: Arc<AtomicUsize>,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Entry>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Ok(entry) = receiver.recv() {
            group.push(entry);
            group.extend(receiver.try_iter().take(MAX_GROUP - group.len()));
            // Wait for the entries announced by now, not for later ones: the group closes
            // when they are in, or at the deadline.
            let wanted = (group.len() + self.announced.load(Ordering::Relaxed)).min(MAX_GROUP);
            let deadline = Instant::now() + LINGER;
            while group.len() < wanted {
                match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(entry) => group.push(entry),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.write(&mut group);
        }
    }

    fn write(&mut self, group: &mut Vec<Entry>) {
        if !self.health.is_ok() {
            for entry in group.drain(..) {
                (entry.reply)(Err(RecordError::Stopped));
            }
            return;
        }
        // Moved out, not copied: the journal wants the entries side by side.
        let (entries, replies): (Vec<JournalEntry>, Vec<_>) =
            group.drain(..).map(|e| (e.entry, e.reply)).unzip();
        match self.journal.commit(&entries) {
            Ok(results) => {
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .entries
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                if let Some(newest) = results.iter().flatten().max_by_key(|receipt| receipt.seq) {
                    *self.newest.lock().unwrap_or_else(|e| e.into_inner()) = Some(newest.clone());
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    reply(result.map_err(|e| RecordError::Ledger(Arc::new(e))));
                }
            }
            // Nothing of the group is durable, and the chain is intact: the group is refused,
            // and the next one is tried afresh (a database back from an outage).
            Err(JournalError::Unavailable(error)) => {
                tracing::error!(%error, entries = entries.len(), "the ledger could not record a group");
                let error = Arc::new(error);
                for reply in replies {
                    reply(Err(RecordError::Unavailable(error.clone())));
                }
            }
            Err(JournalError::Audit(error)) => {
                self.health
                    .stop(format!("the audit log could not be written: {error}"));
                let error = Arc::new(error);
                for reply in replies {
                    reply(Err(RecordError::Audit(error.clone())));
                }
            }
        }
    }
}

/// A recorder over a new SQLite ledger and audit log in a temporary directory, for tests here
/// and of the recorder's callers.
#[cfg(test)]
pub(crate) fn fresh_recorder() -> (tempfile::TempDir, Recorder) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = super::sqlite_journal::SqliteJournal::open(
        &dir.path().join("ledger.sqlite"),
        &dir.path().join("audit.log"),
    )
    .unwrap();
    let recorder = Recorder::start(Box::new(journal)).unwrap();
    (dir, recorder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::audit;
    use crate::ledger::certificates::{CertificateStore, Ledger, sample_certificate};
    use serde_json::json;

    fn certificate(serial: &str) -> Option<Change> {
        Some(Change::Issued(sample_certificate(serial)))
    }

    fn event(name: &str) -> AuditEvent {
        AuditEvent {
            event: name.into(),
            actor: "c".into(),
            details: json!({}),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_entries_are_all_durable_and_a_duplicate_fails_alone() {
        let (dir, recorder) = fresh_recorder();
        let recorder_ref = &recorder;
        // All pending at once, so the writer sees groups of many entries.
        let results = futures::future::join_all(
            (0..200)
                .map(|i| {
                    let serial = if i == 199 {
                        "0000".to_string()
                    } else {
                        format!("{i:04}")
                    };
                    async move {
                        recorder_ref
                            .record(certificate(&serial), event("sign.issued"))
                            .await
                    }
                })
                .collect::<Vec<_>>(),
        )
        .await;
        let failures = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failures, 1, "only the repeated serial fails");
        assert!(recorder.stats().groups.load(Ordering::Relaxed) >= 1);
        recorder.shutdown();
        let verified = audit::verify(&dir.path().join("audit.log")).unwrap();
        assert_eq!(verified.records, 200);
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert_eq!(text.matches("sign.issued.unrecorded").count(), 1);
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        assert_eq!(ledger.count().unwrap(), 199);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announced_entry_that_never_comes_does_not_hold_up_the_others() {
        let (dir, recorder) = fresh_recorder();
        // Announced and never withdrawn: the writer may wait for it once per group, but
        // every group is still written.
        let _never = recorder.expect();
        for i in 0..3 {
            let serial = format!("{i:04}");
            tokio::time::timeout(
                Duration::from_secs(10),
                recorder.record(certificate(&serial), event("sign.issued")),
            )
            .await
            .expect("an entry is written even while another is announced")
            .unwrap();
        }
        // A withdrawn announcement is forgotten.
        drop(recorder.expect());
        assert_eq!(recorder.announced(), 1);
        recorder.shutdown();
        assert_eq!(
            audit::verify(&dir.path().join("audit.log"))
                .unwrap()
                .records,
            3
        );
    }

    /// A journal whose database is down: nothing of any group is durable.
    struct Unreachable;

    impl Journal for Unreachable {
        fn commit(
            &mut self,
            _group: &[JournalEntry],
        ) -> Result<super::super::journal::EntryResults, JournalError> {
            Err(JournalError::Unavailable(LedgerError::Backend {
                location: "db.example:5432".into(),
                source: "connection refused".into(),
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_the_database_refused_is_answered_unavailable_and_the_recorder_goes_on() {
        let recorder = Recorder::start(Box::new(Unreachable)).unwrap();
        for _ in 0..2 {
            let error = recorder
                .record(certificate("0001"), event("sign.issued"))
                .await
                .unwrap_err();
            assert!(matches!(error, RecordError::Unavailable(_)), "{error}");
            assert!(error.to_string().contains("connection refused"), "{error}");
        }
        assert_eq!(recorder.stopped_because(), None);
        assert_eq!(recorder.newest(), None);
    }

    #[test]
    fn a_submitter_records_from_any_thread_and_is_answered_stopped_after_shutdown() {
        let (dir, recorder) = fresh_recorder();
        let submitter = recorder.submitter();
        let (sender, answers) = mpsc::channel();
        let answer = |sender: mpsc::Sender<_>| -> Answer {
            Box::new(move |result: Result<AuditReceipt, RecordError>| {
                let _ = sender.send((std::thread::current().name().map(str::to_owned), result));
            })
        };
        std::thread::spawn({
            let (submitter, sender) = (submitter.clone(), sender.clone());
            move || submitter.submit(certificate("0001"), event("sign.issued"), answer(sender))
        })
        .join()
        .unwrap();
        let (thread, result) = answers.recv().unwrap();
        assert_eq!(result.unwrap().seq, 1);
        assert_eq!(
            thread.as_deref(),
            Some("ledger-writer"),
            "answered by the writer"
        );
        // A submitter does not keep the writer running, and is refused once it stopped.
        recorder.shutdown();
        submitter.submit(certificate("0002"), event("sign.issued"), answer(sender));
        assert!(matches!(
            answers.recv().unwrap().1,
            Err(RecordError::Stopped)
        ));
        assert_eq!(
            audit::verify(&dir.path().join("audit.log"))
                .unwrap()
                .records,
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_newest_record_written_is_what_a_checkpoint_covers() {
        let (_dir, recorder) = fresh_recorder();
        assert_eq!(recorder.newest(), None);
        recorder.record(None, event("a")).await.unwrap();
        let second = recorder.record(None, event("b")).await.unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(recorder.newest(), Some(second));
    }
}
