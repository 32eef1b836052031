//! The target's side: records of its responses (headers only, from
//! intercept) complete the handshake, acknowledge what we sent, carry
//! response data to acknowledge and pace by, or close the connection.

use super::{
    emit::Transmission, Ctx, Phase, Refused, Session, REFUSED_RETRY_FIRST_MS, REFUSED_RETRY_MAX_MS,
};
use crate::{
    proto::{ResponseExtras, ResponseHeader},
    session::{
        event::{Event, Loss},
        target::RecoveryStep,
        timers::Timer,
    },
    wire::{SeqNumber, TcpFlags},
};

const FIN: u8 = TcpFlags::FIN;
const SYN: u8 = TcpFlags::SYN;
const RST: u8 = TcpFlags::RST;
const ACK: u8 = TcpFlags::ACK;

impl Session {
    /// A record of the target's, with the first bytes of its payload and
    /// how long intercept held it, when intercept sends them
    /// (`--verdict`).
    pub fn on_response(
        &mut self,
        now: u64,
        h: &ResponseHeader,
        extras: ResponseExtras,
        ctx: &mut Ctx,
    ) {
        // Only new data: a retransmitted answer is not the next one's.
        let fresh = self.is_established() && SeqNumber(h.seq).since(self.peer.rcv_nxt) >= 0;
        if let Some(v) = &mut self.verdict {
            if fresh && h.payload_len > 0 && !extras.prefix.is_empty() {
                let us = ctx.verdict_clock(now);
                v.on_target(us, h.seq, h.payload_len, extras, ctx.verdict());
            }
        }
        match self.phase {
            Phase::Lingering { .. } | Phase::Over => {
                if h.flags & RST == 0 && (h.payload_len > 0 || h.flags & FIN != 0) {
                    // Data for a finished session: reset the target's side.
                    let end = SeqNumber(h.seq)
                        .plus(h.payload_len)
                        .plus((h.flags & FIN != 0) as u32);
                    self.reset_stray(h, end, ctx);
                }
            }
            Phase::Closed | Phase::SynSent { .. } => {
                ctx.note(Event::Response);
                self.on_handshake_response(now, h, ctx);
            }
            Phase::Established => {
                ctx.note(Event::Response);
                self.on_established_response(now, h, ctx);
            }
        }
    }

    /// Answer a stray segment of the target, which ends at `end`, with an
    /// RST.
    fn reset_stray(&mut self, h: &ResponseHeader, end: SeqNumber, ctx: &mut Ctx) {
        self.fabricate(SeqNumber(h.ack), end, RST | ACK, Transmission::First, ctx);
    }

    /// A record while no connection is established.
    fn on_handshake_response(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        if !self.is_syn_sent() {
            return;
        }
        let answers_our_syn = SeqNumber(h.ack) == self.stream.isn().plus(1);
        if h.flags & SYN != 0 && h.flags & ACK != 0 && answers_our_syn {
            self.on_syn_ack(now, h, ctx);
        } else if h.flags & RST != 0 {
            if answers_our_syn {
                ctx.note(Event::ResponseRst);
                self.on_refused(now, ctx);
            }
        } else {
            // An answer from an older incarnation of this 4-tuple: clear
            // it with an RST and try again after an RTT.
            let syn_or_fin = h.flags & (SYN | FIN) != 0;
            let end = SeqNumber(h.seq).plus(h.payload_len).plus(syn_or_fin as u32);
            self.reset_stray(h, end, ctx);
            self.phase = Phase::Closed;
            self.handshake.fabricated = true;
            self.handshake.reconnecting = true;
            self.timers.set(Timer::Reconnect, now + self.pacing.rtt);
        }
    }

    /// The target refused the connection (its port is closed: the server
    /// may be restarting). Ask again, backing off, for `retry_refused_ms`;
    /// then give the session up.
    fn on_refused(&mut self, now: u64, ctx: &mut Ctx) {
        let r = self.handshake.refused.get_or_insert(Refused {
            since: now,
            times: 0,
        });
        if now.saturating_sub(r.since) >= ctx.cfg.retry_refused_ms {
            // Given up; the rest of the flow is dropped under the same
            // reason while it lasts (no new connection per segment).
            self.finish(now, Loss::TargetRefused, ctx);
            return;
        }
        let delay = (REFUSED_RETRY_FIRST_MS << r.times.min(10)).min(REFUSED_RETRY_MAX_MS);
        r.times += 1;
        ctx.note(Event::RefusedRetry);
        self.phase = Phase::Closed;
        self.handshake.fabricated = true;
        self.handshake.reconnecting = true;
        self.timers.set(Timer::Reconnect, now + delay);
    }

