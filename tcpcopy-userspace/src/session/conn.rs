//! One replayed connection: the client TCP stack tcpcopy impersonates
//! toward the target. Fed captured client segments and the target's
//! response headers; writes the packets to send into a [`Ctx`]. Sans-IO:
//! time comes in as milliseconds.

use super::{config::Config, counters::Counters, outbox::Outbox};
use crate::{
    proto::{ResponseHeader, RouteMsg},
    wire::build::{self as emit, SegmentSpec},
};
use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
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
/// A hole may be skipped once the target has acknowledged everything
/// before it and sent nothing for this long: it has answered what it got
/// (pipelined requests included: it has had the whole `gap_skip_ms`).
const GAP_QUIET_MS: u64 = 200;

/// A captured client segment, already rewritten to its replayed addresses.
#[derive(Clone, Debug)]
pub struct ClientSegment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub ts_offset: Option<usize>,
    pub tsval: Option<u32>,
    pub payload: Vec<u8>,
    pub ip_id: u16,
    pub ttl: u8,
    pub tos: u8,
}

impl ClientSegment {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    pub fn len(&self) -> u64 {
        self.payload.len() as u64
    }
    pub fn is_pure_ack(&self) -> bool {
        self.payload.is_empty() && self.flags & (SYN | FIN | RST) == 0
    }
}

/// Where the engine's outputs go while a session runs.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub c: &'a mut Counters,
    pub packets: &'a mut Outbox,
    pub routes: &'a mut VecDeque<RouteMsg>,
    /// Memory ran out (`-m`): a session that keeps buffering is given up.
    pub shed: bool,
}

/// Why a session's unsent data was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    TargetRefused,
    HandshakeTimeout,
    TimedOut,
    CaptureGap,
    BufferFull,
    TargetClosed,
    ClientReset,
    Shutdown,
    MemoryLimit,
}

