//! The service's audit checkpoints (`[audit]`): at start, every `checkpoint_interval` while
//! records are added, and at stop, the newest record this service wrote is signed in the HSM
//! with the checkpoint key, sent to the witnesses, and appended to the chain as an
//! `audit.checkpoint` record (`crate::ledger::checkpoint` says what one proves).
//!
//! A checkpoint that cannot be signed (the HSM unavailable) is not retried in a loop that
//! could hold up issuance: it is logged, counted, and recorded as `audit.checkpoint_failed`,
//! which `hsmca audit verify` reports as a gap, and the next try comes after
//! [`RETRY_AFTER`] (or the interval, if shorter).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::error::StartError;
use super::metrics::CheckpointGauges;
use crate::config::AuditConfig;
use crate::hsm::{Hsm, HsmKey, SignatureAlgorithm, SignerPool};
use crate::ledger::chain::{AuditEvent, record_time};
use crate::ledger::checkpoint::{
    CHECKPOINT_EVENT, CHECKPOINT_FAILED_EVENT, Checkpoint, WITNESS_FAILED_EVENT,
};
use crate::ledger::recorder::Recorder;
use crate::ledger::witness::Witnesses;

/// How soon a checkpoint that failed is tried again, at most.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Signs checkpoints of the chain and hands them to the witnesses.
pub struct Checkpointer {
    key: HsmKey,
    algorithm: SignatureAlgorithm,
    interval: Duration,
    witnesses: Arc<Witnesses>,
    /// The sequence number of the newest checkpoint record this service wrote; held for the
    /// whole of a checkpoint, so the interval's and the stop's never run at once.
    last_record: tokio::sync::Mutex<u64>,
    counts: CheckpointCounts,
}

/// The checkpoint counters, read by [`Checkpointer::gauges`].
#[derive(Debug, Default)]
struct CheckpointCounts {
    /// Checkpoints signed.
    signed: AtomicU64,
    /// Checkpoints that could not be signed.
    failed: AtomicU64,
    /// Witness writes that failed.
    witness_failures: AtomicU64,
    /// When the newest checkpoint was signed, Unix seconds (0: none yet).
    last_signed: AtomicU64,
}

/// What one attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing was recorded since the last checkpoint.
    NothingNew,
    /// Signed, witnessed (see the log for a witness that failed) and recorded.
    Signed,
    /// Not signed: the HSM could not, or the chain could not take it.
    Failed,
}

impl Checkpointer {
    /// The checkpointer `[audit]` asks for, or `None` (with a warning) when it asks for
    /// none. The key must be in the HSM and sign (a self-test), and at least one witness must
    /// be reachable: a checkpoint kept only in the store it vouches for proves little.
    /// `store_files` are the files of the store (SQLite's ledger and audit file), which the
    /// witness file must not be.
    pub fn open(
        config: &AuditConfig,
        hsm: &Hsm,
        resolve: impl Fn(&Path) -> PathBuf,
        store_files: &[&Path],
    ) -> Result<Option<Self>, StartError> {
        let witnessed = config.witness_file.is_some() || config.witness_syslog.is_some();
        let Some(label) = &config.checkpoint_key else {
            if witnessed {
                return Err(StartError::Config(
                    "[audit] names a witness but no checkpoint_key: generate one with `hsmca ceremony key` and set audit.checkpoint_key to its label".into(),
                ));
            }
            tracing::warn!(
                "audit checkpoints are off ([audit] checkpoint_key): someone who can write the store could cut the newest audit records, or rewrite the chain and hash it again, unseen"
            );
            return Ok(None);
        };
        if !witnessed {
            return Err(StartError::Config(
                "[audit] checkpoint_key needs a witness outside the store: set audit.witness_file (on another disk) or audit.witness_syslog (\"/dev/log\"), or both".into(),
            ));
        }
        if config.checkpoint_interval.0 == 0 {
            return Err(StartError::Config(
                "audit.checkpoint_interval must be at least 1s".into(),
            ));
        }
        let key = hsm.find_key(label, None).map_err(|error| {
            StartError::Config(format!(
                "audit.checkpoint_key {label:?} cannot be used: {error}"
            ))
        })?;
        let witness_file = config.witness_file.as_deref().map(&resolve);
        if let Some(witness_file) = &witness_file {
            check_apart(witness_file, store_files)?;
        }
        let witnesses = Witnesses::open(witness_file.as_deref(), config.witness_syslog.as_deref())
            .map_err(|error| StartError::Config(format!("[audit] {error}")))?;
        tracing::info!(
            key = %label,
            fingerprint = %key.public_key().sha256_fingerprint(),
            interval = %config.checkpoint_interval,
            witnesses = %witnesses.describe(),
            "audit checkpoints on"
        );
        Ok(Some(Checkpointer {
            algorithm: key.key_type().default_algorithm(),
            key,
            interval: config.checkpoint_interval.duration(),
            witnesses: Arc::new(witnesses),
            last_record: tokio::sync::Mutex::new(0),
            counts: CheckpointCounts::default(),
        }))
    }