    fn on_syn_ack(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        self.handshake.refused = None;
        self.timers.stop(Timer::SynRetransmit);
        ctx.note(Event::Connected);
        self.peer.on_syn_ack(now, h);
        self.phase = Phase::Established;
        self.timers.set(Timer::Gc, now + ctx.cfg.gc_interval_ms);
        // The handshake's last ACK is owed, not sent: the first data (or
        // FIN) acknowledges the SYN-ACK itself, so a bare ACK before it
        // would be one more packet, and one more pass through the target's
        // stack, for nothing. It goes at the end of this turn (a timer due
        // now) unless a segment sent first carries it: one the session
        // holds already, or one the worker captures in the same turn.
        if let Some(ack) = &self.handshake.held_ack {
            self.pacing.last_captured_ack = Some(ack.ack);
        }
        if self.handshake.held_ack.is_some() || self.handshake.fabricated {
            self.timers.set(Timer::AckOwed, now);
        }
        self.pump(now, ctx);
    }

    fn on_established_response(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        self.peer.heard(now, h);
        if h.flags & RST != 0 {
            ctx.note(Event::ResponseRst);
            tracing::debug!(
                client = ?self.client, seq = h.seq, ack = h.ack, stream = ?self.stream,
                rcv_nxt = ?self.peer.rcv_nxt, rst_held = self.close.rst.is_some(),
                "the target reset the connection"
            );
            self.target_closed(now, false, ctx);
            return;
        }
        self.on_ack(now, h, ctx);
        if h.payload_len > 0 {
            self.on_response_data(now, h, ctx);
        }
        if h.flags & FIN != 0 {
            ctx.note(Event::ResponseFin);
            self.peer.rcv_nxt = SeqNumber(h.seq).plus(h.payload_len).plus(1);
            if self.stream.fin_sent {
                self.send_ack(ctx);
                if self.close.rst.take().is_some() {
                    // A client RST held behind the answer: our FIN already
                    // closed for it, as for a RST turned into a FIN.
                    ctx.note(Event::Replayed { bytes: 0 });
                }
                self.finish(now, Loss::TargetClosed, ctx);
                return;
            }
            self.target_closed(now, true, ctx);
            return;
        }
        self.pump(now, ctx);
    }

    /// The acknowledgement and window of a record: release what it
    /// acknowledges, recover what it says is lost.
    fn on_ack(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        let ack_off = self.stream.offset_of(SeqNumber(h.ack));
        if ack_off > self.stream.una as i64 {
            self.stream.acknowledge(ack_off as u64);
            let step = self
                .recovery
                .on_ack(self.stream.una, self.stream.nxt, ctx.cfg.rto_ms);
            if self.stream.outstanding() {
                self.timers.set(Timer::Retransmit, now + self.recovery.rto);
            } else {
                self.timers.stop(Timer::Retransmit);
            }
            if step == RecoveryStep::Retransmit {
                self.retransmit(ctx);
            }
        } else if h.payload_len == 0
            && h.flags & FIN == 0
            && self.stream.outstanding()
            && self.peer.is_duplicate_ack(h)
            && self.recovery.on_duplicate_ack(self.stream.nxt) == RecoveryStep::FastRetransmit
        {
            ctx.note(Event::FastRetransmit);
            self.retransmit(ctx);
        }
        self.peer.note_header(h);
    }

