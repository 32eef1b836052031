//! The client's byte stream toward the target: what was captured (with
//! its holes), what is sent, what the target acknowledged, what it has
//! answered, and where the client's FIN lies. Positions are stream
//! offsets (bytes after the client's ISN), so they never wrap;
//! [`Stream::seq_at`] and [`Stream::offset_of`] translate to and from
//! sequence numbers.

use super::segment::ClientSegment;
use crate::wire::SeqNumber;
use std::collections::{BTreeMap, VecDeque};

/// A segment sent and not yet acknowledged, at its stream offset.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub off: u64,
    pub seg: ClientSegment,
}

/// What became of a captured segment offered to the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Captured {
    /// New data, buffered.
    Buffered,
    /// A longer copy of a buffered segment: it replaced the shorter one,
    /// which counts as the duplicate.
    Replaced,
    /// Nothing new: already sent or buffered.
    Duplicate,
}

/// Acknowledged bytes kept, per session, until the target answers them
/// (beyond this, the oldest are let go as if answered): enough for any
/// ordinary request and for thousands pipelined into a target that lags,
/// bounded for a stream the target never answers.
pub const UNANSWERED_MAX_BYTES: u64 = 1024 * 1024;
/// How many times the same unanswered data goes again on a new target
/// connection.
pub const MAX_REWINDS: u8 = 2;

/// What a target connection that went away left unanswered, put back to
/// be sent on the next one.
#[derive(Debug, Default)]
pub struct Requeued {
    /// Payload bytes of each segment put back.
    pub segments: Vec<u64>,
    /// Segments already buffered again (a captured copy came meanwhile).
    pub duplicates: u64,
}

/// What a held segment costs the heap beyond its payload: its map entry
/// (a B-tree leaves about a third of its slots empty: half again) and the
/// payload allocation's malloc header. A session's backlog is bounded in
/// bytes with this counted, so tiny segments cannot hold many times the
/// bound.
pub const SEGMENT_BOOKKEEPING: u64 = (size_of::<(u64, ClientSegment)>() * 3 / 2 + 16) as u64;

/// Captured segments not sent yet, by stream offset, with their payload
/// bytes counted.
#[derive(Debug, Default)]
struct Pending {
    segs: BTreeMap<u64, ClientSegment>,
    bytes: u64,
}

impl Pending {
    fn insert(&mut self, off: u64, seg: ClientSegment) {
        self.bytes += seg.len();
        if let Some(old) = self.segs.insert(off, seg) {
            self.bytes -= old.len();
        }
    }
    fn remove(&mut self, off: u64) -> Option<ClientSegment> {
        let seg = self.segs.remove(&off)?;
        self.bytes -= seg.len();
        Some(seg)
    }
    /// Everything from offset `from` on, taken out.
    fn split_off(&mut self, from: u64) -> Pending {
        let segs = self.segs.split_off(&from);
        let bytes = segs.values().map(ClientSegment::len).sum();
        self.bytes -= bytes;
        Pending { segs, bytes }
    }
    fn len(&self) -> usize {
        self.segs.len()
    }
}

#[derive(Debug)]
pub struct Stream {
    /// Sequence number of offset 0.
    base: SeqNumber,
    /// Captured, not sent yet.
    pending: Pending,
    /// Sent, not yet acknowledged by the target, in offset order.
    unacked: VecDeque<InFlight>,
    /// Sent and acknowledged, not yet answered (no response data came
    /// after it was acknowledged), in offset order: a target that dies
    /// with it read and unanswered (a restart) gets it again.
    unanswered: VecDeque<InFlight>,
    unanswered_bytes: u64,
    /// First byte not known to be answered (everything before it was, or
    /// was let go past [`UNANSWERED_MAX_BYTES`]).
    answered: u64,
    /// What the target had acknowledged when its latest response data
    /// came: the most its silence after that can say it answered (what it
    /// acknowledged later, without a word, a stalled server holds unread).
    acked_at_last_answer: u64,
    /// Where the last rewind to the first unanswered byte went, and how
    /// often it went there: a target that keeps closing before answering
    /// anything past it gets [`MAX_REWINDS`] and no more (a request that
    /// makes it close is not sent over and over; a restart may take an
    /// old process's accept and close with it once more).
    rewound: Option<(u64, u8)>,
    /// First byte the target has not acknowledged.
    pub una: u64,
    /// Next byte to send.
    pub nxt: u64,
    /// End of the highest captured data (sent or not).
    captured_end: u64,
    /// Offset of the client's FIN once captured.
    pub fin_off: Option<u64>,
    pub fin_sent: bool,
    /// Since when a hole has been at the send position.
    pub gap_since: Option<u64>,
}

