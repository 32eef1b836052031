//! Deterministic scenario tests (spec §11, the parts the engine decides)
//! and property tests, driven by scripted segments and a fake clock.

use super::{claims::Claims, *};
use crate::{
    proto::{ResponseExtras, ResponseHeader, RouteMsg},
    wire::{IpPacket, TcpView},
};
use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

/// The address family a scenario runs in. Every scenario that names no
/// address of its own runs in both (`both_families!`, at the end); the
/// property tests run each case in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

thread_local! {
    static FAMILY: Cell<Family> = const { Cell::new(Family::V4) };
}

fn family() -> Family {
    FAMILY.with(|f| f.get())
}

fn in_family(f: Family, scenario: fn()) {
    FAMILY.with(|c| c.set(f));
    scenario();
}

fn addr(v4: [u8; 4], v6: &str) -> IpAddr {
    match family() {
        Family::V4 => v4.into(),
        Family::V6 => v6.parse().unwrap(),
    }
}

fn client() -> IpAddr {
    addr([10, 0, 1, 10], "fd00:1::10")
}
fn online() -> IpAddr {
    addr([10, 0, 1, 1], "fd00:1::1")
}
fn target() -> IpAddr {
    addr([10, 0, 2, 2], "fd00:2::2")
}
/// IP and TCP header bytes of a segment without options.
fn headers() -> u32 {
    crate::wire::build::ip_header_len(target()) as u32 + 20
}

const TISN: u32 = 5_000_000;

/// A record's header of the target's segment to `client` (as replayed),
/// `len` payload bytes, no options.
fn target_header(client: (IpAddr, u16), seq: u32, ack: u32, flags: u8, len: u32) -> ResponseHeader {
    ResponseHeader {
        src_ip: target(),
        src_port: 8080,
        dst_ip: client.0,
        dst_port: client.1,
        seq,
        ack,
        flags,
        window: 65535,
        ip_total_len: (headers() + len) as u16,
        payload_len: len,
        wscale: None,
        timestamps: None,
        mss: None,
    }
}

/// A packet the engine sent, parsed.
#[derive(Clone, Debug)]
struct Out {
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
    ttl: u8,
    df: bool,
}

fn parse_out(p: &[u8]) -> Out {
    let ip = IpPacket::parse(p).unwrap();
    assert_eq!(
        ip.src.is_ipv4(),
        family() == Family::V4,
        "the session's family"
    );
    assert_eq!(ip.bytes.len(), p.len(), "the length the header states");
    if ip.src.is_ipv4() {
        assert_eq!(crate::wire::internet_checksum(&p[..20]), 0, "IP checksum");
    }
    assert_eq!(
        crate::wire::tcp_checksum(ip.src, ip.dst, ip.payload()),
        0,
        "TCP checksum"
    );
    let t = TcpView::new_checked(ip.payload()).unwrap();
    Out {
        src: (ip.src, t.src_port()),
        dst: (ip.dst, t.dst_port()),
        seq: t.seq(),
        ack: t.ack(),
        flags: t.flags().0,
        window: t.window(),
        options: t.options_bytes().to_vec(),
        payload: t.payload().to_vec(),
        ttl: ip.ttl,
        // IPv6 is never fragmented on the way.
        df: ip.fragmentation == crate::wire::Fragmentation::Whole,
    }
}

/// Build a captured client packet.
#[allow(clippy::too_many_arguments)]
fn client_pkt(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    options: &[u8],
) -> Vec<u8> {
    crate::wire::build::build(&crate::wire::build::SegmentSpec {
        src,
        dst,
        seq,
        ack,
        flags,
        window: 501,
        options,
        payload,
        ip_id: 100,
        ttl: 63,
        tos: 0,
    })
}

const SYN_OPTS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

struct Lab {
    e: Engine,
    now: u64,
    sent: Vec<Out>,
    routes: Vec<RouteMsg>,
    /// The window the target advertises in `respond`.
    target_window: u16,
}

impl Lab {
    fn new(cfg: Config) -> Lab {
        Lab {
            e: Engine::new(Arc::new(cfg)),
            now: 0,
            sent: Vec::new(),
            routes: Vec::new(),
            target_window: 65535,
        }
    }
    fn default_cfg() -> Config {
        let rule = format!("80-{}", SocketAddr::new(target(), 8080));
        Config {
            transfers: parse_transfers(&rule).unwrap(),
            ..Config::default()
        }
    }
    /// The data segments sent so far, as (source port, payload).
    fn requests_by_port(&self) -> Vec<(u16, Vec<u8>)> {
        self.sent
            .iter()
            .filter(|o| !o.payload.is_empty())
            .map(|o| (o.src.1, o.payload.clone()))
            .collect()
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut v = Vec::new();
        while let Some(r) = self.e.poll_route() {
            self.routes.push(r);
        }
        while let Some(p) = self.e.poll_transmit() {
            v.push(parse_out(&p));
        }
        self.sent.extend(v.iter().cloned());
        v
    }
    fn capture(&mut self, port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<Out> {
        let opts: &[u8] = if flags & 0x02 != 0 { &SYN_OPTS } else { &[] };
        let p = client_pkt(
            (client(), port),
            (online(), 80),
            seq,
            ack,
            flags,
            payload,
            opts,
        );
        self.e.handle_client_packet(self.now, &p);
        self.drain()
    }
    fn advance(&mut self, ms: u64) -> Vec<Out> {
        let end = self.now + ms;
        let mut out = Vec::new();
        loop {
            match self.e.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.e.handle_timeout(self.now);
                    out.extend(self.drain());
                }
                _ => break,
            }
        }
        self.now = end;
        out
    }
    /// A response from the target to `client` (as replayed).
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        client: (IpAddr, u16),
        seq: u32,
        ack: u32,
        flags: u8,
        len: u32,
        ts: Option<(u32, u32)>,
    ) -> Vec<Out> {
        let h = ResponseHeader {
            window: self.target_window,
            wscale: if flags & 0x02 != 0 { Some(7) } else { None },
            timestamps: ts,
            ..target_header(client, seq, ack, flags, len)
        };
        self.e
            .handle_response(self.now, &h, ResponseExtras::default());
        self.drain()
    }
    fn check_invariants(&self) {
        let c = self.e.counters();
        assert_eq!(c.captured, c.accepted + c.not_accepted(), "{c:#?}");
        assert_eq!(
            c.session_inputs,
            c.replayed + c.session_dropped() + self.e.buffered(),
            "second invariant: {c:#?}"
        );
        assert_eq!(self.e.backlog(), self.e.buffered());
    }
}

const ISN: u32 = 1000;
const P: u16 = 40000;

/// Captured SYN, SYN-ACK from the target, client's third ACK, and the
/// end of the worker's turn (the ACK, owed, goes bare: nothing else came).
fn handshake(l: &mut Lab) -> (IpAddr, u16) {
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    assert_eq!(out.len(), 1);
    let key = out[0].src;
    l.respond(key, TISN, ISN + 1, 0x12, 0, None);
    l.capture(P, ISN + 1, 777, 0x10, &[]);
    l.advance(0);
    key
}

fn basic_replay_of_one_request() {
    let mut l = Lab::new(Lab::default_cfg());
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    // Route before SYN, SYN with the client's options.
    assert_eq!(
        l.routes,
        vec![RouteMsg::client_add((client(), P), (target(), 8080))]
    );
    assert_eq!(out[0].flags, 0x02);
    assert_eq!(out[0].options, SYN_OPTS.to_vec());
    assert_eq!(out[0].dst, (target(), 8080));
    assert_eq!(out[0].seq, ISN);
    let out = l.respond((client(), P), TISN, ISN + 1, 0x12, 0, None);
    assert!(out.is_empty(), "waits for the client's ACK");
    // The client's handshake ACK is owed until the worker's turn ends: the
    // request that follows in the same turn carries it.
    let out = l.capture(P, ISN + 1, 777, 0x10, &[]);
    assert!(out.is_empty(), "owed: {out:?}");
    let out = l.capture(P, ISN + 1, 777, 0x18, b"GET / 1\n");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].payload, b"GET / 1\n");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (0x18, ISN + 1, TISN + 1)
    );
    // Target answers 100 bytes, acking the request. No request follows to
    // carry the acknowledgement, so a delayed ACK does, after 40 ms (as
    // Linux's), not at once.
    l.respond((client(), P), TISN + 1, ISN + 9, 0x18, 100, None);
    let out = l.advance(5);
    assert!(out.is_empty(), "the ACK is delayed: {out:?}");
    let out = l.advance(40);
    assert!(
        out.iter().any(|o| o.flags == 0x10 && o.ack == TISN + 101),
        "response acked: {out:?}"
    );
    // Client acks the response (absorbed), then closes.
    assert!(l.capture(P, ISN + 9, 877, 0x10, &[]).is_empty());
    let out = l.capture(P, ISN + 9, 877, 0x11, &[]);
    assert_eq!(out[0].flags & 0x01, 0x01, "FIN forwarded: {out:?}");
    assert_eq!(out[0].seq, ISN + 9);
    // Target FIN: tcpcopy acks it, sends no RST.
    let out = l.respond((client(), P), TISN + 101, ISN + 10, 0x11, 0, None);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].flags, out[0].ack), (0x10, TISN + 102));
    let c = l.e.counters().clone();
    assert_eq!(
        (
            c.syns_sent,
            c.connections,
            c.requests_replayed,
            c.fins_sent,
            c.rsts_sent
        ),
        (1, 1, 1, 1, 0)
    );
    assert_eq!(c.response_fins, 1);
    assert_eq!(l.e.active_sessions(), 1, "lingering");
    l.advance(6_001);
    assert_eq!(l.e.active_sessions(), 0, "released after the linger");
    l.check_invariants();
}

fn request_waits_for_previous_response_and_w_turns_it_off() {
    for no_wait in [false, true] {
        let mut l = Lab::new(Config {
            no_wait,
            ..Lab::default_cfg()
        });
        let key = handshake(&mut l);
        l.capture(P, ISN + 1, 777, 0x18, b"req1");
        // The client got resp1 (its ack moved) and sent req2 at once.
        let out = l.capture(P, ISN + 5, 800, 0x18, b"req2");
        if no_wait {
            assert_eq!(out.len(), 1, "-W sends at once");
            continue;
        }
        assert!(out.is_empty(), "req2 held until resp1 arrives");
        l.respond(key, TISN + 1, ISN + 5, 0x10, 0, None); // req1 acked
        let out = l.advance(400);
        assert!(out.is_empty(), "still held while the target thinks");
        // resp1 arrives (the target acks req1 too).
        let out = l.respond(key, TISN + 1, ISN + 5, 0x18, 23, None);
        // LAN client (rtt ≤ 1 ms): released on the first response segment.
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].payload, b"req2");
        assert_eq!(out[0].ack, TISN + 24, "req2 acks resp1");
        l.check_invariants();
    }
}

/// A keep-alive client's next request carries the acknowledgement of the
/// response before it: no ACK of tcpcopy's own goes for that response,
/// even when the request comes after the response is complete (a quiet
/// period), as long as it comes within the delayed-ACK time. A bulk
/// response is acknowledged every second full segment's worth.
fn acknowledgements_ride_on_requests_and_bulk_is_acked_as_it_comes() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req1");
    l.respond(key, TISN + 1, ISN + 5, 0x18, 23, None);
    // The response is complete after a quiet period; the client's next
    // request comes 10 ms later and carries the ACK.
    let out = l.advance(10);
    assert!(out.is_empty(), "no ACK of our own yet: {out:?}");
    let out = l.capture(P, ISN + 5, 800, 0x18, b"req2");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].ack, TISN + 24, "req2 acks resp1");
    l.respond(key, TISN + 24, ISN + 9, 0x10, 0, None); // req2 acked
    assert!(l.advance(100).is_empty(), "and nothing after it");
    assert_eq!(l.e.counters().acks_fabricated, 0);
    // A 20-segment response: acked while it comes, not only at its end.
    let mut seq = TISN + 24;
    for _ in 0..20 {
        l.respond(key, seq, ISN + 9, 0x10, 1448, None);
        seq += 1448;
        l.advance(1);
    }
    let acks = l
        .sent
        .iter()
        .filter(|o| o.flags == 0x10 && o.payload.is_empty())
        .count();
    assert!(
        acks >= 5,
        "a bulk response is acked as it comes ({acks} ACKs)"
    );
    l.check_invariants();
}

fn pacing_with_a_measured_rtt_waits_for_a_quiet_period() {
    let mut l = Lab::new(Lab::default_cfg());
    l.capture(P, ISN, 0, 0x02, &[]);
    let key = (client(), P);
    l.now += 40; // client RTT 40 ms
    l.respond(key, TISN, ISN + 1, 0x12, 0, None);
    l.capture(P, ISN + 1, 777, 0x10, &[]);
    l.capture(P, ISN + 1, 777, 0x18, b"req1");
    assert!(l.capture(P, ISN + 5, 900, 0x18, b"req2").is_empty());
    l.respond(key, TISN + 1, ISN + 5, 0x10, 1448, None);
    l.advance(10);
    l.respond(key, TISN + 1449, ISN + 5, 0x18, 100, None);
    let out = l.advance(39);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "not before a quiet RTT: {out:?}"
    );
    let out = l.advance(100);
    let req2 = out
        .iter()
        .find(|o| o.payload == b"req2")
        .expect("req2 released after the quiet period");
    assert_eq!(req2.ack, TISN + 1549);
    l.check_invariants();
}

