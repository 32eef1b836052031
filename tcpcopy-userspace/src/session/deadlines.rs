//! The engine's queue of session deadlines: when each session next needs
//! `on_timeout`. A session that gets an earlier deadline is pushed again
//! and its old entry is left to be skipped when it comes up (the engine
//! keeps each session's current deadline beside it), so scheduling is one
//! push.
//!
//! Deadlines within [`SLOTS`] ms go on a timing wheel of 1 ms slots:
//! pushing is an append to a slot, and the next due slot is found in a
//! bitmap of the occupied ones. Almost every deadline a session sets is
//! that near (delayed ACKs, response ticks, retransmissions), while the
//! binary heap they used to go on cost a sift through every stale entry's
//! level per pop (a tenth of the engine's instructions on keep-alive).
//! Farther ones (idle checks, the response wait) wait in a heap and move
//! onto the wheel as it turns. Entries come out by their slot's time, and
//! in the order pushed within a slot.

use super::engine::SessionKey;
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

/// Slots of the wheel, 1 ms each.
const SLOTS: u64 = 1024;
const WORDS: usize = SLOTS as usize / 64;

/// A deadline beyond the wheel, ordered by time then push order.
#[derive(Clone, Copy, Debug)]
struct Far {
    at: u64,
    order: u64,
    key: SessionKey,
}

impl PartialEq for Far {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Far {}
impl PartialOrd for Far {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Far {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

pub struct Deadlines {
    /// Slot `t % SLOTS` holds the entries placed at time `t`, for
    /// `cursor ≤ t < cursor + SLOTS`: (deadline, session). A deadline
    /// already past when pushed is placed at the cursor.
    slots: Vec<VecDeque<(u64, SessionKey)>>,
    /// Bit `t % SLOTS` set: that slot holds entries.
    occupied: [u64; WORDS],
    /// Entries on the wheel.
    near: usize,
    /// The wheel's time: no entry is placed before it, and it never runs
    /// ahead of the `now` the engine last handled.
    cursor: u64,
    /// Deadlines at or after `cursor + SLOTS`.
    far: BinaryHeap<Reverse<Far>>,
    pushed: u64,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            slots: (0..SLOTS).map(|_| VecDeque::new()).collect(),
            occupied: [0; WORDS],
            near: 0,
            cursor: 0,
            far: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl Deadlines {
    pub fn push(&mut self, at: u64, key: SessionKey) {
        let placed = at.max(self.cursor);
        if placed < self.cursor + SLOTS {
            self.place(placed, at, key);
        } else {
            self.pushed += 1;
            self.far.push(Reverse(Far {
                at,
                order: self.pushed,
                key,
            }));
        }
    }

    fn place(&mut self, placed: u64, at: u64, key: SessionKey) {
        let slot = (placed % SLOTS) as usize;
        self.slots[slot].push_back((at, key));
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.near += 1;
    }

    /// When the earliest entry is due (at or before the last `now` if it
    /// is overdue).
    pub fn next(&self) -> Option<u64> {
        if self.near > 0 {
            return Some(self.first_occupied());
        }
        self.far.peek().map(|Reverse(f)| f.at)
    }

    /// The time of the first occupied slot (the wheel holds entries).
    fn first_occupied(&self) -> u64 {
        let start = (self.cursor % SLOTS) as usize;
        // From the cursor's slot to the end of the wheel, then around.
        for pass in 0..2 {
            let (from, to) = if pass == 0 {
                (start, SLOTS as usize)
            } else {
                (0, start)
            };
            let mut i = from;
            while i < to {
                let word = self.occupied[i / 64] >> (i % 64);
                if word != 0 {
                    let slot = i + word.trailing_zeros() as usize;
                    if slot < to {
                        let ahead = (slot + SLOTS as usize - start) as u64 % SLOTS;
                        return self.cursor + ahead;
                    }
                    break;
                }
                i = (i / 64 + 1) * 64;
            }
        }
        unreachable!("the wheel holds {} entries", self.near)
    }

    /// The earliest entry due at `now`, taken out: its deadline and
    /// session.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, SessionKey)> {
        loop {
            if self.near == 0 {
                let far = self.far.peek().map(|Reverse(f)| f.at);
                match far {
                    Some(at) if at <= now => self.turn_to(at),
                    _ => {
                        self.turn_to(now);
                        return None;
                    }
                }
                continue;
            }
            let t = self.first_occupied();
            if t > now {
                self.turn_to(now);
                return None;
            }
            self.turn_to(t);
            let slot = (t % SLOTS) as usize;
            let q = &mut self.slots[slot];
            let entry = q.pop_front().expect("an occupied slot");
            if q.is_empty() {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
                if q.capacity() > 1024 {
                    q.shrink_to(64); // a burst's memory back (`-m` counts it)
                }
            }
            self.near -= 1;
            return Some(entry);
        }
    }

