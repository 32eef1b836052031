//! How a session ends: the client's FIN and RST go once everything before
//! them has (and, after pipelining, once the target has answered), and a
//! session given up or shut down resets the target's side and counts what
//! it never sent.

use super::{emit::Transmission, Ctx, Phase, Session, CLOSE_QUIET_MS};
use crate::{
    session::{
        event::{Event, Loss},
        segment::ClientSegment,
        timers::Timer,
    },
    verdict::Failure,
    wire::TcpFlags,
};

impl Session {
    pub(super) fn maybe_send_fin(&mut self, now: u64, ctx: &mut Ctx) {
        let Some(f) = self.stream.fin_off else { return };
        let s = &self.stream;
        if s.fin_sent || s.pending_len() > 0 || s.nxt != f || s.una != s.nxt {
            return;
        }
        // A FIN that carries the current request's ack closed before the
        // client had any of its answer (an upload, a half-close after the
        // request): it follows the request as it did on the wire, instead
        // of waiting for an answer the client never waited for.
        let before_answer = self
            .close
            .close_ack
            .is_some_and(|a| self.pacing.continues_request(a));
        if self.pacing.waiting && !ctx.cfg.no_wait && !before_answer {
            return;
        }
        let answered = self.close.close_answered(self.peer.rcv_nxt);
        if self.pacing.pipelined && !answered {
            let quiet_at = self.peer.last_response + CLOSE_QUIET_MS;
            if now < quiet_at {
                self.timers.set(Timer::CloseHold, quiet_at);
                return;
            }
        }
        self.timers.stop(Timer::CloseHold);
        if self.pacing.pipelined {
            tracing::debug!(client = ?self.client, close_ack = ?self.close.close_ack,
                anchor = ?self.close.anchor, rcv_nxt = ?self.peer.rcv_nxt,
                quiet_ms = now.saturating_sub(self.peer.last_response), answered,
                "pipelined session closes");
        }
        let seq = self.stream.seq_at(f);
        self.send_fin(seq, Transmission::First, ctx);
        self.stream.fin_sent = true;
        if self.close.fin_bare {
            ctx.note(Event::Replayed { bytes: 0 });
        }
        self.timers
            .set_if_unarmed(Timer::Retransmit, now + self.recovery.rto);
    }

    pub(super) fn maybe_send_rst(&mut self, now: u64, ctx: &mut Ctx) {
        let Some(rst) = &self.close.rst else { return };
        if self.pacing.waiting && !ctx.cfg.no_wait {
            return;
        }
        // Everything captured before the RST goes first, also from behind
        // a hole that will be skipped.
        let rst_off = self.stream.offset_of(rst.seq()).max(0) as u64;
        let skippable = ctx.cfg.gap_skip_ms > 0;
        if self
            .stream
            .first_pending()
            .is_some_and(|(o, _)| o < rst_off && (o <= self.stream.nxt || skippable))
        {
            return;
        }
        self.close.rst = None;
        if self.pacing.pipelined && self.stream.pending_len() == 0 {
            // Requests sent pipelined may still sit, acknowledged but not
            // yet read, in the target's buffer, and an RST would discard
            // them: close with a FIN instead, so the target answers them
            // all and then closes.
            ctx.note(Event::ResetAsFin);
            if self.stream.fin_off.is_none() {
                self.stream.fin_off = Some(self.stream.nxt);
                self.close.fin_bare = true; // the RST's disposition goes with the FIN
                self.maybe_send_fin(now, ctx);
            } else {
                ctx.note(Event::Replayed { bytes: 0 }); // the captured FIN already closes
            }
            return;
        }
        self.send_rst(ctx);
        ctx.note(Event::Replayed { bytes: 0 });
        self.finish(now, Loss::ClientReset, ctx);
    }