impl Loss {
    fn counter(self, c: &mut Counters) -> &mut u64 {
        match self {
            Loss::TargetRefused => &mut c.lost_target_refused,
            Loss::HandshakeTimeout => &mut c.lost_handshake_timeout,
            Loss::TimedOut => &mut c.lost_timed_out,
            Loss::CaptureGap => &mut c.lost_capture_gap,
            Loss::BufferFull => &mut c.lost_buffer_full,
            Loss::TargetClosed => &mut c.lost_target_closed,
            Loss::ClientReset => &mut c.lost_client_reset,
            Loss::Shutdown => &mut c.lost_shutdown,
            Loss::MemoryLimit => &mut c.lost_memory_limit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No SYN sent on the current target connection.
    Closed,
    SynSent,
    Established,
    /// Finished; absorbing late packets until destroyed.
    Lingering,
}

pub struct Session {
    pub client: (Ipv4Addr, u16),
    pub target: (Ipv4Addr, u16),
    pub phase: Phase,
    /// Set when the engine must remove the session now.
    pub destroy: bool,
    /// Deadline the engine's timer heap holds for this session.
    pub scheduled: Option<u64>,
    /// The handshake is fabricated (mid-stream start or reconnect).
    fabricated: bool,
    /// Sequence number of stream offset 0 (the byte after the client ISN).
    base_seq: u32,
    /// Captured data not sent yet, by stream offset.
    pending: BTreeMap<u64, ClientSegment>,
    /// Sent, not yet acknowledged by the target.
    unacked: VecDeque<(u64, ClientSegment)>,
    snd_una: u64,
    snd_nxt: u64,
    /// End of the highest captured data (sent or not).
    captured_end: u64,
    /// Stream offset of the client's FIN once captured.
    fin_off: Option<u64>,
    /// The FIN came on a bare segment (a disposition of its own).
    fin_bare: bool,
    /// The captured FIN's (or RST's) ack: how much of the online server's
    /// response the client had when it closed.
    close_ack: Option<u32>,
    /// (captured ack, target `rcv_nxt`) when the first request went on
    /// this target connection: maps the client's response offsets to the
    /// target's.
    resp_anchor: Option<(u32, u32)>,
    /// A held close is looked at again at this time.
    close_hold_at: Option<u64>,
    fin_sent: bool,
    rst: Option<ClientSegment>,
    held_ack: Option<ClientSegment>,
    /// The furthest the client acknowledged the online server's response
    /// stream, on any captured segment: with `resp_anchor`, how much
    /// response the target owes before this session is answered.
    client_acked: Option<u32>,
    // target side
    target_isn: u32,
    rcv_nxt: u32,
    peer_window: u64,
    wscale: u8,
    ts_recent: Option<u32>,
    last_tsval: u32,
    last_resp: (u32, u32, u16),
    dup_acks: u8,
    /// In loss recovery until the target acknowledges this offset (the
    /// send position when it began): each partial ACK resends the next
    /// hole at once (NewReno), so many losses cost an RTT each, not an RTO.
    recover: Option<u64>,
    // pacing
    waiting: bool,
    /// Sending the backlog pipelined (see `Config::catch_up_segments`).
    catching_up: bool,
    /// Requests went pipelined on this target connection: some may still
    /// wait, unanswered, in the target's buffer.
    pipelined: bool,
    cur_req_ack: u32,
    resp_since_tick: bool,
    /// The acknowledgement the last segment sent carried.
    acked_to: u32,
    /// Response data is unacknowledged: an ACK goes by this time unless a
    /// request carries it first (Linux's delayed ACK, [`DELAYED_ACK_MS`]).
    ack_owed_at: Option<u64>,
    /// Response data arrived since the current request was sent: only
    /// then can a quiet period mean "the response is complete".
    resp_for_request: bool,
    last_resp_full: bool,
    any_request_sent: bool,
    last_sent_captured_ack: Option<u32>,
    greeting_received: bool,
    rtt: u64,
    syn_time: Option<u64>,
    // timers
    handshake_started: u64,
    /// The SYN last sent, resent every `SYN_RTO` until the SYN-ACK comes
    /// (a SYN lost to a full listen queue must not cost the session).
    syn_sent: Option<Vec<u8>>,
    syn_retx_at: Option<u64>,
    last_response: u64,
    delay_ack_at: Option<u64>,
    rto_at: Option<u64>,
    rto_cur: u64,
    retries: u32,
    reconnect_at: Option<u64>,
    reconnecting: bool,
    /// Release a held request if the target sends nothing for this long.
    wait_deadline: Option<u64>,
    gc_at: u64,
    gap_since: Option<u64>,
    /// When to look at a hole in the captured stream again (`gap_skip_ms`).
    gap_skip_at: Option<u64>,
    ip_id: u16,
}

impl Session {
    /// A session started by a captured SYN, which is sent right away.
    pub fn from_syn(
        now: u64,
        client: (Ipv4Addr, u16),
        target: (Ipv4Addr, u16),
        syn: ClientSegment,
        ctx: &mut Ctx,
    ) -> Session {
        let mut s = Session::new(now, client, target, syn.seq.wrapping_add(1), &syn, ctx.cfg);
        s.syn_time = Some(now);
        s.send_route(ctx);
        s.phase = Phase::SynSent;
        s.last_tsval = syn.tsval.unwrap_or(0);
        let pkt = ctx.packets.emit(&SegmentSpec {
            src: s.client,
            dst: s.target,
            seq: syn.seq,
            ack: 0,
            flags: syn.flags & !(ACK | PSH),
            window: syn.window,
            options: &syn.options,
            payload: &[],
            ip_id: syn.ip_id,
            ttl: syn.ttl,
            tos: syn.tos,
        });
        s.syn_sent = Some(pkt.to_vec());
        s.syn_retx_at = Some(now + SYN_RTO_MS);
        ctx.c.packets_sent += 1;
        ctx.c.syns_sent += 1;
        ctx.c.replayed += 1;
        s
    }

    /// A session captured mid-stream: its first payload segment starts the
    /// stream; a SYN is fabricated by the first pump.
    pub fn mid_stream(
        now: u64,
        client: (Ipv4Addr, u16),
        target: (Ipv4Addr, u16),
        first: &ClientSegment,
        rtt: u64,
        cfg: &Config,
    ) -> Session {
        let mut s = Session::new(now, client, target, first.seq, first, cfg);
        s.fabricated = true;
        s.rtt = rtt.max(1);
        s
    }

    fn new(
        now: u64,
        client: (Ipv4Addr, u16),
        target: (Ipv4Addr, u16),
        base_seq: u32,
        seg: &ClientSegment,
        cfg: &Config,
    ) -> Session {
        Session {
            client,
            target,
            phase: Phase::Closed,
            destroy: false,
            scheduled: None,
            fabricated: false,
            base_seq,
            pending: BTreeMap::new(),
            unacked: VecDeque::new(),
            snd_una: 0,
            snd_nxt: 0,
            captured_end: 0,
            fin_off: None,
            fin_bare: false,
            close_ack: None,
            resp_anchor: None,
            close_hold_at: None,
            fin_sent: false,
            rst: None,
            held_ack: None,
            client_acked: None,
            target_isn: 0,
            rcv_nxt: 0,
            peer_window: 65535,
            wscale: 0,
            ts_recent: None,
            last_tsval: 0,
            last_resp: (0, 0, 0),
            dup_acks: 0,
            recover: None,
            waiting: false,
            catching_up: false,
            pipelined: false,
            cur_req_ack: 0,
            resp_since_tick: false,
            acked_to: 0,
            ack_owed_at: None,
            resp_for_request: false,
            last_resp_full: false,
            any_request_sent: false,
            last_sent_captured_ack: None,
            greeting_received: false,
            rtt: 1,
            syn_time: None,
            handshake_started: now,
            syn_sent: None,
            syn_retx_at: None,
            last_response: now,
            delay_ack_at: None,
            rto_at: None,
            rto_cur: cfg.rto_ms,
            retries: 0,
            reconnect_at: None,
            reconnecting: false,
            wait_deadline: None,
            gc_at: now + cfg.handshake_timeout_ms,
            gap_since: None,
            gap_skip_at: None,
            ip_id: seg.ip_id,
        }
    }

    // ---- sequence helpers

    fn seq_at(&self, off: u64) -> u32 {
        self.base_seq.wrapping_add(off as u32)
    }
    /// Stream offset of `seq`, relative to the send position (negative:
    /// before the stream started).
    fn off(&self, seq: u32) -> i64 {
        let d = seq.wrapping_sub(self.seq_at(self.snd_nxt)) as i32 as i64;
        self.snd_nxt as i64 + d
    }
    /// The client's ISN on the current target connection.
    fn isn(&self) -> u32 {
        self.seq_at(self.snd_una).wrapping_sub(1)
    }
    /// Is `seq` beyond everything this session has seen? (a new connection
    /// reusing the port without a captured SYN).
    pub fn is_beyond(&self, seq: u32) -> bool {
        self.off(seq) >= self.captured_end.max(self.snd_nxt) as i64
    }
    /// Captured segments, not yet sent, that belong to a newer connection
    /// on this port whose SYN (`syn_seq`) was captured after them (its
    /// packets came in on two RX queues): taken out for the new session.
    pub fn take_newer(&mut self, syn_seq: u32) -> Vec<ClientSegment> {
        let from = self.off(syn_seq.wrapping_add(1));
        if from <= self.snd_nxt as i64 {
            return Vec::new();
        }
        let later = self.pending.split_off(&(from as u64));
        let end = self
            .pending
            .iter()
            .next_back()
            .map_or(0, |(o, s)| o + s.len());
        self.captured_end = self.snd_nxt.max(end);
        if self
            .pending
            .keys()
            .next()
            .is_none_or(|o| *o <= self.snd_nxt)
        {
            self.gap_since = None;
        }
        later.into_values().collect()
    }

    /// A SYN that belongs to this mid-stream session's own connection and
    /// was merely captured late (its data went ahead of it, e.g. read from
    /// another RX queue first): its sequence lies just before the first
    /// byte captured.
    pub fn is_late_syn(&self, seq: u32) -> bool {
        let ahead = self.base_seq.wrapping_sub(seq.wrapping_add(1));
        self.fabricated && ahead < (1 << 20)
    }
    pub fn captured_isn(&self) -> u32 {
        self.base_seq.wrapping_sub(1)
    }
    /// Has the current target connection carried pipelined requests?
    pub fn is_pipelined(&self) -> bool {
        self.pipelined
    }
    /// May the target still be working through requests this session sent
    /// pipelined? They can sit acknowledged but unread in its buffer, and
    /// a reset (tcpcopy stopping, an offline replay ending) would discard
    /// them: so until the target has answered as much as the client had
    /// received, or has been quiet for `CLOSE_QUIET_MS`.
    pub fn awaiting_target(&self, now: u64) -> bool {
        self.phase == Phase::Established
            && self.pipelined
            && !self.answered(self.close_ack.or(self.client_acked))
            && now.saturating_sub(self.last_response) < CLOSE_QUIET_MS
    }
    pub fn buffered(&self) -> u64 {
        self.pending.len() as u64
            + self.rst.is_some() as u64
            + self.held_ack.is_some() as u64
            + (self.fin_bare && !self.fin_sent) as u64
    }
    fn outstanding(&self) -> bool {
        self.snd_una < self.snd_nxt || (self.fin_sent && !self.fin_acked())
    }
    fn fin_acked(&self) -> bool {
        // The FIN occupies offset fin_off; acked when snd_una passed it.
        matches!(self.fin_off, Some(f) if self.fin_sent && self.snd_una > f)
    }

    // ---- output helpers

    fn next_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    fn send_route(&self, ctx: &mut Ctx) {
        if ctx.cfg.send_routes {
            ctx.routes
                .push_back(RouteMsg::client_add(self.client, self.target));
            ctx.c.route_msgs += 1;
        }
    }

    fn ts_opts(&self) -> Option<[u8; 12]> {
        self.ts_recent.map(|r| emit::ts_options(self.last_tsval, r))
    }

    /// A packet tcpcopy makes up (no captured counterpart).
    fn fabricate(&mut self, seq: u32, ack: u32, flags: u8, ctx: &mut Ctx) {
        let id = self.next_id();
        let ts = if flags & RST == 0 {
            self.ts_opts()
        } else {
            None
        };
        ctx.packets.emit(&SegmentSpec {
            src: self.client,
            dst: self.target,
            seq,
            ack,
            flags,
            window: 65535,
            options: ts.as_ref().map(|o| &o[..]).unwrap_or(&[]),
            payload: &[],
            ip_id: id,
            ttl: 64,
            tos: 0,
        });
        if flags & ACK != 0 {
            self.note_ack_sent(ack);
        }
        ctx.c.packets_sent += 1;
        if flags & RST != 0 {
            ctx.c.rsts_sent += 1;
        } else if flags == ACK {
            ctx.c.acks_fabricated += 1;
        }
    }

    /// The sequence number of a segment without data: the send position,
    /// unless a segment beyond the target's window is in flight (sent as a
    /// window probe; the target dropped it), then the window's right edge,
    /// as Linux does (`tcp_acceptable_seq`). Beyond the window the target
    /// discards the segment, and with it the acknowledgement of its
    /// responses: a target that waits for that to write its next response
    /// and so stops reading never opens its window again.
    fn acceptable_seq(&self) -> u32 {
        let window_end = self.snd_una + self.peer_window;
        if self.snd_nxt > window_end {
            return self.seq_at(window_end);
        }
        self.seq_at(self.snd_nxt).wrapping_add(self.fin_sent as u32)
    }

    /// A segment carrying acknowledgement `ack` went out.
    fn note_ack_sent(&mut self, ack: u32) {
        self.acked_to = ack;
        if ack == self.rcv_nxt {
            self.ack_owed_at = None;
        }
    }

    /// An ACK of response data is due now: it is owed for the delayed-ACK
    /// time, or two full segments or more are unacknowledged (as Linux
    /// acknowledges every second full segment).
    fn ack_due(&self, now: u64, ctx: &Ctx) -> bool {
        self.ack_owed_at.is_some_and(|t| now >= t)
            || self.rcv_nxt.wrapping_sub(self.acked_to) >= 2 * ctx.cfg.mss as u32
    }

    fn send_ack(&mut self, ctx: &mut Ctx) {
        let seq = self.acceptable_seq();
        self.fabricate(seq, self.rcv_nxt, ACK, ctx);
    }

    fn send_rst(&mut self, ctx: &mut Ctx) {
        let seq = self.acceptable_seq();
        self.fabricate(seq, self.rcv_nxt, RST | ACK, ctx);
    }

    /// Emit a captured segment with the current ack, timestamps rewritten.
    fn emit_captured(&mut self, seg: &ClientSegment, seq: u32, flags: u8, ctx: &mut Ctx) {
        let mut opts_buf;
        let mut options: &[u8] = &seg.options;
        if let (Some(off), Some(recent)) = (seg.ts_offset, self.ts_recent) {
            let tsval = seg.tsval.unwrap_or(0);
            if tsval.wrapping_sub(self.last_tsval) as i32 > 0 {
                self.last_tsval = tsval;
            }
            opts_buf = seg.options.clone();
            emit::rewrite_ts(&mut opts_buf, off, self.last_tsval, recent);
            options = &opts_buf;
        } else if seg.ts_offset.is_some()
            && self.ts_recent.is_none()
            && self.phase == Phase::Established
        {
            // The target does not use timestamps: leave the option out.
            opts_buf = strip_ts(&seg.options, seg.ts_offset.unwrap_or(0));
            options = &opts_buf;
        }
        let window = if self.fabricated { 65535 } else { seg.window };
        self.ip_id = seg.ip_id;
        if flags & ACK != 0 {
            self.note_ack_sent(self.rcv_nxt);
        }
        ctx.packets.emit(&SegmentSpec {
            src: self.client,
            dst: self.target,
            seq,
            ack: if flags & ACK != 0 { self.rcv_nxt } else { 0 },
            flags,
            window,
            options,
            payload: &seg.payload[(seq.wrapping_sub(seg.seq) as usize).min(seg.payload.len())..],
            ip_id: seg.ip_id,
            ttl: seg.ttl,
            tos: seg.tos,
        });
    }

    // ---- client side

    /// A captured segment for this session (not a SYN: the engine handles
    /// those).
    pub fn on_client_segment(&mut self, now: u64, seg: ClientSegment, ctx: &mut Ctx) {
        if self.phase == Phase::Lingering {
            ctx.c.late_for_closed += 1;
            return;
        }
        if seg.has(ACK)
            && self
                .client_acked
                .is_none_or(|a| seg.ack.wrapping_sub(a) as i32 > 0)
        {
            self.client_acked = Some(seg.ack);
        }
        if seg.has(RST) {
            if seg.has(ACK) {
                self.close_ack.get_or_insert(seg.ack);
            }
            if self.rst.replace(seg).is_some() {
                ctx.c.duplicates += 1;
            }
            self.pump(now, ctx);
            return;
        }
        if seg.is_pure_ack() {
            self.on_pure_ack(now, seg, ctx);
            return;
        }
        let off = self.off(seg.seq);
        let len = seg.len();
        if off < 0 {
            // Before the stream began: an older connection's leftovers.
            ctx.c.duplicates += 1;
            return;
        }
        let off = off as u64;
        if seg.has(FIN) {
            let f = off + len;
            if self.fin_off.is_some() {
                if len == 0 {
                    ctx.c.duplicates += 1;
                    return;
                }
            } else {
                self.fin_off = Some(f);
                self.close_ack = Some(seg.ack);
                if len == 0 {
                    self.fin_bare = true;
                    self.pump(now, ctx);
                    return;
                }
            }
        }
        self.measure_rtt(now);
        if off + len <= self.snd_nxt {
            ctx.c.duplicates += 1;
            return;
        }
        match self.pending.get(&off) {
            Some(old) if old.len() >= len => {
                ctx.c.duplicates += 1;
                return;
            }
            Some(_) => ctx.c.duplicates += 1, // replaced by the longer copy
            None => {}
        }
        self.captured_end = self.captured_end.max(off + len);
        self.pending.insert(off, seg);
        if self.pending.len() > ctx.cfg.max_buffered_segments {
            self.obsolete(now, Loss::BufferFull, ctx);
            return;
        }
        self.pump(now, ctx);
        if ctx.shed && self.pending.len() > SHED_BACKLOG {
            self.obsolete(now, Loss::MemoryLimit, ctx);
        }
    }

    fn measure_rtt(&mut self, now: u64) {
        if let Some(t) = self.syn_time.take() {
            self.rtt = now.saturating_sub(t).max(1);
        }
    }

    fn on_pure_ack(&mut self, now: u64, seg: ClientSegment, ctx: &mut Ctx) {
        if self.fabricated || self.last_sent_captured_ack.is_some() {
            ctx.c.pure_acks_absorbed += 1;
            return;
        }
        // The client's third handshake ACK.
        self.measure_rtt(now);
        match self.phase {
            Phase::Established => self.send_handshake_ack(seg, ctx),
            _ => {
                // Keep the first: it is the handshake ACK. A later one (the
                // client already acknowledging response data while our SYN
                // waits for the target) carries an ack the replayed stream
                // has not reached.
                if self.held_ack.is_some() {
                    ctx.c.pure_acks_absorbed += 1;
                } else {
                    self.held_ack = Some(seg);
                }
            }
        }
    }

    fn send_handshake_ack(&mut self, seg: ClientSegment, ctx: &mut Ctx) {
        let seq = self.seq_at(self.snd_nxt);
        self.emit_captured(&seg, seq, ACK, ctx);
        self.last_sent_captured_ack = Some(seg.ack);
        ctx.c.packets_sent += 1;
        ctx.c.replayed += 1;
    }

    /// Send whatever may go now.
    fn pump(&mut self, now: u64, ctx: &mut Ctx) {
        match self.phase {
            Phase::Lingering | Phase::SynSent => return,
            Phase::Closed => {
                if self.reconnect_at.is_none() && self.has_unsent() {
                    self.send_fabricated_syn(now, ctx);
                }
                return;
            }
            Phase::Established => {}
        }
        let catch_up = ctx.cfg.catch_up_segments;
        if catch_up > 0 && self.pending.len() > catch_up && !ctx.cfg.no_wait {
            self.catching_up = true;
        }
        loop {
            let Some((&off, seg)) = self.pending.iter().next() else {
                if self.fin_off.is_some_and(|f| f > self.snd_nxt) && !self.fin_sent {
                    // The client's FIN lies beyond a hole, and nothing
                    // else will come: once skippable, the session is over.
                    let since = *self.gap_since.get_or_insert(now);
                    if self.may_skip_gap(now, since, ctx) {
                        self.obsolete(now, Loss::CaptureGap, ctx);
                        return;
                    }
                } else {
                    self.gap_since = None;
                }
                break;
            };
            if off > self.snd_nxt {
                let since = *self.gap_since.get_or_insert(now);
                if self.may_skip_gap(now, since, ctx) {
                    self.skip_gap(now, ctx);
                    return;
                }
                break;
            }
            self.gap_since = None;
            let end = off + seg.len();
            if end <= self.snd_nxt {
                self.pending.remove(&off);
                ctx.c.duplicates += 1;
                continue;
            }
            // A segment whose captured ack differs from the current
            // request's is the next request: the client had received
            // response bytes in between.
            let continuation = self.any_request_sent && seg.ack == self.cur_req_ack;
            let pipelined = self.waiting && !continuation;
            if pipelined && !(self.catching_up && self.unacked.len() < CATCH_UP_FLIGHT) {
                break;
            }
            if !self.any_request_sent && !self.greeting_received {
                if let Some(a) = self.last_sent_captured_ack {
                    if seg.ack != a {
                        // The client had seen server data before its first
                        // request: wait for the target's greeting (not
                        // forever: the response wait bounds it).
                        self.wait_deadline
                            .get_or_insert(now + ctx.cfg.response_wait_ms);
                        break;
                    }
                }
            }
            let send_len = end - self.snd_nxt;
            if self.snd_nxt > self.snd_una
                && (self.snd_nxt - self.snd_una) + send_len > self.peer_window
            {
                break;
            }
            let seg = self.pending.remove(&off).unwrap();
            let seq = self.seq_at(self.snd_nxt);
            let flags = ACK | (seg.flags & PSH);
            self.emit_captured(&seg, seq, flags, ctx);
            ctx.c.packets_sent += 1;
            ctx.c.replayed += 1;
            ctx.c.bytes_replayed += send_len;
            if pipelined {
                ctx.c.requests_pipelined += 1;
                self.pipelined = true;
            }
            if !continuation {
                ctx.c.requests_replayed += 1;
                if !self.any_request_sent {
                    self.resp_anchor = Some((seg.ack, self.rcv_nxt));
                }
                self.any_request_sent = true;
                self.waiting = !ctx.cfg.no_wait;
                self.cur_req_ack = seg.ack;
                self.resp_since_tick = false;
                self.resp_for_request = false;
                if self.waiting {
                    self.wait_deadline = Some(now + ctx.cfg.response_wait_ms);
                }
            }
            self.last_sent_captured_ack = Some(seg.ack);
            let start = self.snd_nxt;
            self.snd_nxt = end;
            self.unacked.push_back((start, trim_front(seg, seq)));
            if self.rto_at.is_none() {
                self.rto_at = Some(now + self.rto_cur);
            }
        }
        if self.pending.is_empty() {
            self.catching_up = false;
        }
        self.maybe_send_fin(now, ctx);
        self.maybe_send_rst(now, ctx);
    }

    /// May the hole at the send position, there since `since`, be skipped
    /// now? Only once it is `gap_skip_ms` old and the target has finished
    /// with everything before it (else look again when it may have).
    fn may_skip_gap(&mut self, now: u64, since: u64, ctx: &Ctx) -> bool {
        let skip = ctx.cfg.gap_skip_ms;
        if skip == 0 {
            return false;
        }
        let quiet_at = self.last_response + GAP_QUIET_MS;
        if now < since + skip || now < quiet_at {
            self.gap_skip_at = Some((since + skip).max(quiet_at));
            return false;
        }
        // Unacknowledged data: the retransmission timer pumps again.
        !self.outstanding()
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
        let resume = self
            .pending
            .iter()
            .find(|(_, s)| self.last_sent_captured_ack != Some(s.ack))
            .or_else(|| self.pending.iter().next())
            .map(|(&o, _)| o);
        let Some(resume) = resume else { return };
        let rest = self.pending.split_off(&resume);
        ctx.c.lost_capture_gap += self.pending.len() as u64;
        self.pending = rest;
        ctx.c.gaps_skipped += 1;
        tracing::debug!(client = ?self.client, from = self.snd_nxt, to = resume,
            "skipping a hole in the captured stream");
        self.send_rst(ctx);
        self.snd_una = resume;
        self.snd_nxt = resume;
        self.restart_connection(now);
    }

    /// Forget the target connection: the next pump opens a new one (after
    /// an RTT, so the old one's reset goes first) for what is unsent.
    fn restart_connection(&mut self, now: u64) {
        self.fin_sent = false;
        self.pipelined = false;
        self.recover = None;
        self.resp_anchor = None;
        self.close_hold_at = None;
        self.phase = Phase::Closed;
        self.fabricated = true;
        self.reconnecting = true;
        self.waiting = false;
        self.catching_up = false;
        self.any_request_sent = false;
        self.greeting_received = false;
        self.last_sent_captured_ack = None;
        self.ack_owed_at = None;
        self.ts_recent = None;
        self.rto_at = None;
        self.delay_ack_at = None;
        self.wait_deadline = None;
        self.gap_since = None;
        self.gap_skip_at = None;
        self.reconnect_at = Some(now + self.rtt.max(1));
    }

    fn has_unsent(&self) -> bool {
        !self.pending.is_empty() || !self.unacked.is_empty()
    }

    fn maybe_send_fin(&mut self, now: u64, ctx: &mut Ctx) {
        let Some(f) = self.fin_off else { return };
        if self.fin_sent || !self.pending.is_empty() || self.snd_nxt != f {
            return;
        }
        if (self.waiting && !ctx.cfg.no_wait) || self.snd_una != self.snd_nxt {
            return;
        }
        if self.pipelined && !self.close_answered() {
            let quiet_at = self.last_response + CLOSE_QUIET_MS;
            if now < quiet_at {
                self.close_hold_at = Some(quiet_at);
                return;
            }
        }
        self.close_hold_at = None;
        if self.pipelined {
            tracing::debug!(client = ?self.client, close_ack = ?self.close_ack, anchor = ?self.resp_anchor,
                rcv_nxt = self.rcv_nxt, quiet_ms = now.saturating_sub(self.last_response),
                answered = self.close_answered(), "pipelined session closes");
        }
        let seq = self.seq_at(f);
        self.fabricate_fin(seq, ctx);
        self.fin_sent = true;
        if self.fin_bare {
            ctx.c.replayed += 1;
        }
        ctx.c.fins_sent += 1;
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto_cur);
        }
    }