fn server_first_greeting_is_awaited_and_acknowledged() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l); // third ACK captured ack 777
                                 // The client's first data acks 12 greeting bytes: server speaks first.
    let out = l.capture(P, ISN + 1, 789, 0x18, b"HELO");
    assert!(out.is_empty(), "held for the greeting");
    l.advance(1000);
    let out = l.respond(key, TISN + 1, ISN + 1, 0x18, 12, None);
    let cmd = out
        .iter()
        .find(|o| o.payload == b"HELO")
        .expect("command follows the greeting");
    assert_eq!(cmd.ack, TISN + 13, "covers the greeting");
    l.check_invariants();
}

fn mid_stream_session_gets_a_fabricated_syn_and_o_skips_it() {
    let mut l = Lab::new(Config {
        mss: 1400,
        ..Lab::default_cfg()
    });
    let out = l.capture(P, 7000, 1234, 0x18, b"req2");
    assert_eq!(out.len(), 1);
    let syn = &out[0];
    assert_eq!(
        (syn.flags, syn.seq, syn.window, syn.ttl, syn.df),
        (0x02, 6999, 65535, 64, true)
    );
    let mss = l.e.config().syn_mss(target()).to_be_bytes();
    assert_eq!(
        syn.options,
        vec![2, 4, mss[0], mss[1]],
        "exactly one option, MSS = -D (20 less over IPv6)"
    );
    let out = l.respond((client(), P), TISN, 7000, 0x12, 0, None);
    // The request itself completes the handshake: no bare ACK before it.
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (0x18, 7000, TISN + 1)
    );
    assert_eq!(out[0].payload, b"req2");
    assert_eq!(out[0].window, 65535);
    let c = l.e.counters();
    assert_eq!((c.syns_sent, c.syns_fabricated, c.connections), (1, 1, 1));
    l.check_invariants();

    let mut o = Lab::new(Config {
        only_complete: true,
        ..Lab::default_cfg()
    });
    assert!(o.capture(P, 7000, 1234, 0x18, b"req2").is_empty());
    assert_eq!(o.e.counters().only_complete_skipped, 1);
    assert_eq!(o.e.counters().syns_sent, 0);
    o.check_invariants();
}

fn pure_acks_are_absorbed_and_response_data_is_acked_by_tcpcopy() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /big");
    let mut fabricated = 0;
    for i in 0..10u32 {
        l.respond(key, TISN + 1 + i * 1448, ISN + 9, 0x10, 1448, None);
        assert!(l
            .capture(P, ISN + 9, 777 + (i + 1) * 1448, 0x10, &[])
            .is_empty());
        fabricated += l
            .advance(1)
            .iter()
            .filter(|o| o.flags == 0x10 && o.payload.is_empty())
            .count();
    }
    l.advance(50);
    let last = l.sent.iter().rev().find(|o| o.flags == 0x10).unwrap();
    assert_eq!(last.ack, TISN + 1 + 10 * 1448);
    assert_eq!(last.seq, ISN + 9);
    assert!(fabricated > 0);
    assert_eq!(l.e.counters().pure_acks_absorbed, 10);
    l.check_invariants();
}

fn replicas_use_distinct_ports_and_collisions_are_avoided() {
    let mut l = Lab::new(Config {
        replicas: 3,
        random_offset: 5,
        ..Lab::default_cfg()
    });
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    let ports: Vec<u16> = out.iter().map(|o| o.src.1).collect();
    assert_eq!(ports, vec![P, P + 32 + 5, P + 96 + 5]);
    assert_eq!(l.e.counters().syns_sent, 3);
    // A real client whose port is a replica's port gets the next free one.
    let p2 = P + 37;
    let out = l.capture(p2, 9000, 0, 0x02, &[]);
    assert_eq!(out[0].src.1, P + 38, "{out:?}");
    let mut seen = std::collections::HashSet::new();
    for o in &l.sent {
        assert!(seen.insert(o.src), "two sessions share {:?}", o.src);
    }
    l.check_invariants();
}

/// Two workers sharing the run's port claims, each capturing its own
/// clients (how they split them does not matter: by flow hash or by RX
/// queue). The connections they open to the target (originals, replicas
/// shifted into each other's ports, `-c` addresses) must never coincide,
/// or intercept could route one's answers to the other (found replaying
/// `-n 2` at full speed). A session that ends gives its port back.
#[test]
fn two_workers_never_open_the_same_connection() {
    for pool in [None, Some("10.9.9.x")] {
        let mut cfg = Config {
            replicas: 3,
            random_offset: 5,
            ..Lab::default_cfg()
        };
        if let Some(p) = pool {
            cfg.client_pool = Some(ClientPool::parse(p, &cfg.transfers).unwrap());
        }
        let claims = Arc::new(Claims::default());
        let mut workers = [Lab::new(cfg.clone()), Lab::new(cfg)];
        for (i, l) in workers.iter_mut().enumerate() {
            l.e.share_ports(i as u16, Arc::clone(&claims));
        }
        // Interleaved, so each worker's copies land on ports the other's
        // originals and copies want.
        for port in 20000..20400u16 {
            workers[(port % 2) as usize].capture(port, 1, 0, 0x02, &[]);
        }
        let mut seen = std::collections::HashSet::new();
        for l in &workers {
            assert_eq!(l.e.counters().syns_sent, 3 * 200);
            for o in &l.sent {
                assert!(seen.insert(o.src), "two sessions share {:?}", o.src);
            }
            l.check_invariants();
        }
        assert_eq!(claims.len(), 2 * 3 * 200);
        for l in &mut workers {
            l.e.shutdown();
        }
        assert!(claims.is_empty(), "ended sessions give their ports back");
    }
}

/// A captured flow stays a worker's while a session replays it; once the
/// connection is closed (the session only lingers), the flow is given back
/// at once, so a client reusing the port on another RX queue is not handed
/// across workers for the whole linger. The port it replayed from stays
/// claimed until the session is gone: a lingering session still resets
/// stray answers, which must not hit another worker's connection (found
/// as one request replayed twice with `-n 2` on 6 workers).
fn a_closed_session_lets_go_of_its_flow_at_once() {
    let claims = Arc::new(Claims::default());
    let mut l = Lab::new(Lab::default_cfg());
    l.e.share_ports(0, Arc::clone(&claims));
    assert!(!l.e.holds_flow(client(), P));
    let key = handshake(&mut l);
    assert!(l.e.holds_flow(client(), P));
    assert!(!l.e.holds_flow(client(), P + 1));
    assert_eq!(
        claims.owner(SessionKey {
            client: key.0,
            port: key.1
        }),
        Some(0)
    );
    assert_eq!(l.e.poll_released_flow(), None);
    // Client FIN replayed, target FIN acknowledged: the session lingers.
    l.capture(P, ISN + 1, 777, 0x11, &[]);
    l.respond(key, TISN + 1, ISN + 2, 0x11, 0, None);
    assert_eq!(l.e.active_sessions(), 1, "lingering");
    assert!(!l.e.holds_flow(client(), P));
    assert_eq!(
        l.e.poll_released_flow(),
        Some(SessionKey {
            client: client(),
            port: P
        })
    );
    assert_eq!(l.e.poll_released_flow(), None);
    assert_eq!(claims.len(), 1, "the port stays claimed while it lingers");
    l.advance(6_001);
    assert_eq!(l.e.active_sessions(), 0);
    assert!(claims.is_empty(), "the port is free for any worker");
    assert_eq!(l.e.poll_released_flow(), None, "given back once");
    l.check_invariants();
}

fn sampling_keeps_whole_sessions_by_the_c_bucket() {
    let mut l = Lab::new(Config {
        sample_percent: 30,
        ..Lab::default_cfg()
    });
    let mut expected = 0;
    for port in 30000..30200u16 {
        if sample_bucket(client(), port) < 30 {
            expected += 1;
        }
        l.capture(port, 1, 0, 0x02, &[]);
        l.capture(port, 2, 5, 0x18, b"x");
    }
    let c = l.e.counters();
    assert_eq!(c.syns_sent, expected);
    assert_eq!(c.sampled_out, 2 * (200 - expected));
    l.check_invariants();
}

/// One short connection on `port`: SYN, request, FIN, each captured at
/// `l.now`; returns whether the engine sent its SYN to the target.
fn short_connection(l: &mut Lab, port: u16, isn: u32) -> bool {
    let syns = l.e.counters().syns_sent;
    l.capture(port, isn, 0, 0x02, &[]);
    l.capture(port, isn + 1, 5, 0x18, b"GET /\n");
    l.capture(port, isn + 7, 5, 0x11, &[]);
    l.e.counters().syns_sent > syns
}

fn ramp_replays_whole_sessions_at_a_share_rising_each_second() {
    let mut l = Lab::new(Config {
        ramp: Some(Arc::new(Ramp::default())),
        sample_percent: 50, // -g overrides -r
        ..Lab::default_cfg()
    });
    l.now = 10_000;
    // The same 200 client ports open a new connection every second.
    let mut replayed_by_second = Vec::new();
    for second in 0..5u64 {
        let share = second as u8 + 1;
        let mut n = 0;
        for (i, port) in (20000..20200u16).enumerate() {
            l.now = 10_000 + second * 1000 + i as u64 * 4;
            let isn = 1000 + second as u32 * 100_000;
            let admitted = short_connection(&mut l, port, isn);
            assert_eq!(
                admitted,
                sample_bucket(client(), port) < share,
                "port {port}"
            );
            n += admitted as u64;
        }
        replayed_by_second.push(n);
    }
    // The decision sticks: a connection skipped is not picked up
    // mid-stream (the C tool would fabricate a SYN once the share passed
    // its bucket).
    let skipped_port = (20000..20200u16)
        .find(|&p| sample_bucket(client(), p) == 10)
        .unwrap();
    l.now += 10_000;
    l.capture(skipped_port, 400_007, 5, 0x18, b"more\n");
    let c = l.e.counters().clone();
    assert_eq!(c.syns_fabricated, 0);
    let replayed: u64 = replayed_by_second.iter().sum();
    assert_eq!(c.sessions_created, replayed);
    assert_eq!(c.sessions_skipped_ramp, 1000 - replayed);
    assert_eq!(c.skipped_ramp, 3 * (1000 - replayed) + 1);
    assert_eq!(c.sampled_out, 0);
    assert!(
        replayed_by_second.windows(2).all(|w| w[0] < w[1]),
        "{replayed_by_second:?}"
    );
    l.check_invariants();
}

fn session_rate_cap_skips_whole_sessions_beyond_n_a_second() {
    let mut l = Lab::new(Config {
        session_rate: Some(Arc::new(SessionRate::new(10))),
        ..Lab::default_cfg()
    });
    // 50 new connections a second for 3 s, each sending a request after
    // the next connections started (so a skipped one is seen mid-stream).
    let mut admitted = Vec::new();
    for i in 0..150u16 {
        l.now = i as u64 * 20;
        let port = 30000 + i;
        l.capture(port, 1000, 0, 0x02, &[]);
        if l.e.counters().syns_sent as usize > admitted.len() {
            admitted.push(l.now);
        }
    }
    for i in 0..150u16 {
        l.capture(30000 + i, 1001, 5, 0x18, b"GET /\n");
        l.capture(30000 + i, 1007, 5, 0x11, &[]);
    }
    let c = l.e.counters().clone();
    assert_eq!(admitted.len(), 30, "10 a second for 3 s");
    for &t in &admitted {
        assert!(admitted.iter().filter(|&&u| u >= t && u < t + 1000).count() <= 10);
    }
    assert_eq!(c.sessions_created, 30);
    assert_eq!(c.sessions_skipped_rate_limit, 120);
    assert_eq!(
        c.skipped_rate_limit,
        3 * 120,
        "every segment of a skipped one"
    );
    assert_eq!(c.syns_fabricated, 0);
    // A new connection on a skipped port (a new SYN) is decided again.
    l.now += 2_000;
    assert!(short_connection(&mut l, 30149, 90_000));
    l.check_invariants();
}

#[test]
fn client_filters_leave_out_addresses_before_sessions() {
    let mut l = Lab::new(Config {
        client_filter: ClientFilter {
            only: Vec::new(),
            skip: crate::wire::Cidr::parse_list("--skip-clients", "10.0.1.10").unwrap(),
        },
        ..Lab::default_cfg()
    });
    assert!(!short_connection(&mut l, 40000, 1));
    let c = l.e.counters();
    assert_eq!(
        (c.client_filtered, c.accepted, c.sessions_created),
        (3, 0, 0)
    );
    l.check_invariants();
}

#[test]
fn fan_out_replays_every_session_to_each_target_with_its_own_counters() {
    let mut l = Lab::new(Config {
        transfers: parse_transfers("80-10.0.2.2:8080+10.0.2.3:8080").unwrap(),
        replicas: 2,
        random_offset: 100,
        ..Config::default()
    });
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    let second = IpAddr::from([10, 0, 2, 3]);
    let dsts: Vec<_> = out.iter().map(|o| (o.dst, o.src.1)).collect();
    let cfg = l.e.config().clone();
    assert_eq!(
        dsts,
        vec![
            ((target(), 8080), P),
            ((target(), 8080), preferred_port(&cfg, P, 1)),
            ((second, 8080), preferred_port(&cfg, P, 2)),
            ((second, 8080), preferred_port(&cfg, P, 3)),
        ],
        "-n 2 copies for each target, each copy on its own port"
    );
    for o in &out {
        l.respond(o.src, TISN, ISN + 1, 0x12, 0, None);
    }
    l.capture(P, ISN + 1, 777, 0x10, &[]);
    let out = l.capture(P, ISN + 1, 777, 0x18, b"GET / 1\n");
    assert_eq!(out.iter().filter(|o| o.dst.0 == second).count(), 2);
    assert_eq!(out.iter().filter(|o| o.payload == b"GET / 1\n").count(), 4);
    let per = l.e.target_counters();
    assert_eq!(per.len(), 2);
    for c in per {
        assert_eq!(
            (c.sessions_created, c.connections, c.requests_replayed),
            (2, 2, 2)
        );
    }
    let c = l.e.counters();
    assert_eq!((c.sessions_created, c.requests_replayed), (4, 4));
    assert_eq!(c.session_inputs, 3 * 4);
    l.check_invariants();
}

