//! The target's side of a replayed connection: its sequence space (what it
//! sent, what we acknowledged), its window and timestamps, and loss
//! recovery of what we sent it (duplicate ACKs, NewReno, the RTO).

use crate::{proto::ResponseHeader, wire::SeqNumber};

/// What identifies a pure duplicate ACK: the same sequence, ack and window
/// as the record before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct AckSignature {
    seq: u32,
    ack: u32,
    window: u16,
}

impl AckSignature {
    fn of(h: &ResponseHeader) -> AckSignature {
        AckSignature {
            seq: h.seq,
            ack: h.ack,
            window: h.window,
        }
    }
}

#[derive(Debug)]
pub struct TargetSide {
    /// Next response byte expected.
    pub rcv_nxt: SeqNumber,
    /// What the last segment we sent acknowledged.
    pub acked_to: SeqNumber,
    /// The target's receive window, scaled.
    pub window: u64,
    wscale: u8,
    /// The target's last timestamp value (None: it does not use them).
    pub ts_recent: Option<u32>,
    /// The highest timestamp value the client sent.
    pub last_tsval: u32,
    last_header: AckSignature,
    /// When the target last sent anything.
    pub last_response: u64,
}

impl TargetSide {
    pub fn new(now: u64, client_tsval: u32) -> TargetSide {
        TargetSide {
            rcv_nxt: SeqNumber(0),
            acked_to: SeqNumber(0),
            window: 65535,
            wscale: 0,
            ts_recent: None,
            last_tsval: client_tsval,
            last_header: AckSignature::default(),
            last_response: now,
        }
    }

    /// The SYN-ACK: learn the target's ISN, window scale and timestamps.
    pub fn on_syn_ack(&mut self, now: u64, h: &ResponseHeader) {
        self.rcv_nxt = SeqNumber(h.seq).plus(1);
        self.wscale = h.wscale.unwrap_or(0);
        self.window = h.window as u64; // the SYN-ACK window is not scaled
        self.ts_recent = h.timestamps.map(|(v, _)| v);
        self.last_response = now;
        self.last_header = AckSignature::of(h);
    }

    /// Any record on the established connection: note the time and the
    /// timestamp to echo.
    pub fn heard(&mut self, now: u64, h: &ResponseHeader) {
        self.last_response = now;
        if let (Some((tsval, _)), Some(_)) = (h.timestamps, self.ts_recent) {
            self.ts_recent = Some(tsval);
        }
    }

    /// Is this record a repeat of the previous one (same seq, ack and
    /// window, no data)? Then note it as the latest and its window.
    pub fn is_duplicate_ack(&self, h: &ResponseHeader) -> bool {
        AckSignature::of(h) == self.last_header
    }

    /// Note the record's header and window once it has been looked at.
    pub fn note_header(&mut self, h: &ResponseHeader) {
        self.last_header = AckSignature::of(h);
        self.window = (h.window as u64) << self.wscale;
    }

    /// Response data up to `end` arrived: returns false if none of it is
    /// new (the target retransmitted: our ACK was lost).
    pub fn receive(&mut self, end: SeqNumber) -> bool {
        let new = end.is_after(self.rcv_nxt);
        if new {
            self.rcv_nxt = end;
        }
        new
    }

    /// How many response bytes have not been acknowledged yet.
    pub fn unacknowledged(&self) -> u32 {
        self.rcv_nxt.forward_from(self.acked_to)
    }

    /// A segment we sent acknowledged `ack`: true if that covers all the
    /// response received.
    pub fn acknowledged(&mut self, ack: SeqNumber) -> bool {
        self.acked_to = ack;
        ack == self.rcv_nxt
    }

    /// The client's timestamp value on a segment to forward: the highest
    /// one seen so far.
    pub fn client_tsval(&mut self, tsval: u32) -> u32 {
        if SeqNumber(tsval).is_after(SeqNumber(self.last_tsval)) {
            self.last_tsval = tsval;
        }
        self.last_tsval
    }
}

/// What loss recovery asks for after an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStep {
    Nothing,
    /// Resend the first unacknowledged segment (a partial ACK in
    /// recovery, or the third duplicate ACK: a fast retransmit).
    Retransmit,
    FastRetransmit,
}

