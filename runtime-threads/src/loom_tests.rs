//! Loom models of the runtime's shared state: the inbox, the worker pool
//! and the shutdown flag, each exercised by two or three threads. Compiled
//! only under `--cfg guixd_loom`; `runtime-threads/loom.sh` runs them.
//!
//! Keeps true: the models drive the very types the server uses (through
//! the `sync` facade), and stand in only for the eventfd + epoll pair, with
//! [`ModelWake`]: a counter that `wake` increments, that `wait` blocks on
//! until it is positive (the epoll wait reporting the eventfd) and that
//! `reset` takes whole (the eventfd read). A lost wake-up therefore shows
//! as a consumer blocked forever, which loom reports as a deadlock.

use crate::inbox::Inbox;
use crate::pool::Pool;
use crate::shutdown::ShutdownFlag;
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering, lock, thread, wait};
use crate::wake::Wake;

/// The eventfd and the loop's epoll wait on it, as loom sees them.
struct ModelWake {
    count: Mutex<u64>,
    ready: Condvar,
    /// Every `wake` ever made, to check how many a protocol sends.
    total: Mutex<u64>,
}

impl ModelWake {
    fn new() -> ModelWake {
        ModelWake {
            count: Mutex::new(0),
            ready: Condvar::new(),
            total: Mutex::new(0),
        }
    }

    /// Blocks until a wake-up is pending, without taking it: the epoll
    /// wait reporting the eventfd.
    fn wait(&self) {
        let mut count = lock(&self.count);
        while *count == 0 {
            count = wait(&self.ready, count);
        }
    }

    fn total(&self) -> u64 {
        *lock(&self.total)
    }
}

impl Wake for ModelWake {
    fn wake(&self) {
        *lock(&self.total) += 1;
        *lock(&self.count) += 1;
        self.ready.notify_one();
    }

    fn reset(&self) {
        *lock(&self.count) = 0;
    }
}

#[test]
fn loom_inbox_loses_neither_completions_nor_wakeups() {
    loom::model(|| {
        let waker = Arc::new(ModelWake::new());
        let inbox = Arc::new(Inbox::new(waker.clone()));
        let producers: Vec<_> = [[1u32, 2], [3, 4]]
            .into_iter()
            .map(|items| {
                let inbox = inbox.clone();
                thread::spawn(move || {
                    for item in items {
                        inbox.push(item);
                    }
                })
            })
            .collect();
        // The event loop: wait, reset, drain, until everything arrived.
        let mut got = Vec::new();
        while got.len() < 4 {
            waker.wait();
            inbox.take_all(&mut got);
        }
        for producer in producers {
            producer.join().unwrap();
        }
        // Each producer's items arrive in its order, and none twice.
        let first: Vec<u32> = got.iter().copied().filter(|&i| i <= 2).collect();
        let second: Vec<u32> = got.iter().copied().filter(|&i| i > 2).collect();
        assert_eq!(first, [1, 2]);
        assert_eq!(second, [3, 4]);
        // Nothing is left behind, and at most one wake-up per push.
        let mut rest = Vec::new();
        inbox.take_all(&mut rest);
        assert!(rest.is_empty());
        assert!(waker.total() <= 4);
    });
}

#[test]
fn loom_inbox_wakes_a_consumer_that_drained_between_pushes() {
    loom::model(|| {
        let waker = Arc::new(ModelWake::new());
        let inbox = Arc::new(Inbox::new(waker.clone()));
        let producer = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                inbox.push(1u32);
                inbox.push(2);
            })
        };
        // The consumer may drain before, between or after the pushes; it
        // must always be woken for whatever it has not seen.
        let mut got = Vec::new();
        inbox.take_all(&mut got);
        while got.len() < 2 {
            waker.wait();
            inbox.take_all(&mut got);
        }
        producer.join().unwrap();
        assert_eq!(got, [1, 2]);
    });
}

#[test]
fn loom_pool_runs_every_job_exactly_once() {
    loom::model(|| {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let pool = {
            let runs = runs.clone();
            Pool::start(2, "loom-worker", move |job: u32| lock(&runs).push(job)).unwrap()
        };
        pool.submit(1).unwrap();
        pool.submit(2).unwrap();
        pool.join();
        let mut runs = lock(&runs).clone();
        runs.sort_unstable();
        assert_eq!(runs, [1, 2]);
    });
}

#[test]
fn loom_pool_close_races_with_submit() {
    loom::model(|| {
        let ran = Arc::new(AtomicBool::new(false));
        let pool = {
            let ran = ran.clone();
            Arc::new(
                Pool::start(1, "loom-worker", move |()| {
                    assert!(!ran.swap(true, Ordering::SeqCst), "a job ran twice");
                })
                .unwrap(),
            )
        };
        let submitter = {
            let pool = pool.clone();
            thread::spawn(move || pool.submit(()).is_ok())
        };
        pool.close();
        let accepted = submitter.join().unwrap();
        // The last handle: dropping it joins the worker, which first runs
        // whatever was accepted.
        drop(pool);
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
    });
}

#[test]
fn loom_pool_lets_a_running_job_finish_before_workers_exit() {
    loom::model(|| {
        let finished = Arc::new(AtomicBool::new(false));
        let pool = {
            let finished = finished.clone();
            Pool::start(1, "loom-worker", move |()| {
                thread::yield_now();
                finished.store(true, Ordering::SeqCst);
            })
            .unwrap()
        };
        pool.submit(()).unwrap();
        // Closing while the job may be queued or running.
        pool.close();
        assert!(pool.submit(()).is_err(), "a closed pool takes no job");
        pool.join();
        assert!(finished.load(Ordering::SeqCst));
    });
}

#[test]
fn loom_shutdown_is_seen_after_one_wakeup() {
    loom::model(|| {
        let waker = Arc::new(ModelWake::new());
        let flag = Arc::new(ShutdownFlag::new(waker.clone()));
        let askers: Vec<_> = (0..2)
            .map(|_| {
                let flag = flag.clone();
                thread::spawn(move || flag.request())
            })
            .collect();
        // The loop: look at the flag, sleep until woken, take the wake-up,
        // look again.
        while !flag.is_requested() {
            waker.wait();
            waker.reset();
        }
        for asker in askers {
            asker.join().unwrap();
        }
        assert_eq!(waker.total(), 1, "two requests make one wake-up");
    });
}

#[test]
fn loom_completion_and_shutdown_together() {
    loom::model(|| {
        let waker = Arc::new(ModelWake::new());
        let inbox = Arc::new(Inbox::new(waker.clone()));
        let flag = Arc::new(ShutdownFlag::new(waker.clone()));
        let worker = {
            let inbox = inbox.clone();
            thread::spawn(move || inbox.push(7u32))
        };
        let asker = {
            let flag = flag.clone();
            thread::spawn(move || flag.request())
        };
        // The loop finishes once it saw both the shutdown and the one
        // completion in flight (the core's `is_finished`).
        let mut got = Vec::new();
        while !(flag.is_requested() && got.len() == 1) {
            waker.wait();
            inbox.take_all(&mut got);
        }
        worker.join().unwrap();
        asker.join().unwrap();
        assert_eq!(got, [7]);
    });
}
