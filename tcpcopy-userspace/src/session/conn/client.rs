//! The client's side: captured segments come in, are buffered in the
//! stream, and go to the target when pacing, the window and the holes of
//! the capture allow ([`Session::pump`]).

use super::{Ctx, Phase, Session, CATCH_UP_FLIGHT, GAP_QUIET_MS, SHED_BACKLOG, SYN_RTO_MS};
use crate::{
    session::{
        close::ResponseAnchor,
        event::{Event, Loss, Sent},
        segment::ClientSegment,
        stream::Captured,
        timers::Timer,
    },
    wire::TcpFlags,
};

const FIN: u8 = TcpFlags::FIN;
const RST: u8 = TcpFlags::RST;
const PSH: u8 = TcpFlags::PSH;
const ACK: u8 = TcpFlags::ACK;

/// Why [`Session::send_next`] sent nothing.
enum Stop {
    /// Nothing more may go now.
    Held,
    /// The session changed course (a hole skipped, or given up): the pump
    /// ends without its closing steps.
    Diverted,
}

impl Session {
    /// A captured segment for this session (not a SYN: the engine handles
    /// those).
    pub fn on_client_segment(&mut self, now: u64, seg: ClientSegment, ctx: &mut Ctx) {
        if self.is_lingering() {
            ctx.note(Event::LateForClosed);
            return;
        }
        if seg.has(ACK) {
            self.close.client_acknowledged(seg.ack);
        }
        if seg.has(RST) {
            if seg.has(ACK) {
                self.close.close_ack.get_or_insert(seg.ack);
            }
            if self.close.rst.replace(Box::new(seg)).is_some() {
                ctx.note(Event::Duplicate);
            }
            self.pump(now, ctx);
            return;
        }
        if seg.is_pure_ack() {
            self.on_pure_ack(now, seg, ctx);
            return;
        }
        let off = self.stream.offset_of(seg.seq());
        if off < 0 {
            // Before the stream began: an older connection's leftovers.
            ctx.note(Event::Duplicate);
            return;
        }
        let off = off as u64;
        if seg.has(FIN) && !self.capture_fin(now, off, &seg, ctx) {
            return;
        }
        self.pacing.measure_rtt(now);
        if let Some(v) = &mut self.verdict {
            let us = ctx.verdict_clock(now);
            v.on_request(us, seg.ack, seg.seq(), &seg.payload, ctx.verdict());
        }
        match self.stream.capture(off, seg) {
            Captured::Duplicate => {
                ctx.note(Event::Duplicate);
                return;
            }
            Captured::Replaced => ctx.note(Event::Duplicate),
            Captured::Buffered => {}
        }
        if self.stream.backlog_bytes() > ctx.cfg.max_buffered_bytes {
            let reason = self.overflow_reason();
            self.obsolete(now, reason, ctx);
            return;
        }
        self.pump(now, ctx);
        if ctx.shed && self.stream.pending_len() > SHED_BACKLOG {
            self.obsolete(now, Loss::MemoryLimit, ctx);
        }
    }

    /// Why the backlog overflowed. Held behind a hole, with everything
    /// before it acknowledged, it is the capture's loss (a mirror port
    /// that dropped a frame, say): the target kept up. Otherwise the
    /// target did not take the stream as fast as the client sent it.
    fn overflow_reason(&self) -> Loss {
        if self.stream.hole_at_send_position() && !self.stream.outstanding() {
            Loss::BehindHole
        } else {
            Loss::BufferFull
        }
    }

    /// A segment carrying the client's FIN at `off`: note where the stream
    /// ends. False if nothing more is to be done with it (a bare FIN, or a
    /// repeated one).
    fn capture_fin(&mut self, now: u64, off: u64, seg: &ClientSegment, ctx: &mut Ctx) -> bool {
        let bare = seg.len() == 0;
        if self.stream.fin_off.is_some() {
            if bare {
                ctx.note(Event::Duplicate);
                return false;
            }
            return true;
        }
        self.stream.fin_off = Some(off + seg.len());
        self.close.close_ack = Some(seg.ack);
        if bare {
            self.close.fin_bare = true;
            self.pump(now, ctx);
            return false;
        }
        true
    }

    fn on_pure_ack(&mut self, now: u64, seg: ClientSegment, ctx: &mut Ctx) {
        // The client's handshake ACK is forwarded (or held) while the
        // handshake is the captured one: also on a connection the target
        // refused at first, as long as no byte has gone.
        let captured_handshake =
            !self.handshake.fabricated || (self.handshake.captured_syn && self.stream.nxt == 0);
        if !captured_handshake || self.pacing.last_captured_ack.is_some() {
            ctx.note(Event::PureAckAbsorbed);
            return;
        }
        // The client's third handshake ACK.
        self.pacing.measure_rtt(now);
        if self.is_established() {
            // Owed, as after a SYN-ACK (`on_syn_ack`): the request that
            // usually follows in the same turn carries it.
            self.pacing.last_captured_ack = Some(seg.ack);
            self.handshake.held_ack = Some(Box::new(seg));
            self.timers.set(Timer::AckOwed, now);
        } else if self.handshake.held_ack.is_some() {
            // Keep the first: it is the handshake ACK. A later one (the
            // client already acknowledging response data while our SYN
            // waits for the target) carries an ack the replayed stream
            // has not reached.
            ctx.note(Event::PureAckAbsorbed);
        } else {
            self.handshake.held_ack = Some(Box::new(seg));
        }
    }

