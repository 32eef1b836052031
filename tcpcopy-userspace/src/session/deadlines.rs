//! The engine's queue of session deadlines: when each session next needs
//! `on_timeout`. A session that gets an earlier deadline is pushed again
//! and its old entry is left to be skipped when it comes up (the engine
//! keeps each session's current deadline beside it), so scheduling is one
//! push. Entries order by time, then by when they were pushed: two
//! integer comparisons, where comparing session keys (addresses of either
//! family) was the heap's largest cost, and sessions due at the same
//! millisecond run in the order they were scheduled.

use super::engine::SessionKey;
use std::{cmp::Reverse, collections::BinaryHeap};

#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: u64,
    /// Pushed as the `order`-th entry.
    order: u64,
    key: SessionKey,
}

impl PartialEq for Deadline {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Deadline {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<Deadline>>,
    pushed: u64,
}

impl Deadlines {
    pub fn push(&mut self, at: u64, key: SessionKey) {
        self.pushed += 1;
        self.heap.push(Reverse(Deadline {
            at,
            order: self.pushed,
            key,
        }));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }

    /// The earliest entry due at `now`, taken out: its time and session.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, SessionKey)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(d)| (d.at, d.key))
    }

    /// Give a burst's memory back once it is over (`-m` counts it).
    pub fn shrink(&mut self) {
        let len = self.heap.len();
        if self.heap.capacity() > 4 * len + 4096 {
            self.heap.shrink_to(2 * len);
        }
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, SessionKey};

    fn key(port: u16) -> SessionKey {
        SessionKey {
            client: "10.0.0.1".parse().unwrap(),
            port,
        }
    }

    #[test]
    fn due_deadlines_come_out_by_time_then_in_the_order_scheduled() {
        let mut d = Deadlines::default();
        d.push(30, key(1));
        d.push(10, key(3));
        d.push(10, key(2));
        d.push(20, key(4));
        assert_eq!(d.next(), Some(10));
        assert_eq!(d.pop_due(5), None);
        assert_eq!(d.pop_due(20), Some((10, key(3))));
        assert_eq!(d.pop_due(20), Some((10, key(2))));
        assert_eq!(d.pop_due(20), Some((20, key(4))));
        assert_eq!(d.pop_due(20), None);
        assert_eq!(d.next(), Some(30));
    }
}