impl Stream {
    /// A stream whose first byte has sequence number `base`.
    pub fn new(base: SeqNumber) -> Stream {
        Stream {
            base,
            pending: Pending::default(),
            unacked: VecDeque::new(),
            unanswered: VecDeque::new(),
            unanswered_bytes: 0,
            acked_at_last_answer: 0,
            answered: 0,
            rewound: None,
            una: 0,
            nxt: 0,
            captured_end: 0,
            fin_off: None,
            fin_sent: false,
            gap_since: None,
        }
    }

    // ---- positions

    pub fn seq_at(&self, off: u64) -> SeqNumber {
        self.base.plus(off as u32)
    }
    /// Offset of `seq`, relative to the send position (negative: before
    /// the stream started).
    pub fn offset_of(&self, seq: SeqNumber) -> i64 {
        self.nxt as i64 + seq.since(self.seq_at(self.nxt)) as i64
    }
    /// The client's ISN on the current target connection.
    pub fn isn(&self) -> SeqNumber {
        self.seq_at(self.una).minus(1)
    }
    /// The ISN of the captured connection.
    pub fn captured_isn(&self) -> SeqNumber {
        self.base.minus(1)
    }
    /// How far before the first captured byte `seq` lies (unsigned).
    pub fn bytes_before_start(&self, seq: SeqNumber) -> u32 {
        self.base.forward_from(seq)
    }
    /// Is `seq` beyond everything captured or sent?
    pub fn is_beyond(&self, seq: SeqNumber) -> bool {
        self.offset_of(seq) >= self.captured_end.max(self.nxt) as i64
    }

    /// How far `seq` lies from the end of the captured stream, if it is
    /// not before the stream's start and at most `ahead` bytes past its end.
    pub fn distance_from_end(&self, seq: SeqNumber, ahead: u64) -> Option<u64> {
        let off = self.offset_of(seq);
        let end = self.captured_end.max(self.nxt) as i64;
        (off >= 0 && off <= end + ahead as i64).then(|| off.abs_diff(end))
    }

    // ---- state

