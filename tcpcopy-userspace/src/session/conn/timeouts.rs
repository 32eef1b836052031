//! What a session does when its timers fire: resend the SYN or data,
//! acknowledge responses late, release a held request, look again at a
//! held close or a hole, reconnect, and the housekeeping verdicts
//! (handshake, gap and idle timeouts).

use super::{Ctx, Phase, Session, GAP_QUIET_MS, SYN_RTO_MS};
use crate::session::{
    event::{Event, Loss},
    timers::Timer,
};

impl Session {
    pub fn on_timeout(&mut self, now: u64, ctx: &mut Ctx) {
        if self.is_lingering() {
            if self.timers.is_due(Timer::Gc, now) {
                self.phase = Phase::Over;
            }
            return;
        }
        if self.is_syn_sent() && self.timers.is_due(Timer::SynRetransmit, now) {
            self.retransmit_syn(ctx);
            self.timers.set(Timer::SynRetransmit, now + SYN_RTO_MS);
        }
        if self.timers.take_due(Timer::CloseHold, now) {
            self.pump(now, ctx);
        }
        if self.timers.take_due(Timer::GapSkip, now) && self.is_established() {
            self.pump(now, ctx);
        }
        if self.timers.take_due(Timer::Reconnect, now) && matches!(self.phase, Phase::Closed) {
            self.pump(now, ctx);
        }
        if self.timers.take_due(Timer::Retransmit, now)
            && self.is_established()
            && self.stream.outstanding()
        {
            if !self
                .recovery
                .on_timeout(self.stream.nxt, ctx.cfg.max_retransmits)
            {
                self.obsolete(now, Loss::TimedOut, ctx);
                return;
            }
            self.retransmit(ctx);
            self.timers.set(Timer::Retransmit, now + self.recovery.rto);
        }
        if self.timers.take_due(Timer::ResponseTick, now) {
            self.on_response_tick(now, ctx);
        }
        if self.timers.take_due(Timer::AnswerQuiet, now) {
            self.on_answer_quiet(now);
        }
        if self.timers.is_due(Timer::AckOwed, now) {
            match self.handshake.held_ack.take() {
                // The handshake's ACK, owed since the SYN-ACK: nothing
                // carried it this turn.
                Some(ack) if self.is_established() => self.send_handshake_ack(*ack, ctx),
                held => {
                    self.handshake.held_ack = held;
                    self.send_ack(ctx);
                }
            }
        }
        if self.timers.take_due(Timer::ResponseWait, now) {
            self.on_response_wait_expired(now, ctx);
        }
        if self.timers.is_due(Timer::Gc, now) && !self.is_lingering() {
            self.housekeeping(now, ctx);
        }
    }

    /// The control channel came back (see [`Engine::reannounce`]): tell
    /// intercept this session's route again, and resend the first segment
    /// the target has not acknowledged. Returns whether a route was queued.
    ///
    /// [`Engine::reannounce`]: crate::session::Engine::reannounce
    pub fn reannounce(&mut self, now: u64, ctx: &mut Ctx) -> bool {
        if !self.has_target_connection() {
            return false;
        }
        let announced = ctx.cfg.send_routes;
        self.announce_route(ctx);
        if self.is_syn_sent() {
            self.retransmit_syn(ctx);
        } else if self.stream.outstanding() {
            self.retransmit(ctx);
            self.timers.set(Timer::Retransmit, now + self.recovery.rto);
        }
        announced
    }

    /// A response tick: acknowledge what must be, and when no response
    /// data came for a whole tick after some did, the response is
    /// complete.
    fn on_response_tick(&mut self, now: u64, ctx: &mut Ctx) {
        if self.pacing.response_since_tick {
            self.pacing.response_since_tick = false;
            // Ack now only what must be: the rest rides on the next
            // request, or goes when the delayed-ACK time is up.
            if self.ack_due(now, ctx) {
                self.send_ack(ctx);
            }
            let rtt = self.pacing.rtt;
            let next = if self.pacing.last_response_full && self.stream.pending_len() == 0 {
                rtt
            } else {
                (rtt / 2).max(1)
            };
            self.timers.set(Timer::ResponseTick, now + next);
            return;
        }
        // No response data for a whole interval after some came.
        if self.stream.unanswered_len() > 0 {
            self.timers
                .set(Timer::AnswerQuiet, self.peer.last_response + GAP_QUIET_MS);
        }
        if self.pacing.waiting && self.pacing.response_for_request {
            // The response is complete; release the next request. (A quiet
            // period left over from the previous response must not release
            // it: that pipelined requests the target then answered late.)
            self.pacing.waiting = false;
            self.pump(now, ctx);
        }
    }

    /// The target has been silent since `GAP_QUIET_MS` after its last
    /// response data, its answers not the sizes of online's: it has
    /// answered all it had acknowledged by then (a shorter silence may be
    /// a server stopping, its requests unanswered).
    fn on_answer_quiet(&mut self, now: u64) {
        let quiet_at = self.peer.last_response + GAP_QUIET_MS;
        if now < quiet_at {
            self.timers.set(Timer::AnswerQuiet, quiet_at);
            return;
        }
        // Answers that end exactly where online's did before a request
        // sent say that the sizes agree: that request and those after it
        // are unanswered (a server that stalled with them unread), not
        // answered in fewer bytes.
        let (close, rcv_nxt) = (&self.close, self.peer.rcv_nxt);
        if self
            .stream
            .unanswered_acks()
            .any(|ack| close.answered_exactly(ack, rcv_nxt))
        {
            return;
        }
        self.stream.answered_by_silence();
    }

    /// The target said nothing within the response wait.
    fn on_response_wait_expired(&mut self, now: u64, ctx: &mut Ctx) {
        let p = &self.pacing;
        if p.waiting && !p.response_since_tick && !self.timers.is_armed(Timer::ResponseTick) {
            ctx.note(Event::ResponseWaitExpired);
            self.pacing.waiting = false;
            self.pump(now, ctx);
        } else if !p.any_request_sent() && !p.greeting_received {
            // The greeting never came: send the first request anyway.
            ctx.note(Event::ResponseWaitExpired);
            self.pacing.greeting_received = true;
            self.pump(now, ctx);
        }
    }

    /// The housekeeping verdicts: a handshake, a hole or an idle session
    /// that has lasted too long is given up.
    fn housekeeping(&mut self, now: u64, ctx: &mut Ctx) {
        let cfg = ctx.cfg;
        self.timers.set(Timer::Gc, now + cfg.gc_interval_ms);
        if !self.is_established() {
            // The target's SYN-ACK cannot reach us while an intercept is
            // down: the handshake's time runs from its return at the
            // earliest (the SYN goes again then, see `reannounce`).
            let since = self.handshake.started.max(ctx.intercept_back_at);
            if !ctx.intercept_down && now.saturating_sub(since) >= cfg.handshake_timeout_ms {
                self.obsolete(now, Loss::HandshakeTimeout, ctx);
            }
            return;
        }
        if self
            .stream
            .gap_since
            .is_some_and(|t| now.saturating_sub(t) >= cfg.gap_timeout_ms)
        {
            self.obsolete(now, Loss::CaptureGap, ctx);
            return;
        }
        let idle = now.saturating_sub(self.peer.last_response);
        if idle > cfg.session_timeout_ms {
            let keep = self.stream.pending_len() == 0
                && self.pacing.any_request_sent()
                && idle <= cfg.keepalive_timeout_ms;
            if !keep {
                self.obsolete(now, Loss::TimedOut, ctx);
            }
        }
    }
}