#[test]
fn client_pool_binds_each_client_to_one_address() {
    let pool = ClientPool::parse(
        "10.9.9.5,10.9.9.6",
        &parse_transfers("80-10.0.2.2:8080").unwrap(),
    )
    .unwrap();
    let mut l = Lab::new(Config {
        client_pool: Some(pool),
        ..Lab::default_cfg()
    });
    let a = l.capture(P, ISN, 0, 0x02, &[]);
    let other = client_pkt(
        (Ipv4Addr::new(10, 0, 1, 11).into(), P),
        (online(), 80),
        ISN,
        0,
        0x02,
        &[],
        &[],
    );
    l.e.handle_client_packet(0, &other);
    let b = l.drain();
    let a2 = l.capture(P + 1, ISN, 0, 0x02, &[]);
    assert_eq!(a[0].src.0, Ipv4Addr::new(10, 9, 9, 5));
    assert_eq!(b[0].src.0, Ipv4Addr::new(10, 9, 9, 6));
    assert_eq!(a2[0].src.0, Ipv4Addr::new(10, 9, 9, 5));
    l.check_invariants();
}

#[test]
fn several_transfers_route_by_destination() {
    let cfg = Config {
        transfers: parse_transfers("80-10.0.2.2:8080,81-10.0.2.2:9090,10.0.1.1:82-10.0.2.3:82")
            .unwrap(),
        ..Config::default()
    };
    let mut l = Lab::new(cfg);
    let a = client_pkt((client(), 1), (online(), 81), 1, 0, 0x02, &[], &[]);
    let b = client_pkt(
        (client(), 2),
        (Ipv4Addr::new(10, 0, 1, 2).into(), 82),
        1,
        0,
        0x02,
        &[],
        &[],
    );
    l.e.handle_client_packet(0, &a);
    l.e.handle_client_packet(0, &b);
    let out = l.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, (target(), 9090));
    assert_eq!(l.e.counters().no_transfer, 1);
    l.check_invariants();
}

fn client_rst_is_held_while_a_response_is_pending() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    assert!(l.capture(P, ISN + 4, 777, 0x14, &[]).is_empty(), "RST held");
    l.advance(500);
    l.respond(key, TISN + 1, ISN + 4, 0x18, 10, None);
    let out = l.advance(10);
    let rst = out
        .iter()
        .find(|o| o.flags & 0x04 != 0)
        .expect("RST after the response");
    assert_eq!(rst.seq, ISN + 4);
    l.check_invariants();
}

/// A server that answers and closes (HTTP `Connection: close`), a client
/// that closed too: the client's FIN, replayed, acknowledges the target's
/// FIN itself, with no bare ACK before it.
fn target_closing_first_with_the_clients_fin_in_hand_gets_only_the_fin() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    // The client's FIN, captured while the replayed answer is on its way.
    let early = l.capture(P, ISN + 4, 787, 0x11, &[]);
    assert!(early.iter().all(|o| o.flags & 0x01 == 0), "held: {early:?}");
    // The answer and the target's FIN in one segment.
    let out = l.respond(key, TISN + 1, ISN + 4, 0x19, 10, None);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (0x11, ISN + 4, TISN + 12)
    );
    assert!(l.advance(100).iter().all(|o| o.flags & 0x04 == 0), "no RST");
    l.check_invariants();
}

fn target_closing_first_gets_ack_then_rst() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    l.respond(key, TISN + 1, ISN + 4, 0x18, 10, None);
    l.advance(10);
    let out = l.respond(key, TISN + 11, ISN + 4, 0x11, 0, None);
    assert_eq!(out[0].flags, 0x10);
    assert_eq!(out[0].ack, TISN + 12);
    assert_eq!(out[1].flags & 0x04, 0x04);
    assert!(
        l.capture(P, ISN + 4, 800, 0x11, &[]).is_empty(),
        "a later client FIN sends nothing"
    );
    assert_eq!(l.e.counters().late_for_closed, 1);
    l.advance(6_001);
    assert_eq!(l.e.active_sessions(), 0);
    l.check_invariants();
}

fn target_reset_reconnects_from_the_first_unanswered_byte() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req1");
    assert!(l.capture(P, ISN + 5, 800, 0x18, b"req2").is_empty());
    // The target acks req1, says nothing, then resets (a restart: it had
    // read req1 and dropped it).
    l.respond(key, TISN + 1, ISN + 5, 0x10, 0, None);
    l.now += 300;
    let out = l.respond(key, TISN + 1, ISN + 5, 0x14, 0, None);
    assert!(out.iter().all(|o| o.payload.is_empty()));
    let out = l.advance(5);
    let syn = out.iter().find(|o| o.flags == 0x02).expect("new SYN");
    assert_eq!(syn.seq, ISN, "seq(req1) - 1: req1 was never answered");
    let mss = l.e.config().syn_mss(target()).to_be_bytes();
    assert_eq!(syn.options, vec![2, 4, mss[0], mss[1]]);
    assert_eq!(l.routes.len(), 2, "a route precedes the new SYN");
    let out = l.respond(key, TISN + 9000, ISN + 1, 0x12, 0, None);
    let again = out.iter().find(|o| !o.payload.is_empty()).unwrap();
    assert_eq!(
        (again.payload.as_slice(), again.ack),
        (&b"req1"[..], TISN + 9001)
    );
    // Answered this time; then the target resets again: req1 is not sent
    // a third time, req2 goes on the next connection.
    let out = l.respond(key, TISN + 9001, ISN + 5, 0x18, 10, None);
    let req2 = out.iter().find(|o| !o.payload.is_empty()).unwrap();
    assert_eq!(req2.payload, b"req2");
    l.respond(key, TISN + 9011, ISN + 9, 0x10, 0, None);
    l.respond(key, TISN + 9011, ISN + 9, 0x14, 0, None);
    let out = l.advance(5);
    let syn = out.iter().find(|o| o.flags == 0x02).expect("a third SYN");
    assert_eq!(syn.seq, ISN + 4, "seq(req2) - 1: req1 was answered");
    let out = l.respond(key, TISN + 20000, ISN + 5, 0x12, 0, None);
    assert!(out.iter().any(|o| o.payload == b"req2"));
    let c = l.e.counters();
    assert_eq!((c.reconnects, c.response_rsts, c.connections), (2, 2, 3));
    assert_eq!(l.sent.iter().filter(|o| o.payload == b"req1").count(), 2);
    assert_eq!(l.sent.iter().filter(|o| o.payload == b"req2").count(), 2);
    l.check_invariants();
}

/// A target that stalls (acknowledges a request, leaves it unread and
/// says nothing) and then dies has not answered it: its silence follows no
/// answer to it, so the request goes again on the next connection. Found
/// by restarting nginx under load: its worker stalled 0.2-0.7 s before it
/// went, and the requests it took meanwhile were lost, uncounted.
fn a_target_that_stalls_then_dies_gets_the_stalled_request_again() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req1");
    l.capture(P, ISN + 5, 787, 0x18, b"req2");
    // req1's answer releases req2 (a LAN client's next request follows
    // the first response segment).
    let out = l.respond(key, TISN + 1, ISN + 5, 0x18, 10, None);
    assert!(out.iter().any(|o| o.payload == b"req2"), "{out:?}");
    // req2 acknowledged by a bare ACK, then a second of silence.
    l.respond(key, TISN + 11, ISN + 9, 0x10, 0, None);
    l.advance(1_000);
    l.respond(key, TISN + 11, ISN + 9, 0x14, 0, None);
    let out = l.advance(5);
    let syn = out.iter().find(|o| o.flags == 0x02).expect("a new SYN");
    assert_eq!(
        syn.seq,
        ISN + 4,
        "seq(req2) - 1: req1 was answered, req2 not"
    );
    let out = l.respond(key, TISN + 9000, ISN + 5, 0x12, 0, None);
    assert!(out.iter().any(|o| o.payload == b"req2"), "{out:?}");
    // Answered on the new connection (a shorter answer than online's),
    // then silent, then reset: answered, not sent a third time.
    l.respond(key, TISN + 9001, ISN + 9, 0x18, 3, None);
    l.advance(1_000);
    l.respond(key, TISN + 9004, ISN + 9, 0x14, 0, None);
    let out = l.advance(5);
    assert!(out.iter().all(|o| o.flags != 0x02), "no third SYN: {out:?}");
    assert_eq!(l.sent.iter().filter(|o| o.payload == b"req2").count(), 2);
    assert_eq!(l.sent.iter().filter(|o| o.payload == b"req1").count(), 1);
    l.check_invariants();
}

/// The same with the stalled request acknowledged by the last of the
/// answer data (written before the stall, sent after): the answers so far
/// end exactly where online's did, at req3's, so their sizes agree and
/// req3 is unanswered; the silence does not say otherwise.
fn a_stalled_request_acknowledged_with_answer_data_goes_again() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    for (i, req) in [&b"req1"[..], b"req2", b"req3"].iter().enumerate() {
        l.capture(P, ISN + 1 + 4 * i as u32, 777 + 10 * i as u32, 0x18, req);
    }
    let out = l.respond(key, TISN + 1, ISN + 5, 0x18, 10, None);
    assert!(out.iter().any(|o| o.payload == b"req2"), "{out:?}");
    let out = l.respond(key, TISN + 11, ISN + 9, 0x18, 5, None);
    assert!(out.iter().any(|o| o.payload == b"req3"), "{out:?}");
    // The rest of req2's answer carries the ack of req3; then silence.
    l.respond(key, TISN + 16, ISN + 13, 0x18, 5, None);
    l.advance(1_000);
    l.respond(key, TISN + 21, ISN + 13, 0x14, 0, None);
    let out = l.advance(5);
    let syn = out.iter().find(|o| o.flags == 0x02).expect("a new SYN");
    assert_eq!(syn.seq, ISN + 8, "seq(req3) - 1");
    let out = l.respond(key, TISN + 9000, ISN + 9, 0x12, 0, None);
    assert!(out.iter().any(|o| o.payload == b"req3"), "{out:?}");
    l.check_invariants();
}

/// A target that resets the connection every time it gets a request gets
/// it again twice (a restarting server may close once more from its old
/// process), not over and over.
fn a_request_the_target_resets_on_goes_again_only_twice() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"boom");
    let mut isn = ISN;
    for round in 0..4 {
        l.respond(key, TISN + 1, isn + 5, 0x10, 0, None);
        l.respond(key, TISN + 1, isn + 5, 0x14, 0, None);
        let out = l.advance(5);
        if round < 2 {
            let syn = out.iter().find(|o| o.flags == 0x02).expect("one new SYN");
            isn = syn.seq;
            l.respond(key, TISN + 9000, isn + 1, 0x12, 0, None);
        } else {
            assert!(
                out.iter().all(|o| o.flags != 0x02),
                "round {round}: no connection after the third reset"
            );
        }
    }
    assert_eq!(l.sent.iter().filter(|o| o.payload == b"boom").count(), 3);
    l.check_invariants();
}

fn refused_and_unanswered_handshakes() {
    // `--retry-refused 0`: a refusal gives the session up at once.
    let mut l = Lab::new(Config {
        retry_refused_ms: 0,
        ..Lab::default_cfg()
    });
    l.capture(P, 7000, 1, 0x18, b"data");
    l.respond((client(), P), 0, 7000, 0x14, 0, None);
    assert_eq!(l.e.counters().lost_target_refused, 1);
    l.capture(P, 7004, 1, 0x18, b"more");
    let c = l.e.counters();
    assert_eq!(
        (c.syns_fabricated, c.lost_target_refused),
        (1, 2),
        "the rest of the flow is counted, not tried again"
    );
    l.advance(6_001);
    assert_eq!(l.e.active_sessions(), 0, "gone once the flow is quiet");
    // No SYN-ACK at all: obsolete after 3 s, RST sent.
    let mut m = Lab::new(Lab::default_cfg());
    m.capture(P, ISN, 0, 0x02, &[]);
    let out = m.advance(3_000);
    assert!(out.iter().any(|o| o.flags & 0x04 != 0));
    assert_eq!(m.e.counters().obsolete, 1);
    assert_eq!(m.e.counters().lost_handshake_timeout, 0);
    l.check_invariants();
    m.check_invariants();
}

fn idle_sessions_time_out_after_keepalive() {
    let mut l = Lab::new(Config {
        session_timeout_ms: 10_000,
        keepalive_timeout_ms: 20_000,
        ..Lab::default_cfg()
    });
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    l.respond(key, TISN + 1, ISN + 4, 0x18, 10, None);
    let out = l.advance(15_000);
    assert!(
        out.iter().all(|o| o.flags & 0x04 == 0),
        "kept past -t: a request was answered"
    );
    let out = l.advance(13_000);
    assert!(out.iter().any(|o| o.flags & 0x04 != 0), "reset after -k");
    assert_eq!(l.e.counters().obsolete, 1);
    l.check_invariants();
}

