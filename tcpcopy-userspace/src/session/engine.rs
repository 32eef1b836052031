//! The session engine: one per worker. Takes captured client packets,
//! filters and rewrites them (spec §4.2–4.4), keeps the session table and
//! the timers, and queues what must be sent: IPv4 packets for the target
//! and route messages for intercept. Sans-IO: the caller supplies the time
//! (milliseconds on any monotonic clock) and drains the queues.

use super::{
    claims::{Claims, WorkerIndex},
    config::{is_localhost, preferred_port, sample_bucket, Config},
    conn::{Ctx, Endpoint, Session},
    counters::Counters,
    deadlines::Deadlines,
    event::{Event, Loss},
    outbox::Outbox,
    segment::{ClientSegment, Options},
    shaping::{Skip, SkippedFlows},
};
use crate::{
    memory::Pressure,
    proto::{ResponseExtras, ResponseHeader, RouteMsg},
    verdict::VerdictStats,
    wire::{SegmentError, SegmentRepr, TcpFlags},
};
use hashbrown::{HashMap, HashSet};
use smallvec::{smallvec, SmallVec};
use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

/// A captured segment as sessions take it: in pieces when `-M` cuts it.
type Pieces = SmallVec<[ClientSegment; 1]>;

/// A session's key: the client address and port it is replayed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionKey {
    pub client: IpAddr,
    pub port: u16,
}

impl SessionKey {
    fn endpoint(self) -> Endpoint {
        (self.client, self.port)
    }
}

/// An address as one 128-bit word (IPv4 in its low 32 bits), for
/// hashing: one write to the hasher, where `IpAddr`'s own `Hash` writes
/// its discriminant and its octets as a slice (measured: the session
/// tables' lookups were the engine's largest cost of taking IPv6).
/// Equality still decides: an IPv6 address that shares its word with an
/// IPv4 one only shares a bucket.
pub fn address_word(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(address_word(self.client) ^ ((self.port as u128) << 112));
    }
}

/// Where a copy is replayed to: the target's address, and which of the
/// run's targets it is (for its counters).
#[derive(Clone, Copy, Debug)]
struct Target {
    endpoint: Endpoint,
    index: u16,
}

/// What a session replays: a captured client connection, and which copy
/// of it (`-n` replicas of each fan-out target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OriginKey {
    client: IpAddr,
    port: u16,
    copy: u16,
}

impl std::hash::Hash for OriginKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let word =
            address_word(self.client) ^ ((self.port as u128) << 112) ^ ((self.copy as u128) << 96);
        state.write_u128(word);
    }
}

/// Which of the workers an engine belongs to, and the run's table of the
/// (client IP, port)s its sessions replay from: every session claims its
/// own there before it opens, so no other worker can open the same
/// connection to the target.
struct Lane {
    worker: WorkerIndex,
    claims: Option<Arc<Claims>>,
}

impl Lane {
    fn claim(&self, key: SessionKey) -> bool {
        self.claims
            .as_ref()
            .is_none_or(|c| c.claim(key, self.worker).is_ok())
    }

    fn release(&self, key: SessionKey) {
        if let Some(c) = &self.claims {
            c.release(key, self.worker);
        }
    }
}

/// Ports tried past the preferred one for a copy whose preferred port is
/// taken (here, or by another worker).
const PORT_PROBES: u16 = 4096;

struct Entry {
    origin: OriginKey,
    /// Which of the run's targets it replays to (`Transfer::target`).
    target: u16,
    /// Boxed: the table stays small, and growing it never copies sessions.
    session: Box<Session>,
    /// In `Engine::pipelined`.
    pipelined: bool,
    /// The deadline the timer heap holds for this session.
    scheduled: Option<u64>,
    /// Done with its connection (lingering or over): its hold on the
    /// captured flow is given back.
    let_go: bool,
}

/// The sessions replaying an origin's connections.
#[derive(Clone, Copy)]
struct OriginSessions {
    /// The latest connection's.
    current: SessionKey,
    /// The previous connection's, if the latest one's SYN detached it
    /// while it still ran: its segments captured after that SYN (from
    /// another RX queue) go there.
    previous: Option<SessionKey>,
}

