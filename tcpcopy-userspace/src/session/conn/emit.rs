//! The packets a session sends: captured segments rewritten onto the
//! target connection (its acknowledgement, timestamps and window), and the
//! ones tcpcopy makes up (ACK, RST, FIN, SYN).

use super::{Ctx, Phase, Session, DELAYED_ACK_MS};
use crate::{
    proto::RouteMsg,
    session::{
        event::{Event, Sent},
        segment::ClientSegment,
        timers::Timer,
    },
    wire::{
        build::{self as emit, SegmentSpec},
        SeqNumber, TcpFlags,
    },
};

const FIN: u8 = TcpFlags::FIN;
const SYN: u8 = TcpFlags::SYN;
const RST: u8 = TcpFlags::RST;
const PSH: u8 = TcpFlags::PSH;
const ACK: u8 = TcpFlags::ACK;

/// Is a made-up packet a first transmission (counted) or a resend?
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Transmission {
    First,
    Again,
}

impl Session {
    pub(super) fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Tell intercept where this session's responses go (CLIENT_ADD).
    pub(super) fn announce_route(&self, ctx: &mut Ctx) {
        if ctx.cfg.send_routes {
            ctx.routes
                .push_back(RouteMsg::client_add(self.client, self.target));
            ctx.note(Event::RouteAnnounced);
        }
    }

    /// The captured SYN, as it goes to the target; returns its bytes.
    pub(super) fn emit_syn(&mut self, syn: &ClientSegment, ctx: &mut Ctx) -> Vec<u8> {
        ctx.packets
            .emit(&SegmentSpec {
                src: self.client,
                dst: self.target,
                seq: syn.seq,
                ack: 0,
                flags: syn.flags & !(ACK | PSH),
                window: syn.window,
                options: &syn.options,
                payload: &[],
                ip_id: syn.ip_id,
                ttl: syn.ttl,
                tos: syn.tos,
            })
            .to_vec()
    }

    /// A SYN made up for a session without one (captured mid-stream, or
    /// reconnecting); returns its bytes.
    pub(super) fn emit_fabricated_syn(&mut self, ctx: &mut Ctx) -> Vec<u8> {
        let opts = emit::syn_options(ctx.cfg.syn_mss(self.target.0));
        ctx.packets
            .emit(&SegmentSpec {
                src: self.client,
                dst: self.target,
                seq: self.stream.isn().0,
                ack: 0,
                flags: SYN,
                window: 65535,
                options: &opts,
                payload: &[],
                ip_id: self.ip_id.wrapping_sub(1),
                ttl: 64,
                tos: 0,
            })
            .to_vec()
    }

    fn ts_opts(&self) -> Option<[u8; 12]> {
        self.peer
            .ts_recent
            .map(|r| emit::ts_options(self.peer.last_tsval, r))
    }

    /// A packet tcpcopy makes up (no captured counterpart).
    pub(super) fn fabricate(
        &mut self,
        seq: SeqNumber,
        ack: SeqNumber,
        flags: u8,
        tx: Transmission,
        ctx: &mut Ctx,
    ) {
        let id = self.next_ip_id();
        let ts = if flags & RST == 0 {
            self.ts_opts()
        } else {
            None
        };
        ctx.packets.emit(&SegmentSpec {
            src: self.client,
            dst: self.target,
            seq: seq.0,
            ack: ack.0,
            flags,
            window: 65535,
            options: ts.as_ref().map(|o| &o[..]).unwrap_or(&[]),
            payload: &[],
            ip_id: id,
            ttl: 64,
            tos: 0,
        });
        if flags & ACK != 0 {
            self.note_ack_sent(ack, ctx);
        }
        if tx == Transmission::First {
            ctx.note(Event::Sent(if flags & RST != 0 {
                Sent::Rst
            } else if flags & FIN != 0 {
                Sent::Fin
            } else {
                Sent::Ack
            }));
        }
    }

    /// The sequence number of a segment without data: the send position,
    /// unless a segment beyond the target's window is in flight (sent as a
    /// window probe; the target dropped it), then the window's right edge,
    /// as Linux does (`tcp_acceptable_seq`). Beyond the window the target
    /// discards the segment, and with it the acknowledgement of its
    /// responses: a target that waits for that to write its next response
    /// and so stops reading never opens its window again.
    fn acceptable_seq(&self) -> SeqNumber {
        let window_end = self.stream.una + self.peer.window;
        if self.stream.nxt > window_end {
            return self.stream.seq_at(window_end);
        }
        self.stream
            .seq_at(self.stream.nxt)
            .plus(self.stream.fin_sent as u32)
    }