fn duplicate_captures_reach_the_target_once() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    handshake(&mut l);
    for (seq, data) in [(ISN + 1, &b"abcd"[..]), (ISN + 5, b"efgh")] {
        l.capture(P, seq, 777, 0x18, data);
        l.capture(P, seq, 777, 0x18, data);
    }
    let payloads: Vec<_> = l
        .sent
        .iter()
        .filter(|o| !o.payload.is_empty())
        .map(|o| o.payload.clone())
        .collect();
    assert_eq!(payloads, vec![b"abcd".to_vec(), b"efgh".to_vec()]);
    assert_eq!(l.e.counters().duplicates, 2);
    l.check_invariants();
}

fn unacknowledged_data_is_retransmitted() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    let out = l.advance(100);
    assert_eq!(
        out.iter().filter(|o| o.payload == b"req").count(),
        1,
        "RTO 100 ms"
    );
    l.respond(key, TISN + 1, ISN + 4, 0x18, 5, None);
    assert_eq!(l.e.counters().retransmits, 1);
    let out = l.advance(1_000);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "acked: no more retransmissions"
    );
    l.check_invariants();
}

fn oversized_captured_segments_are_cut_to_the_mtu() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    handshake(&mut l);
    let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let out = l.capture(P, ISN + 1, 777, 0x19, &data);
    let pieces: Vec<_> = out.iter().filter(|o| !o.payload.is_empty()).collect();
    assert_eq!(pieces.len(), 3);
    // -M is the packet's size: the IPv6 header leaves 20 bytes less.
    let most = 1500 - headers();
    assert!(pieces.iter().all(|o| o.payload.len() as u32 <= most));
    let joined: Vec<u8> = pieces.iter().flat_map(|o| o.payload.clone()).collect();
    assert_eq!(joined, data);
    assert_eq!(pieces[1].seq, ISN + 1 + most);
    assert_eq!(l.e.counters().split_oversize, 1);
    l.check_invariants();
}

fn shutdown_resets_live_sessions_and_counts_unsent_data() {
    let mut l = Lab::new(Lab::default_cfg());
    handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req1");
    l.capture(P, ISN + 5, 800, 0x18, b"req2"); // held
    l.e.shutdown();
    let out = l.drain();
    assert!(out.iter().any(|o| o.flags & 0x04 != 0));
    assert_eq!(l.e.counters().lost_shutdown, 1);
    assert_eq!(l.e.active_sessions(), 0);
    l.check_invariants();
}

/// A backlog bound of `n` segments of `payload` bytes each.
fn backlog_of(n: u64, payload: u64) -> u64 {
    n * (payload + stream::SEGMENT_BOOKKEEPING)
}

/// The target's window closes (its reader stopped): the next segment goes
/// as a window probe, which the target drops; everything after it is held.
fn close_targets_window(l: &mut Lab, key: (IpAddr, u16), acked: u32) {
    l.target_window = 0;
    l.respond(key, TISN + 1, acked, 0x10, 0, None);
}

/// A session whose buffer overflows is given up once; the rest of its
/// flow is counted under the same reason and never opens a new connection
/// (before: every later segment fabricated a SYN, 4,405 of them for one
/// 850 Mbit/s stream). The tombstone lives while the flow does; a new
/// captured SYN is a new connection.
fn session_buffer_is_bounded() {
    let mut l = Lab::new(Config {
        max_buffered_bytes: backlog_of(100, 10),
        ..Lab::default_cfg()
    });
    let key = handshake(&mut l);
    close_targets_window(&mut l, key, ISN + 1);
    for i in 0..150u32 {
        l.capture(P, ISN + 1 + i * 10, 777, 0x18, b"0123456789");
        assert!(
            l.e.buffered() <= 101,
            "never more than the cap (and the probe)"
        );
    }
    let c = l.e.counters();
    assert_eq!(
        (c.replayed, c.lost_buffer_full),
        (3, 149),
        "the handshake and the probe went; given up at its cap, then the rest"
    );
    assert_eq!((c.obsolete, c.syns_sent), (1, 1), "one session, one SYN");
    // The stream goes on for longer than the linger: still no new SYN.
    for i in 150..160u32 {
        l.advance(1_000);
        l.capture(P, ISN + 1 + i * 10, 777, 0x18, b"0123456789");
    }
    let c = l.e.counters();
    assert_eq!((c.lost_buffer_full, c.syns_sent), (159, 1));
    assert_eq!(l.e.active_sessions(), 1, "the tombstone lingers on");
    // The client resets: the tombstone ends after its linger.
    l.capture(P, ISN + 1601, 777, 0x04, &[]);
    l.advance(6_001);
    assert_eq!(l.e.active_sessions(), 0);
    // A new connection on the port is replayed.
    l.capture(P, ISN + 100_000, 0, 0x02, &[]);
    assert_eq!(l.e.counters().syns_sent, 2);
    l.check_invariants();
}

/// A backlog that overflows behind a hole, the target having acknowledged
/// everything before it, is the capture's loss (a mirror port dropped a
/// frame), not a slow target's: counted as such, once, with the rest of
/// the flow.
fn a_buffer_that_fills_behind_a_hole_is_the_captures_loss() {
    let mut l = Lab::new(Config {
        max_buffered_bytes: backlog_of(100, 10),
        ..Lab::default_cfg()
    });
    let key = handshake(&mut l);
    assert_eq!(l.capture(P, ISN + 1, 777, 0x18, b"0123456789").len(), 1);
    l.respond(key, TISN + 1, ISN + 11, 0x10, 0, None);
    // ISN + 11 .. 21 never comes.
    let mut out = vec![];
    for i in 0..150u32 {
        out.extend(l.capture(P, ISN + 21 + i * 10, 777, 0x18, b"0123456789"));
    }
    let c = l.e.counters();
    assert_eq!(
        (c.replayed, c.lost_behind_hole, c.lost_buffer_full),
        (3, 150, 0),
        "{c:#?}"
    );
    assert_eq!((c.obsolete, c.syns_sent), (1, 1));
    let rst = out.iter().find(|o| o.flags & 0x04 != 0).expect("an RST");
    assert_eq!(
        rst.seq,
        ISN + 11,
        "the target connection is reset where it stood"
    );
    l.check_invariants();
}

/// The bound is in bytes with each segment's bookkeeping counted: 100-byte
/// segments fill it at the count it was sized for, 1-byte segments hold
/// many more but never more memory (their payload alone would let
/// thousands in).
fn session_buffer_is_bounded_in_bytes() {
    let bound = backlog_of(10, 100);
    for payload in [100u32, 1] {
        let mut l = Lab::new(Config {
            max_buffered_bytes: bound,
            ..Lab::default_cfg()
        });
        let key = handshake(&mut l);
        close_targets_window(&mut l, key, ISN + 1);
        let data = vec![b'x'; payload as usize];
        let mut captured = 0u64;
        while l.e.counters().obsolete == 0 {
            assert!(
                captured < 100_000,
                "{payload}-byte segments: never given up"
            );
            l.capture(P, ISN + 1 + captured as u32 * payload, 777, 0x18, &data);
            captured += 1;
        }
        // The probe went; the held ones overflowed the bound.
        let held = captured - 1;
        let fits = bound / (u64::from(payload) + stream::SEGMENT_BOOKKEEPING);
        assert_eq!(
            held,
            fits + 1,
            "{payload}-byte segments: given up past the bound"
        );
        assert_eq!(l.e.counters().lost_buffer_full, held);
        l.check_invariants();
    }
}

/// While an intercept is unreachable, the target's answers cannot come
/// back: a session whose buffer fills then is counted as lost to the
/// intercept outage, not as "session buffer full" (issue #25).
fn a_buffer_that_fills_during_an_intercept_outage_is_counted_as_the_outage() {
    let mut l = Lab::new(Config {
        max_buffered_bytes: backlog_of(100, 10),
        catch_up_segments: 0,
        ..Lab::default_cfg()
    });
    handshake(&mut l);
    l.e.set_intercept_down(true);
    // Requests (each acknowledging a little more of an answer) pile up
    // unanswered: no record comes through a dead intercept.
    for i in 0..150u32 {
        l.capture(P, ISN + 1 + i * 10, 777 + i, 0x18, b"0123456789");
    }
    let c = l.e.counters();
    assert_eq!(c.lost_buffer_full, 0);
    assert!(c.lost_intercept_outage > 0, "{c:#?}");
    assert_eq!(c.obsolete, 1);
    l.check_invariants();
}

/// A connection that opens while an intercept is down cannot hear the
/// target's SYN-ACK: its handshake waits out the outage (not timed out
/// after 3 s) and completes once intercept is back and the SYN goes
/// again.
fn a_handshake_waits_out_an_intercept_outage() {
    let mut l = Lab::new(Lab::default_cfg());
    l.e.set_intercept_down(true);
    l.capture(P, ISN, 0, 0x02, &[]);
    l.capture(P, ISN + 1, 777, 0x18, b"req");
    l.advance(8_000);
    assert_eq!(l.e.counters().lost(), 0, "{:#?}", l.e.counters());
    assert_eq!(l.e.active_sessions(), 1);
    l.e.set_intercept_down(false);
    l.now += 1;
    l.e.reannounce(l.now);
    let out = l.drain();
    assert!(
        out.iter().any(|o| o.flags == 0x02),
        "the SYN again: {out:?}"
    );
    let out = l.respond((client(), P), TISN, ISN + 1, 0x12, 0, None);
    assert!(out.iter().any(|o| o.payload == b"req"), "{out:?}");
    // Once intercept is back, an unanswered handshake times out as ever.
    l.capture(P + 1, ISN, 0, 0x02, &[]);
    l.advance(3_500);
    assert_eq!(l.e.counters().lost_handshake_timeout, 0, "no data was lost");
    assert_eq!(l.e.counters().obsolete, 1);
    l.check_invariants();
}

/// A short connection whose client closes with a FIN and then a RST
/// before the replay's answer comes (wrk with `Connection: close`): when
/// the target answers and closes too, nothing captured is lost.
fn a_client_rst_after_its_fin_is_not_lost_when_the_target_closes_too() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /\n");
    // The client had the answer (100 bytes and the FIN) before it closed.
    l.capture(P, ISN + 7, 878, 0x11, &[]);
    l.capture(P, ISN + 8, 878, 0x14, &[]);
    l.respond(key, TISN + 1, ISN + 7, 0x19, 100, None);
    l.advance(1_000);
    let c = l.e.counters();
    assert_eq!(c.lost(), 0, "{c:#?}");
    assert_eq!(c.requests_replayed, 1);
    l.check_invariants();
    // A client that closes before its answer comes (its FIN carries the
    // request's ack: it goes at once, while the answer is awaited), then
    // sends a bare RST (its kernel answering the server's late data; seen
    // at the end of wrk runs as "1 lost: target closed"): the RST is held
    // while the answer is awaited, and the target's answer and FIN that
    // follow are no loss.
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /\n");
    l.respond(key, TISN + 1, ISN + 7, 0x10, 0, None);
    let out = l.capture(P, ISN + 7, 777, 0x11, &[]);
    assert!(out.iter().any(|o| o.flags & 0x01 != 0), "our FIN: {out:?}");
    l.respond(key, TISN + 1, ISN + 8, 0x10, 0, None);
    l.capture(P, ISN + 8, 0, 0x04, &[]);
    l.respond(key, TISN + 1, ISN + 8, 0x19, 100, None);
    l.advance(1_000);
    let c = l.e.counters();
    assert_eq!(c.lost(), 0, "{c:#?}");
    l.check_invariants();
}

/// With data before it still unacknowledged, a hole is held; it fills, or
/// the gap timeout gives the session up.
fn capture_gap_is_held_then_filled_or_given_up() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    handshake(&mut l);
    assert!(
        l.capture(P, ISN + 5, 777, 0x18, b"efgh").is_empty(),
        "gap: held"
    );
    let out = l.capture(P, ISN + 1, 777, 0x18, b"abcd");
    let data: Vec<u8> = out.iter().flat_map(|o| o.payload.clone()).collect();
    assert_eq!(data, b"abcdefgh");
    l.capture(P, ISN + 20, 777, 0x18, b"zz");
    l.advance(20_000);
    assert_eq!(l.e.counters().lost_capture_gap, 1);
    l.check_invariants();
}

mod property {
    use super::*;
    use proptest::prelude::*;

    struct Script {
        chunks: Vec<Vec<u8>>,
        /// Order in which chunks are captured (indices wrap).
        order: Vec<usize>,
        /// Capture this one twice.
        dups: Vec<bool>,
        /// Lose the target's ACK record for this packet (cyclic).
        lose_acks: Vec<bool>,
        /// The client retransmits everything at the end (no capture loss).
        client_retransmits: bool,
    }