    /// Give up on the session: count what was not sent, reset the target's
    /// side, linger.
    pub fn obsolete(&mut self, now: u64, reason: Loss, ctx: &mut Ctx) {
        ctx.note(Event::Obsolete);
        tracing::debug!(client = ?self.client, ?reason, phase = ?self.phase, stream = ?self.stream,
            pacing = ?self.pacing, peer = ?self.peer, close = ?self.close, "session given up");
        // Without intercept the target's answers cannot come back: a
        // session that filled its buffer or timed out meanwhile lost its
        // data to the outage, not to its own size or a silent target.
        let reason = match reason {
            Loss::BufferFull | Loss::TimedOut | Loss::HandshakeTimeout if ctx.intercept_down => {
                Loss::InterceptOutage
            }
            r => r,
        };
        if self.has_target_connection() {
            self.send_rst(ctx);
        }
        self.finish(now, reason, ctx);
    }

    /// tcpcopy is stopping: reset the target's side of a live session.
    pub fn shutdown(&mut self, ctx: &mut Ctx) {
        if matches!(self.phase, Phase::Lingering { .. } | Phase::Over) {
            return;
        }
        if self.stream.has_unsent() {
            tracing::debug!(client = ?self.client, phase = ?self.phase, stream = ?self.stream,
                pacing = ?self.pacing, peer = ?self.peer, timers = ?self.timers,
                "unsent at shutdown");
        }
        if self.has_target_connection() {
            self.send_rst(ctx);
        }
        self.abandon(Loss::Shutdown, ctx);
        self.phase = Phase::Lingering { given_up: None };
    }

    /// Count everything captured but never sent under `reason`.
    pub(super) fn abandon(&mut self, reason: Loss, ctx: &mut Ctx) {
        let lost = self.buffered();
        if lost > 0 && reason != Loss::Shutdown {
            tracing::debug!(client = ?self.client, ?reason, lost, phase = ?self.phase,
                stream = ?self.stream, close = ?self.close, pacing = ?self.pacing,
                held_ack = self.handshake.held_ack.is_some(), "giving up captured segments");
        }
        ctx.note(Event::Lost(reason, lost));
        self.stream.clear_pending();
        self.close.rst = None;
        self.handshake.held_ack = None;
        if !self.stream.fin_sent {
            self.close.fin_bare = false;
        }
    }

    /// The session is over: linger to absorb late packets.
    pub(super) fn finish(&mut self, now: u64, reason: Loss, ctx: &mut Ctx) {
        self.verdict_failure = match reason {
            Loss::TargetRefused => Some(Failure::Refused),
            Loss::HandshakeTimeout | Loss::TimedOut => Some(Failure::Timeout),
            Loss::TargetClosed => Some(Failure::Reset),
            _ => None,
        };
        self.abandon(reason, ctx);
        self.phase = Phase::Lingering {
            given_up: reason.drops_rest_of_flow().then_some(reason),
        };
        self.timers.stop_all_but_gc();
        self.timers.set(Timer::Gc, now + ctx.cfg.linger_ms);
    }

    /// The reason the rest of this flow is dropped for, if it was given up
    /// so (see [`Phase::Lingering`]).
    pub fn given_up(&self) -> Option<Loss> {
        match self.phase {
            Phase::Lingering { given_up } => given_up,
            _ => None,
        }
    }

    /// A later segment of a flow given up: counted under the same reason
    /// (or as late, if it carries nothing to lose), never replayed. The
    /// session lingers on while the flow does, and ends `linger_ms` after
    /// its last segment or with the client's FIN or RST.
    pub fn drop_given_up(&mut self, now: u64, seg: &ClientSegment, ctx: &mut Ctx) {
        let Some(reason) = self.given_up() else {
            return;
        };
        if seg.len() > 0 {
            ctx.note(Event::Lost(reason, 1));
        } else {
            ctx.note(Event::LateForClosed);
        }
        if !seg.has(TcpFlags::FIN | TcpFlags::RST) {
            self.timers.set(Timer::Gc, now + ctx.cfg.linger_ms);
        }
    }
}
