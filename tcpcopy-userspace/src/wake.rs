//! Waking for less: a worker (or intercept) that wakes for one packet or
//! record at a time spends more CPU going to sleep and waking up than on
//! the work. After a wake that follows a small batch, it pauses a moment
//! before taking the work, so that one wake serves what arrives meanwhile
//! (a batch of some tens, not one). The pause only comes under load (the
//! previous turn found work, and little): an idle program takes its first
//! packet at once, a busy one never pauses.

use std::time::Duration;

/// `--wake-pause`'s default, microseconds: far below a replayed round
/// trip through intercept, far above what a wake costs.
pub const DEFAULT_PAUSE_US: u64 = 200;

/// A turn that found fewer items than this was a small batch.
const SMALL_BATCH: usize = 16;

/// How the program paces its wakes.
#[derive(Clone, Copy, Debug)]
pub struct Coalesce {
    /// The pause (zero: never pause).
    pause: Duration,
    /// Items the last turn took.
    last_batch: usize,
}

impl Coalesce {
    pub fn new(pause: Duration) -> Coalesce {
        Coalesce {
            pause,
            last_batch: 0,
        }
    }

    /// The last turn took `items`.
    pub fn took(&mut self, items: usize) {
        self.last_batch = items;
    }

    /// Should the program pause before taking what woke it?
    pub fn should_pause(&self) -> bool {
        !self.pause.is_zero() && self.last_batch > 0 && self.last_batch < SMALL_BATCH
    }

    /// Just woken by an event: pause if the last batch was small.
    pub fn after_wake(&self) {
        if self.should_pause() {
            std::thread::sleep(self.pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Coalesce;
    use std::time::Duration;

    #[test]
    fn pauses_only_after_a_small_batch_under_load() {
        let mut c = Coalesce::new(Duration::from_micros(100));
        assert!(!c.should_pause(), "idle: the first packet goes at once");
        c.took(3);
        assert!(c.should_pause());
        c.took(64);
        assert!(!c.should_pause(), "busy: never pauses");
        c.took(0);
        assert!(!c.should_pause());
        let mut off = Coalesce::new(Duration::ZERO);
        off.took(1);
        assert!(!off.should_pause());
    }
}