    /// A simple target: accepts in-order data and acks all it has; some of
    /// its ACK records never reach tcpcopy.
    fn run(sc: &Script) -> (Vec<u8>, Counters, u64) {
        let mut l = Lab::new(Config {
            no_wait: true,
            ..Lab::default_cfg()
        });
        let key = handshake(&mut l);
        let mut seqs = Vec::new();
        let mut s = ISN + 1;
        for c in &sc.chunks {
            seqs.push(s);
            s += c.len() as u32;
        }
        let mut delivered = Vec::new();
        let mut next = ISN + 1;
        let mut nth = 0usize;
        let mut feed = |l: &mut Lab, out: Vec<Out>, delivered: &mut Vec<u8>, next: &mut u32| {
            let mut pending = out;
            while !pending.is_empty() {
                let mut more = Vec::new();
                for o in pending {
                    if !o.payload.is_empty() && o.seq == *next {
                        delivered.extend_from_slice(&o.payload);
                        *next += o.payload.len() as u32;
                    }
                    if !o.payload.is_empty() {
                        nth += 1;
                        let lost =
                            !sc.lose_acks.is_empty() && sc.lose_acks[nth % sc.lose_acks.len()];
                        if !lost {
                            more.extend(l.respond(key, TISN + 1, *next, 0x10, 0, None));
                        }
                    }
                }
                pending = more;
            }
        };
        let n = sc.chunks.len();
        for (k, &i) in sc.order.iter().enumerate() {
            let i = i % n;
            for _ in 0..1 + sc.dups.get(k).copied().unwrap_or(false) as usize {
                let out = l.capture(P, seqs[i], 777, 0x18, &sc.chunks[i]);
                feed(&mut l, out, &mut delivered, &mut next);
            }
        }
        if sc.client_retransmits {
            for (seq, chunk) in seqs.iter().zip(&sc.chunks) {
                let out = l.capture(P, *seq, 777, 0x18, chunk);
                feed(&mut l, out, &mut delivered, &mut next);
            }
        }
        // Let retransmission timers and the gap timeout run.
        for _ in 0..300 {
            let out = l.advance(100);
            feed(&mut l, out, &mut delivered, &mut next);
        }
        l.check_invariants();
        (delivered, l.e.counters().clone(), l.e.buffered())
    }

    fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 1..12)
    }

    proptest! {
        #[test]
        fn reordering_duplication_and_lost_acks_still_deliver_the_stream_once(
            chunks in chunks(),
            order in prop::collection::vec(0usize..12, 0..30),
            dups in prop::collection::vec(any::<bool>(), 0..30),
            lose_acks in prop::collection::vec(prop::bool::weighted(0.3), 0..8),
        ) {
            let expected: Vec<u8> = chunks.concat();
            let sc = Script { chunks, order, dups, lose_acks, client_retransmits: true };
            for f in Family::BOTH {
                FAMILY.with(|c| c.set(f));
                let (delivered, c, buffered) = run(&sc);
                prop_assert_eq!(&delivered, &expected);
                prop_assert_eq!(buffered, 0);
                prop_assert_eq!(c.lost(), 0);
            }
        }

        #[test]
        fn lost_captures_give_an_ordered_prefix_and_a_counted_loss(
            chunks in chunks(),
            order in prop::collection::vec(0usize..12, 0..30),
        ) {
            let expected: Vec<u8> = chunks.concat();
            let sc = Script { chunks, order, dups: vec![], lose_acks: vec![], client_retransmits: false };
            for f in Family::BOTH {
                FAMILY.with(|c| c.set(f));
                let (delivered, c, buffered) = run(&sc);
                prop_assert!(expected.starts_with(&delivered), "delivered bytes are the stream's prefix, in order");
                if delivered.len() < expected.len() {
                    // Whatever was captured but could not be delivered is counted.
                    prop_assert_eq!(buffered, 0);
                    // (A handshake ACK a request carried was absorbed, not lost.)
                    let captured_beyond =
                        c.session_inputs - c.replayed - c.duplicates - c.pure_acks_absorbed;
                    prop_assert_eq!(c.lost(), captured_beyond);
                }
            }
        }
    }
}

fn timestamps_echo_the_target_and_never_go_backwards() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    l.capture(P, ISN, 0, 0x02, &[]);
    let key = (client(), P);
    // The target uses timestamps: TSval 900.
    l.respond(key, TISN, ISN + 1, 0x12, 0, Some((900, 1)));
    let ts = |v: u32, e: u32| -> Vec<u8> {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&v.to_be_bytes());
        o.extend_from_slice(&e.to_be_bytes());
        o
    };
    let send = |l: &mut Lab, seq: u32, tsval: u32, data: &[u8]| {
        let p = client_pkt(
            (client(), P),
            (online(), 80),
            seq,
            777,
            0x18,
            data,
            &ts(tsval, 12345),
        );
        l.e.handle_client_packet(l.now, &p);
        l.drain()
    };
    let out = send(&mut l, ISN + 1, 50, b"a");
    let o = crate::wire::TcpOptions::parse(&out[0].options);
    assert_eq!(o.timestamps, Some((50, 900)), "TSecr = the target's TSval");
    l.respond(key, TISN + 1, ISN + 2, 0x10, 0, Some((950, 50)));
    let out = send(&mut l, ISN + 2, 40, b"b"); // a captured TSval that went back
    let o = crate::wire::TcpOptions::parse(&out[0].options);
    assert_eq!(o.timestamps, Some((50, 950)), "TSval never decreases");
    l.check_invariants();
}

/// Found live: the client finished its handshake, sent a request, got the
/// online answer and acknowledged it, all before the target's SYN-ACK came
/// back. The handshake's ACK must be the replayed one (here carried by the
/// request), and the request must not be held as if it waited for a server
/// greeting.
fn client_running_ahead_of_the_replayed_handshake_does_not_stall() {
    let mut l = Lab::new(Lab::default_cfg());
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    let key = out[0].src;
    assert!(l.capture(P, ISN + 1, 777, 0x10, &[]).is_empty());
    assert!(l.capture(P, ISN + 1, 777, 0x18, b"GET / 1\n").is_empty());
    // The client acknowledges 166 bytes of the online server's response.
    assert!(l.capture(P, ISN + 9, 777 + 166, 0x10, &[]).is_empty());
    let out = l.respond(key, TISN, ISN + 1, 0x12, 0, None);
    // The request goes at once and completes the handshake itself (the
    // client's handshake ACK is absorbed into it).
    assert_eq!((out[0].flags, out[0].ack), (0x18, TISN + 1), "{out:?}");
    assert_eq!(
        out[0].payload, b"GET / 1\n",
        "the request follows at once: {out:?}"
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(l.e.counters().pure_acks_absorbed, 2);
    l.check_invariants();
}

/// The handshake's last ACK is owed, not sent, when the target's SYN-ACK
/// comes: a request captured in the same worker turn carries it, and only
/// when nothing comes by the turn's end does it go bare.
fn the_handshake_ack_rides_on_the_request_of_the_same_turn() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = l.capture(P, ISN, 0, 0x02, &[])[0].src;
    assert!(
        l.capture(P, ISN + 1, 777, 0x10, &[]).is_empty(),
        "held for the SYN-ACK"
    );
    assert!(
        l.respond(key, TISN, ISN + 1, 0x12, 0, None).is_empty(),
        "owed until the turn ends"
    );
    let out = l.capture(P, ISN + 1, 777, 0x18, b"GET / 1\n");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].flags, out[0].ack), (0x18, TISN + 1));
    assert!(l.advance(0).is_empty(), "nothing left owed: {:?}", l.sent);
    let c = l.e.counters();
    assert_eq!((c.pure_acks_absorbed, c.acks_fabricated), (1, 0));
    l.check_invariants();

    // Nothing to carry it this turn: the client's ACK goes bare at its end.
    let mut l = Lab::new(Lab::default_cfg());
    let key = l.capture(P, ISN, 0, 0x02, &[])[0].src;
    assert!(l.capture(P, ISN + 1, 777, 0x10, &[]).is_empty());
    assert!(l.respond(key, TISN, ISN + 1, 0x12, 0, None).is_empty());
    let out = l.advance(0);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack, out[0].payload.len()),
        (0x10, ISN + 1, TISN + 1, 0)
    );
    let c = l.e.counters();
    assert_eq!((c.pure_acks_absorbed, c.acks_fabricated), (0, 0));
    l.check_invariants();
}

/// A request held for a server greeting that never comes is sent after the
/// response wait instead of never.
fn a_greeting_that_never_comes_releases_the_request_after_the_wait() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    // The client's first request acks 20 greeting bytes the target never sends.
    assert!(l
        .capture(P, ISN + 1, 777 + 20, 0x18, b"HELO\r\n")
        .is_empty());
    let out = l.advance(l.e.config().response_wait_ms + 1);
    assert!(out.iter().any(|o| o.payload == b"HELO\r\n"), "{out:?}");
    assert_eq!(l.e.counters().response_waits_expired, 1);
    let _ = key;
    l.check_invariants();
}

/// Found live (wrk -c50 against a busy target): the quiet-period timer left
/// over from response N released request N+2 before request N+1 had any
/// answer, so requests piled up at the target unanswered.
fn a_quiet_period_from_the_previous_response_does_not_release_the_next_request() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    let req = b"GET / 1\n";
    let n = req.len() as u32;
    let out = l.capture(P, ISN + 1, 777, 0x18, req);
    assert_eq!(out.len(), 1);
    // The client already sent requests 2 and 3 (it is faster than the replay).
    assert!(l.capture(P, ISN + 1 + n, 877, 0x18, req).is_empty());
    assert!(l.capture(P, ISN + 1 + 2 * n, 977, 0x18, req).is_empty());
    // Response 1: request 2 follows.
    let out = l.respond(key, TISN + 1, ISN + 1 + n, 0x18, 100, None);
    assert_eq!(
        out.iter().filter(|o| !o.payload.is_empty()).count(),
        1,
        "{out:?}"
    );
    // Time passes, the target has not answered request 2 yet.
    let out = l.advance(50);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "request 3 must wait for an answer to request 2: {out:?}"
    );
    let out = l.respond(key, TISN + 101, ISN + 1 + 2 * n, 0x18, 100, None);
    let out: Vec<_> = out.into_iter().chain(l.advance(10)).collect();
    assert_eq!(
        out.iter().filter(|o| !o.payload.is_empty()).count(),
        1,
        "{out:?}"
    );
    l.check_invariants();
}

/// A SYN captured after its own data (read from another RX queue first):
/// the mid-stream session carries on and nothing is replayed twice.
fn a_late_syn_joins_its_mid_stream_session() {
    let mut l = Lab::new(Lab::default_cfg());
    let out = l.capture(P, ISN + 1, 777, 0x18, b"GET /1\r\n\r\n");
    assert_eq!(out.len(), 1, "a fabricated SYN: {out:?}");
    assert_eq!(out[0].flags, 0x02);
    let late = l.capture(P, ISN, 0, 0x02, &[]);
    assert!(
        late.is_empty(),
        "the late SYN must not start anything: {late:?}"
    );
    assert_eq!(l.e.active_sessions(), 1);
    assert_eq!(l.e.counters().duplicates, 1);
    let key = out[0].src;
    l.respond(key, TISN, out[0].seq + 1, 0x12, 0, None);
    let sent: Vec<Out> = l
        .sent
        .iter()
        .filter(|o| !o.payload.is_empty())
        .cloned()
        .collect();
    assert_eq!(sent.len(), 1, "the request once: {sent:?}");
    l.check_invariants();
}

/// A client reuses its port while the replay of the old connection still
/// holds captured requests (the replay runs behind the capture, as with
/// `--speed max`): the old session finishes, the new one gets another port,
/// and every request reaches the target once.
fn a_reused_port_does_not_cut_the_replay_still_running_on_it() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /1\r\n\r\n");
    l.capture(P, ISN + 11, 888, 0x18, b"GET /2\r\n\r\n");
    l.capture(P, ISN + 21, 999, 0x11, &[]);
    // The new connection, before the target answered request 1.
    let isn2 = 900_000_000;
    let out = l.capture(P, isn2, 0, 0x02, &[]);
    assert_eq!(l.e.counters().sessions_overlapped, 1);
    let syn2 = out.iter().find(|o| o.flags == 0x02).expect("new SYN");
    assert_ne!(syn2.src, key, "the new connection takes another port");
    l.respond(syn2.src, TISN + 7, isn2 + 1, 0x12, 0, None);
    l.capture(P, isn2 + 1, 777, 0x10, &[]);
    l.capture(P, isn2 + 1, 777, 0x18, b"GET /3\r\n\r\n");
    // The target answers the old connection's requests: both go out.
    l.respond(key, TISN + 1, ISN + 11, 0x18, 100, None);
    l.respond(key, TISN + 101, ISN + 21, 0x18, 100, None);
    let requests = l.requests_by_port();
    assert_eq!(
        requests,
        vec![
            (key.1, b"GET /1\r\n\r\n".to_vec()),
            (syn2.src.1, b"GET /3\r\n\r\n".to_vec()),
            (key.1, b"GET /2\r\n\r\n".to_vec()),
        ]
    );
    l.advance(3000);
    assert!(
        l.sent.iter().any(|o| o.src == key && o.flags & 0x01 != 0),
        "the old FIN"
    );
    assert_eq!(l.e.counters().lost(), 0);
    l.check_invariants();
}

