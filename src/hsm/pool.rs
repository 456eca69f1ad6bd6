//! A pool of HSM sessions served by dedicated blocking worker threads.
//!
//! PKCS#11 calls block, sometimes for a network round trip to the HSM, so they never run on
//! the async reactor. Each worker owns one session (`cryptoki::Session` is `Send`, not
//! `Sync`) and takes jobs from one bounded queue. Callers get a clear "busy" error when the
//! queue is full and a timeout error when their job does not finish in time.
//!
//! A PKCS#11 call may never return: p11-kit's client waits for good when the link drops in
//! the middle of another thread's reply, and a network HSM's client waits as long as TCP does
//! when the link goes silent. A watchdog therefore abandons a worker whose call runs past
//! twice the operation timeout: it marks the HSM degraded, starts a replacement on a new
//! session (which first re-initialises the module the call hangs in, so a network module gets
//! a new connection), and lets the old thread end whenever its call returns.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// A request waiting for a worker.
struct Job {
    work: Work,
    deadline: Instant,
    reply: Reply,
}

/// Where a job's result goes.
enum Reply {
    /// To a caller waiting in async code; the worker may hold it briefly to send it with its
    /// next ones.
    Waiting(oneshot::Sender<Result<Vec<u8>, HsmError>>),
    /// Into a [`Then`], run on the worker's thread as soon as the result is there.
    Then(Then),
}

impl Reply {
    /// Whether nobody waits for the result any more (a [`Then`] always does).
    fn is_closed(&self) -> bool {
        match self {
            Reply::Waiting(sender) => sender.is_closed(),
            Reply::Then(_) => false,
        }
    }
}

/// What to do with a signature on the HSM session's thread, right after the PKCS#11 call
/// returns ([`SignerPool::sign_then`]). It must be quick and must not block: the session
/// takes no other job meanwhile. It is dropped unrun when the job expires in the queue or
/// the pool stops.
pub type Then = Box<dyn FnOnce(Result<Vec<u8>, HsmError>) + Send>;

/// What a job asks of the HSM. Everything on the issuance path goes through the pool, so the
/// watchdog covers it all: a call that hangs holds a pool session, never a lock others need.
enum Work {
    /// A signature of `message` with `key`, in its X.509 encoding.
    Sign {
        key: HsmKey,
        algorithm: SignatureAlgorithm,
        message: Vec<u8>,
    },
    /// `len` bytes from the token's random number generator.
    Random { len: usize },
}

impl Work {
    /// A signature with `key`, refused at once if `algorithm` is not for the key's type.
    fn sign(
        key: &HsmKey,
        algorithm: SignatureAlgorithm,
        message: Vec<u8>,
    ) -> Result<Self, HsmError> {
        algorithm.check_key(key.key_type())?;
        Ok(Work::Sign {
            key: key.clone(),
            algorithm,
            message,
        })
    }
}

/// Signs on the HSM from async code. Dropping the pool lets queued jobs finish, then closes
/// the sessions.
pub struct SignerPool {
    queue: Arc<WorkQueue<Job>>,
    crew: Arc<Crew>,
    watchdog: Option<JoinHandle<()>>,
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
    /// Abandoned workers whose PKCS#11 call has not returned yet.
    stuck: AtomicUsize,
}

/// The pool's workers, shared with the watchdog that replaces stuck ones.
struct Crew {
    workers: Mutex<Vec<WorkerThread>>,
    /// Set when the pool is dropped; the watchdog waits on `stopping`.
    stopped: Mutex<bool>,
    stopping: Condvar,
    /// Where the workers' [`Watch`] times count from.
    origin: Instant,
    /// A call running longer than this is taken for one that never returns.
    stuck_after: Duration,
}

/// A worker thread and what it tells the watchdog.
struct WorkerThread {
    thread: JoinHandle<()>,
    watch: Arc<Watch>,
}

/// What a worker tells the watchdog about its current job.
#[derive(Debug, Default)]
struct Watch {
    /// When the current PKCS#11 work began, in microseconds since [`Crew::origin`], plus one;
    /// zero while the worker waits for a job.
    busy_since: AtomicU64,
    /// The module epoch the work began under.
    epoch: AtomicU64,
    /// Set by the watchdog: the worker was replaced and ends once its call returns.
    abandoned: AtomicBool,
    /// Set by the watchdog when it could not replace the worker (said once).
    left_stuck: AtomicBool,
}

impl Watch {
    fn begin(&self, origin: Instant, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
        let since = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.busy_since.store(since + 1, Ordering::Release);
    }

    fn end(&self) {
        self.busy_since.store(0, Ordering::Release);
    }

