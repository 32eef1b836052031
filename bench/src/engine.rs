//! The session engine in-process, with no I/O: the timed micro-benchmark
//! (`bench engine`: segments per second, memory per idle session) and
//! the fixed workloads whose instructions `cargo xtask bench
//! --instructions` counts under valgrind (`bench engine-work NAME ROUNDS`).
//!
//! Each workload drives the engine the way a worker does (captured
//! packets in, response records in, timers, packets drained and their
//! buffers recycled) and checks at the end that it did what it
//! constructed: every request replayed, nothing retransmitted or lost.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Instant,
};
use tcpcopy::{
    proto::ResponseHeader,
    session::{parse_transfers, Config, Engine},
    wire::build::{build, SegmentSpec},
};

const SYN: u8 = 0x02;
const FIN_ACK: u8 = 0x11;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

const REQUEST: &[u8] =
    b"GET /index.html HTTP/1.1\r\nHost: example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
/// Response payload bytes per request.
const RESPONSE: u32 = 200;
const CLIENT_ISN: u32 = 1000;
/// NOP, NOP and a timestamp option (tsval 7, tsecr 9), as a Linux client
/// sends on every segment: the engine rewrites it on each one it sends.
const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
const TARGET_ISN: u32 = 5000;

/// The addresses of one family's lab: online server, target, clients.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn online(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 0, 1, 1).into(),
            Family::V6 => "fd00:1::1".parse::<Ipv6Addr>().unwrap().into(),
        }
    }
    fn target(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 0, 2, 2).into(),
            Family::V6 => "fd00:2::2".parse::<Ipv6Addr>().unwrap().into(),
        }
    }
    fn client(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => {
                Ipv4Addr::from(0x0a00_0000u32 | (1 + i / 50_000) << 16 | (i % 50_000)).into()
            }
            Family::V6 => {
                Ipv6Addr::from(0xfd00_0001_0000_0000_0000_0000_0001_0000u128 + i as u128).into()
            }
        }
    }
    fn config(self) -> Arc<Config> {
        let rule = match self {
            Family::V4 => "80-10.0.2.2:8080",
            Family::V6 => "80-[fd00:2::2]:8080",
        };
        Arc::new(Config {
            transfers: parse_transfers(rule).unwrap(),
            ..Config::default()
        })
    }
}

/// A client endpoint.
type Client = (IpAddr, u16);

/// The kinds of captured packet the workloads send.
#[derive(Clone, Copy)]
enum Kind {
    Syn,
    Ack,
    Fin,
    /// [`REQUEST`], with PSH.
    Request,
    /// A full segment of a bulk stream ([`BULK_MSS`] bytes).
    Data,
}