/// The SYN of a client's next connection on a port, captured before the
/// end of its previous connection there (the two came in on different RX
/// queues; a mirror port spreads one 4-tuple's packets by the sending
/// socket's hash): the old connection's request and FIN, captured late,
/// still go to the target on the old connection's port, the new
/// connection takes another port, and nothing is reset or lost. Once with
/// the old handshake done, once with its SYN-ACK still owed; the new ISN
/// on either side of the old one.
fn a_next_connection_captured_before_the_last_ones_tail_loses_nothing() {
    for (handshake_done, isn2) in [
        (true, ISN.wrapping_sub(1_000_000)),
        (true, ISN.wrapping_add(2_000_000_000)),
        (false, ISN.wrapping_sub(1_000_000)),
        (false, ISN.wrapping_add(2_000_000_000)),
    ] {
        let case = format!("handshake done: {handshake_done}, new ISN {isn2}");
        let mut l = Lab::new(Lab::default_cfg());
        let key = if handshake_done {
            handshake(&mut l)
        } else {
            let out = l.capture(P, ISN, 0, 0x02, &[]);
            out[0].src
        };
        let out = l.capture(P, isn2, 0, 0x02, &[]);
        let syn2 = out
            .iter()
            .find(|o| o.flags == 0x02)
            .unwrap_or_else(|| panic!("{case}: the new SYN"));
        assert_ne!(
            syn2.src, key,
            "{case}: the new connection takes another port"
        );
        // The old connection's tail, captured late.
        if !handshake_done {
            l.capture(P, ISN + 1, 777, 0x10, &[]);
        }
        l.capture(P, ISN + 1, 777, 0x18, b"GET /1\r\n\r\n");
        l.capture(P, ISN + 11, 877, 0x11, &[]);
        if !handshake_done {
            l.respond(key, TISN, ISN + 1, 0x12, 0, None);
        }
        l.respond(key, TISN + 1, ISN + 11, 0x19, 100, None);
        // The new connection goes on.
        l.respond(syn2.src, TISN + 7, isn2 + 1, 0x12, 0, None);
        l.capture(P, isn2 + 1, 777, 0x10, &[]);
        l.capture(P, isn2 + 1, 777, 0x18, b"GET /2\r\n\r\n");
        l.respond(syn2.src, TISN + 8, isn2 + 11, 0x18, 100, None);
        l.advance(0);
        let requests = l.requests_by_port();
        assert_eq!(
            requests,
            vec![
                (key.1, b"GET /1\r\n\r\n".to_vec()),
                (syn2.src.1, b"GET /2\r\n\r\n".to_vec()),
            ],
            "{case}"
        );
        assert!(
            !l.sent.iter().any(|o| o.flags & 0x04 != 0),
            "{case}: nothing reset: {:?}",
            l.sent
        );
        assert!(
            l.sent.iter().any(|o| o.src == key && o.flags & 0x01 != 0),
            "{case}: the old connection's FIN"
        );
        assert_eq!(l.e.counters().lost(), 0, "{case}");
        assert_eq!(l.e.counters().duplicates, 0, "{case}");
        l.check_invariants();
    }
}

/// The next connection's session ends and goes before the previous
/// connection's, which it displaced, has all of its segments: the origin
/// routes to the previous one again, so its request, captured later still,
/// goes on its own connection, not on a new mid-stream one.
fn a_previous_connection_outlives_the_next_one_on_its_port() {
    let mut cfg = Lab::default_cfg();
    cfg.linger_ms = 500;
    let mut l = Lab::new(cfg);
    let key = handshake(&mut l);
    let isn2 = ISN.wrapping_add(2_000_000_000);
    let out = l.capture(P, isn2, 0, 0x02, &[]);
    let syn2 = out
        .iter()
        .find(|o| o.flags == 0x02)
        .expect("new SYN")
        .clone();
    l.respond(syn2.src, TISN + 7, isn2 + 1, 0x12, 0, None);
    l.capture(P, isn2 + 1, 777, 0x10, &[]);
    l.capture(P, isn2 + 1, 777, 0x18, b"GET /2\r\n\r\n");
    l.respond(syn2.src, TISN + 8, isn2 + 11, 0x19, 100, None);
    l.capture(P, isn2 + 11, 878, 0x11, &[]);
    // Past the linger: the next connection's session is gone.
    l.advance(1_000);
    assert_eq!(l.e.active_sessions(), 1, "only the previous connection's");
    l.capture(P, ISN + 1, 777, 0x18, b"GET /1\r\n\r\n");
    l.respond(key, TISN + 1, ISN + 11, 0x19, 100, None);
    let requests = l.requests_by_port();
    assert_eq!(
        requests,
        vec![
            (syn2.src.1, b"GET /2\r\n\r\n".to_vec()),
            (key.1, b"GET /1\r\n\r\n".to_vec()),
        ]
    );
    assert_eq!(l.e.counters().sessions_created, 2, "no mid-stream session");
    assert_eq!(l.e.counters().lost(), 0);
    l.check_invariants();
}

/// The target's listen queue dropped our SYN: it is sent again after 1 s,
/// and the session goes on when the SYN-ACK comes.
fn a_lost_syn_is_retransmitted() {
    let mut l = Lab::new(Lab::default_cfg());
    let out = l.capture(P, ISN, 0, 0x02, &[]);
    let key = out[0].src;
    l.capture(P, ISN + 1, 777, 0x18, b"GET / HTTP/1.1\r\n\r\n");
    let again = l.advance(1100);
    let syns: Vec<&Out> = again.iter().filter(|o| o.flags & 0x02 != 0).collect();
    assert_eq!(syns.len(), 1, "{again:?}");
    assert_eq!((syns[0].seq, syns[0].src), (ISN, key));
    l.respond(key, TISN, ISN + 1, 0x12, 0, None);
    let data: Vec<&Out> = l.sent.iter().filter(|o| !o.payload.is_empty()).collect();
    assert_eq!(data.len(), 1);
    assert_eq!(l.e.counters().lost(), 0);
    // No more SYNs once established.
    assert!(l.advance(3000).iter().all(|o| o.flags & 0x02 == 0));
    l.check_invariants();
}

/// The next connection on a port (its ISN a little ahead, as Linux picks
/// them) sends its request, and its SYN is captured after it (the two came
/// in on different RX queues): the request goes out on the new connection,
/// once.
fn a_new_connections_data_captured_before_its_syn_goes_with_it() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /a\r\n\r\n");
    let isn2 = ISN + 6_500_000;
    let held = l.capture(P, isn2 + 1, 901, 0x18, b"GET /b\r\n\r\n");
    assert!(held.is_empty(), "beyond the old stream: held as a gap");
    // The old connection's FIN is not captured yet: its session goes on
    // (its rest may come later, from another RX queue), and the new
    // connection takes another port.
    let out = l.capture(P, isn2, 0, 0x02, &[]);
    assert!(
        !out.iter().any(|o| o.flags & 0x04 != 0),
        "the old connection is not reset: {out:?}"
    );
    let syn2 = out
        .iter()
        .find(|o| o.flags == 0x02)
        .expect("the new SYN")
        .clone();
    assert_eq!(syn2.seq, isn2);
    l.respond(syn2.src, TISN + 9, isn2 + 1, 0x12, 0, None);
    l.respond(syn2.src, TISN + 10, isn2 + 11, 0x18, 100, None);
    l.respond(key, TISN + 1, ISN + 11, 0x18, 100, None);
    l.advance(3000);
    let requests = l.requests_by_port();
    assert_eq!(
        requests,
        vec![
            (key.1, b"GET /a\r\n\r\n".to_vec()),
            (syn2.src.1, b"GET /b\r\n\r\n".to_vec())
        ]
    );
    assert_eq!(l.e.counters().lost(), 0);
    l.check_invariants();
}

/// Inputs the `packet` fuzz target found, replayed by its own driver.
fn fuzz_regressions() {
    super::fuzz_engine(include_bytes!("fuzz-regressions/invariant-1.bin"));
    // The target acknowledged a FIN, so the acknowledged position passed
    // the send position: the window check must not subtract below zero.
    super::fuzz_engine(include_bytes!("fuzz-regressions/una-past-nxt.bin"));
}

/// A session far behind its client (one busy keep-alive connection
/// replayed slower than it ran) sends its backlog pipelined, in order,
/// within its own flight window, and ends with a FIN rather than the
/// client's RST so the target still answers what it holds.
fn a_session_behind_its_client_catches_up_pipelined_and_closes_with_fin() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    let req = |i: u32| format!("req{i:05}").into_bytes(); // 8 bytes each
    let seq = |i: u32| ISN + 1 + i * 8;
    assert_eq!(l.capture(P, seq(0), 777, 0x18, &req(0)).len(), 1);
    // The client ran ahead: 65 more requests, each after a 10-byte response.
    let mut sent = Vec::new();
    for i in 1..=65 {
        let out = l.capture(P, seq(i), 777 + i * 10, 0x18, &req(i));
        if i <= 64 {
            assert!(out.is_empty(), "request {i} waits its turn");
        }
        sent.extend(out);
    }
    assert_eq!(sent.len(), 31, "a window of 32 in flight: {sent:?}");
    // Each acknowledgement opens the window again.
    let mut acked = 32;
    while acked < 66 {
        let out = l.respond(key, TISN + 1, seq(acked), 0x10, 0, None);
        acked += out.iter().filter(|o| !o.payload.is_empty()).count() as u32;
        assert!(!out.is_empty(), "window reopened at {acked}");
        sent.extend(out);
    }
    let payloads: Vec<_> = sent.iter().map(|o| o.payload.clone()).collect();
    let expected: Vec<_> = (1..=65).map(req).collect();
    assert_eq!(payloads, expected, "in order, each once");
    assert_eq!(l.e.counters().requests_pipelined, 65);
    assert_eq!(l.e.counters().requests_replayed, 66);
    // All acknowledged and answered; the client resets the connection.
    l.respond(key, TISN + 1, seq(66), 0x18, 660, None);
    let mut out = l.capture(P, seq(66), 777 + 660, 0x14, &[]);
    out.extend(l.advance(10)); // the response's quiet period releases it
    let fin = out.iter().find(|o| o.flags & 0x01 != 0).expect("a FIN");
    assert_eq!(fin.seq, seq(66));
    assert!(out.iter().all(|o| o.flags & 0x04 == 0), "no RST: {out:?}");
    // The target answers whatever it still held, then closes.
    let out = l.respond(key, TISN + 661, seq(66) + 1, 0x11, 0, None);
    assert!(out.iter().all(|o| o.flags & 0x04 == 0));
    let c = l.e.counters();
    assert_eq!((c.resets_as_fin, c.rsts_sent, c.lost()), (1, 0, 0));
    l.check_invariants();
}

/// A target that closes gracefully in the middle of a pipelined catch-up
/// (nginx `-s quit`) answers the request it is serving and then closes:
/// that last answer is shorter than production's (its header says
/// "Connection: close", not "keep-alive"). Begun, then closed with a FIN,
/// it counts as answered: only the requests after it go again on the next
/// connection (found by the lab's restart test: one request served twice
/// on each connection).
fn a_shorter_last_answer_before_a_graceful_close_counts_as_answered() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    let req = |i: u32| format!("req{i:05}").into_bytes(); // 8 bytes each
    let seq = |i: u32| ISN + 1 + i * 8;
    // The client ran ahead, each request after a 10-byte response.
    for i in 0..=70 {
        l.capture(P, seq(i), 777 + i * 10, 0x18, &req(i));
    }
    assert!(l.e.counters().requests_pipelined > 0);
    // req0 answered in full; req1 with 5 bytes, and the target closes.
    l.respond(key, TISN + 1, seq(32), 0x18, 10, None);
    l.respond(key, TISN + 11, seq(32), 0x19, 5, None);
    let out = l.advance(5);
    let syn = out.iter().find(|o| o.flags == 0x02).expect("a new SYN");
    assert_eq!(syn.seq, seq(2) - 1, "the next connection starts at req2");
    let out = l.respond(key, TISN + 9000, seq(2), 0x12, 0, None);
    assert_eq!(
        out.iter()
            .find(|o| !o.payload.is_empty())
            .map(|o| o.payload.clone()),
        Some(req(2))
    );
    assert_eq!(l.sent.iter().filter(|o| o.payload == req(1)).count(), 1);
    l.check_invariants();
}

/// Below the threshold nothing is pipelined: the C tool's pacing holds.
fn a_short_backlog_is_still_paced_by_responses() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"req0");
    for i in 1..=10u32 {
        assert!(l
            .capture(P, ISN + 1 + i * 4, 777 + i, 0x18, b"reqN")
            .is_empty());
    }
    let out = l.respond(key, TISN + 1, ISN + 5, 0x18, 1, None);
    assert_eq!(out.iter().filter(|o| !o.payload.is_empty()).count(), 1);
    assert_eq!(l.e.counters().requests_pipelined, 0);
    l.check_invariants();
}

/// Several segments lost in one window: after the fast retransmit, each
/// partial acknowledgement resends the next hole at once (no RTO wait).
fn partial_acks_resend_each_hole_without_waiting_for_the_timer() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    let key = handshake(&mut l);
    for i in 0..6u32 {
        l.capture(P, ISN + 1 + i * 4, 777, 0x18, format!("r{i:03}").as_bytes());
    }
    // Segments 1 and 3 were lost; the target acks segment 0 and repeats
    // that ack for each later arrival.
    let at = |i: u32| ISN + 1 + i * 4;
    l.respond(key, TISN + 1, at(1), 0x10, 0, None);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.extend(l.respond(key, TISN + 1, at(1), 0x10, 0, None));
    }
    assert_eq!(
        out.iter().map(|o| o.payload.clone()).collect::<Vec<_>>(),
        vec![b"r001".to_vec()]
    );
    // The partial ack up to the second hole resends it right away.
    let out = l.respond(key, TISN + 1, at(3), 0x10, 0, None);
    assert_eq!(
        out.iter().map(|o| o.payload.clone()).collect::<Vec<_>>(),
        vec![b"r003".to_vec()]
    );
    let out = l.respond(key, TISN + 1, at(6), 0x10, 0, None);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "recovered: {out:?}"
    );
    let c = l.e.counters();
    assert_eq!((c.fast_retransmits, c.retransmits), (1, 2));
    l.check_invariants();
}