    /// Turn the wheel to time `t` (never back) and move the far deadlines
    /// it now reaches onto it.
    fn turn_to(&mut self, t: u64) {
        if t <= self.cursor {
            return;
        }
        self.cursor = t;
        while let Some(Reverse(f)) = self.far.peek() {
            if f.at >= self.cursor + SLOTS {
                break;
            }
            let Reverse(f) = self.far.pop().expect("peeked");
            self.place(f.at.max(self.cursor), f.at, f.key);
        }
    }

    /// Give a burst's memory back once it is over (`-m` counts it).
    pub fn shrink(&mut self) {
        let len = self.far.len();
        if self.far.capacity() > 4 * len + 4096 {
            self.far.shrink_to(2 * len);
        }
    }

    pub fn clear(&mut self) {
        for q in &mut self.slots {
            q.clear();
        }
        self.occupied = [0; WORDS];
        self.near = 0;
        self.far.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, SessionKey, SLOTS};

    fn key(port: u16) -> SessionKey {
        SessionKey {
            client: "10.0.0.1".parse().unwrap(),
            port,
        }
    }

    fn drain(d: &mut Deadlines, now: u64) -> Vec<(u64, u16)> {
        std::iter::from_fn(|| d.pop_due(now))
            .map(|(t, k)| (t, k.port))
            .collect()
    }

    #[test]
    fn due_deadlines_come_out_by_time_then_in_the_order_pushed() {
        let mut d = Deadlines::default();
        d.push(30, key(1));
        d.push(10, key(3));
        d.push(10, key(2));
        d.push(20, key(4));
        assert_eq!(d.next(), Some(10));
        assert_eq!(d.pop_due(5), None);
        assert_eq!(drain(&mut d, 20), [(10, 3), (10, 2), (20, 4)]);
        assert_eq!(d.next(), Some(30));
        // Due now, pushed while the engine handles `now`: comes out at
        // the same `now`.
        d.push(20, key(5));
        d.push(3, key(6)); // overdue: placed at the wheel's time
        assert_eq!(d.next(), Some(20));
        assert_eq!(drain(&mut d, 20), [(20, 5), (3, 6)]);
    }

    #[test]
    fn far_deadlines_wait_beyond_the_wheel_and_come_in_order() {
        let mut d = Deadlines::default();
        d.push(5_000, key(1));
        d.push(SLOTS + 7, key(2));
        d.push(700, key(3));
        d.push(5_000, key(4));
        assert_eq!(d.next(), Some(700));
        assert_eq!(drain(&mut d, 1_000), [(700, 3)]);
        assert_eq!(d.next(), Some(SLOTS + 7), "moved onto the wheel");
        // A deadline pushed now lands between far ones.
        d.push(2_000, key(5));
        assert_eq!(
            drain(&mut d, 10_000),
            [(SLOTS + 7, 2), (2_000, 5), (5_000, 1), (5_000, 4)]
        );
        assert_eq!(d.next(), None);
        // After a long idle, the wheel starts from the new time.
        d.push(10_010, key(6));
        d.push(9_000, key(7));
        assert_eq!(drain(&mut d, 10_010), [(9_000, 7), (10_010, 6)]);
    }

    #[test]
    fn every_deadline_comes_out_once_when_due_as_the_wheel_wraps() {
        // Deadlines near and far, pushed while time runs in uneven steps.
        let mut d = Deadlines::default();
        let mut x = 7u64;
        let mut now = 0;
        let mut pushed = Vec::new();
        let mut out = Vec::new();
        for i in 0..5_000u16 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let ahead = match x >> 60 {
                0..=9 => (x >> 20) % 64,
                10..=13 => (x >> 20) % 3_000,
                _ => (x >> 20) % 20_000,
            };
            pushed.push((now + ahead, i));
            d.push(now + ahead, key(i));
            now += (x >> 40) % 7;
            for (t, port) in drain(&mut d, now) {
                assert!(t <= now, "{port}, due at {t}, came out at {now}");
                out.push((t, port));
            }
            if let Some(next) = d.next() {
                assert!(next > now, "due at {next}, not taken at {now}");
            }
        }
        assert!(now > 4 * SLOTS, "the wheel went round");
        out.extend(drain(&mut d, now + 40_000));
        assert_eq!(d.next(), None);
        pushed.sort();
        out.sort();
        assert_eq!(out, pushed, "each once");
    }
}
