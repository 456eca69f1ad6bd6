//! A pool of HSM sessions served by dedicated blocking worker threads.
//!
//! PKCS#11 calls block, sometimes for a network round trip to the HSM, so they never run on
//! the async reactor. Each worker owns one session (`cryptoki::Session` is `Send`, not
//! `Sync`) and takes jobs from one bounded queue. Callers get a clear "busy" error when the
//! queue is full and a timeout error when their job does not finish in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::object::ObjectHandle;
use tokio::sync::oneshot;

use super::algorithm::SignatureAlgorithm;
use super::error::HsmError;
use super::health::HealthReport;
use super::keys::{self, HsmKey};
use super::token::{SessionSlot, TokenContext};
use crate::queue::{Refused, WorkQueue};

/// A signing request waiting for a worker.
struct Job {
    key: HsmKey,
    algorithm: SignatureAlgorithm,
    message: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>, HsmError>>,
}

/// Signs on the HSM from async code. Dropping the pool lets queued jobs finish, then closes
/// the sessions.
pub struct SignerPool {
    queue: Arc<WorkQueue<Job>>,
    workers: Vec<JoinHandle<()>>,
    queue_depth: usize,
    op_timeout: Duration,
    context: Arc<TokenContext>,
    load: Arc<PoolLoad>,
}

/// How loaded the pool is right now, for metrics.
#[derive(Debug, Default)]
struct PoolLoad {
    /// Jobs waiting for a session.
    queued: AtomicUsize,
    /// Sessions working on jobs.
    busy: AtomicUsize,
}

impl SignerPool {
    /// Opens `sessions` sessions (logging in if needed) and starts one worker for each.
    pub(crate) fn start(
        context: Arc<TokenContext>,
        sessions: usize,
        queue_depth: usize,
        op_timeout: Duration,
    ) -> Result<Self, HsmError> {
        // Open every session before starting any worker, so a bad token fails start-up. A
        // token that refuses more sessions than it said (others share it: replicas, tools)
        // leaves the pool with those it could open.
        let mut slots = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let mut slot = SessionSlot::new(context.clone(), false);
            match slot.connect() {
                Ok(()) => slots.push(slot),
                Err(error) if error.is_session_limit() && !slots.is_empty() => {
                    tracing::warn!(
                        asked = sessions,
                        opened = slots.len(),
                        %error,
                        "the token refused more sessions: the HSM pool runs with the sessions it could open"
                    );
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        let sessions = slots.len();
        let queue = Arc::new(WorkQueue::new(queue_depth));
        let load = Arc::new(PoolLoad::default());
        let workers = slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| {
                let queue = queue.clone();
                let load = load.clone();
                std::thread::Builder::new()
                    .name(format!("hsm-session-{index}"))
                    .spawn(move || Worker::new(slot).run(&queue, &load))
                    .map_err(|e| HsmError::Config(format!("cannot start HSM worker thread: {e}")))
            })
            .collect::<Result<_, _>>()?;
        tracing::info!(
            sessions,
            queue_depth,
            op_timeout_ms = op_timeout.as_millis() as u64,
            "HSM session pool started"
        );
        Ok(SignerPool {
            queue,
            workers,
            queue_depth,
            op_timeout,
            context,
            load,
        })
    }

    /// Signs `message` with `key` in the HSM and returns the signature in its X.509 encoding.
    ///
    /// Fails at once with [`HsmError::Busy`] when the queue is full, and with
    /// [`HsmError::Timeout`] when the job is not done within the operation timeout.
    pub async fn sign(
        &self,
        key: &HsmKey,
        algorithm: SignatureAlgorithm,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        algorithm.check_key(key.key_type())?;
        let deadline = Instant::now() + self.op_timeout;
        let (reply, response) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            algorithm,
            message,
            deadline,
            reply,
        };
        // Counted before it is sent, so a worker never takes a job that is not counted yet.
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        self.queue.push(job).map_err(|refused| {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            match refused {
                Refused::Full(_) => HsmError::Busy {
                    queue_depth: self.queue_depth,
                },
                Refused::Closed(_) => HsmError::ShutDown,
            }
        })?;
        match tokio::time::timeout_at(deadline.into(), response).await {
            Ok(Ok(result)) => result,
            // Either the deadline passed while waiting, or the worker dropped the job
            // unanswered because it expired in the queue: both are timeouts to the caller.
            Ok(Err(_)) | Err(_) => Err(HsmError::Timeout {
                after: self.op_timeout,
            }),
        }
    }

