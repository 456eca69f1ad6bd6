//! Threads for the CPU-heavy steps of a signing request: the CSR's proof of possession and
//! the check of the HSM's signature, two signature verifications that take about a quarter
//! of the service's CPU time (docs/performance.md). Run on the async workers, each would
//! hold up every other connection's reads and writes behind it; here the async workers stay
//! free for I/O and quick answers (a 503 when shedding load, a health probe), and the kernel
//! shares the cores between the two kinds of work.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs in order.
pub(crate) struct CpuPool {
    sender: mpsc::Sender<Job>,
}

/// A job that ended without an answer: it panicked (the panic is logged by the panic hook).
#[derive(Debug, thiserror::Error)]
#[error("a verification job ended without an answer")]
pub(crate) struct JobLost;

impl CpuPool {
    /// Starts `threads` threads (at least one); they end when the pool is dropped.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("verify-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking the next job.
                        let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = next else { return };
                        // A panicking job loses its answer, not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(CpuPool { sender })
    }

    /// Runs `job` on one of the pool's threads and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobLost> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Box::new(move || {
                let _ = reply.send(job());
            }))
            .map_err(|_| JobLost)?;
        answer.await.map_err(|_| JobLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_answer_and_a_panicking_job_loses_only_its_own_answer() {
        let pool = CpuPool::start(1).unwrap();
        assert_eq!(pool.run(|| 6 * 7).await.unwrap(), 42);
        let lost = pool.run(|| -> u32 { panic!("a job panics") }).await;
        assert!(lost.is_err());
        // The one thread survived the panic and takes the next job.
        assert_eq!(pool.run(|| "still here").await.unwrap(), "still here");
    }
}
