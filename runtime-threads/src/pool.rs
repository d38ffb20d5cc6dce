//! A fixed pool of worker threads taking jobs from one queue.
//!
//! Keeps true (checked by the loom models in `loom_tests.rs`):
//! - every job accepted by `submit` runs exactly once, on one worker, even
//!   if the pool is closed meanwhile: closing refuses new jobs but lets the
//!   workers run everything already queued before they exit;
//! - an idle worker sleeps on the condition variable and is woken for each
//!   job; no worker spins;
//! - `join` returns only after every worker has exited, so nothing runs a
//!   job after it.
//!
//! The queue itself is not bounded here: the core caps how many effects
//! are in flight (`Limits::effects_in_flight_max`), which bounds it.

use crate::sync::{Arc, Condvar, Mutex, lock, thread, wait};
use std::collections::VecDeque;
use std::io;

/// Worker threads running a handler over submitted jobs.
pub(crate) struct Pool<J> {
    queue: Arc<Queue<J>>,
    workers: Vec<thread::JoinHandle<()>>,
}

struct Queue<J> {
    state: Mutex<State<J>>,
    /// Signalled for every new job and once, to all, at close.
    ready: Condvar,
}

struct State<J> {
    jobs: VecDeque<J>,
    closed: bool,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` workers (at least one), each running `handler` on
    /// the jobs it takes. Threads are named `<name>-<n>`.
    pub(crate) fn start<F>(threads: usize, name: &str, handler: F) -> io::Result<Pool<J>>
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let handler = Arc::new(handler);
        let mut pool = Pool {
            queue,
            workers: Vec::with_capacity(threads.max(1)),
        };
        for n in 0..threads.max(1) {
            let queue = pool.queue.clone();
            let handler = handler.clone();
            let spawned = thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || work(&queue, &*handler));
            // On failure, dropping `pool` stops the workers already started.
            pool.workers.push(spawned?);
        }
        Ok(pool)
    }

    /// Queues `job` for a worker; gives it back if the pool is closed.
    pub(crate) fn submit(&self, job: J) -> Result<(), J> {
        {
            let mut state = lock(&self.queue.state);
            if state.closed {
                return Err(job);
            }
            state.jobs.push_back(job);
        }
        self.queue.ready.notify_one();
        Ok(())
    }
}

impl<J> Pool<J> {
    /// Refuses new jobs; workers exit once the queue is empty.
    pub(crate) fn close(&self) {
        lock(&self.queue.state).closed = true;
        self.queue.ready.notify_all();
    }

    /// Closes the pool and waits for every worker to exit.
    pub(crate) fn join(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        self.close();
        for worker in self.workers.drain(..) {
            // A worker only ends by returning from `work`; a panic in the
            // handler already ended that worker and has nothing to report
            // here that the handler's caller did not see.
            let _ = worker.join();
        }
    }
}

impl<J> Drop for Pool<J> {
    /// A pool dropped without `join` (an unwinding event loop) still stops
    /// its workers after they finish what was queued.
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// A worker's life: take a job, run it, until closed and empty.
fn work<J, F: Fn(J)>(queue: &Queue<J>, handler: &F) {
    loop {
        let job = {
            let mut state = lock(&queue.state);
            loop {
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                if state.closed {
                    return;
                }
                state = wait(&queue.ready, state);
            }
        };
        handler(job);
    }
}