    pub(super) fn send_handshake_ack(&mut self, seg: ClientSegment, ctx: &mut Ctx) {
        let seq = self.stream.seq_at(self.stream.nxt);
        self.emit_captured(&seg, seq, ACK, ctx);
        self.pacing.last_captured_ack = Some(seg.ack);
        ctx.note(Event::Sent(Sent::Captured));
        ctx.note(Event::Replayed { bytes: 0 });
    }

    /// Send whatever may go now.
    pub(super) fn pump(&mut self, now: u64, ctx: &mut Ctx) {
        match self.phase {
            Phase::Lingering { .. } | Phase::Over | Phase::SynSent { .. } => return,
            Phase::Closed => {
                // Something to send, or a client whose handshake waits (a
                // refused connection asked again).
                let owed = self.stream.has_unsent() || self.handshake.held_ack.is_some();
                if !self.timers.is_armed(Timer::Reconnect) && owed {
                    self.send_fabricated_syn(now, ctx);
                }
                return;
            }
            Phase::Established => {}
        }
        let catch_up = ctx.cfg.catch_up_segments;
        if catch_up > 0 && self.stream.pending_len() > catch_up && !ctx.cfg.no_wait {
            self.pacing.catching_up = true;
        }
        loop {
            match self.send_next(now, ctx) {
                Ok(()) => continue,
                Err(Stop::Held) => break,
                Err(Stop::Diverted) => return,
            }
        }
        if self.stream.pending_len() == 0 {
            self.pacing.catching_up = false;
        }
        self.maybe_send_fin(now, ctx);
        self.maybe_send_rst(now, ctx);
    }

    /// Send the next buffered segment if it may go now.
    fn send_next(&mut self, now: u64, ctx: &mut Ctx) -> Result<(), Stop> {
        let Some((off, len, ack)) = self
            .stream
            .first_pending()
            .map(|(o, s)| (o, s.len(), s.ack))
        else {
            return self.nothing_buffered(now, ctx);
        };
        if off > self.stream.nxt {
            return Err(self.hole_at_send_position(now, ctx));
        }
        self.stream.gap_since = None;
        let end = off + len;
        if end <= self.stream.nxt {
            self.stream.take_pending(off);
            ctx.note(Event::Duplicate);
            return Ok(());
        }
        // A segment whose captured ack differs from the current request's
        // is the next request: the client had received response bytes in
        // between.
        let continuation = self.pacing.continues_request(ack);
        let pipelined = self.pacing.waiting && !continuation;
        // Catching up, requests go without waiting for answers, a flight
        // of unacknowledged segments at a time (what the target holds
        // unanswered is kept, see `Stream::acknowledge`, so a restart of
        // it loses none of them).
        let catching_up = self.pacing.catching_up && self.stream.unacked_len() < CATCH_UP_FLIGHT;
        if pipelined && !catching_up {
            return Err(Stop::Held);
        }
        if self.pacing.awaits_greeting(ack) {
            // The client had seen server data before its first request:
            // wait for the target's greeting (not forever: the response
            // wait bounds it).
            self.timers
                .set_if_unarmed(Timer::ResponseWait, now + ctx.cfg.response_wait_ms);
            return Err(Stop::Held);
        }
        let send_len = end - self.stream.nxt;
        let in_flight = self.stream.nxt.saturating_sub(self.stream.una);
        if in_flight > 0 && in_flight + send_len > self.peer.window {
            return Err(Stop::Held);
        }
        let seg = self.stream.take_pending(off).expect("the first pending");
        self.send_segment(now, seg, end, pipelined, continuation, ctx);
        Ok(())
    }

    /// Nothing is buffered: a FIN beyond a hole ends the session once the
    /// hole may be skipped (nothing else will come).
    fn nothing_buffered(&mut self, now: u64, ctx: &mut Ctx) -> Result<(), Stop> {
        let s = &self.stream;
        if s.fin_off.is_some_and(|f| f > s.nxt) && !s.fin_sent {
            let since = *self.stream.gap_since.get_or_insert(now);
            if self.may_skip_gap(now, since, ctx) {
                self.obsolete(now, Loss::CaptureGap, ctx);
                return Err(Stop::Diverted);
            }
        } else {
            self.stream.gap_since = None;
        }
        Err(Stop::Held)
    }

    /// Buffered data lies beyond a hole at the send position.
    fn hole_at_send_position(&mut self, now: u64, ctx: &mut Ctx) -> Stop {
        let since = *self.stream.gap_since.get_or_insert(now);
        if self.may_skip_gap(now, since, ctx) {
            self.skip_gap(now, ctx);
            return Stop::Diverted;
        }
        Stop::Held
    }

