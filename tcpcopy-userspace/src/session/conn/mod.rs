//! One replayed connection: the client TCP stack tcpcopy impersonates
//! toward the target. Fed captured client segments and the target's
//! response headers; writes the packets to send into a [`Ctx`] and reports
//! what happened as [`Event`]s. Sans-IO: time comes in as milliseconds.
//!
//! A session is a few small machines and the rules that join them:
//! [`Stream`] (the client's bytes toward the target), [`TargetSide`] and
//! [`Recovery`] (the target's sequence space, loss recovery), [`Pacing`]
//! (when a request may go), [`CloseState`] (when the close may go) and a
//! [`TimerTable`]. The rules live in this module's children: `client`
//! (captured segments, sending), `response` (the target's records),
//! `closing` (FIN, RST, giving up), `timeouts`, and `emit` (packets).

mod client;
mod closing;
mod emit;
mod response;
mod timeouts;

use super::{
    close::CloseState,
    config::Config,
    counters::Counters,
    event::{Event, Loss, Sent},
    outbox::Outbox,
    pacing::Pacing,
    segment::ClientSegment,
    stream::Stream,
    target::{Recovery, TargetSide},
    timers::{Timer, TimerTable},
};
use crate::{
    proto::RouteMsg,
    verdict::{Failure, Pairing, VerdictStats},
    wire::SeqNumber,
};
use std::{collections::VecDeque, net::IpAddr};

/// SYN retransmission interval while the handshake is pending (Linux's
/// initial RTO).
const SYN_RTO_MS: u64 = 1000;
/// How long an acknowledgement of response data may wait for a request to
/// carry it (Linux's minimum delayed-ACK time, TCP_DELACK_MIN): a replayed
/// keep-alive client then sends no ACK of its own, as a real one does not.
const DELAYED_ACK_MS: u64 = 40;
/// Segments a catching-up session keeps in flight toward the target: a
/// window of its own, so a backlog of thousands goes out at the target's
/// pace instead of one burst that overflows the send path.
const CATCH_UP_FLIGHT: usize = 32;
/// With memory exhausted (`-m`), a session holding more captured segments
/// than this is given up rather than let grow.
const SHED_BACKLOG: usize = 16;
/// After pipelining, the close waits until the target has sent as many
/// response bytes as the client had received when it closed, or has been
/// silent this long: a server still working through pipelined requests
/// may take a half-close for an abort (nginx answers the rest with 499s
/// and a reset). Longer than a few of the target's retransmission
/// timeouts: a target waiting for an ACK whose record was lost is silent
/// too.
const CLOSE_QUIET_MS: u64 = 3_000;
/// A refused connection is tried again this soon, then twice as late each
/// time, up to `REFUSED_RETRY_MAX_MS`.
const REFUSED_RETRY_FIRST_MS: u64 = 100;
const REFUSED_RETRY_MAX_MS: u64 = 1_000;
/// A hole may be skipped once the target has acknowledged everything
/// before it and sent nothing for this long: it has answered what it got
/// (pipelined requests included: it has had the whole `gap_skip_ms`).
const GAP_QUIET_MS: u64 = 200;
/// How far past a connection's captured end one of its segments may lie
/// (the client's largest window): with random ISNs, another connection's
/// segment falls in that reach about once in 64.
const CAPTURE_REACH: u64 = 64 << 20;

/// An address and port.
pub type Endpoint = (IpAddr, u16);

/// Where the engine's outputs go while a session runs.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub counters: &'a mut Counters,
    /// With several targets (fan-out), each one's counters too, and which
    /// one the session at hand replays to (empty with one target).
    pub per_target: &'a mut [Counters],
    pub target: usize,
    pub packets: &'a mut Outbox,
    pub routes: &'a mut VecDeque<RouteMsg>,
    /// Memory ran out (`-m`): a session that keeps buffering is given up.
    pub shed: bool,
    /// An intercept is unreachable: sessions given up now lost their data
    /// to the outage (counted as `intercept_outage`).
    pub intercept_down: bool,
    /// When an intercept last came back: a handshake's time runs from
    /// then at the earliest (its SYN-ACK could not come before).
    pub intercept_back_at: u64,
    /// `--verdict`: the figures of each target (empty without).
    pub verdicts: &'a mut [VerdictStats],
    /// The driver's clock in microseconds, for the verdict's latencies
    /// (0: not told; the millisecond clock is used).
    pub clock_us: u64,
}

