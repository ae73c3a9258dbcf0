//! Giving way to the other connections: a yield that puts the task at the back of the queue.
//!
//! `tokio::task::yield_now` defers its wake-up until the worker next polls the I/O driver,
//! and then wakes the deferred tasks last-in-first-out through the worker's LIFO slot: the
//! task that yielded first in one round runs first in the next, and so it yields first again.
//! On a busy worker (the driver is polled every `event_interval` ticks, before the run queue
//! has gone round) that task is served every time the deferred tasks are woken while the
//! others wait their turn in the queue: one pipelined connection got 2–5× the median
//! connection's throughput, its acks 4 ms against 200 ms for the others.
//!
//! A task that wakes itself while it is being polled is rescheduled as a yield instead: at
//! the back of the worker's run queue, behind every connection already waiting. That is the
//! round robin `TURN_BYTES` is meant to give.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Return `Pending` once, having woken this task, so it runs again after the tasks queued
/// before it.
pub(crate) fn give_way() -> GiveWay {
    GiveWay { yielded: false }
}

/// See [`give_way`].
#[derive(Debug)]
#[must_use = "a future does nothing unless awaited"]
pub(crate) struct GiveWay {
    yielded: bool,
}

impl Future for GiveWay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        // Woken while running: the scheduler takes it as a yield (back of the queue), not
        // as a wake-up from elsewhere (the LIFO slot, first in line).
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Many tasks take turns on one worker; returns how many turns each had had when the
    /// first of them finished its `turns`.
    async fn turns_when_first_finishes(tasks: usize, turns: usize, fair: bool) -> Vec<usize> {
        let counts = Arc::new(Mutex::new(vec![0usize; tasks]));
        let first_done: Arc<Mutex<Option<Vec<usize>>>> = Arc::new(Mutex::new(None));
        // Spawned from a task on the worker, all of them before any runs (no await in between).
        let spawner = {
            let (counts, first_done) = (counts.clone(), first_done.clone());
            tokio::spawn(async move {
                (0..tasks)
                    .map(|index| {
                        let (counts, first_done) = (counts.clone(), first_done.clone());
                        tokio::spawn(take_turns(index, turns, fair, counts, first_done))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let handles = spawner.await.expect("spawner");
        for handle in handles {
            handle.await.expect("task");
        }
        let first = first_done.lock().expect("first lock").take();
        first.expect("some task finished")
    }

    async fn take_turns(
        index: usize,
        turns: usize,
        fair: bool,
        counts: Arc<Mutex<Vec<usize>>>,
        first_done: Arc<Mutex<Option<Vec<usize>>>>,
    ) {
        for _ in 0..turns {
            {
                let mut counts = counts.lock().expect("counts lock");
                counts[index] += 1;
                if counts[index] == turns {
                    let mut first = first_done.lock().expect("first lock");
                    first.get_or_insert_with(|| counts.clone());
                }
            }
            if fair {
                give_way().await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        // One worker, as a server pinned to one core has.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime")
    }

    #[test]
    fn every_task_gets_its_turn_in_round_robin() {
        // More tasks than the worker's event interval (61 ticks): the deferred-yield wake-ups
        // come before the queue has gone round, which is where yield_now favours one task.
        let counts = runtime().block_on(turns_when_first_finishes(200, 30, true));
        let fewest = counts.iter().min().copied().unwrap_or(0);
        assert!(
            fewest >= 29,
            "when the first task had its 30 turns, one had only {fewest}: {counts:?}"
        );
    }

    #[test]
    fn yield_now_favours_one_task_which_give_way_does_not() {
        // The reason give_way exists: if tokio's yield_now stops favouring a task, this says
        // so, and give_way can go.
        let counts = runtime().block_on(turns_when_first_finishes(200, 30, false));
        let fewest = counts.iter().min().copied().unwrap_or(0);
        assert!(
            fewest < 15,
            "yield_now served 200 tasks round robin (fewest turns {fewest} of 30)"
        );
    }
}