    /// Has the target sent as much response as the client had received
    /// when it closed?
    fn close_answered(&self) -> bool {
        self.answered(self.close_ack)
    }

    /// Has the target sent as much response as the client had received
    /// when it acknowledged `ack`?
    fn answered(&self, ack: Option<u32>) -> bool {
        match (ack, self.resp_anchor) {
            (Some(ack), Some((captured, target))) => {
                let client_got = ack.wrapping_sub(captured) as i32;
                let target_sent = self.rcv_nxt.wrapping_sub(target) as i32;
                target_sent >= client_got
            }
            _ => false,
        }
    }

    fn fabricate_fin(&mut self, seq: u32, ctx: &mut Ctx) {
        self.fabricate(seq, self.rcv_nxt, FIN | ACK, ctx);
    }

    fn maybe_send_rst(&mut self, now: u64, ctx: &mut Ctx) {
        if self.rst.is_none() || (self.waiting && !ctx.cfg.no_wait) {
            return;
        }
        // Everything captured before the RST goes first, also from behind
        // a hole that will be skipped.
        if let Some(rst) = &self.rst {
            let rst_off = self.off(rst.seq).max(0) as u64;
            let skippable = ctx.cfg.gap_skip_ms > 0;
            if self
                .pending
                .keys()
                .next()
                .is_some_and(|&o| o < rst_off && (o <= self.snd_nxt || skippable))
            {
                return;
            }
        }
        if self.pipelined && self.pending.is_empty() {
            // Requests sent pipelined may still sit, acknowledged but not
            // yet read, in the target's buffer, and an RST would discard
            // them: close with a FIN instead, so the target answers them
            // all and then closes.
            self.rst = None;
            ctx.c.resets_as_fin += 1;
            if self.fin_off.is_none() {
                self.fin_off = Some(self.snd_nxt);
                self.fin_bare = true; // the RST's disposition goes with the FIN
                self.maybe_send_fin(now, ctx);
            } else {
                ctx.c.replayed += 1; // the captured FIN already closes
            }
            return;
        }
        self.rst = None;
        self.send_rst(ctx);
        ctx.c.replayed += 1;
        self.finish(now, Loss::ClientReset, ctx);
    }