/// Packets captured from clients and records from intercept, for one
/// family's lab. A captured packet is stamped from a template built once
/// per kind (its client, port, sequence and ack written in), so the
/// instructions counted are the engine's, not those of building its
/// input: the engine does not check captured checksums.
struct Wire {
    family: Family,
    templates: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl Wire {
    fn new(family: Family) -> Wire {
        let data = vec![b'x'; BULK_MSS as usize];
        let shapes: [(u8, &[u8]); 5] = [
            (SYN, &[]),
            (ACK, &[]),
            (FIN_ACK, &[]),
            (PSH_ACK, REQUEST),
            (ACK, &data),
        ];
        let templates = shapes
            .iter()
            .map(|&(flags, payload)| {
                build(&SegmentSpec {
                    src: (family.client(0), 0),
                    dst: (family.online(), 80),
                    seq: 0,
                    ack: 0,
                    flags,
                    window: 501,
                    options: &TIMESTAMPS,
                    payload,
                    ip_id: 1,
                    ttl: 64,
                    tos: 0,
                })
            })
            .collect();
        Wire {
            family,
            templates,
            buf: Vec::new(),
        }
    }

    /// A captured packet of kind `kind` from client `c`.
    fn client_packet(&mut self, kind: Kind, c: Client, seq: u32, ack: u32) -> &[u8] {
        let p = &mut self.buf;
        p.clear();
        p.extend_from_slice(&self.templates[kind as usize]);
        let tcp = match c.0 {
            IpAddr::V4(a) => {
                p[12..16].copy_from_slice(&a.octets());
                20
            }
            IpAddr::V6(a) => {
                p[8..24].copy_from_slice(&a.octets());
                40
            }
        };
        p[tcp..tcp + 2].copy_from_slice(&c.1.to_be_bytes());
        p[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        p[tcp + 8..tcp + 12].copy_from_slice(&ack.to_be_bytes());
        p
    }

    fn record(&self, c: Client, seq: u32, ack: u32, flags: u8, len: u32) -> ResponseHeader {
        let ip_header = match self.family {
            Family::V4 => 20,
            Family::V6 => 40,
        };
        ResponseHeader {
            src_ip: self.family.target(),
            src_port: 8080,
            dst_ip: c.0,
            dst_port: c.1,
            seq,
            ack,
            flags,
            window: 65535,
            ip_total_len: (ip_header + 32 + len) as u16,
            payload_len: len,
            wscale: Some(7),
            timestamps: Some((11, 7)),
            mss: None,
        }
    }
}

/// Send what the engine has to send, as a worker does (buffers go back);
/// returns how many packets.
fn drain(e: &mut Engine) -> usize {
    let mut n = 0;
    while e.poll_route().is_some() {}
    while let Some(p) = e.poll_transmit() {
        e.recycle(p);
        n += 1;
    }
    n
}

/// Open a replayed connection for client `c`: SYN, SYN-ACK, ACK; returns
/// the packets sent.
fn handshake(e: &mut Engine, w: &mut Wire, now: u64, c: Client) -> usize {
    e.handle_client_packet(now, w.client_packet(Kind::Syn, c, CLIENT_ISN, 0));
    let syn = drain(e);
    let syn_ack = w.record(c, TARGET_ISN, CLIENT_ISN + 1, SYN_ACK, 0);
    e.handle_response(now, &syn_ack, Default::default());
    e.handle_client_packet(
        now,
        w.client_packet(Kind::Ack, c, CLIENT_ISN + 1, TARGET_ISN + 1),
    );
    syn + drain(e)
}

/// Establish `n` sessions; returns their clients.
fn establish(e: &mut Engine, w: &mut Wire, n: u32) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let c = (w.family.client(i), 10_000 + (i % 50_000) as u16);
            handshake(e, w, 0, c);
            c
        })
        .collect()
}

/// One request and its answer on each of `sessions`, round `r` of a
/// keep-alive run: the requests captured at `now`, the answers 1 ms
/// later; returns the packets sent.
fn keep_alive_round(e: &mut Engine, w: &mut Wire, now: u64, sessions: &[Client], r: u32) -> usize {
    let len = REQUEST.len() as u32;
    let (seq, ack) = (CLIENT_ISN + 1 + r * len, TARGET_ISN + 1 + r * RESPONSE);
    for &c in sessions {
        e.handle_client_packet(now, w.client_packet(Kind::Request, c, seq, ack));
    }
    let mut sent = turn(e, now);
    for &c in sessions {
        let answer = w.record(c, ack, seq + len, PSH_ACK, RESPONSE);
        e.handle_response(now + 1, &answer, Default::default());
    }
    sent += turn(e, now + 1);
    sent
}

/// The end of a worker's turn at `now`: timers due, then what is to send;
/// returns the packets sent.
fn turn(e: &mut Engine, now: u64) -> usize {
    e.handle_timeout(now);
    drain(e)
}