    /// Number of sessions (and worker threads).
    pub fn sessions(&self) -> usize {
        self.workers.len()
    }

    /// The HSM's health, for readiness checks.
    pub fn health(&self) -> HealthReport {
        self.context.health.report()
    }

    /// Jobs waiting for a session right now.
    pub fn queued(&self) -> usize {
        self.load.queued.load(Ordering::Relaxed)
    }

    /// Sessions signing right now.
    pub fn busy(&self) -> usize {
        self.load.busy.load(Ordering::Relaxed)
    }

    /// The most jobs that may wait before callers get [`HsmError::Busy`].
    pub fn queue_depth(&self) -> usize {
        self.queue_depth
    }
}

impl Drop for SignerPool {
    fn drop(&mut self) {
        // Closing the queue ends each worker once the jobs already queued are done.
        self.queue.close();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Most signatures a worker makes in a row, taking each next job from the queue without
/// sleeping, before it goes back to the queue's wait (where it lets another idle worker have
/// what is left).
const MAX_RUN: usize = 4;

/// About how long a finished signature may wait for the rest of its batch. Keeps the latency
/// batching adds to a fraction of a millisecond; on slow (network) HSMs, where one signature
/// takes longer than this, every reply goes out as soon as it is ready.
const REPLY_FLUSH_AFTER: Duration = Duration::from_micros(250);

type Reply = (
    oneshot::Sender<Result<Vec<u8>, HsmError>>,
    Result<Vec<u8>, HsmError>,
);

fn send_replies(replies: &mut Vec<Reply>) {
    for (reply, result) in replies.drain(..) {
        // A caller that went away in the meantime does not want its answer.
        let _ = reply.send(result);
    }
}

/// One worker thread: a session and the key handles found in it.
struct Worker {
    slot: SessionSlot,
    handles: HashMap<Vec<u8>, ObjectHandle>,
    handles_generation: u64,
}

impl Worker {
    fn new(slot: SessionSlot) -> Self {
        Worker {
            slot,
            handles: HashMap::new(),
            handles_generation: 0,
        }
    }

    /// Takes one job at a time, so a job never waits behind this worker's signature while
    /// another session is free (a hung `C_Sign` holds only its own job). Replies are still
    /// answered together: waking the caller of a finished job costs the worker a system call
    /// and a thread switch, about a third of a SoftHSM2 P-256 signature on a small VM
    /// (docs/performance.md), so a reply waits for the next signature while that is
    /// expected to end within [`REPLY_FLUSH_AFTER`].
    fn run(mut self, queue: &WorkQueue<Job>, load: &PoolLoad) {
        let mut replies = Vec::with_capacity(MAX_RUN);
        while let Some(first) = queue.take() {
            load.busy.fetch_add(1, Ordering::Relaxed);
            let mut next = Some(first);
            let mut oldest_reply: Option<Instant> = None;
            let mut run = 0;
            while let Some(job) = next {
                load.queued.fetch_sub(1, Ordering::Relaxed);
                run += 1;
                // Skip work nobody waits for any more: the caller timed out or went away.
                let started = Instant::now();
                if !job.reply.is_closed() && started < job.deadline {
                    let result = self.sign(&job);
                    let took = started.elapsed();
                    replies.push((job.reply, result));
                    let oldest = *oldest_reply.get_or_insert_with(Instant::now);
                    // Send now if one more signature like this one would hold the oldest reply
                    // past the bound: on a slow HSM that is after every signature.
                    if oldest.elapsed() + took >= REPLY_FLUSH_AFTER {
                        send_replies(&mut replies);
                        oldest_reply = None;
                    }
                }
                next = if run < MAX_RUN {
                    queue.try_take()
                } else {
                    None
                };
            }
            send_replies(&mut replies);
            load.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sign(&mut self, job: &Job) -> Result<Vec<u8>, HsmError> {
        let handles = &mut self.handles;
        let handles_generation = &mut self.handles_generation;
        self.slot.run(|session, generation| {
            // Handles belong to a session's lifetime on some modules: forget them with it.
            if *handles_generation != generation {
                handles.clear();
                *handles_generation = generation;
            }
            let handle = match handles.get(job.key.id()) {
                Some(handle) => *handle,
                None => {
                    let handle = keys::private_handle(session, &job.key)?;
                    handles.insert(job.key.id().to_vec(), handle);
                    handle
                }
            };
            let result = keys::sign(session, handle, job.algorithm, &job.message);
            if result.as_ref().is_err_and(HsmError::is_session_fault) {
                handles.clear();
            }
            result
        })
    }
}