/// What became of a segment offered to its origin's session.
enum Offer {
    /// The session took it (or counted it).
    Taken,
    /// It opens a new connection's session.
    Opens(Opening),
}

/// A segment that opens a new session, and what goes with it.
struct Opening {
    seg: ClientSegment,
    /// The new connection's segments captured before its SYN.
    early: Vec<ClientSegment>,
    /// The previous connection's session on the origin, left running.
    previous: Option<SessionKey>,
}

pub struct Engine {
    cfg: Arc<Config>,
    sessions: HashMap<SessionKey, Entry>,
    /// Sessions whose target connection carries pipelined requests: the
    /// only ones [`Engine::awaiting_target`] needs to look at.
    pipelined: HashSet<SessionKey>,
    origins: HashMap<OriginKey, OriginSessions>,
    pool_cache: HashMap<IpAddr, IpAddr>,
    deadlines: Deadlines,
    packets: Outbox,
    routes: VecDeque<RouteMsg>,
    counters: Counters,
    /// With several targets (fan-out), each one's counters (what its
    /// sessions did); empty with one.
    per_target: Vec<Counters>,
    lane: Lane,
    /// Captured flows no session replays any more, for the capture to give
    /// back (drained by [`Engine::poll_released_flow`]).
    released_flows: Vec<SessionKey>,
    /// Memory pressure under `-m`, set by the worker before each batch.
    memory: Pressure,
    /// Connections `-g` or `--max-session-rate` skipped, until they end.
    skipped: SkippedFlows,
    /// An intercept is unreachable (set by the worker).
    intercept_down: bool,
    /// When an intercept last came back (see [`Engine::reannounce`]).
    intercept_back_at: u64,
    /// `--verdict`: the figures of each target (empty without).
    verdicts: Vec<VerdictStats>,
    /// The driver's clock in microseconds (see [`Engine::set_clock_us`]).
    clock_us: u64,
}

impl Engine {
    /// Make this the engine of worker `worker` of a run whose workers
    /// share `claims` (see [`Lane`]).
    pub fn share_ports(&mut self, worker: WorkerIndex, claims: Arc<Claims>) {
        self.lane = Lane {
            worker,
            claims: Some(claims),
        };
    }

    /// Whether a session replays the captured flow from `client`:`port`
    /// (any copy of it, the current connection's or the previous one's,
    /// lingering ones aside): while one does, the flow stays this
    /// worker's.
    pub fn holds_flow(&self, client: IpAddr, port: u16) -> bool {
        let client = match self.cfg.localhost_replacement(client) {
            Some(h) if !self.cfg.target_is_localhost() => h,
            _ => client,
        };
        (0..self.cfg.copies()).any(|copy| {
            let origin = OriginKey { client, port, copy };
            let Some(o) = self.origins.get(&origin) else {
                return false;
            };
            let running = |key: &SessionKey| {
                self.sessions
                    .get(key)
                    .is_some_and(|e| e.origin == origin && !e.let_go)
            };
            running(&o.current) || o.previous.is_some_and(|p| running(&p))
        })
    }

    /// Next captured flow this engine let go of (its sessions ended or
    /// linger), for the capture to give back at once.
    pub fn poll_released_flow(&mut self) -> Option<SessionKey> {
        self.released_flows.pop()
    }

    /// A session is done with its connection (it lingers, or is over):
    /// another worker may take its captured flow (a client reusing the
    /// port at once, on another RX queue) now rather than when it is
    /// removed. Its port stays claimed until then: a lingering session
    /// still answers what the target sends to it (a reset for stray
    /// data), which must never hit another worker's connection.
    fn let_go(&mut self, key: SessionKey) {
        let Some(e) = self.sessions.get_mut(&key) else {
            return;
        };
        if e.let_go {
            return;
        }
        e.let_go = true;
        let origin = e.origin;
        if self.lane.claims.is_none() || self.holds_flow(origin.client, origin.port) {
            return;
        }
        let flow = SessionKey {
            client: origin.client,
            port: origin.port,
        };
        self.released_flows.push(flow);
        if self.cfg.localhost_as.contains(&origin.client) {
            // It may have been captured as 127.0.0.1 (::1).
            let loopback = match origin.client {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            };
            self.released_flows.push(SessionKey {
                client: loopback,
                ..flow
            });
        }
    }

