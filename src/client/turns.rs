//! [`Turns`]: how the engine paces the producer in ping-pong (`--interval 0`): the producer
//! makes a value only when given a turn, and the engine gives one when the previous value
//! is acknowledged, so one reading at most is in flight and the next follows its ack at once.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// A shared count of turns: the engine [`give`](Turns::give)s, the producer
/// [`wait`](Turns::wait)s. A turn given before the producer waits is kept, not lost.
#[derive(Debug, Clone)]
pub struct Turns(Arc<Semaphore>);

impl Default for Turns {
    fn default() -> Self {
        Self::new()
    }
}

impl Turns {
    /// No turn given yet.
    pub fn new() -> Self {
        Turns(Arc::new(Semaphore::new(0)))
    }

    /// Let the producer make one more value.
    pub fn give(&self) {
        self.0.add_permits(1);
    }

    /// Wait for a turn and use it up. Cancel-safe: a cancelled wait takes no turn.
    pub async fn wait(&self) {
        match self.0.acquire().await {
            Ok(permit) => permit.forget(),
            // Never closed: the semaphore lives as long as either side holds it.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_turn_is_used_once() {
        let turns = Turns::new();
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(1), turns.wait());
        assert!(waiting.await.is_err(), "no turn given yet");
        turns.give();
        turns.wait().await;
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), turns.wait());
        assert!(again.await.is_err(), "the one turn was used");
    }
}