    /// Response data: acknowledge it (now or delayed), and let it pace
    /// the next request.
    fn on_response_data(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        ctx.note(Event::ResponsePayload);
        if self.peer.receive(SeqNumber(h.seq).plus(h.payload_len)) {
            self.stream.answer_heard();
        } else {
            // The target retransmitted: our ACK was lost; ack again now.
            self.send_ack(ctx);
        }
        // A request is answered once the target has sent as much response
        // as the client had before the next one; all are once its answer
        // to the last one sent has begun. (Sizes as online's; a target
        // whose answers differ is caught up with by its silence, see
        // `on_answer_quiet`.)
        let (close, rcv_nxt) = (&self.close, self.peer.rcv_nxt);
        if self
            .stream
            .last_sent_ack()
            .is_some_and(|ack| close.answer_began(ack, rcv_nxt))
        {
            self.stream.answered_up_to_una();
        } else {
            self.stream
                .answered_where(|ack| close.answered(Some(ack), rcv_nxt));
        }
        if !self.pacing.any_request_sent() {
            // A server-first greeting: acknowledge it and go on.
            self.pacing.greeting_received = true;
            self.send_ack(ctx);
            return;
        }
        self.pacing.response_since_tick = true;
        self.pacing.response_for_request = true;
        self.timers.stop(Timer::ResponseWait);
        let tot = h.ip_total_len;
        self.pacing.last_response_full =
            tot >= 2048 || [576, 1492, 1500, ctx.cfg.mtu].contains(&tot);
        self.timers
            .set_if_unarmed(Timer::ResponseTick, now + self.pacing.rtt);
        self.owe_ack(now);
        if self.pacing.waiting && self.pacing.rtt <= 1 && self.stream.pending_len() > 0 {
            // LAN client (RTT ≤ 1 ms): the next request may follow the
            // first response segment, as the C tool does.
            self.pacing.waiting = false;
        }
    }

    /// The target closed (FIN) or reset the connection.
    fn target_closed(&mut self, now: u64, by_fin: bool, ctx: &mut Ctx) {
        if by_fin {
            // A target closing gracefully answers the request it serves,
            // and that last answer is shorter than production's
            // ("Connection: close"): an answer begun before a FIN counts.
            let (close, data_end) = (&self.close, self.peer.rcv_nxt.minus(1));
            self.stream
                .answered_once_begun(|ack| close.answer_began(ack, data_end));
        }
        if self.stream.has_unsent() || self.stream.may_rewind() {
            // Reconnect: a new connection carries what the target did not
            // acknowledge, and what it acknowledged and never answered
            // (a restarting server had read it and dropped it).
            if by_fin {
                self.send_ack(ctx);
                self.send_rst(ctx);
            }
            ctx.note(Event::Reconnected);
            tracing::debug!(client = ?self.client, by_fin, stream = ?self.stream, close = ?self.close,
                rcv_nxt = ?self.peer.rcv_nxt, "target closed: reconnecting");
            self.handshake.reconnecting = true;
            // Not answered, so not known to have been served: it goes
            // again on the new connection, and its first-transmission
            // count moves with it (each captured segment keeps exactly
            // one disposition).
            let requeued = self.stream.requeue_unanswered();
            for bytes in requeued.segments {
                ctx.note(Event::Requeued { bytes });
            }
            for _ in 0..requeued.duplicates {
                ctx.note(Event::Duplicate);
            }
            if self.stream.fin_sent && self.close.fin_bare {
                // The bare FIN goes again too: it is buffered once more,
                // not replayed (found by the `packet` fuzz target).
                ctx.note(Event::Requeued { bytes: 0 });
            }
            self.restart_connection(now);
            return;
        }
        // Nothing left to say: let a captured FIN go if it can, else reset.
        if by_fin {
            self.pacing.waiting = false;
            // The client's FIN, when it goes now, acknowledges the target's
            // FIN itself: a bare ACK before it would be a packet, and a pass
            // through the target's stack, for nothing. Otherwise the ACK
            // goes first (spec 4.14.2: ACK of the FIN, then what follows).
            let fin_goes = self.stream.fin_off.is_some();
            if !fin_goes {
                self.send_ack(ctx);
            }
            self.pump(now, ctx);
            if fin_goes && !self.stream.fin_sent {
                self.send_ack(ctx); // held after all
            }
            if self.is_lingering() {
                return;
            }
            if !self.stream.fin_sent {
                self.send_rst(ctx);
            }
        }
        self.finish(now, Loss::TargetClosed, ctx);
    }
}