    fn send_fabricated_syn(&mut self, now: u64, ctx: &mut Ctx) {
        self.send_route(ctx);
        let isn = self.isn();
        let id = self.ip_id.wrapping_sub(1);
        let opts = emit::syn_options(ctx.cfg.mss);
        let pkt = ctx.packets.emit(&SegmentSpec {
            src: self.client,
            dst: self.target,
            seq: isn,
            ack: 0,
            flags: SYN,
            window: 65535,
            options: &opts,
            payload: &[],
            ip_id: id,
            ttl: 64,
            tos: 0,
        });
        self.syn_sent = Some(pkt.to_vec());
        self.syn_retx_at = Some(now + SYN_RTO_MS);
        ctx.c.packets_sent += 1;
        ctx.c.syns_sent += 1;
        if !std::mem::take(&mut self.reconnecting) {
            ctx.c.syns_fabricated += 1;
        }
        self.fabricated = true;
        self.phase = Phase::SynSent;
        self.handshake_started = now;
        self.gc_at = self.gc_at.min(now + ctx.cfg.handshake_timeout_ms);
    }

    // ---- target side

    pub fn on_response(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        let rst = h.flags & RST != 0;
        let syn = h.flags & SYN != 0;
        let fin = h.flags & FIN != 0;
        if self.phase == Phase::Lingering {
            if !rst && (h.payload_len > 0 || fin) {
                let ack = h.seq.wrapping_add(h.payload_len).wrapping_add(fin as u32);
                self.fabricate(h.ack, ack, RST | ACK, ctx);
            }
            return;
        }
        ctx.c.responses += 1;
        if self.phase == Phase::SynSent || self.phase == Phase::Closed {
            if syn
                && h.flags & ACK != 0
                && h.ack == self.isn().wrapping_add(1)
                && self.phase == Phase::SynSent
            {
                self.on_syn_ack(now, h, ctx);
            } else if rst {
                if self.phase == Phase::SynSent && h.ack == self.isn().wrapping_add(1) {
                    // The target refused the connection (port closed).
                    ctx.c.response_rsts += 1;
                    self.abandon(Loss::TargetRefused, ctx);
                    self.destroy = true;
                }
            } else if self.phase == Phase::SynSent {
                // An answer from an older incarnation of this 4-tuple: clear
                // it with an RST and try again after an RTT.
                let ack = h
                    .seq
                    .wrapping_add(h.payload_len)
                    .wrapping_add((syn || fin) as u32);
                self.fabricate(h.ack, ack, RST | ACK, ctx);
                self.phase = Phase::Closed;
                self.fabricated = true;
                self.reconnecting = true;
                self.reconnect_at = Some(now + self.rtt);
            }
            return;
        }
        // Established.
        self.last_response = now;
        if let Some((tsval, _)) = h.timestamps {
            if self.ts_recent.is_some() {
                self.ts_recent = Some(tsval);
            }
        }
        if rst {
            ctx.c.response_rsts += 1;
            tracing::debug!(
                client = ?self.client, seq = h.seq, ack = h.ack, snd_una = self.snd_una,
                snd_nxt = self.snd_nxt, ack_off = self.off(h.ack), pending = self.pending.len(),
                unacked = self.unacked.len(), fin_sent = self.fin_sent, fin_off = ?self.fin_off,
                pipelined = self.pipelined, rcv_nxt = self.rcv_nxt, rst_held = self.rst.is_some(),
                "the target reset the connection"
            );
            self.target_closed(now, false, ctx);
            return;
        }
        // Acknowledgement of client data.
        let ack_off = self.off(h.ack);
        let window = (h.window as u64) << self.wscale;
        let ack_advanced = ack_off > self.snd_una as i64;
        if ack_advanced {
            let new_una = (ack_off as u64).min(self.snd_nxt + self.fin_sent as u64);
            self.snd_una = new_una;
            while let Some((o, s)) = self.unacked.front() {
                if o + s.len() <= self.snd_una {
                    self.unacked.pop_front();
                } else {
                    break;
                }
            }
            self.dup_acks = 0;
            self.retries = 0;
            self.rto_cur = ctx.cfg.rto_ms;
            self.rto_at = if self.outstanding() {
                Some(now + self.rto_cur)
            } else {
                None
            };
            match self.recover {
                Some(r) if self.snd_una < r.min(self.snd_nxt) => self.retransmit(ctx),
                _ => self.recover = None,
            }
        } else if h.payload_len == 0
            && !fin
            && self.outstanding()
            && (h.seq, h.ack, h.window) == self.last_resp
        {
            self.dup_acks = self.dup_acks.saturating_add(1);
            if self.dup_acks >= 3 && self.recover.is_none() {
                self.recover = Some(self.snd_nxt);
                ctx.c.fast_retransmits += 1;
                self.retransmit(ctx);
            }
        }
        self.last_resp = (h.seq, h.ack, h.window);
        self.peer_window = window;
        // Response data.
        if h.payload_len > 0 {
            ctx.c.response_payloads += 1;
            let end = h.seq.wrapping_add(h.payload_len);
            if end.wrapping_sub(self.rcv_nxt) as i32 > 0 {
                self.rcv_nxt = end;
            } else {
                // The target retransmitted: our ACK was lost; ack again now.
                self.send_ack(ctx);
            }
            if !self.any_request_sent {
                // A server-first greeting: acknowledge it and go on.
                self.greeting_received = true;
                self.send_ack(ctx);
            } else {
                self.resp_since_tick = true;
                self.resp_for_request = true;
                self.wait_deadline = None;
                let tot = h.ip_total_len;
                self.last_resp_full = tot >= 2048 || [576, 1492, 1500, ctx.cfg.mtu].contains(&tot);
                self.delay_ack_at.get_or_insert(now + self.rtt);
                self.ack_owed_at.get_or_insert(now + DELAYED_ACK_MS);
                if self.waiting && self.rtt <= 1 && !self.pending.is_empty() {
                    // LAN client (RTT ≤ 1 ms): the next request may follow
                    // the first response segment, as the C tool does.
                    self.waiting = false;
                }
            }
        }
        if fin {
            ctx.c.response_fins += 1;
            self.rcv_nxt = h.seq.wrapping_add(h.payload_len).wrapping_add(1);
            if self.fin_sent {
                self.send_ack(ctx);
                self.finish(now, Loss::TargetClosed, ctx);
                return;
            }
            self.target_closed(now, true, ctx);
            return;
        }
        self.pump(now, ctx);
    }