    /// How long the current work has been running; `None` while idle.
    fn busy_for(&self, origin: Instant) -> Option<Duration> {
        match self.busy_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(
                origin
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }
}

/// Abandoned workers whose calls still hang, beyond which no more are replaced: each holds a
/// thread and perhaps a session on the token, and only a restart frees one that never returns.
const MAX_STUCK: usize = 16;

/// How often the watchdog looks at the workers, as a fraction of [`Crew::stuck_after`].
const WATCHES_PER_STUCK_AFTER: u32 = 8;

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
        let crew = Arc::new(Crew {
            workers: Mutex::new(Vec::with_capacity(sessions)),
            stopped: Mutex::new(false),
            stopping: Condvar::new(),
            origin: Instant::now(),
            stuck_after: op_timeout * 2,
        });
        for (index, slot) in slots.into_iter().enumerate() {
            let worker = spawn_worker(index, slot, None, &queue, &load, &crew)?;
            crew.workers().push(worker);
        }
        let watchdog = {
            let (queue, load, crew, context) =
                (queue.clone(), load.clone(), crew.clone(), context.clone());
            std::thread::Builder::new()
                .name("hsm-watchdog".into())
                .spawn(move || watch_workers(&queue, &load, &crew, &context))
                .map_err(|e| HsmError::Config(format!("cannot start HSM watchdog thread: {e}")))?
        };
        tracing::info!(
            sessions,
            queue_depth,
            op_timeout_ms = op_timeout.as_millis() as u64,
            "HSM session pool started"
        );
        Ok(SignerPool {
            queue,
            crew,
            watchdog: Some(watchdog),
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
        self.submit(Work::sign(key, algorithm, message)?).await
    }

    /// Queues a signature of `message` with `key` and returns at once; `then` gets the
    /// signature (or the HSM's error) on the session's thread. Saves the caller a wake-up when
    /// its next step can run there too (the check of the signature, a hand-off to another
    /// thread). Returns the deadline after which the job is dropped unrun if no session took
    /// it: a caller waiting for what `then` sends should give up then, unless `then` ran.
    ///
    /// Fails at once with [`HsmError::Busy`] when the queue is full.
    pub fn sign_then(
        &self,
        key: &HsmKey,
        algorithm: SignatureAlgorithm,
        message: Vec<u8>,
        then: Then,
    ) -> Result<Instant, HsmError> {
        self.enqueue(Work::sign(key, algorithm, message)?, Reply::Then(then))
    }

    /// `len` bytes from the token's random number generator, with the same queueing and
    /// timeouts as [`SignerPool::sign`].
    pub async fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        self.submit(Work::Random { len }).await
    }

    /// Queues `work` and waits for its answer until the operation timeout.
    async fn submit(&self, work: Work) -> Result<Vec<u8>, HsmError> {
        let (reply, response) = oneshot::channel();
        let deadline = self.enqueue(work, Reply::Waiting(reply))?;
        match tokio::time::timeout_at(deadline.into(), response).await {
            Ok(Ok(result)) => result,
            // Either the deadline passed while waiting, or the worker dropped the job
            // unanswered because it expired in the queue: both are timeouts to the caller.
            Ok(Err(_)) | Err(_) => Err(HsmError::Timeout {
                after: self.op_timeout,
            }),
        }
    }

