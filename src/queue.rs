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

    /// Waits for at least one job and moves up to `max` of them, oldest first, into `into`.
    /// Returns false, with nothing moved, once the queue is closed and empty: the worker ends.
    pub fn take(&self, max: usize, into: &mut Vec<T>) -> bool {
        let mut state = self
            .ready
            .wait_while(self.lock(), |s| s.jobs.is_empty() && !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        let count = state.jobs.len().min(max.max(1));
        into.extend(state.jobs.drain(..count));
        let more = !state.jobs.is_empty();
        drop(state);
        if more {
            // Jobs are left: another idle worker may take them.
            self.ready.notify_one();
        }
        count > 0
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
    fn jobs_are_taken_in_order_up_to_the_batch_and_refused_when_full_or_closed() {
        let queue = WorkQueue::new(3);
        for job in 1..=3 {
            queue.push(job).unwrap();
        }
        assert_eq!(queue.push(4), Err(Refused::Full(4)));
        let mut taken = Vec::new();
        assert!(queue.take(2, &mut taken));
        assert_eq!(taken, [1, 2]);
        queue.close();
        assert_eq!(queue.push(5), Err(Refused::Closed(5)));
        // What was queued before the close is still taken, then the workers end.
        assert!(queue.take(2, &mut taken));
        assert_eq!(taken, [1, 2, 3]);
        assert!(!queue.take(2, &mut taken));
    }

    #[test]
    fn waiting_workers_get_every_job_and_end_when_closed() {
        let queue = Arc::new(WorkQueue::new(usize::MAX));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut batch = Vec::new();
                    while queue.take(4, &mut batch) {
                        done.append(&mut batch);
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