    /// A segment carrying acknowledgement `ack` went out.
    fn note_ack_sent(&mut self, ack: SeqNumber, ctx: &mut Ctx) {
        if self.peer.acknowledged(ack) {
            self.timers.stop(Timer::AckOwed);
            if self.is_established() && self.handshake.held_ack.take().is_some() {
                // The client's handshake ACK, owed since the SYN-ACK:
                // this segment carries it.
                ctx.note(Event::PureAckAbsorbed);
            }
        }
    }

    /// Response data arrived: an ACK is owed from now on.
    pub(super) fn owe_ack(&mut self, now: u64) {
        self.timers
            .set_if_unarmed(Timer::AckOwed, now + DELAYED_ACK_MS);
    }

    /// An ACK of response data is due now: it is owed for the delayed-ACK
    /// time, or two full segments or more are unacknowledged (as Linux
    /// acknowledges every second full segment).
    pub(super) fn ack_due(&self, now: u64, ctx: &Ctx) -> bool {
        self.timers.is_due(Timer::AckOwed, now)
            || self.peer.unacknowledged() >= 2 * ctx.cfg.mss as u32
    }

    pub(super) fn send_ack(&mut self, ctx: &mut Ctx) {
        let seq = self.acceptable_seq();
        self.fabricate(seq, self.peer.rcv_nxt, ACK, Transmission::First, ctx);
    }

    pub(super) fn send_rst(&mut self, ctx: &mut Ctx) {
        let seq = self.acceptable_seq();
        self.fabricate(seq, self.peer.rcv_nxt, RST | ACK, Transmission::First, ctx);
    }

    pub(super) fn send_fin(&mut self, seq: SeqNumber, tx: Transmission, ctx: &mut Ctx) {
        self.fabricate(seq, self.peer.rcv_nxt, FIN | ACK, tx, ctx);
    }

    /// Send a captured segment from `seq` on, with the current ack and its
    /// timestamps rewritten.
    pub(super) fn emit_captured(
        &mut self,
        seg: &ClientSegment,
        seq: SeqNumber,
        flags: u8,
        ctx: &mut Ctx,
    ) {
        let mut options = seg.options;
        if let (Some(off), Some(recent)) = (seg.ts_offset, self.peer.ts_recent) {
            let tsval = self.peer.client_tsval(seg.tsval.unwrap_or(0));
            emit::rewrite_ts(&mut options, off, tsval, recent);
        } else if seg.ts_offset.is_some() && self.peer.ts_recent.is_none() && self.is_established()
        {
            // The target does not use timestamps: leave the option out.
            options = seg.options_without_timestamps();
        }
        let window = if self.handshake.fabricated {
            65535
        } else {
            seg.window
        };
        self.ip_id = seg.ip_id;
        let ack = if flags & ACK != 0 {
            self.note_ack_sent(self.peer.rcv_nxt, ctx);
            self.peer.rcv_nxt
        } else {
            SeqNumber(0)
        };
        ctx.packets.emit(&SegmentSpec {
            src: self.client,
            dst: self.target,
            seq: seq.0,
            ack: ack.0,
            flags,
            window,
            options: &options,
            payload: seg.payload_from(seq),
            ip_id: seg.ip_id,
            ttl: seg.ttl,
            tos: seg.tos,
        });
    }

    /// Resend what the target has not acknowledged first: the first
    /// unacknowledged segment, or the FIN.
    pub(super) fn retransmit(&mut self, ctx: &mut Ctx) {
        ctx.note(Event::Retransmitted);
        if let Some(f) = self.stream.first_unacked() {
            let seq = self.stream.seq_at(self.stream.una);
            let seg = f.seg.clone().trimmed_to(seq);
            self.emit_captured(&seg, seq, ACK | (seg.flags & PSH), ctx);
        } else if self.stream.fin_sent {
            let seq = self
                .stream
                .seq_at(self.stream.fin_off.unwrap_or(self.stream.nxt));
            self.send_fin(seq, Transmission::Again, ctx);
        }
    }

    /// Resend the pending SYN.
    pub(super) fn retransmit_syn(&mut self, ctx: &mut Ctx) {
        if let Phase::SynSent { syn } = &self.phase {
            ctx.packets.push(syn);
            ctx.note(Event::Retransmitted);
        }
    }
}