    pub fn new(cfg: Arc<Config>) -> Self {
        let targets = cfg.targets().len();
        let cfg_verdict = cfg.verdict.is_some();
        Engine {
            cfg,
            sessions: HashMap::new(),
            pipelined: HashSet::new(),
            origins: HashMap::new(),
            pool_cache: HashMap::new(),
            deadlines: Deadlines::default(),
            packets: Outbox::default(),
            routes: VecDeque::new(),
            per_target: match targets {
                0 | 1 => Vec::new(),
                n => vec![Counters::default(); n],
            },
            counters: Counters::default(),
            lane: Lane {
                worker: 0,
                claims: None,
            },
            released_flows: Vec::new(),
            memory: Pressure::None,
            skipped: SkippedFlows::default(),
            intercept_down: false,
            intercept_back_at: 0,
            verdicts: match cfg_verdict {
                true => vec![VerdictStats::default(); targets.max(1)],
                false => Vec::new(),
            },
            clock_us: 0,
        }
    }

    /// `--verdict`: each target's figures, in the order of
    /// [`Config::targets`] (empty without).
    pub fn verdicts(&self) -> &[VerdictStats] {
        &self.verdicts
    }

    /// How short memory is (`-m`): from `Refuse` on, no new sessions; at
    /// `Shed`, sessions that keep buffering are given up too.
    pub fn set_memory_pressure(&mut self, p: Pressure) {
        self.memory = p;
    }

    /// The driver's clock in microseconds, read just before each call:
    /// the verdict's latencies run on it (timers keep the millisecond
    /// `now`). Never told, the verdict uses `now` × 1000.
    pub fn set_clock_us(&mut self, us: u64) {
        self.clock_us = us;
    }