/// What a worker does while no input comes, from `now` to `until`: wake
/// at each deadline; returns the packets sent.
fn idle(e: &mut Engine, mut now: u64, until: u64) -> usize {
    let mut sent = 0;
    while let Some(due) = e.poll_timeout() {
        if due > until {
            break;
        }
        now = now.max(due).max(now + 1).min(until);
        sent += turn(e, now);
        if now == until {
            break;
        }
    }
    sent
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// `bench engine`: segments per second and memory per idle session.
pub fn timed_bench(quick: bool) -> String {
    let mut w = Wire::new(Family::V4);
    let cfg = Family::V4.config();
    // Throughput: 1000 keep-alive sessions, rounds of request → response.
    let mut e = Engine::new(cfg.clone());
    let sessions = establish(&mut e, &mut w, 1000);
    let rounds = if quick { 60 } else { 300 };
    let mut now = 1;
    let start = Instant::now();
    for r in 0..rounds {
        keep_alive_round(&mut e, &mut w, now, &sessions, r);
        now += 2;
    }
    let secs = start.elapsed().as_secs_f64();
    let segments = 2 * rounds as u64 * sessions.len() as u64;
    let c = e.counters();
    assert_eq!(c.requests_replayed, rounds as u64 * sessions.len() as u64);
    let rate = segments as f64 / secs;

    // Memory per idle established session.
    let before = rss_kib();
    let mut idle = Engine::new(cfg);
    let n = 200_000;
    establish(&mut idle, &mut w, n);
    let after = rss_kib();
    let per_session = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    let million_gib = per_session * 1e6 / (1u64 << 30) as f64;

    format!(
        "# Session engine micro-benchmark\n\n\
         One core, release build, in-process (no I/O): 1000 keep-alive sessions,\n\
         {rounds} rounds of one {}-byte request and one {RESPONSE}-byte response each.\n\n\
         | measure | value |\n|---|---|\n\
         | segments handled (captured requests + response records) | {segments} |\n\
         | wall time | {secs:.3} s |\n\
         | **segments per second, one core** | **{rate:.0}** |\n\
         | requests replayed | {} |\n\
         | memory per idle established session (RSS delta over {n}) | {per_session:.0} B |\n\
         | → 1 million idle sessions | {million_gib:.2} GiB |\n",
        REQUEST.len(),
        c.requests_replayed,
    )
}

/// The workloads of `bench engine-work`, by name.
pub const WORKLOADS: [&str; 4] = ["keep-alive", "keep-alive-ipv6", "short", "bulk"];

/// What a workload did: the engine's inputs and what came of them.
pub struct Work {
    /// Captured packets and response records handed to the engine.
    pub inputs: u64,
    pub requests: u64,
    pub packets_sent: u64,
}

/// Run workload `name` for `rounds` rounds. Its setup does not depend on
/// `rounds`, so the difference of two runs' instructions is the cost of
/// the rounds between them.
pub fn work(name: &str, rounds: u32) -> Result<Work, String> {
    let work = match name {
        "keep-alive" => keep_alive(Family::V4, rounds),
        "keep-alive-ipv6" => keep_alive(Family::V6, rounds),
        "short" => short_connections(rounds),
        "bulk" => bulk(rounds),
        other => return Err(format!("unknown workload `{other}` (known: {WORKLOADS:?})")),
    };
    Ok(work)
}

/// Sessions in the keep-alive workload.
const KEEP_ALIVE_SESSIONS: u32 = 200;

/// 200 keep-alive sessions; a round (10 ms) is one 73-byte request and
/// one 200-byte answer on each: 20,000 requests a second.
fn keep_alive(family: Family, rounds: u32) -> Work {
    let mut w = Wire::new(family);
    let mut e = Engine::new(family.config());
    let sessions = establish(&mut e, &mut w, KEEP_ALIVE_SESSIONS);
    let mut now = 1;
    let mut packets_sent = 0;
    for r in 0..rounds {
        packets_sent += keep_alive_round(&mut e, &mut w, now, &sessions, r) as u64;
        packets_sent += idle(&mut e, now + 1, now + 9) as u64;
        now += 10;
    }
    let requests = rounds as u64 * sessions.len() as u64;
    check(&e, requests);
    Work {
        inputs: 2 * requests,
        requests,
        packets_sent,
    }
}

/// Connections opened per round of the short-connection workload.
const SHORT_PER_ROUND: u32 = 100;

/// A round (one second) is 100 new connections, each: handshake, one
/// request, its answer, the client's FIN and the target's. Closed
/// sessions linger 6 s, so from round 7 on as many go as come.
fn short_connections(rounds: u32) -> Work {
    let family = Family::V4;
    let mut w = Wire::new(family);
    let mut e = Engine::new(family.config());
    let len = REQUEST.len() as u32;
    let (req_end, answer_end) = (CLIENT_ISN + 1 + len, TARGET_ISN + 1 + RESPONSE);
    let mut packets_sent = 0usize;
    for r in 0..rounds {
        // One connection every 5 ms: its handshake and request at `t`,
        // the answer and both FINs 1 ms later.
        for i in 0..SHORT_PER_ROUND {
            let t = 1 + r as u64 * 1000 + i as u64 * 5;
            let port = 1024 + ((r * SHORT_PER_ROUND + i) % 60_000) as u16;
            let c = (family.client(i), port);
            let e = &mut e;
            e.handle_client_packet(t, w.client_packet(Kind::Syn, c, CLIENT_ISN, 0));
            packets_sent += turn(e, t);
            let syn_ack = w.record(c, TARGET_ISN, CLIENT_ISN + 1, SYN_ACK, 0);
            e.handle_response(t, &syn_ack, Default::default());
            let ack = w.client_packet(Kind::Ack, c, CLIENT_ISN + 1, TARGET_ISN + 1);
            e.handle_client_packet(t, ack);
            let request = w.client_packet(Kind::Request, c, CLIENT_ISN + 1, TARGET_ISN + 1);
            e.handle_client_packet(t, request);
            packets_sent += turn(e, t);
            let answer = w.record(c, TARGET_ISN + 1, req_end, PSH_ACK, RESPONSE);
            e.handle_response(t + 1, &answer, Default::default());
            e.handle_client_packet(t + 1, w.client_packet(Kind::Fin, c, req_end, answer_end));
            let target_fin = w.record(c, answer_end, req_end + 1, FIN_ACK, 0);
            e.handle_response(t + 1, &target_fin, Default::default());
            let last_ack = w.client_packet(Kind::Ack, c, req_end + 1, answer_end + 1);
            e.handle_client_packet(t + 1, last_ack);
            packets_sent += turn(e, t + 1);
            packets_sent += idle(e, t + 1, t + 4);
        }
        let last = 1 + r as u64 * 1000 + SHORT_PER_ROUND as u64 * 5;
        packets_sent += idle(&mut e, last, 1 + (r as u64 + 1) * 1000 - 1);
    }
    let requests = rounds as u64 * SHORT_PER_ROUND as u64;
    check(&e, requests);
    Work {
        // Per connection: SYN, ACK, request, FIN, last ACK captured;
        // SYN-ACK, answer, FIN records.
        inputs: 8 * requests,
        requests,
        packets_sent: packets_sent as u64,
    }
}

/// Segments a bulk-stream round carries (acknowledged two by two, as
/// Linux acknowledges every second full segment).
const BULK_SEGMENTS: u32 = 64;
/// A full segment's payload (1500-byte MTU, timestamps).
const BULK_MSS: u32 = 1448;

/// One client streaming to the target (an upload): a round (4 ms) is 64
/// full segments of one request, and 32 ACKs from the target: 185 Mbit/s.
fn bulk(rounds: u32) -> Work {
    let family = Family::V4;
    let mut w = Wire::new(family);
    let mut e = Engine::new(family.config());
    let c = (family.client(0), 10_000);
    handshake(&mut e, &mut w, 0, c);
    let mut now = 1;
    let mut seq = CLIENT_ISN + 1;
    let mut packets_sent = 0;
    for _ in 0..rounds {
        for pair in 0..BULK_SEGMENTS / 2 {
            for _ in 0..2 {
                e.handle_client_packet(now, w.client_packet(Kind::Data, c, seq, TARGET_ISN + 1));
                seq += BULK_MSS;
            }
            packets_sent += drain(&mut e) as u64;
            let ack = w.record(c, TARGET_ISN + 1, seq, ACK, 0);
            e.handle_response(now, &ack, Default::default());
            if pair % 8 == 7 {
                packets_sent += turn(&mut e, now) as u64;
                now += 1;
            }
        }
    }
    let requests = (rounds > 0) as u64;
    check(&e, requests);
    let bytes = rounds as u64 * (BULK_SEGMENTS * BULK_MSS) as u64;
    assert_eq!(e.counters().bytes_replayed, bytes, "every byte replayed");
    Work {
        inputs: rounds as u64 * (BULK_SEGMENTS + BULK_SEGMENTS / 2) as u64,
        requests,
        packets_sent,
    }
}

/// The workload did what it constructed: every request replayed once,
/// nothing resent, lost or left waiting.
fn check(e: &Engine, requests: u64) {
    let c = e.counters();
    assert_eq!(c.requests_replayed, requests, "every request replayed");
    assert_eq!(c.retransmits, 0, "nothing resent");
    assert_eq!(c.lost(), 0, "nothing lost");
    assert_eq!(e.buffered(), 0, "nothing left waiting");
}
#[cfg(test)]
mod tests {
    #[test]
    fn every_workload_does_what_it_constructs() {
        for name in super::WORKLOADS {
            let w = super::work(name, 8).unwrap();
            assert!(
                w.inputs > 0 && w.requests > 0 && w.packets_sent > 0,
                "{name}"
            );
        }
        assert!(super::work("nothing", 1).is_err());
    }
}