    /// Data sent and unacknowledged, or a FIN sent and unacknowledged.
    pub fn outstanding(&self) -> bool {
        self.una < self.nxt || (self.fin_sent && !self.fin_acked())
    }
    fn fin_acked(&self) -> bool {
        // The FIN occupies offset fin_off; acked when una passed it.
        matches!(self.fin_off, Some(f) if self.fin_sent && self.una > f)
    }
    /// Data captured and not yet acknowledged by the target.
    pub fn has_unsent(&self) -> bool {
        self.pending.len() > 0 || !self.unacked.is_empty()
    }
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
    /// Payload bytes captured and not sent yet.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> u64 {
        self.pending.bytes
    }
    /// What the unsent backlog holds: its payload and each segment's
    /// bookkeeping ([`SEGMENT_BOOKKEEPING`]).
    pub fn backlog_bytes(&self) -> u64 {
        self.pending.bytes + self.pending.len() as u64 * SEGMENT_BOOKKEEPING
    }
    /// The next byte to send has not been captured: the first buffered
    /// segment lies beyond a hole.
    pub fn hole_at_send_position(&self) -> bool {
        self.first_pending().is_some_and(|(off, _)| off > self.nxt)
    }
    /// Segments sent and not answered yet (acknowledged or not).
    pub fn unanswered_len(&self) -> usize {
        self.unacked.len() + self.unanswered.len()
    }
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }
    /// Would a target connection closing now leave acknowledged data
    /// unanswered that the next one should get again?
    pub fn may_rewind(&self) -> bool {
        !self.unanswered.is_empty()
            && !matches!(self.rewound, Some((at, n)) if at == self.answered && n >= MAX_REWINDS)
    }
    pub fn first_pending(&self) -> Option<(u64, &ClientSegment)> {
        self.pending.segs.iter().next().map(|(o, s)| (*o, s))
    }
    pub fn first_unacked(&self) -> Option<&InFlight> {
        self.unacked.front()
    }

    // ---- captured data

    /// Buffer a captured payload segment at offset `off`.
    pub fn capture(&mut self, off: u64, seg: ClientSegment) -> Captured {
        let len = seg.len();
        if off + len <= self.nxt {
            return Captured::Duplicate;
        }
        let outcome = match self.pending.segs.get(&off) {
            Some(old) if old.len() >= len => return Captured::Duplicate,
            Some(_) => Captured::Replaced,
            None => Captured::Buffered,
        };
        self.captured_end = self.captured_end.max(off + len);
        self.pending.insert(off, seg);
        outcome
    }

    /// Take the buffered segment at `off` out.
    pub fn take_pending(&mut self, off: u64) -> Option<ClientSegment> {
        self.pending.remove(off)
    }

    /// A segment went out from the send position up to `end`.
    pub fn sent(&mut self, end: u64, seg: ClientSegment) {
        let off = self.nxt;
        self.nxt = end;
        self.unacked.push_back(InFlight { off, seg });
    }

    /// Captured segments, not yet sent, that belong to a newer connection
    /// on this port whose SYN (`syn_seq`) was captured after them: taken
    /// out for the new session.
    pub fn take_newer(&mut self, syn_seq: SeqNumber) -> Vec<ClientSegment> {
        let from = self.offset_of(syn_seq.plus(1));
        if from <= self.nxt as i64 {
            return Vec::new();
        }
        let later = self.pending.split_off(from as u64);
        let end = self
            .pending
            .segs
            .iter()
            .next_back()
            .map_or(0, |(o, s)| o + s.len());
        self.captured_end = self.nxt.max(end);
        if self
            .pending
            .segs
            .keys()
            .next()
            .is_none_or(|o| *o <= self.nxt)
        {
            self.gap_since = None;
        }
        later.segs.into_values().collect()
    }

    /// Where the replay resumes after the hole at the send position: the
    /// first buffered segment whose captured ack differs from `last_ack`
    /// (a new request), else the first buffered one.
    pub fn resume_point(&self, last_ack: Option<u32>) -> Option<u64> {
        let segs = &self.pending.segs;
        segs.iter()
            .find(|(_, s)| last_ack != Some(s.ack))
            .or_else(|| segs.iter().next())
            .map(|(&o, _)| o)
    }

    /// Drop what is buffered before `resume` and go on from there, as if
    /// everything before it had been sent and acknowledged. Returns how
    /// many segments were dropped.
    pub fn skip_to(&mut self, resume: u64) -> u64 {
        let rest = self.pending.split_off(resume);
        let dropped = self.pending.len() as u64;
        self.pending = rest;
        self.una = resume;
        self.nxt = resume;
        self.let_go_unanswered(resume);
        dropped
    }

    /// Forget everything buffered; returns how many segments that was.
    pub fn clear_pending(&mut self) -> u64 {
        let n = self.pending.len() as u64;
        self.pending = Pending::default();
        n
    }

    // ---- the target's acknowledgements

    /// The target acknowledged up to `ack_off`: move `una` (never past
    /// what was sent) and release what is fully acknowledged.
    pub fn acknowledge(&mut self, ack_off: u64) {
        self.una = ack_off.min(self.nxt + self.fin_sent as u64);
        while let Some(f) = self.unacked.front() {
            if f.off + f.seg.len() <= self.una {
                let f = self.unacked.pop_front().expect("the front");
                self.unanswered_bytes += f.seg.len();
                self.unanswered.push_back(f);
            } else {
                break;
            }
        }
        while self.unanswered_bytes > UNANSWERED_MAX_BYTES {
            let Some(f) = self.unanswered.front() else {
                break;
            };
            let end = f.off + f.seg.len();
            self.let_go_unanswered(end);
        }
    }

    /// Everything the target acknowledged is answered (its answer to the
    /// last request sent has begun).
    pub fn answered_up_to_una(&mut self) {
        self.let_go_unanswered(self.una.min(self.nxt));
    }

    /// New response data came: the target held what it had acknowledged.
    pub fn answer_heard(&mut self) {
        self.acked_at_last_answer = self.una;
    }

    /// The target fell quiet after its latest response data: it answered
    /// what it held then, whatever the sizes of its answers. Not what it
    /// acknowledged after (a server that stalls, then dies, never read
    /// it).
    pub fn answered_by_silence(&mut self) {
        self.let_go_unanswered(self.acked_at_last_answer.min(self.una).min(self.nxt));
    }

    /// The captured ack of the last segment sent and not answered.
    pub fn last_sent_ack(&self) -> Option<u32> {
        self.unacked
            .back()
            .or(self.unanswered.back())
            .map(|f| f.seg.ack)
    }

    /// Every sent request is answered that a later sent request follows
    /// whose captured ack `answered` says the target has matched (the
    /// client had no more response than that when it sent it). Never past
    /// what the target acknowledged.
    pub fn answered_where(&mut self, answered: impl Fn(u32) -> bool) {
        let mut sent = self.unanswered.iter().chain(self.unacked.iter());
        let Some(first) = sent.next() else { return };
        let mut request_ack = first.seg.ack;
        let mut upto = None;
        for f in sent {
            if f.seg.ack == request_ack {
                continue; // the same request goes on
            }
            if !answered(f.seg.ack) {
                break;
            }
            request_ack = f.seg.ack;
            upto = Some(f.off);
        }
        if let Some(off) = upto {
            self.let_go_unanswered(off.min(self.una));
        }
    }

    /// Every sent request whose answer has begun (`began` says the target
    /// sent more than the client had received when it sent it) is
    /// answered: at a target's FIN, its last answer may be shorter than
    /// production's. Never past what the target acknowledged.
    pub fn answered_once_begun(&mut self, began: impl Fn(u32) -> bool) {
        let mut upto = None;
        let mut begun: Option<u32> = None;
        let mut all_begun = true;
        for f in self.unanswered.iter().chain(self.unacked.iter()) {
            if begun == Some(f.seg.ack) {
                continue; // the same request goes on
            }
            if begun.is_some() {
                upto = Some(f.off); // where the request before it ends
            }
            if !began(f.seg.ack) {
                all_begun = false;
                break;
            }
            begun = Some(f.seg.ack);
        }
        if all_begun && begun.is_some() {
            upto = Some(self.una);
        }
        if let Some(off) = upto {
            self.let_go_unanswered(off.min(self.una));
        }
    }

    /// The captured acks of the segments sent and not answered, in order.
    pub fn unanswered_acks(&self) -> impl Iterator<Item = u32> + '_ {
        self.unanswered
            .iter()
            .chain(self.unacked.iter())
            .map(|f| f.seg.ack)
    }

    /// Everything before `off` is answered, or will not be sent again.
    fn let_go_unanswered(&mut self, off: u64) {
        self.answered = self.answered.max(off);
        while let Some(f) = self.unanswered.front() {
            if f.off + f.seg.len() <= self.answered {
                self.unanswered_bytes -= f.seg.len();
                self.unanswered.pop_front();
            } else {
                break;
            }
        }
    }

    /// The target connection is gone: what it did not acknowledge, and
    /// (once per point) what it acknowledged and never answered, goes back
    /// to the buffer, to be sent again on the next one.
    pub fn requeue_unanswered(&mut self) -> Requeued {
        let mut r = Requeued::default();
        if !self.may_rewind() {
            self.let_go_unanswered(self.una.min(self.nxt));
        }
        let back = std::mem::take(&mut self.unanswered);
        for InFlight { off, seg } in self.unacked.drain(..).rev().chain(back.into_iter().rev()) {
            r.segments.push(seg.len());
            if self.pending.segs.contains_key(&off) {
                r.duplicates += 1;
            } else {
                self.pending.insert(off, seg);
            }
        }
        if self.unanswered_bytes > 0 {
            let times = match self.rewound {
                Some((at, n)) if at == self.answered => n + 1,
                _ => 1,
            };
            self.rewound = Some((self.answered, times));
            self.una = self.answered;
        }
        self.unanswered_bytes = 0;
        self.nxt = self.una;
        self.acked_at_last_answer = self.una;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::{Captured, Stream};
    use crate::{session::segment::ClientSegment, wire::SeqNumber};

    fn seg(seq: u32, ack: u32, payload: &[u8]) -> ClientSegment {
        ClientSegment {
            seq,
            ack,
            flags: 0x18,
            window: 100,
            options: Default::default(),
            ts_offset: None,
            tsval: None,
            payload: payload.to_vec(),
            ip_id: 0,
            ttl: 64,
            tos: 0,
        }
    }

    #[test]
    fn offsets_survive_the_sequence_wrap() {
        let s = Stream::new(SeqNumber(u32::MAX - 1));
        assert_eq!(s.seq_at(4), SeqNumber(2));
        assert_eq!(s.offset_of(SeqNumber(2)), 4);
        assert_eq!(s.offset_of(SeqNumber(u32::MAX - 3)), -2);
        assert_eq!(s.isn(), SeqNumber(u32::MAX - 2));
    }

    #[test]
    fn captures_keep_the_longer_copy_and_skip_what_was_sent() {
        let mut s = Stream::new(SeqNumber(1000));
        assert_eq!(s.capture(0, seg(1000, 1, b"ab")), Captured::Buffered);
        assert_eq!(s.capture(0, seg(1000, 1, b"a")), Captured::Duplicate);
        assert_eq!(s.capture(0, seg(1000, 1, b"abcd")), Captured::Replaced);
        assert_eq!(s.capture(10, seg(1010, 1, b"xy")), Captured::Buffered);
        assert_eq!(s.pending_bytes(), 6, "the longer copy counts, once");
        assert_eq!(s.first_pending().map(|(o, _)| o), Some(0));
        let first = s.take_pending(0).unwrap();
        s.sent(4, first);
        assert_eq!(s.pending_bytes(), 2);
        assert_eq!(s.first_pending().map(|(o, _)| o), Some(10)); // a hole at 4..10
        assert_eq!(s.capture(0, seg(1000, 1, b"abcd")), Captured::Duplicate);
        assert!(s.outstanding());
        assert!(s.is_beyond(SeqNumber(1012)));
        assert!(!s.is_beyond(SeqNumber(1011)));
    }

    #[test]
    fn acknowledged_data_is_released_and_the_rest_requeued() {
        let mut s = Stream::new(SeqNumber(0));
        for (off, p) in [(0u64, &b"aa"[..]), (2, b"bb"), (4, b"cc")] {
            s.capture(off, seg(off as u32, 1, p));
            let g = s.take_pending(off).unwrap();
            s.sent(off + 2, g);
        }
        s.acknowledge(3);
        assert_eq!(
            (s.una, s.unanswered_len()),
            (3, 3),
            "acked, kept until answered"
        );
        s.answered_up_to_una();
        assert_eq!(s.unanswered_len(), 2);
        s.acknowledge(99); // never past what was sent
        assert_eq!(s.una, 6);
        assert!(!s.outstanding());
        let mut s2 = Stream::new(SeqNumber(0));
        s2.capture(0, seg(0, 1, b"aa"));
        let g = s2.take_pending(0).unwrap();
        s2.sent(2, g);
        s2.capture(0, seg(0, 1, b"aaa"));
        let r = s2.requeue_unanswered();
        assert_eq!((r.segments, r.duplicates, s2.nxt), (vec![2], 1, 0));
        assert_eq!(
            s2.pending_bytes(),
            3,
            "the captured copy stays, counted once"
        );
    }

    #[test]
    fn a_request_is_answered_whole_once_the_next_one_is_matched() {
        let mut s = Stream::new(SeqNumber(0));
        // Request A in two segments (the client had 100 response bytes
        // before it), request B (it had 150), request C (it had 230).
        for (off, ack, p) in [
            (0u64, 100u32, &b"a1"[..]),
            (2, 100, b"a2"),
            (4, 150, b"bb"),
            (6, 230, b"cc"),
        ] {
            s.capture(off, seg(off as u32, ack, p));
            let g = s.take_pending(off).unwrap();
            s.sent(off + 2, g);
        }
        s.acknowledge(8);
        // The target has sent 40 bytes past the anchor of 100: nothing
        // matched beyond A's own start, A's first segment is kept.
        s.answered_where(|ack| ack <= 140);
        assert_eq!(s.unanswered_len(), 4);
        // 60: B's start is matched, so A (both segments) is answered.
        s.answered_where(|ack| ack <= 160);
        assert_eq!(s.unanswered_len(), 2);
        let r = s.requeue_unanswered();
        assert_eq!(
            (r.segments.len(), s.una, s.nxt),
            (2, 4, 4),
            "B and C go again"
        );
    }

    #[test]
    fn a_hole_is_skipped_to_the_next_request() {
        let mut s = Stream::new(SeqNumber(0));
        s.capture(5, seg(5, 7, b"rest of the cut request"));
        s.capture(40, seg(40, 9, b"next request"));
        assert_eq!(s.resume_point(Some(7)), Some(40));
        assert_eq!(s.resume_point(Some(9)), Some(5));
        assert_eq!(s.skip_to(40), 1);
        assert_eq!((s.una, s.nxt, s.pending_len()), (40, 40, 1));
        assert_eq!(s.pending_bytes(), 12);
        s.clear_pending();
        assert_eq!(s.pending_bytes(), 0);
    }
}