/// `-m`: short of memory, new sessions are refused and counted; out of
/// memory, a session that keeps buffering is given up; open sessions that
/// keep pace go on.
fn memory_pressure_refuses_new_sessions_then_sheds_growing_ones() {
    use crate::memory::Pressure;
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.e.set_memory_pressure(Pressure::Refuse);
    assert!(l.capture(P + 1, ISN, 0, 0x02, &[]).is_empty(), "refused");
    assert!(l.capture(P + 1, ISN + 1, 9, 0x18, b"GET").is_empty());
    let c = l.e.counters();
    assert_eq!((c.sessions_refused_memory, c.lost_memory_limit), (2, 2));
    // The open session still replays.
    assert_eq!(l.capture(P, ISN + 1, 777, 0x18, b"req0").len(), 1);
    // Out of memory: requests queue behind an unanswered one; past the
    // shed backlog the session is given up.
    l.e.set_memory_pressure(Pressure::Shed);
    for i in 1..=17u32 {
        l.capture(P, ISN + 1 + i * 4, 777 + i, 0x18, b"reqN");
    }
    let c = l.e.counters();
    assert_eq!(c.lost_memory_limit, 2 + 17, "{c:#?}");
    assert!(l.sent.iter().any(|o| o.flags & 0x04 != 0 && o.src == key));
    assert_eq!(c.lost(), 19);
    l.check_invariants();
}

/// A session whose client ran 66 8-byte requests ahead (each after a
/// 10-byte response), then sent `after` (ack, flags) segments carrying no
/// data; the target has acknowledged every request (they went pipelined)
/// but answered none yet.
fn sixty_six_requests_sent_pipelined(after: &[(u32, u8)]) -> (Lab, (IpAddr, u16)) {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    let seq = |i: u32| ISN + 1 + i * 8;
    for i in 0..=65u32 {
        l.capture(
            P,
            seq(i),
            777 + i * 10,
            0x18,
            format!("req{i:05}").as_bytes(),
        );
    }
    for &(ack, flags) in after {
        l.capture(P, seq(66), ack, flags, &[]);
    }
    // The target acknowledges what came, answers a byte and falls quiet
    // for 200 ms (it has answered all it holds): a catching-up session
    // keeps at most its flight unanswered.
    for k in 0..6 {
        let una = seq(l.sent.iter().filter(|o| !o.payload.is_empty()).count() as u32);
        l.respond(key, TISN + 1 + k, una, 0x18, 1, None);
        l.advance(250);
    }
    assert_eq!(l.e.counters().requests_replayed, 66);
    (l, key)
}

/// After pipelining, the close waits for the target to answer as much as
/// the client had received (or to fall silent): nginx takes a half-close
/// while it still works through pipelined requests for an abort.
fn a_pipelined_session_closes_only_once_the_target_has_answered() {
    for answer_all in [true, false] {
        let (mut l, key) = sixty_six_requests_sent_pipelined(&[]);
        let seq = |i: u32| ISN + 1 + i * 8;
        // The client had 660 response bytes when it closed; the target has
        // sent 100 so far.
        l.respond(key, TISN + 1, seq(66), 0x18, 100, None);
        let mut out = l.capture(P, seq(66), 777 + 660, 0x11, &[]);
        out.extend(l.advance(50));
        assert!(out.iter().all(|o| o.flags & 0x01 == 0), "FIN held: {out:?}");
        let out = if answer_all {
            let mut out = l.respond(key, TISN + 101, seq(66), 0x18, 560, None);
            out.extend(l.advance(5));
            out
        } else {
            l.advance(3_100) // silent for 3 s: closed anyway
        };
        assert!(out.iter().any(|o| o.flags & 0x01 != 0), "FIN sent: {out:?}");
        l.check_invariants();
    }
}

/// A pipelined session that has sent everything is not done: its requests
/// may still sit, acknowledged but unread, in the target's buffer (an
/// offline replay that ended then reset them away). It awaits the target
/// until the target has answered as much as the client had received, or
/// has been quiet for 3 s.
fn a_pipelined_session_awaits_the_targets_answers_before_it_counts_as_done() {
    for answer_all in [true, false] {
        // The client's last word: it had 660 response bytes by then.
        let (mut l, key) = sixty_six_requests_sent_pipelined(&[(777 + 660, 0x10)]);
        let seq = |i: u32| ISN + 1 + i * 8;
        assert_eq!(l.e.buffered(), 0, "everything sent");
        l.respond(key, TISN + 1, seq(66), 0x18, 100, None);
        l.advance(50);
        assert_eq!(l.e.awaiting_target(l.now), 1, "100 of 660 bytes answered");
        if answer_all {
            l.respond(key, TISN + 101, seq(66), 0x18, 560, None);
        } else {
            l.advance(3_000);
        }
        assert_eq!(l.e.awaiting_target(l.now), 0);
        l.check_invariants();
    }
}

/// A hole the capture left (the bytes never come: the online server got
/// them) does not cost the rest of the connection: once it is
/// `gap_skip_ms` old and the target has answered what came before it, the
/// target connection is reset and a new one carries on from the next
/// request after the hole. With 0 it is held, as the C tool does.
fn a_hole_the_capture_left_is_skipped_on_a_new_connection() {
    for skip in [1_000, 0] {
        let mut l = Lab::new(Config {
            gap_skip_ms: skip,
            ..Lab::default_cfg()
        });
        let key = handshake(&mut l);
        let seq = |i: u32| ISN + 1 + i * 8;
        let req = |i: u32| format!("req{i:05}").into_bytes();
        assert_eq!(l.capture(P, seq(0), 777, 0x18, &req(0)).len(), 1);
        l.respond(key, TISN + 1, seq(1), 0x18, 10, None);
        l.advance(20);
        // Request 1 is lost to the capture; 2 and 3 are held behind it.
        assert!(l.capture(P, seq(2), 797, 0x18, &req(2)).is_empty());
        assert!(l.capture(P, seq(3), 807, 0x18, &req(3)).is_empty());
        let out = l.advance(1_100);
        if skip == 0 {
            assert!(out.iter().all(|o| o.flags & 0x06 == 0), "held: {out:?}");
            assert_eq!(l.e.buffered(), 2);
            l.check_invariants();
            continue;
        }
        let rst = out.iter().find(|o| o.flags & 0x04 != 0).expect("an RST");
        assert_eq!(
            rst.seq,
            seq(1),
            "the old connection is reset where it stood"
        );
        let syn = out.iter().find(|o| o.flags & 0x02 != 0).expect("a new SYN");
        assert_eq!(syn.seq, seq(2) - 1, "the new one starts at request 2");
        let out = l.respond(key, TISN + 5000, seq(2), 0x12, 0, None);
        let data: Vec<_> = out.iter().filter(|o| !o.payload.is_empty()).collect();
        assert_eq!(data.len(), 1, "request 2 goes first, alone: {out:?}");
        assert_eq!((data[0].seq, &data[0].payload), (seq(2), &req(2)));
        let mut out = l.respond(key, TISN + 5001, seq(3), 0x18, 10, None);
        out.extend(l.advance(20));
        assert!(
            out.iter().any(|o| o.payload == req(3)),
            "then request 3: {out:?}"
        );
        let c = l.e.counters();
        assert_eq!((c.gaps_skipped, c.lost(), c.requests_replayed), (1, 0, 3));
        l.check_invariants();
    }
}

/// A request cut by the hole (its later segment captured, with the same
/// ack as the part sent) is given up with it; the next request resumes.
fn a_request_cut_by_a_hole_is_given_up_with_it() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    // A 24-byte request in three segments; the second is lost.
    assert_eq!(l.capture(P, ISN + 1, 777, 0x10, b"part-one").len(), 1);
    l.respond(key, TISN + 1, ISN + 9, 0x10, 0, None);
    assert!(l.capture(P, ISN + 17, 777, 0x18, b"part-3!!").is_empty());
    // The next request, after a 10-byte response.
    assert!(l.capture(P, ISN + 25, 787, 0x18, b"next-req").is_empty());
    // Skipped once the hole is 1 s old and the target has acknowledged
    // everything before it and gone quiet.
    let out = l.advance(1_300);
    let syn = out.iter().find(|o| o.flags & 0x02 != 0).expect("a new SYN");
    assert_eq!(syn.seq, ISN + 24, "resumes at the next request");
    let out = l.respond(key, TISN + 9000, ISN + 25, 0x12, 0, None);
    assert!(out.iter().any(|o| o.payload == b"next-req"));
    let c = l.e.counters();
    assert_eq!((c.gaps_skipped, c.lost_capture_gap), (1, 1));
    l.check_invariants();
}

/// A segment sent as a window probe lies beyond the target's window, and
/// the target drops it. The acknowledgements of the target's responses
/// must not carry its sequence number (the target would discard them too,
/// and a server that waits for them to write its next response, and so
/// stops reading, never opens its window again): they carry the window's
/// right edge, as Linux does.
fn acknowledgements_stay_inside_the_targets_window() {
    let mut l = Lab::new(Config {
        no_wait: true,
        ..Lab::default_cfg()
    });
    let key = handshake(&mut l);
    let seq = |i: u32| ISN + 1 + i * 8;
    assert_eq!(l.capture(P, seq(0), 777, 0x18, b"req00000").len(), 1);
    l.target_window = 0;
    l.respond(key, TISN + 1, seq(1), 0x10, 0, None);
    let probe = l.capture(P, seq(1), 787, 0x18, b"req00001");
    assert_eq!(probe.len(), 1, "one segment goes as a probe");
    let mut out = l.respond(key, TISN + 1, seq(1), 0x18, 100, None);
    out.extend(l.advance(50));
    let ack = out
        .iter()
        .find(|o| o.payload.is_empty() && o.flags == 0x10)
        .expect("the response is acknowledged");
    assert_eq!(ack.ack, TISN + 101);
    assert_eq!(ack.seq, seq(1), "at the window's edge, not past the probe");
    l.check_invariants();
}

/// intercept came back after an outage with an empty route table: every
/// live session announces its route again, and one with a request in
/// flight resends it at once (the target's answer to the first copy was
/// lost with intercept), instead of waiting for its backed-off RTO.
fn a_new_intercept_connection_gets_every_route_again_and_requests_in_flight_go_again() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    let req = b"GET /during-the-outage HTTP/1.1\r\n\r\n";
    let out = l.capture(P, ISN + 1, 777, 0x18, req);
    assert_eq!(out.len(), 1);
    // A second session, idle (nothing in flight).
    l.capture(P + 1, ISN, 0, 0x02, &[]);
    let idle = l.routes.last().unwrap().client_port;
    l.respond((client(), idle), TISN, ISN + 1, 0x12, 0, None);
    l.routes.clear();
    let retransmits = l.e.counters().retransmits;
    l.now += 50; // before the RTO
    assert_eq!(l.e.reannounce(l.now), 2);
    let out = l.drain();
    let mut ports: Vec<u16> = l.routes.iter().map(|r| r.client_port).collect();
    ports.sort();
    let mut want = vec![key.1, idle];
    want.sort();
    assert_eq!(ports, want, "one route per live session");
    assert_eq!(
        out.len(),
        1,
        "only the request in flight goes again: {out:?}"
    );
    assert_eq!(out[0].payload, req.to_vec());
    assert_eq!(l.e.counters().retransmits, retransmits + 1);
    // The target answers through the new connection: the session goes on.
    l.respond(key, TISN + 1, ISN + 1 + req.len() as u32, 0x18, 100, None);
    l.advance(200);
    assert_eq!(l.e.counters().lost(), 0);
    l.check_invariants();
}

/// The target's server restarting: its port refuses our SYN for a while.
/// The session keeps its captured requests and asks again, backing off
/// from 100 ms, and replays them once the port listens; one refused for
/// longer than `retry_refused_ms` is given up and counted as before.
fn a_refused_connection_is_retried_while_the_target_restarts() {
    let mut l = Lab::new(Lab::default_cfg());
    l.capture(P, ISN, 0, 0x02, &[]);
    let key = (client(), P);
    l.respond(key, 0, ISN + 1, 0x14, 0, None); // refused
    l.capture(P, ISN + 1, 777, 0x10, &[]);
    l.capture(P, ISN + 1, 777, 0x18, b"GET /a\r\n\r\n");
    assert_eq!(l.e.active_sessions(), 1, "kept, not given up");
    // Retries at 100, then 200 ms after each refusal.
    let out = l.advance(100);
    assert_eq!(out.iter().filter(|o| o.flags == 0x02).count(), 1, "{out:?}");
    let syn = out.iter().find(|o| o.flags == 0x02).unwrap().clone();
    assert_eq!(syn.seq, ISN, "the same connection, from its first byte");
    l.respond(key, 0, ISN + 1, 0x14, 0, None); // still down
    assert!(l.advance(150).iter().all(|o| o.flags != 0x02), "backs off");
    let out = l.advance(50);
    assert_eq!(out.iter().filter(|o| o.flags == 0x02).count(), 1);
    // The server is back: the request goes, once.
    l.respond(key, TISN, ISN + 1, 0x12, 0, None);
    assert_eq!(
        l.sent
            .iter()
            .filter(|o| o.payload == b"GET /a\r\n\r\n")
            .count(),
        1
    );
    let c = l.e.counters();
    assert_eq!((c.refused_retries, c.lost_target_refused), (2, 0));
    l.check_invariants();

    // Refused for longer than the retry time: given up, counted.
    let mut m = Lab::new(Config {
        retry_refused_ms: 1_000,
        ..Lab::default_cfg()
    });
    m.capture(P, 7000, 1, 0x18, b"data");
    for _ in 0..20 {
        m.respond(key, 0, 7000, 0x14, 0, None);
        m.advance(1_000);
        if m.e.active_sessions() == 0 {
            break;
        }
    }
    assert_eq!(m.e.active_sessions(), 0);
    assert_eq!(m.e.counters().lost_target_refused, 1);
    m.check_invariants();
}

