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

use std::collections::VecDeque;

use super::{
    report::{Example, Failure, VerdictStats},
    status::{Parse, Protocol, Status, STATUS_BYTES},
};
use crate::wire::SeqNumber;

/// Requests a session keeps waiting for their answers; beyond, the oldest
/// is given up as unpaired (the verdict's state stays bounded).
pub const MAX_PENDING: usize = 64;
/// Bytes of a request's first line kept for the examples.
const LINE_BYTES: usize = 64;

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
        latency_ms: u64,
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
        let latency_ms = began.saturating_sub(since);
        *self = match protocol.status(&buf) {
            Parse::Done(status) => Answer::Read { status, latency_ms },
            Parse::NeedMore if buf.len() >= STATUS_BYTES => Answer::Read {
                status: Status::garbage(),
                latency_ms,
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

/// A request waiting for its answers.
#[derive(Clone, Debug)]
struct Pending {
    /// The acknowledgement it carried: where the online answer begins.
    online_at: u32,
    /// The end of its bytes in the client's captured sequence space.
    end: SeqNumber,
    /// Its first line (for the examples), and whether it is whole.
    line: Vec<u8>,
    line_done: bool,
    /// When its last segment was captured.
    captured_at: u64,
    /// When its last byte went to the target, and where the target's
    /// answers stood then.
    sent: Option<(u64, u32)>,
    online: Answer,
    target: Answer,
}

impl Pending {
    /// More of the request's bytes: its first line grows up to its end or
    /// `LINE_BYTES`.
    fn extend_line(&mut self, bytes: &[u8]) {
        let end = bytes.iter().position(|&b| b == b'\r' || b == b'\n');
        let take = end.unwrap_or(bytes.len()).min(LINE_BYTES - self.line.len());
        self.line.extend_from_slice(&bytes[..take]);
        self.line_done = end.is_some() || self.line.len() == LINE_BYTES;
    }
}

/// A session's verdict: its requests waiting for answers.
#[derive(Debug)]
pub struct Pairing {
    /// The flow's protocol, picked from its first request (`auto`).
    protocol: Protocol,
    decided: bool,
    pending: VecDeque<Pending>,
}

impl Pairing {
    pub fn new(protocol: Protocol) -> Pairing {
        Pairing {
            protocol,
            decided: protocol != Protocol::Auto,
            pending: VecDeque::new(),
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
                    if last.end == seq && !last.line_done {
                        last.extend_line(payload);
                    }
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
            line: Vec::new(),
            line_done: false,
            captured_at: now,
            sent: None,
            online: Answer::Waiting,
            target: Answer::Waiting,
        };
        p.extend_line(payload);
        self.pending.push_back(p);
    }

    /// Client bytes up to `end` (captured sequence space) went to the
    /// target, whose answers stood at `target_next` (its next sequence
    /// number).
    pub fn on_sent(&mut self, now: u64, end: SeqNumber, target_next: u32) {
        for p in self.pending.iter_mut().filter(|p| p.sent.is_none()) {
            if end.is_after(p.end) || end == p.end {
                p.sent = Some((now, target_next));
            }
        }
    }

    /// The target connection is opened again: requests it had not
    /// answered go again, on a new sequence space.
    pub fn on_reconnect(&mut self) {
        for p in self.pending.iter_mut().filter(|p| !p.target.is_read()) {
            p.sent = None;
            p.target = Answer::Waiting;
        }
    }

    /// The online server's data at `seq` (its first bytes in `prefix`).
    pub fn on_online(&mut self, now: u64, seq: u32, prefix: &[u8], stats: &mut VerdictStats) {
        let protocol = self.protocol;
        let hit = self.pending.iter_mut().find(|p| match &p.online {
            Answer::Waiting => p.online_at == seq,
            Answer::Partial { next, .. } => *next == seq,
            Answer::Read { .. } => false,
        });
        if let Some(p) = hit {
            let since = p.captured_at;
            p.online.take(protocol, now, seq, prefix, since);
        }
        self.settle(stats);
    }

    /// The target's data at `seq` (its first bytes in `prefix`).
    pub fn on_target(&mut self, now: u64, seq: u32, prefix: &[u8], stats: &mut VerdictStats) {
        let protocol = self.protocol;
        // A continuation of an answer begun.
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| matches!(&p.target, Answer::Partial { next, .. } if *next == seq))
        {
            let since = p.sent.map_or(now, |s| s.0);
            p.target.take(protocol, now, seq, prefix, since);
            self.settle(stats);
            return;
        }
        // For HTTP only a segment that starts a status line begins an
        // answer (the rest of a long one is not the next one's).
        if protocol == Protocol::Http && !starts_status_line(prefix) {
            return;
        }
        // Answers to pipelined requests may share the segment.
        for at in protocol.answers_in(prefix) {
            let seq_at = seq.wrapping_add(at as u32);
            let hit = self.pending.iter_mut().find(|p| {
                matches!(p.target, Answer::Waiting)
                    && p.sent
                        .is_some_and(|(_, from)| !SeqNumber(from).is_after(SeqNumber(seq)))
            });
            let Some(p) = hit else {
                break;
            };
            let since = p.sent.map_or(now, |s| s.0);
            p.target.take(protocol, now, seq_at, &prefix[at..], since);
        }
        self.settle(stats);
    }

    /// Report every request whose two answers are read.
    fn settle(&mut self, stats: &mut VerdictStats) {
        while let Some(i) = self
            .pending
            .iter()
            .position(|p| p.online.is_read() && p.target.is_read())
        {
            // Requests before a compared one will not get the answers
            // they lack any more (the streams moved past them).
            for p in self.pending.drain(..i) {
                stats.unpaired(p.online.is_read(), p.target.is_read());
            }
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            let (
                Answer::Read {
                    status: online,
                    latency_ms: ol,
                },
                Answer::Read {
                    status: target,
                    latency_ms: tl,
                },
            ) = (&p.online, &p.target)
            else {
                return;
            };
            stats.compared(*online, *target, *ol, *tl, || Example {
                request: String::from_utf8_lossy(&p.line).into_owned(),
                online: *online,
                target: *target,
            });
        }
    }

    /// The session is over: what is still waiting is reported, as a
    /// failure of the target when the session ended in one.
    pub fn finish(&mut self, failure: Option<Failure>, stats: &mut VerdictStats) {
        for p in self.pending.drain(..) {
            match failure {
                Some(f) if !p.target.is_read() && p.sent.is_some() => {
                    stats.failed(f, p.online.status())
                }
                _ => stats.unpaired(p.online.is_read(), p.target.is_read()),
            }
        }
    }
}

/// Could `b` be the start of an HTTP/1.x status line?
fn starts_status_line(b: &[u8]) -> bool {
    const START: &[u8] = b"HTTP/1.";
    let n = b.len().min(START.len());
    n > 0 && b[..n] == START[..n]
}
