//! Threads for the CPU-heavy steps of a signing request: the CSR's proof of possession and
//! the check of the HSM's signature, two signature verifications that take about a quarter
//! of the service's CPU time under load (docs/performance.md). Run on the async workers
//! under load, each would hold up every other connection's reads and writes behind it; on
//! these threads the async workers stay free for I/O and quick answers (a 503 when shedding
//! load, a health probe), and the kernel shares the cores between the two kinds of work.
//!
//! When the service is lightly loaded (the caller says so: no more signing requests in
//! progress than there are threads here) and no other verification is under way, a job runs
//! on the calling async worker instead: a hand-off to a thread and back costs two wake-ups,
//! more CPU than the verification itself on a virtual machine, and holds up no one then.
//! Under load every job goes to the threads, as the async workers must answer the rest (at
//! 256 connections, running the jobs that found the threads idle on the async workers made
//! the shed requests' p99 about 20 % worse).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use crate::queue::WorkQueue;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs in order.
pub(crate) struct CpuPool {
    queue: Arc<WorkQueue<Job>>,
    threads: usize,
    /// Jobs running or waiting, here or on a calling worker.
    active: AtomicUsize,
}

/// A job that ended without an answer: it panicked (the panic is logged by the panic hook).
#[derive(Debug, thiserror::Error)]
#[error("a verification job ended without an answer")]
pub(crate) struct JobLost;

/// One job counted in [`CpuPool::active`] until dropped.
struct Active<'p>(&'p AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CpuPool {
    /// Starts `threads` threads (at least one); they end when the pool is dropped.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let queue = Arc::new(WorkQueue::<Job>::new(usize::MAX));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("verify-{index}"))
                .spawn(move || {
                    while let Some(job) = queue.take() {
                        // A panicking job loses its answer, not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(CpuPool {
            queue,
            threads: threads.max(1),
            active: AtomicUsize::new(0),
        })
    }

    /// How many threads the pool has.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` and returns its result: on the calling worker if `light_load` and no other
    /// job is under way, else on one of the pool's threads.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        light_load: bool,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobLost> {
        let idle = self.active.fetch_add(1, Ordering::Relaxed) == 0;
        let _active = Active(&self.active);
        if light_load && idle {
            return std::panic::catch_unwind(AssertUnwindSafe(job)).map_err(|_| JobLost);
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .push(Box::new(move || {
                let _ = reply.send(job());
            }))
            .map_err(|_| JobLost)?;
        answer.await.map_err(|_| JobLost)
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_answer_and_a_panicking_job_loses_only_its_own_answer() {
        let pool = CpuPool::start(1).unwrap();
        for light_load in [false, true] {
            assert_eq!(pool.run(light_load, || 6 * 7).await.unwrap(), 42);
            let lost = pool
                .run(light_load, || -> u32 { panic!("a job panics") })
                .await;
            assert!(lost.is_err());
            // The thread (or the caller) survived the panic and takes the next job.
            assert_eq!(
                pool.run(light_load, || "still here").await.unwrap(),
                "still here"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_job_at_light_load_runs_on_the_caller_and_the_others_on_the_threads() {
        let pool = Arc::new(CpuPool::start(2).unwrap());
        let thread_name = || std::thread::current().name().map(str::to_owned);
        let caller = thread_name();
        assert_eq!(pool.run(true, thread_name).await.unwrap(), caller);
        let name = pool.run(false, thread_name).await.unwrap().unwrap();
        assert!(name.starts_with("verify-"), "under load: {name}");
        // While one job holds the pool busy, the next goes to a verify thread.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, is_started) = oneshot::channel();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(true, move || {
                    let _ = started.send(());
                    released.recv().unwrap();
                })
                .await
            }
        });
        is_started.await.unwrap();
        let name = pool.run(true, thread_name).await.unwrap().unwrap();
        assert!(name.starts_with("verify-"), "another job under way: {name}");
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
    }
}