    /// Send a captured segment at the send position (up to `end`).
    fn send_segment(
        &mut self,
        now: u64,
        seg: ClientSegment,
        end: u64,
        pipelined: bool,
        continuation: bool,
        ctx: &mut Ctx,
    ) {
        let seq = self.stream.seq_at(self.stream.nxt);
        self.emit_captured(&seg, seq, ACK | (seg.flags & PSH), ctx);
        if let Some(v) = &mut self.verdict {
            v.on_sent(
                ctx.verdict_clock(now),
                self.stream.seq_at(end),
                self.peer.rcv_nxt.0,
            );
        }
        ctx.note(Event::Sent(Sent::Captured));
        ctx.note(Event::Replayed {
            bytes: end - self.stream.nxt,
        });
        if pipelined {
            self.pacing.pipelined = true;
        }
        if !continuation {
            ctx.note(Event::Request { pipelined });
            if !self.pacing.any_request_sent() {
                self.close.anchor = Some(ResponseAnchor {
                    captured_ack: seg.ack(),
                    target_rcv_nxt: self.peer.rcv_nxt,
                });
            }
            self.pacing.request_sent(seg.ack, ctx.cfg.no_wait);
            if self.pacing.waiting {
                self.timers
                    .set(Timer::ResponseWait, now + ctx.cfg.response_wait_ms);
            }
        }
        self.pacing.last_captured_ack = Some(seg.ack);
        self.stream.sent(end, seg.trimmed_to(seq));
        self.timers
            .set_if_unarmed(Timer::Retransmit, now + self.recovery.rto);
    }

    /// May the hole at the send position, there since `since`, be skipped
    /// now? Only once it is `gap_skip_ms` old and the target has finished
    /// with everything before it (else look again when it may have).
    fn may_skip_gap(&mut self, now: u64, since: u64, ctx: &Ctx) -> bool {
        let skip = ctx.cfg.gap_skip_ms;
        if skip == 0 {
            return false;
        }
        let quiet_at = self.peer.last_response + GAP_QUIET_MS;
        if now < since + skip || now < quiet_at {
            self.timers
                .set(Timer::GapSkip, (since + skip).max(quiet_at));
            return false;
        }
        // Unacknowledged data: the retransmission timer pumps again.
        !self.stream.outstanding()
    }

    /// The capture lost bytes of this connection: the online server got
    /// them, so nobody sends them again, and the target connection cannot
    /// go on past the hole. Rather than hold everything behind it until
    /// the gap timeout gives the whole session up, reset the target
    /// connection and go on from the next request after the hole on a new
    /// one, as a session captured mid-stream starts. The next request is
    /// the first segment whose captured ack differs from the last one sent
    /// (the client had received response bytes in between); segments
    /// before it continue the request the hole cut, and are lost with it.
    fn skip_gap(&mut self, now: u64, ctx: &mut Ctx) {
        let Some(resume) = self.stream.resume_point(self.pacing.last_captured_ack) else {
            return;
        };
        let from = self.stream.nxt;
        self.send_rst(ctx);
        let lost = self.stream.skip_to(resume);
        ctx.note(Event::Lost(Loss::CaptureGap, lost));
        ctx.note(Event::GapSkipped);
        tracing::debug!(client = ?self.client, from, to = resume,
            "skipping a hole in the captured stream");
        self.restart_connection(now);
    }

    /// Forget the target connection: the next pump opens a new one (after
    /// an RTT, so the old one's reset goes first) for what is unsent.
    pub(super) fn restart_connection(&mut self, now: u64) {
        if let Some(v) = &mut self.verdict {
            v.on_reconnect();
        }
        self.stream.fin_sent = false;
        self.stream.gap_since = None;
        self.recovery.reset();
        self.close.anchor = None;
        self.pacing.restart();
        self.phase = Phase::Closed;
        self.handshake.fabricated = true;
        self.handshake.reconnecting = true;
        self.peer.ts_recent = None;
        self.timers.stop_all_but_gc();
        self.timers
            .set(Timer::Reconnect, now + self.pacing.rtt.max(1));
    }

    fn send_fabricated_syn(&mut self, now: u64, ctx: &mut Ctx) {
        self.announce_route(ctx);
        let syn = self.emit_fabricated_syn(ctx);
        self.timers.set(Timer::SynRetransmit, now + SYN_RTO_MS);
        let kind = if std::mem::take(&mut self.handshake.reconnecting) {
            Sent::ReconnectSyn
        } else {
            Sent::FabricatedSyn
        };
        ctx.note(Event::Sent(kind));
        self.handshake.fabricated = true;
        self.phase = Phase::SynSent { syn };
        self.handshake.started = now;
        let gc = self.timers.get(Timer::Gc).unwrap_or(u64::MAX);
        self.timers
            .set(Timer::Gc, gc.min(now + ctx.cfg.handshake_timeout_ms));
    }
}