    /// The counters now, for the metrics.
    pub fn gauges(&self) -> CheckpointGauges {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CheckpointGauges {
            signed: load(&self.counts.signed),
            failed: load(&self.counts.failed),
            witness_failures: load(&self.counts.witness_failures),
            last_signed: load(&self.counts.last_signed),
        }
    }

    /// How long to wait before the next attempt after `last`.
    fn wait_after(&self, last: &Attempt) -> Duration {
        match last {
            Attempt::Failed => self.interval.min(RETRY_AFTER),
            Attempt::NothingNew | Attempt::Signed => self.interval,
        }
    }

    /// Checkpoints now, to cover what the previous run left (its stop may have been a crash),
    /// then every interval (sooner after a failure); runs until aborted.
    pub async fn run(&self, pool: &SignerPool, recorder: &Recorder) {
        loop {
            let last = self.checkpoint(pool, recorder).await;
            tokio::time::sleep(self.wait_after(&last)).await;
        }
    }

    /// Checkpoints the newest record `recorder` wrote, if it wrote any since the last
    /// checkpoint: signs it with `pool`, sends it to the witnesses, then records it.
    pub async fn checkpoint(&self, pool: &SignerPool, recorder: &Recorder) -> Attempt {
        let mut last_record = self.last_record.lock().await;
        let Some(newest) = recorder.newest().filter(|newest| newest.seq > *last_record) else {
            return Attempt::NothingNew;
        };
        let time = record_time();
        let text = Checkpoint::signed_text(newest.seq, &newest.hash, &time);
        let signature = match pool
            .sign(&self.key, self.algorithm, text.into_bytes())
            .await
        {
            Ok(signature) => signature,
            Err(error) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, seq = newest.seq, retry_in_seconds = self.wait_after(&Attempt::Failed).as_secs(), "audit checkpoint could not be signed");
                let details =
                    json!({ "seq": newest.seq, "hash": newest.hash, "error": error.to_string() });
                if let Err(error) = recorder
                    .record(None, event(CHECKPOINT_FAILED_EVENT, details))
                    .await
                {
                    tracing::error!(%error, "cannot record the failed checkpoint");
                }
                return Attempt::Failed;
            }
        };
        let checkpoint = Checkpoint::new(
            newest.seq,
            newest.hash,
            time,
            self.key.public_key(),
            self.algorithm,
            &signature,
        );
        // Witnesses first: if the chain cannot take the record, they still hold it.
        let witnesses = self.witnesses.clone();
        let sent = checkpoint.clone();
        let witness_failures = tokio::task::spawn_blocking(move || witnesses.send(&sent))
            .await
            .unwrap_or_default();
        let details = serde_json::to_value(&checkpoint).expect("a checkpoint always serialises");
        let recorded = recorder
            .record(None, event(CHECKPOINT_EVENT, details))
            .await;
        for failure in witness_failures {
            self.counts.witness_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %failure, seq = checkpoint.seq, "a witness did not take the audit checkpoint");
            let details = json!({ "seq": checkpoint.seq, "error": failure.to_string() });
            if let Err(error) = recorder
                .record(None, event(WITNESS_FAILED_EVENT, details))
                .await
            {
                tracing::error!(%error, "cannot record the witness failure");
            }
        }
        match recorded {
            Ok(receipt) => {
                *last_record = receipt.seq;
                self.counts.signed.fetch_add(1, Ordering::Relaxed);
                self.counts.last_signed.store(
                    crate::pki::now().unix_duration().as_secs(),
                    Ordering::Relaxed,
                );
                tracing::info!(seq = checkpoint.seq, hash = %checkpoint.hash, record = receipt.seq, "audit checkpoint signed and witnessed");
                Attempt::Signed
            }
            Err(error) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, seq = checkpoint.seq, "the audit checkpoint went to the witnesses but not into the chain");
                Attempt::Failed
            }
        }
    }
}

/// Refuses a witness file that is one of the store's files (it would write checkpoints into
/// the audit file), and warns when it shares a directory with one: a witness on the store's
/// disk goes with it.
fn check_apart(witness_file: &Path, store_files: &[&Path]) -> Result<(), StartError> {
    let canonical = |path: &Path| {
        let directory = path.parent().unwrap_or(Path::new("."));
        let directory = std::fs::canonicalize(directory).unwrap_or(directory.to_owned());
        (
            directory.clone(),
            directory.join(path.file_name().unwrap_or_default()),
        )
    };
    let (witness_directory, witness) = canonical(witness_file);
    for store_file in store_files {
        let (directory, file) = canonical(store_file);
        if file == witness {
            return Err(StartError::Config(format!(
                "audit.witness_file {} is the store's own {}: the witness must be another file, on another disk",
                witness_file.display(),
                store_file.display()
            )));
        }
        if directory == witness_directory {
            tracing::warn!(witness = %witness_file.display(), store = %store_file.display(), "the audit witness file is beside the store: whoever can rewrite one can likely rewrite both; put it on another disk or a mount shipped elsewhere");
        }
    }
    Ok(())
}

fn event(name: &str, details: serde_json::Value) -> AuditEvent {
    AuditEvent {
        event: name.into(),
        actor: "hsmca".into(),
        details,
    }
}