impl Ctx<'_> {
    /// The verdict's clock at `now` (ms): the driver's microseconds when
    /// it tells them.
    pub fn verdict_clock(&self, now: u64) -> u64 {
        if self.clock_us > 0 {
            self.clock_us
        } else {
            now.saturating_mul(1000)
        }
    }

    /// The verdict's figures for the session at hand's target.
    pub fn verdict(&mut self) -> &mut VerdictStats {
        let i = self.target.min(self.verdicts.len().saturating_sub(1));
        &mut self.verdicts[i]
    }

    /// Report what happened.
    #[inline]
    pub fn note(&mut self, e: Event) {
        self.counters.record(e);
        if let Some(c) = self.per_target.get_mut(self.target) {
            c.record(e);
        }
    }
}

/// The state of the current target connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No SYN sent on the current target connection.
    Closed,
    /// The SYN is out (its packet kept, to send again until answered).
    SynSent {
        syn: Vec<u8>,
    },
    Established,
    /// Finished; absorbing late packets until destroyed. `given_up`: the
    /// replay was given up for a reason the rest of the flow would meet
    /// again ([`Loss::drops_rest_of_flow`]): while the client's flow goes
    /// on, its segments are counted under it and the session lingers on,
    /// so they never open a new connection (no fabricated-SYN storm).
    Lingering {
        given_up: Option<Loss>,
    },
    /// To be removed from the table now.
    Over,
}

/// How the current target connection was opened.
#[derive(Debug)]
struct Handshake {
    /// The handshake is made up (mid-stream start or reconnect).
    fabricated: bool,
    /// The session began with the client's captured SYN (so its captured
    /// handshake ACK is the one to send, even on a later connection).
    captured_syn: bool,
    /// The next SYN reopens a session already replaying (counted as a
    /// reconnect, not as a fabricated SYN).
    reconnecting: bool,
    /// When the current handshake began.
    started: u64,
    /// The client's handshake ACK, held until the target's SYN-ACK (boxed:
    /// held once per connection, it would cost every idle session its
    /// size).
    held_ack: Option<Box<ClientSegment>>,
    /// The target refuses the connection: since when, and how often.
    refused: Option<Refused>,
}

/// A target refusing a session's connection (it may be restarting).
#[derive(Clone, Copy, Debug)]
struct Refused {
    since: u64,
    times: u32,
}

pub struct Session {
    client: Endpoint,
    target: Endpoint,
    phase: Phase,
    handshake: Handshake,
    stream: Stream,
    peer: TargetSide,
    recovery: Recovery,
    pacing: Pacing,
    close: CloseState,
    timers: TimerTable,
    /// The IP ID of the last packet sent.
    ip_id: u16,
    /// `--verdict`: its requests waiting for their answers, and what the
    /// target failed with if the session ended in a failure of its.
    verdict: Option<Box<Pairing>>,
    verdict_failure: Option<Failure>,
}

impl Session {
    /// A session started by a captured SYN, which is sent right away.
    pub fn from_syn(
        now: u64,
        client: Endpoint,
        target: Endpoint,
        syn: ClientSegment,
        ctx: &mut Ctx,
    ) -> Session {
        let mut s = Session::new(now, client, target, syn.seq().plus(1), &syn, ctx.cfg);
        s.pacing = Pacing::new(1, Some(now));
        s.handshake.captured_syn = true;
        s.peer.last_tsval = syn.tsval.unwrap_or(0);
        s.announce_route(ctx);
        let pkt = s.emit_syn(&syn, ctx);
        s.phase = Phase::SynSent { syn: pkt };
        s.timers.set(Timer::SynRetransmit, now + SYN_RTO_MS);
        ctx.note(Event::Sent(Sent::CapturedSyn));
        ctx.note(Event::Replayed { bytes: 0 });
        s
    }

    /// A session captured mid-stream: its first payload segment starts the
    /// stream; a SYN is fabricated by the first pump.
    pub fn mid_stream(
        now: u64,
        client: Endpoint,
        target: Endpoint,
        first: &ClientSegment,
        rtt: u64,
        cfg: &Config,
    ) -> Session {
        let mut s = Session::new(now, client, target, first.seq(), first, cfg);
        s.handshake.fabricated = true;
        s.pacing.rtt = rtt.max(1);
        s
    }

    fn new(
        now: u64,
        client: Endpoint,
        target: Endpoint,
        base_seq: SeqNumber,
        seg: &ClientSegment,
        cfg: &Config,
    ) -> Session {
        Session {
            client,
            target,
            phase: Phase::Closed,
            handshake: Handshake {
                fabricated: false,
                captured_syn: false,
                reconnecting: false,
                started: now,
                held_ack: None,
                refused: None,
            },
            stream: Stream::new(base_seq),
            peer: TargetSide::new(now, 0),
            recovery: Recovery::new(cfg.rto_ms),
            pacing: Pacing::new(1, None),
            close: CloseState::default(),
            timers: TimerTable::new(now + cfg.handshake_timeout_ms),
            ip_id: seg.ip_id,
            verdict: cfg.verdict.map(|v| Box::new(Pairing::new(v.protocol))),
            verdict_failure: None,
        }
    }