    /// Queues `work`; returns the deadline of its job.
    fn enqueue(&self, work: Work, reply: Reply) -> Result<Instant, HsmError> {
        let deadline = Instant::now() + self.op_timeout;
        let job = Job {
            work,
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
        Ok(deadline)
    }

    /// How long a caller waits for an HSM operation.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Number of sessions (and worker threads), abandoned ones not counted.
    pub fn sessions(&self) -> usize {
        self.crew.workers().len()
    }

    /// Workers abandoned by the watchdog whose PKCS#11 call has not returned yet.
    pub fn stuck(&self) -> usize {
        self.load.stuck.load(Ordering::Relaxed)
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
        *self.crew.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.crew.stopping.notify_all();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        // Closing the queue ends each worker once the jobs already queued are done. A worker
        // whose call hangs is left behind after `stuck_after`, so a stop never hangs on it.
        self.queue.close();
        let deadline = Instant::now() + self.crew.stuck_after;
        for worker in self.crew.workers().drain(..) {
            while !worker.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if worker.thread.is_finished() {
                let _ = worker.thread.join();
            } else {
                tracing::warn!(
                    "an HSM session's PKCS#11 call has not returned; stopping without it"
                );
            }
        }
    }
}

impl Crew {
    fn workers(&self) -> std::sync::MutexGuard<'_, Vec<WorkerThread>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts worker `index` on `slot`. A replacement first re-initialises the module the call
/// it replaces hangs in (`recover_epoch`).
fn spawn_worker(
    index: usize,
    slot: SessionSlot,
    recover_epoch: Option<u64>,
    queue: &Arc<WorkQueue<Job>>,
    load: &Arc<PoolLoad>,
    crew: &Arc<Crew>,
) -> Result<WorkerThread, HsmError> {
    let watch = Arc::new(Watch::default());
    let thread = {
        let (queue, load, crew, watch) = (queue.clone(), load.clone(), crew.clone(), watch.clone());
        std::thread::Builder::new()
            .name(format!("hsm-session-{index}"))
            .spawn(move || {
                let worker = Worker::new(slot);
                if let Some(epoch) = recover_epoch {
                    watch.begin(crew.origin, epoch);
                    worker.slot.reinitialise_after_hang(epoch);
                    watch.end();
                    if watch.abandoned.load(Ordering::Acquire) {
                        // The re-initialisation hung too, and this worker was replaced.
                        load.stuck.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
                worker.run(&queue, &load, &watch, crew.origin)
            })
            .map_err(|e| HsmError::Config(format!("cannot start HSM worker thread: {e}")))?
    };
    Ok(WorkerThread { thread, watch })
}

/// The watchdog: every `stuck_after / 8`, abandons and replaces each worker whose PKCS#11
/// work has run longer than `stuck_after`, until the pool is dropped.
fn watch_workers(
    queue: &Arc<WorkQueue<Job>>,
    load: &Arc<PoolLoad>,
    crew: &Arc<Crew>,
    context: &Arc<TokenContext>,
) {
    let every = crew.stuck_after / WATCHES_PER_STUCK_AFTER;
    let mut stopped = crew.stopped.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        stopped = crew
            .stopping
            .wait_timeout_while(stopped, every, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *stopped {
            return;
        }
        let mut workers = crew.workers();
        for (index, worker) in workers.iter_mut().enumerate() {
            let Some(busy_for) = worker.watch.busy_for(crew.origin) else {
                continue;
            };
            if busy_for < crew.stuck_after {
                continue;
            }
            let stuck = load.stuck.load(Ordering::Relaxed);
            if stuck >= MAX_STUCK {
                if worker.watch.left_stuck.swap(true, Ordering::Relaxed) {
                    continue;
                }
                tracing::error!(
                    session = index,
                    stuck,
                    "an HSM session's PKCS#11 call has not returned, and too many are stuck already to replace it: restart hsmca"
                );
                continue;
            }
            let epoch = worker.watch.epoch.load(Ordering::Relaxed);
            let error = format!(
                "a PKCS#11 call on HSM session {index} has not returned after {} ms",
                busy_for.as_millis()
            );
            tracing::error!(session = index, %error, "abandoning the HSM session and starting another");
            context.health.record_failure(&error);
            let slot = SessionSlot::new(context.clone(), false);
            match spawn_worker(index, slot, Some(epoch), queue, load, crew) {
                Ok(replacement) => {
                    load.stuck.fetch_add(1, Ordering::Relaxed);
                    worker.watch.abandoned.store(true, Ordering::Release);
                    // The old thread is detached: it ends by itself if its call returns.
                    drop(std::mem::replace(worker, replacement));
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a replacement HSM worker");
                }
            }
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

/// A result held for a caller waiting in async code, to be sent with the next ones.
type HeldReply = (
    oneshot::Sender<Result<Vec<u8>, HsmError>>,
    Result<Vec<u8>, HsmError>,
);

fn send_replies(replies: &mut Vec<HeldReply>) {
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
    /// Ends when the queue closes, or after its call returns once the watchdog abandoned it.
    fn run(mut self, queue: &WorkQueue<Job>, load: &PoolLoad, watch: &Watch, origin: Instant) {
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
                    watch.begin(origin, self.slot.epoch());
                    let result = self.work(&job.work);
                    watch.end();
                    let took = started.elapsed();
                    match job.reply {
                        Reply::Waiting(reply) => replies.push((reply, result)),
                        // A panic in `then` loses its own result, not this session.
                        Reply::Then(then) => {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| then(result)));
                        }
                    }
                    if watch.abandoned.load(Ordering::Acquire) {
                        send_replies(&mut replies);
                        load.busy.fetch_sub(1, Ordering::Relaxed);
                        load.stuck.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(
                            after_ms = took.as_millis() as u64,
                            "the PKCS#11 call of an abandoned HSM session returned; its thread ends"
                        );
                        return;
                    }
                    // Send now if one more signature like this one would hold the oldest reply
                    // past the bound: on a slow HSM that is after every signature.
                    if !replies.is_empty() {
                        let oldest = *oldest_reply.get_or_insert_with(Instant::now);
                        if oldest.elapsed() + took >= REPLY_FLUSH_AFTER {
                            send_replies(&mut replies);
                            oldest_reply = None;
                        }
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

    fn work(&mut self, work: &Work) -> Result<Vec<u8>, HsmError> {
        match work {
            Work::Sign {
                key,
                algorithm,
                message,
            } => self.sign(key, *algorithm, message),
            Work::Random { len } => self.slot.run(|session, _| {
                let mut bytes = vec![0u8; *len];
                session.generate_random_slice(&mut bytes)?;
                Ok(bytes)
            }),
        }
    }

    fn sign(
        &mut self,
        key: &HsmKey,
        algorithm: SignatureAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let handles = &mut self.handles;
        let handles_generation = &mut self.handles_generation;
        self.slot.run(|session, generation| {
            // Handles belong to a session's lifetime on some modules: forget them with it.
            if *handles_generation != generation {
                handles.clear();
                *handles_generation = generation;
            }
            let handle = match handles.get(key.id()) {
                Some(handle) => *handle,
                None => {
                    let handle = keys::private_handle(session, key)?;
                    handles.insert(key.id().to_vec(), handle);
                    handle
                }
            };
            let result = keys::sign(session, handle, algorithm, message);
            if result.as_ref().is_err_and(HsmError::is_session_fault) {
                handles.clear();
            }
            result
        })
    }
}