/// A refused connection whose client has sent only its handshake ACK so
/// far is asked again too (the client is there; its request may follow).
fn a_refused_handshake_is_retried_before_any_request() {
    let mut l = Lab::new(Lab::default_cfg());
    l.capture(P, ISN, 0, 0x02, &[]);
    l.respond((client(), P), 0, ISN + 1, 0x14, 0, None);
    l.capture(P, ISN + 1, 777, 0x10, &[]);
    let out = l.advance(100);
    assert_eq!(out.iter().filter(|o| o.flags == 0x02).count(), 1, "{out:?}");
    l.respond((client(), P), TISN, ISN + 1, 0x12, 0, None);
    assert_eq!(l.e.counters().connections, 1);
    assert_eq!(l.e.counters().lost(), 0);
    l.check_invariants();
}

/// An upload: the client sends its data and closes without waiting for an
/// answer (its FIN carries the request's ack). The FIN follows the data as
/// soon as the target has acknowledged it, as it did on the wire, not
/// after `response_wait_ms` (found as a 2 s stall at the end of every bulk
/// stream). A FIN sent after the client had its answer still waits for
/// the target's.
fn a_fin_before_any_answer_follows_its_request() {
    let mut l = Lab::new(Lab::default_cfg());
    let key = handshake(&mut l);
    l.capture(P, ISN + 1, 777, 0x18, b"upload");
    let out = l.capture(P, ISN + 7, 777, 0x11, &[]);
    assert!(
        out.iter().all(|o| o.flags & 0x01 == 0),
        "data unacked: {out:?}"
    );
    let out = l.respond(key, TISN + 1, ISN + 7, 0x10, 0, None);
    assert!(
        out.iter().any(|o| o.flags & 0x01 != 0),
        "FIN once the data is acknowledged: {out:?}"
    );

    // The client read 100 response bytes before closing: wait for them.
    let mut m = Lab::new(Lab::default_cfg());
    let key = handshake(&mut m);
    m.capture(P, ISN + 1, 777, 0x18, b"GET /\r\n");
    m.capture(P, ISN + 8, 877, 0x11, &[]);
    let out = m.respond(key, TISN + 1, ISN + 8, 0x10, 0, None);
    assert!(out.iter().all(|o| o.flags & 0x01 == 0), "waits: {out:?}");
    let mut out = m.respond(key, TISN + 1, ISN + 8, 0x18, 100, None);
    out.extend(m.advance(100));
    assert!(
        out.iter().any(|o| o.flags & 0x01 != 0),
        "then goes: {out:?}"
    );
    l.check_invariants();
    m.check_invariants();
}

/// `--verdict` through the engine: the online server's answer (a captured
/// segment from the `-x` source) and the target's (a record with its
/// payload prefix) pair with the request; the counters still add up.
fn the_verdict_pairs_online_and_target_answers() {
    let mut cfg = Lab::default_cfg();
    cfg.verdict = Some(crate::verdict::VerdictConfig {
        protocol: crate::verdict::Protocol::Auto,
        prefix_bytes: 64,
    });
    let mut l = Lab::new(cfg);
    let key = handshake(&mut l);
    let mut ack = 777;
    let mut tseq = TISN + 1;
    let mut seq = ISN + 1;
    for (path, target) in [("/same", "200 OK"), ("/differs", "503 No")] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        l.capture(P, seq, ack, 0x18, req.as_bytes());
        seq += req.len() as u32;
        // The online answer, as captured on its way to the client.
        let answer_online = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let p = client_pkt(
            (online(), 80),
            (client(), P),
            ack,
            seq,
            0x18,
            answer_online,
            &[],
        );
        l.e.handle_client_packet(l.now, &p);
        ack += answer_online.len() as u32;
        // The target's, with its first bytes.
        let answer = format!("HTTP/1.1 {target}\r\nContent-Length: 2\r\n\r\nok");
        let h = target_header(key, tseq, seq, 0x18, answer.len() as u32);
        l.advance(3);
        if path == "/differs" {
            // The target sends its first answer again (a retransmission):
            // not the answer of the request waiting now.
            let first = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string();
            let again = ResponseHeader { seq: TISN + 1, ..h };
            l.e.handle_response(l.now, &again, ResponseExtras::prefix(first.as_bytes()));
            l.drain();
        }
        l.e.handle_response(l.now, &h, ResponseExtras::prefix(answer.as_bytes()));
        l.drain();
        tseq += answer.len() as u32;
        l.advance(50);
    }
    l.check_invariants();
    assert_eq!(l.e.counters().online_answers, 2);
    l.e.shutdown();
    let v = &l.e.verdicts()[0];
    assert_eq!((v.compared, v.mismatched), (2, 1), "{v:#?}");
    assert_eq!(v.examples[0].request, "GET /differs HTTP/1.1");
    assert_eq!(v.target_latency.quantile_us(0.5), 3_000);
}

/// `--verdict` when a port's next connection was captured before the
/// online server's answer on the previous one: the answer pairs with the
/// previous connection's request (its ack continues that connection's
/// stream), not with the next connection's.
fn an_online_answer_after_the_next_syn_pairs_with_its_own_connection() {
    let mut cfg = Lab::default_cfg();
    cfg.verdict = Some(crate::verdict::VerdictConfig {
        protocol: crate::verdict::Protocol::Http,
        prefix_bytes: 64,
    });
    let mut l = Lab::new(cfg);
    let key = handshake(&mut l);
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    l.capture(P, ISN + 1, 777, 0x18, req);
    let end = ISN + 1 + req.len() as u32;
    // The next connection's SYN, captured before the online answer.
    let isn2 = ISN.wrapping_add(2_000_000_000);
    l.capture(P, isn2, 0, 0x02, &[]);
    let answer_online = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let p = client_pkt(
        (online(), 80),
        (client(), P),
        777,
        end,
        0x18,
        answer_online,
        &[],
    );
    l.e.handle_client_packet(l.now, &p);
    l.advance(3);
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let h = target_header(key, TISN + 1, end, 0x18, answer.len() as u32);
    l.e.handle_response(l.now, &h, ResponseExtras::prefix(answer));
    l.drain();
    l.e.shutdown();
    let v = &l.e.verdicts()[0];
    assert_eq!((v.compared, v.mismatched), (1, 0), "{v:#?}");
}

/// `--verdict` with requests sent together (`-W`): the target's
/// retransmission of the first answer is not taken for the second's.
fn a_retransmitted_answer_is_not_the_next_requests() {
    let mut cfg = Lab::default_cfg();
    cfg.no_wait = true;
    cfg.verdict = Some(crate::verdict::VerdictConfig {
        protocol: crate::verdict::Protocol::Http,
        prefix_bytes: 64,
    });
    let mut l = Lab::new(cfg);
    let key = handshake(&mut l);
    let answer_online = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut seq = ISN + 1;
    let mut ack = 777;
    for path in ["/a", "/b"] {
        let req = format!("GET {path} HTTP/1.1\r\n\r\n");
        l.capture(P, seq, ack, 0x18, req.as_bytes());
        seq += req.len() as u32;
        let p = client_pkt(
            (online(), 80),
            (client(), P),
            ack,
            seq,
            0x18,
            answer_online,
            &[],
        );
        l.e.handle_client_packet(l.now, &p);
        ack += answer_online.len() as u32;
    }
    let answer = |tseq: u32, text: &str| {
        let body = format!("HTTP/1.1 {text}\r\nContent-Length: 2\r\n\r\nok");
        let h = target_header(key, tseq, seq, 0x18, body.len() as u32);
        (h, body)
    };
    let (h1, b1) = answer(TISN + 1, "200 OK");
    l.e.handle_response(l.now, &h1, ResponseExtras::prefix(b1.as_bytes()));
    // The same segment again, then the second request's answer.
    l.e.handle_response(l.now, &h1, ResponseExtras::prefix(b1.as_bytes()));
    let (h2, b2) = answer(TISN + 1 + b1.len() as u32, "503 No");
    l.e.handle_response(l.now, &h2, ResponseExtras::prefix(b2.as_bytes()));
    l.drain();
    l.e.shutdown();
    let v = &l.e.verdicts()[0];
    assert_eq!((v.compared, v.mismatched), (2, 1), "{v:#?}");
    assert_eq!(v.examples[0].request, "GET /b HTTP/1.1");
}

/// The scenarios above that name no address of their own, each run over
/// IPv4 and over IPv6.
macro_rules! both_families {
    ($($name:ident),* $(,)?) => {
        mod ipv4 {
            $(#[test]
            fn $name() {
                super::in_family(super::Family::V4, super::$name)
            })*
        }
        mod ipv6 {
            $(#[test]
            fn $name() {
                super::in_family(super::Family::V6, super::$name)
            })*
        }
    };
}

both_families!(
    basic_replay_of_one_request,
    request_waits_for_previous_response_and_w_turns_it_off,
    acknowledgements_ride_on_requests_and_bulk_is_acked_as_it_comes,
    pacing_with_a_measured_rtt_waits_for_a_quiet_period,
    server_first_greeting_is_awaited_and_acknowledged,
    mid_stream_session_gets_a_fabricated_syn_and_o_skips_it,
    pure_acks_are_absorbed_and_response_data_is_acked_by_tcpcopy,
    replicas_use_distinct_ports_and_collisions_are_avoided,
    a_closed_session_lets_go_of_its_flow_at_once,
    sampling_keeps_whole_sessions_by_the_c_bucket,
    ramp_replays_whole_sessions_at_a_share_rising_each_second,
    session_rate_cap_skips_whole_sessions_beyond_n_a_second,
    client_rst_is_held_while_a_response_is_pending,
    target_closing_first_with_the_clients_fin_in_hand_gets_only_the_fin,
    target_closing_first_gets_ack_then_rst,
    target_reset_reconnects_from_the_first_unanswered_byte,
    a_request_the_target_resets_on_goes_again_only_twice,
    a_target_that_stalls_then_dies_gets_the_stalled_request_again,
    a_stalled_request_acknowledged_with_answer_data_goes_again,
    refused_and_unanswered_handshakes,
    idle_sessions_time_out_after_keepalive,
    duplicate_captures_reach_the_target_once,
    unacknowledged_data_is_retransmitted,
    oversized_captured_segments_are_cut_to_the_mtu,
    shutdown_resets_live_sessions_and_counts_unsent_data,
    session_buffer_is_bounded,
    a_buffer_that_fills_behind_a_hole_is_the_captures_loss,
    a_buffer_that_fills_during_an_intercept_outage_is_counted_as_the_outage,
    a_handshake_waits_out_an_intercept_outage,
    a_client_rst_after_its_fin_is_not_lost_when_the_target_closes_too,
    session_buffer_is_bounded_in_bytes,
    capture_gap_is_held_then_filled_or_given_up,
    timestamps_echo_the_target_and_never_go_backwards,
    client_running_ahead_of_the_replayed_handshake_does_not_stall,
    the_handshake_ack_rides_on_the_request_of_the_same_turn,
    a_greeting_that_never_comes_releases_the_request_after_the_wait,
    a_quiet_period_from_the_previous_response_does_not_release_the_next_request,
    a_late_syn_joins_its_mid_stream_session,
    a_reused_port_does_not_cut_the_replay_still_running_on_it,
    a_next_connection_captured_before_the_last_ones_tail_loses_nothing,
    a_previous_connection_outlives_the_next_one_on_its_port,
    a_shorter_last_answer_before_a_graceful_close_counts_as_answered,
    an_online_answer_after_the_next_syn_pairs_with_its_own_connection,
    a_lost_syn_is_retransmitted,
    a_new_connections_data_captured_before_its_syn_goes_with_it,
    fuzz_regressions,
    a_session_behind_its_client_catches_up_pipelined_and_closes_with_fin,
    a_short_backlog_is_still_paced_by_responses,
    partial_acks_resend_each_hole_without_waiting_for_the_timer,
    memory_pressure_refuses_new_sessions_then_sheds_growing_ones,
    a_pipelined_session_closes_only_once_the_target_has_answered,
    a_pipelined_session_awaits_the_targets_answers_before_it_counts_as_done,
    a_hole_the_capture_left_is_skipped_on_a_new_connection,
    a_request_cut_by_a_hole_is_given_up_with_it,
    acknowledgements_stay_inside_the_targets_window,
    a_new_intercept_connection_gets_every_route_again_and_requests_in_flight_go_again,
    a_refused_connection_is_retried_while_the_target_restarts,
    a_refused_handshake_is_retried_before_any_request,
    a_fin_before_any_answer_follows_its_request,
    the_verdict_pairs_online_and_target_answers,
    a_retransmitted_answer_is_not_the_next_requests,
);