    /// Whether an intercept is unreachable now: sessions given up
    /// meanwhile are counted as `intercept_outage`.
    pub fn set_intercept_down(&mut self, down: bool) {
        self.intercept_down = down;
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Each target's counters, in `Config::targets` order (empty with
    /// one target: then they are [`Engine::counters`]).
    pub fn target_counters(&self) -> &[Counters] {
        &self.per_target
    }
    /// Sessions in the table, lingering ones included.
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }
    /// Captured segments held by live sessions (the `buffered` term of the
    /// counters' second invariant).
    pub fn buffered(&self) -> u64 {
        self.sessions.values().map(|e| e.session.buffered()).sum()
    }
    /// Live sessions whose pipelined requests the target may still be
    /// answering ([`Session::awaiting_target`]); looks only at sessions
    /// that pipelined.
    pub fn awaiting_target(&self, now: u64) -> u64 {
        self.pipelined
            .iter()
            .filter_map(|k| self.sessions.get(k))
            .filter(|e| e.session.awaiting_target(now))
            .count() as u64
    }
    /// The same number as [`Engine::buffered`], from the counters' second
    /// invariant: O(1), for a check after every batch.
    pub fn backlog(&self) -> u64 {
        let c = &self.counters;
        c.session_inputs
            .saturating_sub(c.replayed + c.session_dropped())
    }
    /// Next IPv4 packet to send to the target.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.packets.pop()
    }
    /// Hand back a packet's buffer once it is sent (optional: it saves an
    /// allocation for the next packet).
    pub fn recycle(&mut self, packet: Vec<u8>) {
        self.packets.recycle(packet);
    }
    /// Next route message for intercept (send it before any packet).
    pub fn poll_route(&mut self) -> Option<RouteMsg> {
        self.routes.pop_front()
    }
    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadlines.next()
    }

    /// A packet as captured: an IPv4 packet (link header removed).
    pub fn handle_client_packet(&mut self, now: u64, packet: &[u8]) {
        self.counters.captured += 1;
        let seg = match SegmentRepr::parse(packet) {
            Ok(seg) => seg,
            Err(e) => {
                let c = &mut self.counters;
                match e {
                    SegmentError::NotTcp => c.not_tcp += 1,
                    SegmentError::Fragment => {
                        c.fragments += 1;
                        c.malformed += 1;
                    }
                    SegmentError::Malformed => c.malformed += 1,
                }
                return;
            }
        };
        if seg.unusual_fragment_field {
            self.counters.fragments += 1;
        }
        let rule = self.cfg.rule_for(seg.dst, seg.dst_port);
        if rule.is_empty() {
            if self.cfg.verdict.is_some() && !self.cfg.rule_for(seg.src, seg.src_port).is_empty() {
                self.on_online_answer(now, &seg);
            } else {
                self.counters.no_transfer += 1;
            }
            return;
        }
        if !self.cfg.client_filter.admits(seg.src) {
            self.counters.client_filtered += 1;
            return;
        }
        let Some((captured_src, src)) = self.client_address(seg.src) else {
            self.counters.localhost_dropped += 1;
            return;
        };
        let pct = self.cfg.sample_percent;
        if self.cfg.ramp.is_none()
            && pct > 0
            && pct < 100
            && sample_bucket(src, seg.src_port) >= pct
        {
            self.counters.sampled_out += 1;
            return;
        }
        if let Some(why) = self.shaped_out(now, captured_src, src, &seg) {
            match why {
                Skip::Ramp => self.counters.skipped_ramp += 1,
                Skip::RateLimit => self.counters.skipped_rate_limit += 1,
            }
            return;
        }
        self.counters.accepted += 1;
        let mut pieces = self.split_oversize(&seg);
        let replicas = self.cfg.replicas.max(1);
        let mut copies_left = rule.len() * replicas as usize;
        // Fan-out: `-n` copies for each target of the rule; copy 0 is the
        // first target's original. The last copy takes the pieces, the
        // others a clone.
        for (i, t) in rule.enumerate() {
            let t = self.cfg.transfers[t];
            let target = Target {
                endpoint: (t.dst_ip, t.dst_port),
                index: t.target,
            };
            for replica in 0..replicas {
                let origin = OriginKey {
                    client: captured_src,
                    port: seg.src_port,
                    copy: i as u16 * replicas + replica,
                };
                copies_left -= 1;
                let copy = if copies_left == 0 {
                    std::mem::take(&mut pieces)
                } else {
                    pieces.clone()
                };
                for s in copy {
                    self.counters.session_inputs += 1;
                    self.dispatch(now, origin, src, target, s);
                }
            }
        }
    }

    /// `--verdict`: a segment of the online server's, toward a client:
    /// its data is the answer of every copy of that client's session.
    fn on_online_answer(&mut self, now: u64, seg: &SegmentRepr) {
        self.counters.online_answers += 1;
        if seg.payload.is_empty() {
            return;
        }
        let captured = seg.dst;
        let copies = self.cfg.copies();
        for copy in 0..copies {
            let origin = OriginKey {
                client: captured,
                port: seg.dst_port,
                copy,
            };
            let Some(&origin_sessions) = self.origins.get(&origin) else {
                continue;
            };
            let key = self.continued_session(origin, origin_sessions, seg.ack.0);
            let (mut ctx, sessions) = self.ctx();
            if let Some(e) = sessions.get_mut(&key) {
                ctx.target = e.target as usize;
                e.session
                    .on_online_answer(now, seg.seq.0, seg.payload, &mut ctx);
            }
        }
    }

    /// Whether `-g` or `--max-session-rate` skips the connection `seg`
    /// belongs to: decided at the segment that would open its session,
    /// remembered until the connection ends, so it is skipped whole.
    fn shaped_out(
        &mut self,
        now: u64,
        captured: IpAddr,
        client: IpAddr,
        seg: &SegmentRepr,
    ) -> Option<Skip> {
        if self.cfg.ramp.is_none() && self.cfg.session_rate.is_none() {
            return None;
        }
        let flow = (captured, seg.src_port);
        let syn = seg.flags.syn().then_some(seg.seq.0);
        if let Some(why) = self.skipped.check(now, flow, syn) {
            return Some(why);
        }
        if !self.starts_connection(captured, seg) {
            return None;
        }
        let why = if self
            .cfg
            .ramp
            .as_ref()
            .is_some_and(|r| !r.admits(now, client, seg.src_port))
        {
            self.counters.sessions_skipped_ramp += 1;
            Skip::Ramp
        } else if self
            .cfg
            .session_rate
            .as_ref()
            .is_some_and(|r| !r.admit(now))
        {
            self.counters.sessions_skipped_rate_limit += 1;
            Skip::RateLimit
        } else {
            return None;
        };
        self.skipped.insert(now, flow, syn, why);
        Some(why)
    }

    /// Would `seg` open a session: it is the SYN of a connection no
    /// session replays yet, or data of one captured mid-stream (not with
    /// `-O`)?
    fn starts_connection(&self, captured: IpAddr, seg: &SegmentRepr) -> bool {
        let origin = OriginKey {
            client: captured,
            port: seg.src_port,
            copy: 0,
        };
        let syn = seg.flags.syn();
        match self
            .origins
            .get(&origin)
            .and_then(|o| self.sessions.get(&o.current))
        {
            Some(e) => {
                let s = &e.session;
                syn && s.captured_isn() != seg.seq.0 && !s.is_late_syn(seg.seq.0)
            }
            None => syn || (!seg.payload.is_empty() && !self.cfg.only_complete),
        }
    }

    /// The client address a captured source is replayed from (spec §4.2
    /// step 5, `-c`), with the captured one it stands for; None if the
    /// localhost rules drop it.
    fn client_address(&mut self, captured: IpAddr) -> Option<(IpAddr, IpAddr)> {
        let mut src = captured;
        if self.cfg.target_is_localhost() {
            if !is_localhost(src) {
                return None;
            }
        } else if let Some(h) = self.cfg.localhost_replacement(src) {
            src = h;
        }
        let captured_src = src;
        if let Some(pool) = &self.cfg.client_pool {
            src = *self
                .pool_cache
                .entry(src)
                .or_insert_with(|| pool.bind(captured_src));
        }
        Some((captured_src, src))
    }

    /// The segment as sessions hold it, cut into pieces that fit the MTU
    /// (`-M`) if it is longer (one piece, the usual case, allocates only
    /// its payload).
    fn split_oversize(&mut self, seg: &SegmentRepr) -> Pieces {
        let whole = ClientSegment {
            seq: seg.seq.0,
            ack: seg.ack.0,
            flags: seg.flags.0,
            window: seg.window,
            options: Options::new(seg.options),
            ts_offset: seg.ts_offset,
            tsval: seg.tsval,
            payload: Vec::new(),
            ip_id: seg.ip_id,
            ttl: seg.ttl,
            tos: seg.tos,
        };
        let max = (self.cfg.mtu as usize)
            .saturating_sub(seg.header_len)
            .max(1);
        if seg.payload.len() <= max {
            return smallvec![ClientSegment {
                payload: seg.payload.to_vec(),
                ..whole
            }];
        }
        self.counters.split_oversize += 1;
        let n = seg.payload.len().div_ceil(max);
        seg.payload
            .chunks(max)
            .enumerate()
            .map(|(i, chunk)| {
                let mut s = whole.clone();
                s.seq = seg.seq.plus((i * max) as u32).0;
                s.ip_id = seg.ip_id.wrapping_add(i as u16);
                s.payload = chunk.to_vec();
                if i + 1 < n {
                    s.flags &= !(TcpFlags::FIN | TcpFlags::PSH); // only on the last piece
                }
                s
            })
            .collect()
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut HashMap<SessionKey, Entry>) {
        (
            Ctx {
                cfg: &self.cfg,
                counters: &mut self.counters,
                per_target: &mut self.per_target,
                target: 0,
                packets: &mut self.packets,
                routes: &mut self.routes,
                shed: self.memory == Pressure::Shed,
                intercept_down: self.intercept_down,
                intercept_back_at: self.intercept_back_at,
                verdicts: &mut self.verdicts,
                clock_us: self.clock_us,
            },
            &mut self.sessions,
        )
    }

    fn dispatch(
        &mut self,
        now: u64,
        origin: OriginKey,
        client_ip: IpAddr,
        target: Target,
        seg: ClientSegment,
    ) {
        let Some(&sessions) = self.origins.get(&origin) else {
            let opening = Opening {
                seg,
                early: Vec::new(),
                previous: None,
            };
            self.open_session(now, origin, client_ip, target, opening);
            return;
        };
        if sessions.previous.is_some() && !seg.has(TcpFlags::SYN) {
            let key = self.continued_session(origin, sessions, seg.seq);
            if key != sessions.current {
                self.offer_to_previous(now, key, seg);
                return;
            }
        }
        if let Offer::Opens(opening) = self.offer_to_session(now, origin, sessions.current, seg) {
            self.open_session(now, origin, client_ip, target, opening);
        }
    }

    /// Which of the origin's sessions a segment in the client's sequence
    /// space (`client_seq`: a client segment's seq, an online answer's
    /// ack) belongs to: the previous connection's if it continues that
    /// one's captured stream and lies nearer its end than the current
    /// one's, else the current one.
    fn continued_session(
        &self,
        origin: OriginKey,
        sessions: OriginSessions,
        client_seq: u32,
    ) -> SessionKey {
        let Some(previous) = sessions.previous else {
            return sessions.current;
        };
        let distance = |key: &SessionKey| {
            self.sessions
                .get(key)
                .filter(|e| e.origin == origin)
                .and_then(|e| e.session.distance_from_capture(client_seq))
        };
        match (distance(&previous), distance(&sessions.current)) {
            (Some(p), Some(c)) if p < c => previous,
            (Some(_), None) => previous,
            _ => sessions.current,
        }
    }

    /// A late segment of a previous connection whose session was detached
    /// by the next connection's SYN.
    fn offer_to_previous(&mut self, now: u64, key: SessionKey, seg: ClientSegment) {
        let (mut ctx, sessions) = self.ctx();
        let Some(e) = sessions.get_mut(&key) else {
            return;
        };
        ctx.target = e.target as usize;
        let s = &mut e.session;
        if s.given_up().is_some() {
            s.drop_given_up(now, &seg, &mut ctx);
        } else {
            s.on_client_segment(now, seg, &mut ctx);
        }
        self.after(key);
    }

    /// A segment of a connection that has a session (`key`): the session
    /// takes it, or the segment opens a new session.
    fn offer_to_session(
        &mut self,
        now: u64,
        origin: OriginKey,
        key: SessionKey,
        seg: ClientSegment,
    ) -> Offer {
        let (mut ctx, sessions) = self.ctx();
        let e = sessions
            .get_mut(&key)
            .expect("an origin's session is in the table");
        ctx.target = e.target as usize;
        let s = &mut e.session;
        let mut early = Vec::new();
        let mut detach = false;
        match (seg.has(TcpFlags::SYN), s.is_lingering()) {
            (false, false) => {
                s.on_client_segment(now, seg, &mut ctx);
                self.after(key);
                return Offer::Taken;
            }
            (false, true) => {
                if s.given_up().is_some() {
                    s.drop_given_up(now, &seg, &mut ctx);
                    self.after(key);
                    return Offer::Taken;
                }
                if seg.payload.is_empty() || !s.is_beyond(seg.seq) {
                    ctx.note(Event::LateForClosed);
                    return Offer::Taken;
                }
            }
            (true, false) => {
                if s.captured_isn() == seg.seq || s.is_late_syn(seg.seq) {
                    // The client's SYN retransmission, or its first SYN
                    // captured after its data.
                    ctx.note(Event::Duplicate);
                    return Offer::Taken;
                }
                // Segments of this new connection that came before its SYN.
                early = s.take_newer(seg.seq);
                // A new connection on this port while the old replay still
                // has captured data to send (the replay runs behind the
                // capture), or before the old connection's FIN or RST was
                // captured (the rest of it comes later, from another RX
                // queue): the old one finishes on its own, the new one
                // takes the next free port.
                detach = s.buffered() > 0 || !s.client_closed();
            }
            (true, true) => {}
        }
        let previous = if detach {
            self.origins.remove(&origin);
            self.counters.sessions_overlapped += 1;
            Some(key)
        } else {
            // The old replay ends now.
            self.end_session(now, key);
            None
        };
        Offer::Opens(Opening {
            seg,
            early,
            previous,
        })
    }

    /// A new session for the opening segment's connection, if it may have
    /// one.
    fn open_session(
        &mut self,
        now: u64,
        origin: OriginKey,
        client_ip: IpAddr,
        target: Target,
        opening: Opening,
    ) {
        let Opening {
            seg,
            early,
            previous,
        } = opening;
        let syn = seg.has(TcpFlags::SYN);
        if !syn {
            if seg.payload.is_empty() {
                self.counters.no_session += 1;
                return;
            }
            if self.cfg.only_complete {
                self.counters.only_complete_skipped += 1;
                return;
            }
        }
        let refused = 1 + early.len() as u64;
        if self.sessions.len() >= self.cfg.max_sessions {
            self.counters.session_limit += refused;
            return;
        }
        if self.memory != Pressure::None {
            self.counters.sessions_refused_memory += 1;
            self.counters.lost_memory_limit += refused;
            return;
        }
        let Some(key) = self.allocate(client_ip, origin) else {
            self.counters.port_conflicts += refused;
            return;
        };
        let (mut ctx, sessions) = self.ctx();
        ctx.target = target.index as usize;
        let endpoint = target.endpoint;
        let mut session = if syn {
            Session::from_syn(now, key.endpoint(), endpoint, seg, &mut ctx)
        } else {
            let mut s = Session::mid_stream(now, key.endpoint(), endpoint, &seg, 1, ctx.cfg);
            s.on_client_segment(now, seg, &mut ctx);
            s
        };
        for seg in early {
            session.on_client_segment(now, seg, &mut ctx);
        }
        sessions.insert(
            key,
            Entry {
                origin,
                target: target.index,
                session: Box::new(session),
                pipelined: false,
                scheduled: None,
                let_go: false,
            },
        );
        self.origins.insert(
            origin,
            OriginSessions {
                current: key,
                previous,
            },
        );
        self.counters.sessions_created += 1;
        if let Some(c) = self.per_target.get_mut(target.index as usize) {
            c.sessions_created += 1;
        }
        self.after(key);
    }

    /// Choose the (client IP, port) a copy is replayed from: the C tool's
    /// port, or the next one that no live session uses, here or in another
    /// worker (claimed for this worker when found).
    fn allocate(&self, ip: IpAddr, origin: OriginKey) -> Option<SessionKey> {
        let first = preferred_port(&self.cfg, origin.port, origin.copy);
        (0..PORT_PROBES)
            .map(|i| {
                let p = first.wrapping_add(i);
                if p < 1024 && first >= 1024 {
                    p.wrapping_add(1024)
                } else {
                    p
                }
            })
            .map(|port| SessionKey { client: ip, port })
            .find(|k| !self.sessions.contains_key(k) && self.lane.claim(*k))
    }

    fn end_session(&mut self, now: u64, key: SessionKey) {
        let (mut ctx, sessions) = self.ctx();
        if let Some(e) = sessions.get_mut(&key) {
            ctx.target = e.target as usize;
            if !e.session.is_lingering() {
                e.session.obsolete(now, Loss::TimedOut, &mut ctx);
            }
        }
        self.remove(key);
    }

    fn remove(&mut self, key: SessionKey) {
        self.let_go(key);
        if !self.verdicts.is_empty() {
            let (mut ctx, sessions) = self.ctx();
            if let Some(e) = sessions.get_mut(&key) {
                ctx.target = e.target as usize;
                e.session.finish_verdict(&mut ctx);
            }
        }
        if let Some(e) = self.sessions.remove(&key) {
            self.lane.release(key);
            self.forget_origin_session(e.origin, key);
            if e.pipelined {
                self.pipelined.remove(&key);
            }
            self.counters.sessions_destroyed += 1;
            // Give the memory of a burst back once it is over (`-m` counts
            // it).
            let len = self.sessions.len();
            if self.sessions.capacity() > 4 * len + 1024 {
                self.sessions.shrink_to(2 * len);
                self.origins.shrink_to(2 * len);
            }
            if self.pipelined.capacity() > 4 * self.pipelined.len() + 1024 {
                self.pipelined.shrink_to(2 * self.pipelined.len());
            }
        }
    }

    /// `key`'s session is gone: its origin no longer routes to it. The
    /// previous connection's session, if still running, becomes the
    /// origin's current one again when the latest one goes first.
    fn forget_origin_session(&mut self, origin: OriginKey, key: SessionKey) {
        let Some(o) = self.origins.get_mut(&origin) else {
            return;
        };
        if o.previous == Some(key) {
            o.previous = None;
        } else if o.current == key {
            match o.previous.take() {
                Some(previous)
                    if self
                        .sessions
                        .get(&previous)
                        .is_some_and(|e| e.origin == origin) =>
                {
                    o.current = previous;
                }
                _ => {
                    self.origins.remove(&origin);
                }
            }
        }
    }

    /// After a session ran: remove it or (re)schedule its timer.
    fn after(&mut self, key: SessionKey) {
        let Some(e) = self.sessions.get_mut(&key) else {
            return;
        };
        if e.session.is_over() {
            self.remove(key);
            return;
        }
        let e = if e.session.is_lingering() && !e.let_go {
            self.let_go(key);
            let Some(e) = self.sessions.get_mut(&key) else {
                return;
            };
            e
        } else {
            e
        };
        if e.session.is_pipelined() != e.pipelined {
            e.pipelined = !e.pipelined;
            if e.pipelined {
                self.pipelined.insert(key);
            } else {
                self.pipelined.remove(&key);
            }
        }
        if let Some(d) = e.session.next_deadline() {
            if e.scheduled.is_none_or(|s| d < s) {
                e.scheduled = Some(d);
                self.deadlines.push(d, key);
            }
        }
    }

    /// A response header from intercept, with what our extension adds
    /// when intercept sends it (`--verdict`; else nothing).
    pub fn handle_response(&mut self, now: u64, h: &ResponseHeader, extras: ResponseExtras) {
        let key = SessionKey {
            client: h.dst_ip,
            port: h.dst_port,
        };
        let (mut ctx, sessions) = self.ctx();
        let Some(e) = sessions.get_mut(&key) else {
            self.counters.responses_unmatched += 1;
            return;
        };
        ctx.target = e.target as usize;
        e.session.on_response(now, h, extras, &mut ctx);
        self.after(key);
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        self.skipped.sweep(now, self.cfg.linger_ms);
        while let Some((t, key)) = self.deadlines.pop_due(now) {
            let (mut ctx, sessions) = self.ctx();
            let Some(e) = sessions.get_mut(&key) else {
                continue;
            };
            if e.scheduled != Some(t) {
                continue; // superseded by an earlier deadline
            }
            e.scheduled = None;
            ctx.target = e.target as usize;
            e.session.on_timeout(now, &mut ctx);
            self.after(key);
        }
        // Give a burst's memory back once it is over (`-m` counts it).
        self.deadlines.shrink();
        let idle = self.packets.is_empty() && self.routes.is_empty();
        if idle && self.packets.capacity().max(self.routes.capacity()) > 4096 {
            self.packets.shrink_to(64);
            self.routes.shrink_to(64);
        }
    }

    /// A new intercept connection (a restarted intercept starts with an
    /// empty route table): announce the route of every live session again
    /// (drained by [`Engine::poll_route`]) and resend what each has in
    /// flight, so the target's answers come through the new connection now
    /// rather than at the next backed-off retransmission. Returns how many
    /// routes were queued.
    pub fn reannounce(&mut self, now: u64) -> u64 {
        self.intercept_back_at = now;
        let (mut ctx, sessions) = self.ctx();
        let mut routes = 0;
        for e in sessions.values_mut() {
            ctx.target = e.target as usize;
            routes += e.session.reannounce(now, &mut ctx) as u64;
        }
        let keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
        for k in keys {
            self.after(k);
        }
        routes
    }

    /// tcpcopy is stopping: reset every live session at the target and
    /// count what was never sent.
    pub fn shutdown(&mut self) {
        let (mut ctx, sessions) = self.ctx();
        for e in sessions.values_mut() {
            ctx.target = e.target as usize;
            e.session.shutdown(&mut ctx);
        }
        let keys: Vec<_> = self.sessions.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        self.deadlines.clear();
    }
}