/// Retransmission state: duplicate ACKs, NewReno recovery, the RTO.
#[derive(Debug)]
pub struct Recovery {
    dup_acks: u8,
    /// In recovery until the target acknowledges this offset (the send
    /// position when it began): each partial ACK resends the next hole at
    /// once (NewReno), so many losses cost an RTT each, not an RTO.
    recover: Option<u64>,
    /// The current retransmission timeout.
    pub rto: u64,
    retries: u32,
}

impl Recovery {
    pub fn new(rto: u64) -> Recovery {
        Recovery {
            dup_acks: 0,
            recover: None,
            rto,
            retries: 0,
        }
    }

    /// New data was acknowledged (up to `una`, with `nxt` sent).
    pub fn on_ack(&mut self, una: u64, nxt: u64, initial_rto: u64) -> RecoveryStep {
        self.dup_acks = 0;
        self.retries = 0;
        self.rto = initial_rto;
        match self.recover {
            Some(r) if una < r.min(nxt) => RecoveryStep::Retransmit,
            _ => {
                self.recover = None;
                RecoveryStep::Nothing
            }
        }
    }

    /// A duplicate ACK while data is outstanding (`nxt` sent).
    pub fn on_duplicate_ack(&mut self, nxt: u64) -> RecoveryStep {
        self.dup_acks = self.dup_acks.saturating_add(1);
        if self.dup_acks >= 3 && self.recover.is_none() {
            self.recover = Some(nxt);
            return RecoveryStep::FastRetransmit;
        }
        RecoveryStep::Nothing
    }

    /// The RTO fired with data outstanding: false once `max_retries` are
    /// spent (give up), else recovery starts and the timeout doubles.
    pub fn on_timeout(&mut self, nxt: u64, max_retries: u32) -> bool {
        self.retries += 1;
        if self.retries > max_retries {
            return false;
        }
        self.recover = Some(nxt);
        self.rto = (self.rto * 2).min(6_400);
        true
    }

    /// A new target connection starts out of recovery.
    pub fn reset(&mut self) {
        self.recover = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{Recovery, RecoveryStep, TargetSide};
    use crate::wire::SeqNumber;

    #[test]
    fn three_duplicate_acks_start_one_fast_retransmit_and_partial_acks_resend() {
        let mut r = Recovery::new(100);
        assert_eq!(r.on_duplicate_ack(50), RecoveryStep::Nothing);
        assert_eq!(r.on_duplicate_ack(50), RecoveryStep::Nothing);
        assert_eq!(r.on_duplicate_ack(50), RecoveryStep::FastRetransmit);
        assert_eq!(r.on_duplicate_ack(50), RecoveryStep::Nothing);
        assert_eq!(r.on_ack(20, 50, 100), RecoveryStep::Retransmit);
        assert_eq!(r.on_ack(50, 50, 100), RecoveryStep::Nothing);
        assert_eq!(r.on_ack(50, 60, 100), RecoveryStep::Nothing);
    }

    #[test]
    fn the_rto_doubles_up_to_its_cap_and_gives_up_after_the_retries() {
        let mut r = Recovery::new(100);
        assert!(r.on_timeout(10, 2));
        assert_eq!(r.rto, 200);
        assert!(r.on_timeout(10, 2));
        assert!(!r.on_timeout(10, 2));
        let mut r = Recovery::new(4000);
        r.on_timeout(10, 9);
        assert_eq!(r.rto, 6_400);
        r.on_ack(10, 10, 100);
        assert_eq!(r.rto, 100);
    }

    #[test]
    fn response_bytes_count_once_and_acks_settle_them() {
        let mut t = TargetSide::new(0, 0);
        t.rcv_nxt = SeqNumber(u32::MAX - 5);
        t.acked_to = t.rcv_nxt;
        assert!(t.receive(SeqNumber(10)));
        assert!(!t.receive(SeqNumber(4)));
        assert_eq!(t.unacknowledged(), 16);
        assert!(!t.acknowledged(SeqNumber(4)));
        assert!(t.acknowledged(SeqNumber(10)));
        assert_eq!(t.client_tsval(7), 7);
        assert_eq!(t.client_tsval(3), 7);
    }
}