    // ---- the verdict

    /// The online server's answer data at `seq` (`--verdict`).
    pub fn on_online_answer(&mut self, now: u64, seq: u32, prefix: &[u8], ctx: &mut Ctx) {
        if let Some(v) = &mut self.verdict {
            let us = ctx.verdict_clock(now);
            v.on_online(us, seq, prefix, ctx.verdict());
        }
    }

    /// The session leaves the table: its requests still waiting are
    /// reported (as the target's failure if it ended in one).
    pub fn finish_verdict(&mut self, ctx: &mut Ctx) {
        if let Some(v) = &mut self.verdict {
            v.finish(self.verdict_failure, ctx.verdict());
        }
    }

    // ---- what the engine asks

    pub fn is_lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }
    /// Must the engine remove the session now?
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over)
    }
    fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established)
    }
    fn is_syn_sent(&self) -> bool {
        matches!(self.phase, Phase::SynSent { .. })
    }
    /// Is a target connection open or opening (one to reset on giving up)?
    fn has_target_connection(&self) -> bool {
        self.is_established() || self.is_syn_sent()
    }
    /// Is `seq` beyond everything this session has seen? (a new connection
    /// reusing the port without a captured SYN).
    pub fn is_beyond(&self, seq: u32) -> bool {
        self.stream.is_beyond(SeqNumber(seq))
    }
    /// Captured segments, not yet sent, that belong to a newer connection
    /// on this port whose SYN (`syn_seq`) was captured after them (its
    /// packets came in on two RX queues): taken out for the new session.
    pub fn take_newer(&mut self, syn_seq: u32) -> Vec<ClientSegment> {
        self.stream.take_newer(SeqNumber(syn_seq))
    }
    /// A SYN that belongs to this mid-stream session's own connection and
    /// was merely captured late (its data went ahead of it, e.g. read from
    /// another RX queue first): its sequence lies just before the first
    /// byte captured.
    pub fn is_late_syn(&self, seq: u32) -> bool {
        let ahead = self.stream.bytes_before_start(SeqNumber(seq).plus(1));
        self.handshake.fabricated && ahead < (1 << 20)
    }
    /// Has the client's FIN or RST of this connection been captured?
    pub fn client_closed(&self) -> bool {
        self.stream.fin_off.is_some() || self.close.rst.is_some()
    }
    /// How far a captured segment's `seq` lies from the end of this
    /// connection's captured stream, if it can continue it (not before its
    /// start, at most [`CAPTURE_REACH`] past its end): which of a port's
    /// connections a late segment belongs to.
    pub fn distance_from_capture(&self, seq: u32) -> Option<u64> {
        self.stream.distance_from_end(SeqNumber(seq), CAPTURE_REACH)
    }
    pub fn captured_isn(&self) -> u32 {
        self.stream.captured_isn().0
    }
    /// Has the current target connection carried pipelined requests?
    pub fn is_pipelined(&self) -> bool {
        self.pacing.pipelined
    }
    /// May the target still be working through requests this session sent
    /// pipelined? They can sit acknowledged but unread in its buffer, and
    /// a reset (tcpcopy stopping, an offline replay ending) would discard
    /// them: so until the target has answered as much as the client had
    /// received, or has been quiet for `CLOSE_QUIET_MS`.
    pub fn awaiting_target(&self, now: u64) -> bool {
        self.is_established()
            && self.pacing.pipelined
            && !self
                .close
                .answered(self.close.latest_client_ack(), self.peer.rcv_nxt)
            && now.saturating_sub(self.peer.last_response) < CLOSE_QUIET_MS
    }
    /// Captured segments held, not yet sent (the `buffered` term of the
    /// counters' second invariant).
    pub fn buffered(&self) -> u64 {
        self.stream.pending_len() as u64
            + self.close.rst.is_some() as u64
            + self.handshake.held_ack.is_some() as u64
            + (self.close.fin_bare && !self.stream.fin_sent) as u64
    }
    /// When the session's next timer fires.
    pub fn next_deadline(&self) -> Option<u64> {
        // A SYN retransmission only counts while the handshake is pending.
        let skip = (!self.is_syn_sent()).then_some(Timer::SynRetransmit);
        self.timers.next(skip)
    }
}