    fn on_syn_ack(&mut self, now: u64, h: &ResponseHeader, ctx: &mut Ctx) {
        self.syn_sent = None;
        self.syn_retx_at = None;
        ctx.c.connections += 1;
        self.target_isn = h.seq;
        self.rcv_nxt = h.seq.wrapping_add(1);
        self.wscale = h.wscale.unwrap_or(0);
        self.peer_window = h.window as u64; // the SYN-ACK window is not scaled
        self.ts_recent = h.timestamps.map(|(v, _)| v);
        self.last_response = now;
        self.last_resp = (h.seq, h.ack, h.window);
        self.phase = Phase::Established;
        self.gc_at = now + ctx.cfg.gc_interval_ms;
        if let Some(ack) = self.held_ack.take() {
            self.send_handshake_ack(ack, ctx);
        } else if self.fabricated {
            self.send_ack(ctx);
        }
        self.pump(now, ctx);
    }

    /// The target closed (FIN) or reset the connection.
    fn target_closed(&mut self, now: u64, by_fin: bool, ctx: &mut Ctx) {
        if by_fin {
            self.send_ack(ctx);
        }
        let unsent_data = self.has_unsent();
        if unsent_data {
            // Reconnect: a new connection carries what the target did not
            // acknowledge.
            if by_fin {
                self.send_rst(ctx);
            }
            ctx.c.reconnects += 1;
            self.reconnecting = true;
            while let Some((o, s)) = self.unacked.pop_back() {
                // Not acknowledged, so not known to have arrived: it goes
                // again on the new connection, and its first-transmission
                // count moves with it (each captured segment keeps exactly
                // one disposition).
                ctx.c.replayed -= 1;
                ctx.c.bytes_replayed -= s.len();
                match self.pending.entry(o) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(s);
                    }
                    std::collections::btree_map::Entry::Occupied(_) => ctx.c.duplicates += 1,
                }
            }
            self.snd_nxt = self.snd_una;
            if self.fin_sent && self.fin_bare {
                // The bare FIN goes again too: it is buffered once more,
                // not replayed (found by the `packet` fuzz target).
                ctx.c.replayed -= 1;
            }
            self.restart_connection(now);
            return;
        }
        // Nothing left to say: let a captured FIN go if it can, else reset.
        if by_fin {
            self.waiting = false;
            self.pump(now, ctx);
            if self.phase == Phase::Lingering {
                return;
            }
            if !self.fin_sent {
                self.send_rst(ctx);
            }
        }
        self.finish(now, Loss::TargetClosed, ctx);
    }

    fn retransmit(&mut self, ctx: &mut Ctx) {
        ctx.c.retransmits += 1;
        if let Some((_, seg)) = self.unacked.front().cloned() {
            let seq = self.seq_at(self.snd_una);
            let seg = trim_front(seg, seq);
            self.emit_captured(&seg, seq, ACK | (seg.flags & PSH), ctx);
        } else if self.fin_sent {
            let seq = self.seq_at(self.fin_off.unwrap_or(self.snd_nxt));
            self.fabricate_fin(seq, ctx);
            ctx.c.packets_sent -= 1;
        }
    }

    // ---- timers

    pub fn next_deadline(&self) -> Option<u64> {
        [
            Some(self.gc_at),
            self.delay_ack_at,
            self.ack_owed_at,
            self.rto_at,
            self.reconnect_at,
            self.wait_deadline,
            self.close_hold_at,
            self.gap_skip_at,
            self.syn_retx_at.filter(|_| self.phase == Phase::SynSent),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timeout(&mut self, now: u64, ctx: &mut Ctx) {
        if self.phase == Phase::Lingering {
            if now >= self.gc_at {
                self.destroy = true;
            }
            return;
        }
        if self.phase == Phase::SynSent && self.syn_retx_at.is_some_and(|t| now >= t) {
            if let Some(syn) = &self.syn_sent {
                ctx.packets.push(syn);
                ctx.c.retransmits += 1;
            }
            self.syn_retx_at = Some(now + SYN_RTO_MS);
        }
        if self.close_hold_at.is_some_and(|t| now >= t) {
            self.close_hold_at = None;
            self.pump(now, ctx);
        }
        if self.gap_skip_at.is_some_and(|t| now >= t) {
            self.gap_skip_at = None;
            if self.phase == Phase::Established {
                self.pump(now, ctx);
            }
        }
        if self.reconnect_at.is_some_and(|t| now >= t) {
            self.reconnect_at = None;
            if self.phase == Phase::Closed {
                self.pump(now, ctx);
            }
        }
        if self.rto_at.is_some_and(|t| now >= t) {
            self.rto_at = None;
            if self.phase == Phase::Established && self.outstanding() {
                self.retries += 1;
                if self.retries > ctx.cfg.max_retransmits {
                    self.obsolete(now, Loss::TimedOut, ctx);
                    return;
                }
                self.retransmit(ctx);
                self.recover = Some(self.snd_nxt);
                self.rto_cur = (self.rto_cur * 2).min(6_400);
                self.rto_at = Some(now + self.rto_cur);
            }
        }
        if self.delay_ack_at.is_some_and(|t| now >= t) {
            self.delay_ack_at = None;
            if self.resp_since_tick {
                self.resp_since_tick = false;
                // Ack now only what must be: the rest rides on the next
                // request, or goes when the delayed-ACK time is up.
                if self.ack_due(now, ctx) {
                    self.send_ack(ctx);
                }
                let half = (self.rtt / 2).max(1);
                let next = if self.last_resp_full && self.pending.is_empty() {
                    self.rtt
                } else {
                    half
                };
                self.delay_ack_at = Some(now + next);
            } else if self.waiting && self.resp_for_request {
                // No response data for a whole interval after some came:
                // the response is complete; release the next request. (A
                // quiet period left over from the previous response must
                // not release it: that pipelined requests the target then
                // answered late.)
                self.waiting = false;
                self.pump(now, ctx);
            }
        }
        if self.ack_owed_at.is_some_and(|t| now >= t) {
            self.send_ack(ctx);
        }
        if self.wait_deadline.is_some_and(|t| now >= t) {
            self.wait_deadline = None;
            if self.waiting && !self.resp_since_tick && self.delay_ack_at.is_none() {
                ctx.c.response_waits_expired += 1;
                self.waiting = false;
                self.pump(now, ctx);
            } else if !self.any_request_sent && !self.greeting_received {
                // The greeting never came: send the first request anyway.
                ctx.c.response_waits_expired += 1;
                self.greeting_received = true;
                self.pump(now, ctx);
            }
        }
        if now >= self.gc_at && self.phase != Phase::Lingering {
            self.gc_check(now, ctx);
        }
    }

    fn gc_check(&mut self, now: u64, ctx: &mut Ctx) {
        let cfg = ctx.cfg;
        self.gc_at = now + cfg.gc_interval_ms;
        if self.phase != Phase::Established {
            if now.saturating_sub(self.handshake_started) >= cfg.handshake_timeout_ms {
                self.obsolete(now, Loss::HandshakeTimeout, ctx);
            }
            return;
        }
        if self
            .gap_since
            .is_some_and(|t| now.saturating_sub(t) >= cfg.gap_timeout_ms)
        {
            self.obsolete(now, Loss::CaptureGap, ctx);
            return;
        }
        let idle = now.saturating_sub(self.last_response);
        if idle > cfg.session_timeout_ms {
            let keep = self.pending.is_empty()
                && self.any_request_sent
                && idle <= cfg.keepalive_timeout_ms;
            if !keep {
                self.obsolete(now, Loss::TimedOut, ctx);
            }
        }
    }

    /// Give up on the session: count what was not sent, reset the target's
    /// side, linger.
    pub fn obsolete(&mut self, now: u64, reason: Loss, ctx: &mut Ctx) {
        ctx.c.obsolete += 1;
        if matches!(self.phase, Phase::Established | Phase::SynSent) {
            self.send_rst(ctx);
        }
        self.finish(now, reason, ctx);
    }

    /// tcpcopy is stopping: reset the target's side of a live session.
    pub fn shutdown(&mut self, ctx: &mut Ctx) {
        if self.phase == Phase::Lingering {
            return;
        }
        if self.has_unsent() {
            let first = self
                .pending
                .iter()
                .next()
                .map(|(o, s)| (*o, s.len(), s.ack));
            tracing::debug!(
                "unsent at shutdown: session {:?}: phase {:?} pending {} first {:?} snd_una {} snd_nxt {} waiting {} cur_req_ack {} resp_since_tick {} delay_ack_at {:?} wait_deadline {:?} rto_at {:?} gap_since {:?} rtt {} peer_window {} unacked {} scheduled {:?} gc_at {} lsca {:?} fabricated {} any_req {} rcv_nxt {} target_isn {} wscale {} ts_recent {:?} pipelined {}",
                self.client, self.phase, self.pending.len(), first, self.snd_una, self.snd_nxt, self.waiting,
                self.cur_req_ack, self.resp_since_tick, self.delay_ack_at, self.wait_deadline, self.rto_at,
                self.gap_since, self.rtt, self.peer_window, self.unacked.len(), self.scheduled, self.gc_at, self.last_sent_captured_ack, self.fabricated, self.any_request_sent,
                self.rcv_nxt, self.target_isn, self.wscale, self.ts_recent, self.pipelined
            );
        }
        if matches!(self.phase, Phase::Established | Phase::SynSent) {
            self.send_rst(ctx);
        }
        self.abandon(Loss::Shutdown, ctx);
        self.phase = Phase::Lingering;
    }

    /// Count everything captured but never sent under `reason`.
    fn abandon(&mut self, reason: Loss, ctx: &mut Ctx) {
        let n = self.buffered();
        *reason.counter(ctx.c) += n;
        self.pending.clear();
        self.rst = None;
        self.held_ack = None;
        if self.fin_bare && !self.fin_sent {
            self.fin_bare = false;
        }
    }

    /// The session is over: linger to absorb late packets.
    fn finish(&mut self, now: u64, reason: Loss, ctx: &mut Ctx) {
        self.abandon(reason, ctx);
        self.phase = Phase::Lingering;
        self.delay_ack_at = None;
        self.ack_owed_at = None;
        self.rto_at = None;
        self.reconnect_at = None;
        self.wait_deadline = None;
        self.close_hold_at = None;
        self.gap_skip_at = None;
        self.gc_at = now + ctx.cfg.linger_ms;
    }
}

/// Cut the bytes before `seq` off a segment about to be (re)sent.
fn trim_front(mut seg: ClientSegment, seq: u32) -> ClientSegment {
    let cut = seq.wrapping_sub(seg.seq) as usize;
    if cut > 0 && cut <= seg.payload.len() {
        seg.payload.drain(..cut);
        seg.seq = seq;
    }
    seg
}

/// Remove the 10-byte timestamp option at `off`, replacing it with NOPs.
fn strip_ts(options: &[u8], off: usize) -> Vec<u8> {
    let mut o = options.to_vec();
    if off + 10 <= o.len() {
        o[off..off + 10].fill(1);
    }
    o
}
