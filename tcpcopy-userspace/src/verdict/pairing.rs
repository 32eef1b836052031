//! One session's requests and their two answers, sans-IO: the online
//! server's (seen at the capture point) and the target's (from intercept's
//! records), paired request by request and compared once both are read.
//!
//! A request is the client data sent with one acknowledgement number (the
//! engine's request boundary): the online server's answer to it begins at
//! exactly that number in the server's sequence space. The target's
//! answer is the first response the target begins after the request went
//! out (for HTTP, a segment that starts a status line: a long answer's
//! later segments are not taken for the next one's).
//!
//! Times (`now`) are the driver's clock in microseconds.

use std::collections::VecDeque;

use super::{
    report::{Example, Failure, Latencies, VerdictStats},
    status::{Parse, Protocol, Status, STATUS_BYTES},
};
use crate::{proto::ResponseExtras, wire::SeqNumber};

/// Requests a session keeps waiting for their answers; beyond, the oldest
/// is given up as unpaired (the verdict's state stays bounded: about 200
/// bytes a request). A replay running behind its client holds many: each
/// is answered only once sent.
pub const MAX_PENDING: usize = 4096;
/// Bytes of a request kept for the examples.
const HEAD_BYTES: usize = 64;
/// Online answers a session keeps for requests not seen yet (a mirror's
/// worker handing a request over may lag its answers by a batch: 12 seen
/// in the lab at 16k requests/s on one connection), about 100 bytes each.
const MAX_EARLY: usize = 256;

/// One side's answer to a request.
#[derive(Clone, Debug, Default)]
enum Answer {
    #[default]
    Waiting,
    /// Begun, but its status not readable yet: the bytes so far, and the
    /// sequence number the next ones must start at.
    Partial {
        bytes: Vec<u8>,
        next: u32,
        began: u64,
    },
    Read {
        status: Status,
        latency_us: u64,
    },
}

