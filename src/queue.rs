//! A queue of jobs for a fixed set of worker threads that wakes one idle worker per job.
//!
//! The usual `Mutex<mpsc::Receiver>` shared by workers costs two wake-ups per job at low
//! load: the worker blocked in `recv` under the lock wakes for the job, and releasing the lock
//! wakes the next worker, which only goes back to sleep in `recv`. On a virtual machine a
//! wake-up costs tens of microseconds of CPU (docs/performance.md), a fair share of what a
//! certificate costs; here workers wait on a condition variable and a job wakes one.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Jobs waiting for a worker, at most `capacity` of them.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

struct State<T> {
    jobs: VecDeque<T>,
    closed: bool,
}

/// Why [`WorkQueue::push`] gave a job back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// `capacity` jobs are waiting already.
    Full(T),
    /// The queue is closed: no worker will take the job.
    Closed(T),
}

impl<T> WorkQueue<T> {
    /// An open queue holding up to `capacity` waiting jobs.
    pub fn new(capacity: usize) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked while holding the lock left the queue itself consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` and wakes one waiting worker, or gives the job back.
    pub fn push(&self, job: T) -> Result<(), Refused<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(job));
        }
        if state.jobs.len() >= self.capacity {
            return Err(Refused::Full(job));
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for a job and takes the oldest. Returns `None` once the queue is closed and
    /// empty: the worker ends.
    pub fn take(&self) -> Option<T> {
        let mut state = self
            .ready
            .wait_while(self.lock(), |s| s.jobs.is_empty() && !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        let job = state.jobs.pop_front();
        let more = !state.jobs.is_empty();
        drop(state);
        if more {
            // Jobs are left: another idle worker may take them.
            self.ready.notify_one();
        }
        job
    }

    /// The oldest waiting job, if there is one, without waiting: for a worker that has just
    /// finished a job and goes on without sleeping.
    pub fn try_take(&self) -> Option<T> {
        self.lock().jobs.pop_front()
    }

    /// Closes the queue: jobs already queued are still taken, new ones refused, and every
    /// worker ends once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_are_taken_in_order_and_refused_when_full_or_closed() {
        let queue = WorkQueue::new(3);
        for job in 1..=3 {
            queue.push(job).unwrap();
        }
        assert_eq!(queue.push(4), Err(Refused::Full(4)));
        assert_eq!(queue.take(), Some(1));
        assert_eq!(queue.try_take(), Some(2));
        queue.close();
        assert_eq!(queue.push(5), Err(Refused::Closed(5)));
        // What was queued before the close is still taken, then the workers end.
        assert_eq!(queue.take(), Some(3));
        assert_eq!(queue.try_take(), None);
        assert_eq!(queue.take(), None);
    }

    #[test]
    fn waiting_workers_get_every_job_and_end_when_closed() {
        let queue = Arc::new(WorkQueue::new(usize::MAX));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    while let Some(job) = queue.take() {
                        done.push(job);
                    }
                    done
                })
            })
            .collect();
        for job in 0..1000 {
            queue.push(job).unwrap();
        }
        queue.close();
        let mut all: Vec<i32> = workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
