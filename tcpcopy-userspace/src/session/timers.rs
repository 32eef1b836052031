//! A session's timers: one table keyed by what each timer is for, instead
//! of a deadline field per purpose. Times are milliseconds of the engine's
//! clock.

/// What a session may be waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Housekeeping: the handshake or idle timeout, the gap timeout, the
    /// end of a linger. Always armed.
    Gc,
    /// Response data came: look again after a fraction of the RTT (ack it,
    /// or, when none came for a whole interval, release the next request).
    ResponseTick,
    /// Response data is unacknowledged: an ACK goes at this time unless a
    /// request carries it first (delayed ACK).
    AckOwed,
    /// Retransmission of unacknowledged data or FIN.
    Retransmit,
    /// A new target connection may open (after the old one's reset).
    Reconnect,
    /// A held request goes anyway if the target has said nothing.
    ResponseWait,
    /// A held close is looked at again.
    CloseHold,
    /// A hole in the captured stream is looked at again.
    GapSkip,
    /// The SYN goes again while the handshake is pending.
    SynRetransmit,
    /// Sent data is unanswered: if the target stays silent until then, it
    /// has answered all it acknowledged.
    AnswerQuiet,
}

const TIMERS: usize = 10;

impl Timer {
    fn slot(self) -> usize {
        self as usize
    }
}

/// "Not armed" in the table (a deadline nothing reaches).
const UNARMED: u64 = u64::MAX;

/// When each of a session's timers fires, if it is armed.
#[derive(Clone, Debug)]
pub struct TimerTable {
    /// Deadlines by [`Timer`]; `UNARMED` when off (half the size of
    /// `Option<u64>`, and every session has a table).
    at: [u64; TIMERS],
}

impl TimerTable {
    /// A table with only the housekeeping timer armed.
    pub fn new(gc_at: u64) -> TimerTable {
        let mut t = TimerTable {
            at: [UNARMED; TIMERS],
        };
        t.set(Timer::Gc, gc_at);
        t
    }
    pub fn get(&self, timer: Timer) -> Option<u64> {
        Some(self.at[timer.slot()]).filter(|&t| t != UNARMED)
    }
    pub fn is_armed(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }
    pub fn set(&mut self, timer: Timer, at: u64) {
        self.at[timer.slot()] = at;
    }
    /// Arm the timer unless it already is (the earlier deadline stands).
    pub fn set_if_unarmed(&mut self, timer: Timer, at: u64) {
        if !self.is_armed(timer) {
            self.set(timer, at);
        }
    }
    pub fn stop(&mut self, timer: Timer) {
        self.at[timer.slot()] = UNARMED;
    }
    /// Has the timer come due by `now`?
    pub fn is_due(&self, timer: Timer, now: u64) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }
    /// Disarm the timer if it has come due by `now`, and say whether it had.
    pub fn take_due(&mut self, timer: Timer, now: u64) -> bool {
        let due = self.is_due(timer, now);
        if due {
            self.stop(timer);
        }
        due
    }
    /// The earliest armed deadline, leaving out `skip`.
    pub fn next(&self, skip: Option<Timer>) -> Option<u64> {
        let mut at = self.at;
        if let Some(s) = skip {
            at[s.slot()] = UNARMED;
        }
        let min = at.into_iter().min().unwrap_or(UNARMED);
        (min != UNARMED).then_some(min)
    }
    /// Disarm everything but the housekeeping timer.
    pub fn stop_all_but_gc(&mut self) {
        for (i, t) in self.at.iter_mut().enumerate() {
            if i != Timer::Gc.slot() {
                *t = UNARMED;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Timer, TimerTable};

    #[test]
    fn the_earliest_armed_timer_is_next_and_fires_once() {
        let mut t = TimerTable::new(1000);
        t.set(Timer::Retransmit, 300);
        t.set_if_unarmed(Timer::AckOwed, 500);
        t.set_if_unarmed(Timer::AckOwed, 700);
        assert_eq!(t.get(Timer::AckOwed), Some(500));
        assert_eq!(t.next(None), Some(300));
        assert_eq!(t.next(Some(Timer::Retransmit)), Some(500));
        assert!(!t.take_due(Timer::Retransmit, 299));
        assert!(t.take_due(Timer::Retransmit, 300));
        assert!(!t.take_due(Timer::Retransmit, 300));
        t.stop_all_but_gc();
        assert_eq!(t.next(None), Some(1000));
    }
}