impl Answer {
    fn is_read(&self) -> bool {
        matches!(self, Answer::Read { .. })
    }
    fn status(&self) -> Option<Status> {
        match self {
            Answer::Read { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Take `bytes` at `seq` (the start of an answer when waiting, or its
    /// continuation when partial), `since` the moment latency runs from.
    fn take(&mut self, protocol: Protocol, now: u64, seq: u32, bytes: &[u8], since: u64) -> bool {
        // The common case, an answer whose status its first segment
        // shows: read in place, nothing kept.
        if matches!(self, Answer::Waiting) {
            if let Parse::Done(status) = protocol.status(&bytes[..bytes.len().min(STATUS_BYTES)]) {
                *self = Answer::Read {
                    status,
                    latency_us: now.saturating_sub(since),
                };
                return true;
            }
        }
        let (mut buf, began) = match std::mem::take(self) {
            Answer::Waiting => (Vec::new(), now),
            Answer::Partial { bytes, next, began } if next == seq => (bytes, began),
            other => {
                *self = other;
                return false;
            }
        };
        buf.extend_from_slice(
            &bytes[..bytes.len().min(STATUS_BYTES - buf.len().min(STATUS_BYTES))],
        );
        let latency_us = began.saturating_sub(since);
        *self = match protocol.status(&buf) {
            Parse::Done(status) => Answer::Read { status, latency_us },
            Parse::NeedMore if buf.len() >= STATUS_BYTES => Answer::Read {
                status: Status::garbage(),
                latency_us,
            },
            Parse::NeedMore => Answer::Partial {
                next: seq.wrapping_add(bytes.len() as u32),
                bytes: buf,
                began,
            },
        };
        true
    }
}

/// A request's first bytes, kept in place (no allocation per request).
#[derive(Clone, Copy, Debug)]
struct Head {
    bytes: [u8; HEAD_BYTES],
    len: u8,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            bytes: [0; HEAD_BYTES],
            len: 0,
        }
    }
}

impl Head {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A request waiting for its answers.
#[derive(Clone, Debug)]
struct Pending {
    /// The acknowledgement it carried: where the online answer begins.
    online_at: u32,
    /// The end of its bytes in the client's captured sequence space.
    end: SeqNumber,
    /// Its first bytes (for the examples), and whether they are all
    /// kept.
    head: Head,
    head_done: bool,
    /// Whether it is known to be one request (one answer to come): a
    /// request the client pipelined has several, and the answers after its
    /// first are not the next request's.
    one_request: bool,
    /// When its last segment was captured.
    captured_at: u64,
    /// When its last byte went to the target, and where the target's
    /// answers stood then.
    sent: Option<(u64, u32)>,
    online: Answer,
    target: Answer,
    /// How long intercept held the record that began the target's answer
    /// (µs), when it told.
    intercept_us: Option<u32>,
}

impl Pending {
    /// More of the request's bytes, up to `HEAD_BYTES` in all.
    fn extend_head(&mut self, bytes: &[u8]) {
        let h = &mut self.head;
        let take = bytes.len().min(HEAD_BYTES - h.len as usize);
        h.bytes[h.len as usize..h.len as usize + take].copy_from_slice(&bytes[..take]);
        h.len += take as u8;
        self.head_done = h.len as usize == HEAD_BYTES;
    }
}

/// The last target answer read: which request's (by its online answer's
/// position) and where it began in the target's sequence space.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    online_at: u32,
    target_at: u32,
}

/// An online answer seen before its request: a mirror's two directions
/// come on different queues, handled by different workers, and an answer
/// can overtake its request on the way to the session.
#[derive(Debug)]
struct Early {
    seq: u32,
    at: u64,
    bytes: Box<[u8]>,
}

/// A session's verdict: its requests waiting for answers.
#[derive(Debug)]
pub struct Pairing {
    /// The flow's protocol, picked from its first request (`auto`).
    protocol: Protocol,
    decided: bool,
    pending: VecDeque<Pending>,
    anchor: Option<Anchor>,
    /// Where the answer after the last one placed begins, when that is
    /// known (its length showed, or its segment was seen whole).
    follows: Option<u32>,
    /// Online answers whose requests were not seen yet (at most
    /// [`MAX_EARLY`], the oldest dropped).
    early: VecDeque<Early>,
    /// The end of the target's answer data seen (placed or not): a request
    /// sent before it was answered, even if not knowably which answer is
    /// its own, so the session's end is not its failure.
    target_end: Option<SeqNumber>,
}

impl Pairing {
    pub fn new(protocol: Protocol) -> Pairing {
        Pairing {
            protocol,
            decided: protocol != Protocol::Auto,
            pending: VecDeque::new(),
            anchor: None,
            follows: None,
            early: VecDeque::new(),
            target_end: None,
        }
    }

    /// Requests waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// A captured client data segment: `seq`..`seq + payload.len()`,
    /// carrying acknowledgement `ack`.
    pub fn on_request(
        &mut self,
        now: u64,
        ack: u32,
        seq: SeqNumber,
        payload: &[u8],
        stats: &mut VerdictStats,
    ) {
        if payload.is_empty() {
            return;
        }
        let end = seq.plus(payload.len() as u32);
        if let Some(last) = self.pending.back_mut() {
            if last.online_at == ack {
                if end.is_after(last.end) {
                    // The next segment of the request: its first line may
                    // go on here.
                    if last.end == seq && !last.head_done {
                        last.extend_head(payload);
                    }
                    // Known only while the whole request fits the head.
                    last.one_request = !last.head_done
                        && last.end == seq
                        && self.protocol.one_request(last.head.as_slice());
                    last.end = end;
                    last.captured_at = now;
                }
                return;
            }
            // A retransmission of an earlier request: nothing new.
            if !end.is_after(last.end) {
                return;
            }
        }
        if !self.decided {
            self.protocol = self.protocol.detect(payload);
            self.decided = true;
        }
        if self.pending.len() == MAX_PENDING {
            if let Some(p) = self.pending.pop_front() {
                stats.unpaired(p.online.is_read(), p.target.is_read());
            }
        }
        let mut p = Pending {
            online_at: ack,
            end,
            head: Head::default(),
            head_done: false,
            one_request: self.protocol.one_request(payload),
            captured_at: now,
            sent: None,
            online: Answer::Waiting,
            target: Answer::Waiting,
            intercept_us: None,
        };
        p.extend_head(payload);
        self.take_early(&mut p);
        self.pending.push_back(p);
    }

    /// A new request's online answer, if it came first.
    fn take_early(&mut self, p: &mut Pending) {
        while !self.early.is_empty() {
            let at = match &p.online {
                Answer::Waiting => p.online_at,
                Answer::Partial { next, .. } => *next,
                Answer::Read { .. } => return,
            };
            let Some(i) = self.early.iter().position(|e| e.seq == at) else {
                return;
            };
            let Some(e) = self.early.remove(i) else {
                return;
            };
            p.online
                .take(self.protocol, e.at, e.seq, &e.bytes, p.captured_at);
        }
    }

    /// Client bytes up to `end` (captured sequence space) went to the
    /// target, whose answers stood at `target_next` (its next sequence
    /// number).
    pub fn on_sent(&mut self, now: u64, end: SeqNumber, target_next: u32) {
        // Requests go in order: the sent ones are the first, and the
        // walk stops at the first this send does not cover.
        for p in self.pending.iter_mut().skip_while(|p| p.sent.is_some()) {
            if !(end.is_after(p.end) || end == p.end) {
                break;
            }
            p.sent = Some((now, target_next));
        }
    }

    /// The target connection is opened again: requests it had not
    /// answered go again, on a new sequence space.
    pub fn on_reconnect(&mut self) {
        self.anchor = None;
        self.follows = None;
        self.target_end = None;
        for p in self.pending.iter_mut().filter(|p| !p.target.is_read()) {
            p.sent = None;
            p.target = Answer::Waiting;
        }
    }

    /// The online server's data at `seq` (its first bytes in `prefix`).
    pub fn on_online(&mut self, now: u64, seq: u32, prefix: &[u8], stats: &mut VerdictStats) {
        let protocol = self.protocol;
        // The online answer follows its request closely: look from the
        // newest.
        let hit = self.pending.iter().rposition(|p| match &p.online {
            Answer::Waiting => p.online_at == seq,
            Answer::Partial { next, .. } => *next == seq,
            Answer::Read { .. } => false,
        });
        let Some(i) = hit else {
            self.keep_early(now, seq, prefix, stats);
            return;
        };
        let p = &mut self.pending[i];
        let since = p.captured_at;
        p.online.take(protocol, now, seq, prefix, since);
        self.settle(hit, stats);
    }

    /// Online data no request waits for: kept if its request may be on its
    /// way still (it begins an answer, or goes on with one kept, beyond
    /// every request seen). The rest of a long answer, or an answer sent
    /// again, is not.
    fn keep_early(&mut self, now: u64, seq: u32, prefix: &[u8], stats: &mut VerdictStats) {
        let beyond = self
            .pending
            .back()
            .is_none_or(|p| SeqNumber(seq).is_after(SeqNumber(p.online_at)));
        let begins = self.protocol.may_start_answer(prefix)
            || self
                .early
                .iter()
                .any(|e| e.seq.wrapping_add(e.bytes.len() as u32) == seq);
        if prefix.is_empty() || !beyond || !begins {
            return;
        }
        if self.early.len() == MAX_EARLY {
            self.early.pop_front();
            stats.answers_without_request += 1;
        }
        self.early.push_back(Early {
            seq,
            at: now,
            bytes: prefix[..prefix.len().min(STATUS_BYTES)].into(),
        });
    }

    /// The target's data at `seq`, `len` bytes (its first bytes, and
    /// how long intercept held it, in `extras`).
    pub fn on_target(
        &mut self,
        now: u64,
        seq: u32,
        len: u32,
        extras: ResponseExtras,
        stats: &mut VerdictStats,
    ) {
        let prefix = extras.prefix;
        let end = SeqNumber(seq).plus(len);
        if self.target_end.is_none_or(|e| end.is_after(e)) {
            self.target_end = Some(end);
        }
        let protocol = self.protocol;
        let follows = self.follows == Some(seq);
        // A continuation of an answer begun.
        // (Answers begin only for requests sent: the first ones.)
        let partial = self
            .pending
            .iter()
            .take_while(|p| p.sent.is_some())
            .position(|p| matches!(&p.target, Answer::Partial { next, .. } if *next == seq));
        if let Some(i) = partial {
            let p = &mut self.pending[i];
            let since = p.sent.map_or(now, |s| s.0);
            p.target.take(protocol, now, seq, prefix, since);
            self.settle(Some(i), stats);
            return;
        }
        // Only a segment that can start an answer begins one (the rest of
        // a long one is not the next one's): for HTTP a status line, for
        // RESP a reply's type byte.
        if !protocol.may_start_answer(prefix) {
            return;
        }
        // Answers to pipelined requests may share the segment: those
        // after the first answer the requests after its.
        let mut last: Option<usize> = None;
        let mut all_placed = true;
        let whole = prefix.len() as u32 >= len;
        for at in protocol.answers_in(prefix) {
            let seq_at = seq.wrapping_add(at as u32);
            let next = match last {
                None if follows => self.next_after_anchor(),
                None => self.whose_answer(seq_at),
                // The next answer in the segment is the next request's, if
                // this one had one answer to come.
                Some(i) => Some(i + 1).filter(|&n| {
                    self.pending[i].one_request
                        && self.pending.get(n).is_some_and(|p| p.sent.is_some())
                }),
            }
            .filter(|&n| matches!(self.pending[n].target, Answer::Waiting));
            let Some(i) = next else {
                tracing::trace!(seq = seq_at, anchor = ?self.anchor, waiting = self.pending.len(),
                    "verdict: a target answer whose request is not known for sure");
                all_placed = false;
                break;
            };

            last = Some(i);
            let p = &mut self.pending[i];
            let since = p.sent.map_or(now, |s| s.0);
            p.target.take(protocol, now, seq_at, &prefix[at..], since);
            p.intercept_us = extras.held.micros();
            self.anchor = Some(Anchor {
                online_at: p.online_at,
                target_at: seq_at,
            });
            // Where the next request's answer begins, when this one's
            // length shows (and it is the request's only one).
            self.follows = protocol
                .answer_len(&prefix[at..])
                .filter(|_| p.one_request)
                .map(|n| seq_at.wrapping_add(n as u32));
        }
        // A segment seen whole, every answer in it placed: an answer that
        // begins right after it is the next request's.
        if whole && all_placed && last.is_some_and(|i| self.pending[i].one_request) {
            self.follows = Some(seq.wrapping_add(len));
        }
        self.settle(last, stats);
    }

    /// The requests sent (the first ones: requests go in order).
    fn sent(&self) -> impl Iterator<Item = &Pending> {
        self.pending.iter().take_while(|p| p.sent.is_some())
    }

    /// The first request sent after the one whose answer was read last.
    fn next_after_anchor(&self) -> Option<usize> {
        let a = self.anchor?;
        self.pending
            .iter()
            .take_while(|p| p.sent.is_some())
            .position(|p| SeqNumber(p.online_at).is_after(SeqNumber(a.online_at)))
    }

    /// Which waiting request a target answer beginning at `seq` answers,
    /// if that can be told for sure (never a guess: a request left
    /// without its answer is reported unpaired, not compared with another
    /// request's answer):
    /// 1. the one whose answer would begin exactly there if the target's
    ///    answers since the last one read had the online answers' sizes;
    /// 2. the oldest still waiting, when it went as the target's answers
    ///    stood exactly there (no other answer can lie between);
    /// 3. the only one sent and waiting.
    fn whose_answer(&self, seq: u32) -> Option<usize> {
        let after_anchor = |p: &Pending| {
            self.anchor
                .is_none_or(|a| SeqNumber(p.online_at).is_after(SeqNumber(a.online_at)))
        };
        let waiting_loose = |p: &Pending| matches!(p.target, Answer::Waiting) && after_anchor(p);
        let waiting = |p: &Pending| {
            waiting_loose(p)
                && p.sent
                    .is_some_and(|(_, from)| !SeqNumber(from).is_after(SeqNumber(seq)))
        };
        if let Some(a) = self.anchor {
            let same_sizes = |p: &Pending| {
                a.target_at
                    .wrapping_add(p.online_at.wrapping_sub(a.online_at))
                    == seq
            };
            if let Some(i) = self.sent().position(|p| waiting(p) && same_sizes(p)) {
                return Some(i);
            }
        }
        // The oldest request still waiting, if it went when the target's
        // answers stood exactly here: an older request's answer came
        // before the last one placed, and none waits between. (Whether the
        // engine held a request until the one before it was answered says
        // nothing for sure: a lagging replay sends in flights.)
        if let Some(i) = self.sent().position(waiting_loose) {
            if self.pending[i].sent.is_some_and(|(_, from)| from == seq) {
                return Some(i);
            }
        }
        let mut candidates = self.sent().enumerate().filter(|(_, p)| waiting(p));
        match (candidates.next(), candidates.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// After request `i`'s answers changed: once both are read, it and
    /// every request before it leave (those before it will not get the
    /// answers they lack any more: the streams moved past them), then any
    /// complete ones that follow.
    fn settle(&mut self, i: Option<usize>, stats: &mut VerdictStats) {
        let complete = |p: &Pending| p.online.is_read() && p.target.is_read();
        let Some(i) = i.filter(|&i| self.pending.get(i).is_some_and(complete)) else {
            return;
        };
        let mut left = i + 1;
        while let Some(p) = self.pending.front() {
            if left == 0 && !complete(p) {
                break;
            }
            left = left.saturating_sub(1);
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.report(p, stats);
        }
    }

    /// A request leaves: compared, or unpaired.
    fn report(&self, p: Pending, stats: &mut VerdictStats) {
        let (
            Answer::Read {
                status: online,
                latency_us: ol,
            },
            Answer::Read {
                status: target,
                latency_us: tl,
            },
        ) = (&p.online, &p.target)
        else {
            stats.unpaired(p.online.is_read(), p.target.is_read());
            return;
        };
        let protocol = self.protocol;
        let latency = Latencies {
            online_us: *ol,
            target_us: *tl,
            intercept_us: p.intercept_us,
        };
        stats.compared(*online, *target, latency, || Example {
            request: protocol.describe(p.head.as_slice()),
            online: *online,
            target: *target,
        });
    }

    /// The session is over: what is still waiting is reported, as a
    /// failure of the target when the session ended in one and the target
    /// sent nothing after the request went (else it is unpaired: the
    /// target answered, but which answer was its own is not known).
    pub fn finish(&mut self, failure: Option<Failure>, stats: &mut VerdictStats) {
        stats.answers_without_request += self.early.len() as u64;
        self.early.clear();
        let target_end = self.target_end;
        let unanswered = |from: u32| target_end.is_none_or(|e| !e.is_after(SeqNumber(from)));
        for p in self.pending.drain(..) {
            match failure {
                Some(f)
                    if !p.target.is_read() && p.sent.is_some_and(|(_, from)| unanswered(from)) =>
                {
                    stats.failed(f, p.online.status())
                }
                _ => stats.unpaired(p.online.is_read(), p.target.is_read()),
            }
        }
    }
}
