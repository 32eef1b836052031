//! Benchmark harness, run by `cargo xtask bench`:
//! - `engine`: the session engine on one core (segments per second for
//!   small HTTP-sized keep-alive requests, memory per idle session) →
//!   `bench/results/engine.md`;
//! - `intercept`: intercept's ring-buffer-to-tcpcopy record rate →
//!   `bench/results/intercept.md` (needs root);
//! - `gen IFACE SRC DST RATE SECONDS [QUEUE]`: the lab's packet generator
//!   (AF_XDP TX);
//! - `send HOST:PORT BITS_PER_S SECONDS` and `sink PORT FILE`: one bulk TCP
//!   stream at a fixed rate, and a byte-counting server (elephant flows);
//! - `charts`: the report's SVG charts from the lab benchmarks' CSV files;
//!   `soak-chart`: the soak run's memory curve.
//!
//! `BENCH_QUICK=1` shortens engine and intercept for `cargo xtask bench --quick`.

mod bulk;
mod chart;
mod charts;
mod gen;
mod intercept;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Instant,
};
use tcpcopy::{
    proto::ResponseHeader,
    session::{parse_transfers, Config, Engine},
    wire::build::{build, SegmentSpec},
};

const ONLINE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));
const TARGET: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));

fn client_ip(i: u32) -> IpAddr {
    Ipv4Addr::from(0x0a00_0000u32 | (1 + i / 50_000) << 16 | (i % 50_000)).into()
}

fn pkt(src: (IpAddr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    build(&SegmentSpec {
        src,
        dst: (ONLINE, 80),
        seq,
        ack,
        flags,
        window: 501,
        options: &[],
        payload,
        ip_id: 1,
        ttl: 64,
        tos: 0,
    })
}

fn resp(client: (IpAddr, u16), seq: u32, ack: u32, flags: u8, len: u32) -> ResponseHeader {
    ResponseHeader {
        src_ip: TARGET,
        src_port: 8080,
        dst_ip: client.0,
        dst_port: client.1,
        seq,
        ack,
        flags,
        window: 65535,
        ip_total_len: 40 + len as u16,
        payload_len: len,
        wscale: Some(7),
        timestamps: None,
        mss: None,
    }
}

fn drain(e: &mut Engine) -> usize {
    let mut n = 0;
    while e.poll_route().is_some() {}
    while e.poll_transmit().is_some() {
        n += 1;
    }
    n
}

/// Establish `n` sessions; returns their client addresses.
fn establish(e: &mut Engine, n: u32) -> Vec<(IpAddr, u16)> {
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n {
        let c = (client_ip(i), 10_000 + (i % 50_000) as u16);
        e.handle_client_packet(0, &pkt(c, 1000, 0, 0x02, &[]));
        e.handle_response(0, &resp(c, 5000, 1001, 0x12, 0), Default::default());
        e.handle_client_packet(0, &pkt(c, 1001, 5001, 0x10, &[]));
        drain(e);
        v.push(c);
    }
    v
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

fn engine_bench() -> String {
    let cfg = Arc::new(Config {
        transfers: parse_transfers("80-10.0.2.2:8080").unwrap(),
        ..Config::default()
    });
    // Throughput: 1000 keep-alive sessions, rounds of request → response.
    let mut e = Engine::new(cfg.clone());
    let sessions = establish(&mut e, 1000);
    let request =
        b"GET /index.html HTTP/1.1\r\nHost: example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
    let rounds = if quick() { 60 } else { 300 };
    let packets: Vec<Vec<Vec<u8>>> = (0..rounds)
        .map(|r| {
            sessions
                .iter()
                .map(|&c| {
                    let seq = 1001 + r * request.len() as u32;
                    pkt(c, seq, 5001 + r * 200, 0x18, request)
                })
                .collect()
        })
        .collect();
    let mut now = 1;
    let mut segments = 0u64;
    let start = Instant::now();
    for (r, round) in packets.iter().enumerate() {
        for (i, p) in round.iter().enumerate() {
            e.handle_client_packet(now, p);
            let c = sessions[i];
            let acked = 1001 + (r as u32 + 1) * request.len() as u32;
            e.handle_response(
                now,
                &resp(c, 5001 + r as u32 * 200, acked, 0x18, 200),
                Default::default(),
            );
            segments += 2;
        }
        now += 2;
        e.handle_timeout(now);
        drain(&mut e);
    }
    let secs = start.elapsed().as_secs_f64();
    let c = e.counters();
    assert_eq!(c.requests_replayed, rounds as u64 * sessions.len() as u64);
    let rate = segments as f64 / secs;

    // Memory per idle established session.
    let before = rss_kib();
    let mut idle = Engine::new(cfg);
    let n = 200_000;
    establish(&mut idle, n);
    let after = rss_kib();
    let per_session = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    let million_gib = per_session * 1e6 / (1u64 << 30) as f64;

    format!(
        "# Session engine micro-benchmark\n\n\
         One core, release build, in-process (no I/O): 1000 keep-alive sessions,\n\
         {rounds} rounds of one {}-byte request and one 200-byte response each.\n\n\
         | measure | value |\n|---|---|\n\
         | segments handled (captured requests + response records) | {segments} |\n\
         | wall time | {secs:.3} s |\n\
         | **segments per second, one core** | **{rate:.0}** |\n\
         | requests replayed | {} |\n\
         | memory per idle established session (RSS delta over {n}) | {per_session:.0} B |\n\
         | → 1 million idle sessions | {million_gib:.2} GiB |\n",
        request.len(),
        c.requests_replayed,
    )
}

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// `BENCH_OUT` (set by `cargo xtask bench`), else `bench/results/`.
fn results_dir() -> std::path::PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results"))
}

fn write_report(name: &str, report: &str) {
    println!("{report}");
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, report) {
        eprintln!("bench: could not write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!("bench: wrote {}", path.display());
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "engine".into());
    match what.as_str() {
        "engine" => write_report("engine.md", &engine_bench()),
        "gen" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let parsed = (|| -> Option<gen::GenArgs> {
                Some(gen::GenArgs {
                    iface: a.first()?.clone(),
                    src: a.get(1)?.parse().ok()?,
                    dst: a.get(2)?.parse().ok()?,
                    rate: a.get(3)?.parse().ok()?,
                    seconds: a.get(4)?.parse().ok()?,
                    queue: a.get(5).map_or(Some(0), |q| q.parse().ok())?,
                })
            })();
            let Some(args) = parsed else {
                eprintln!("usage: bench gen IFACE SRC_IP DST_IP RATE_PPS SECONDS [QUEUE]");
                std::process::exit(2);
            };
            match gen::generate(&args) {
                Ok((n, secs)) => println!("sent {n} in {secs:.3} s"),
                Err(e) => {
                    eprintln!("bench gen: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        "send" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let (Some(addr), Some(Ok(rate)), Some(Ok(secs))) = (
                a.first(),
                a.get(1).map(|r| r.parse::<f64>()),
                a.get(2).map(|s| s.parse::<f64>()),
            ) else {
                eprintln!("usage: bench send HOST:PORT BITS_PER_S SECONDS");
                std::process::exit(2);
            };
            match bulk::send(addr, rate, secs) {
                Ok((n, s)) => println!(
                    "sent {n} bytes in {s:.3} s ({:.3} Gbit/s)",
                    n as f64 * 8.0 / s / 1e9
                ),
                Err(e) => {
                    eprintln!("bench send: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        "sink" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let (Some(Ok(port)), Some(out)) = (a.first().map(|p| p.parse::<u16>()), a.get(1))
            else {
                eprintln!("usage: bench sink PORT FILE");
                std::process::exit(2);
            };
            if let Err(e) = bulk::sink(port, out.into()) {
                eprintln!("bench sink: {e:#}");
                std::process::exit(1);
            }
        }
        "soak-chart" => {
            if let Err(e) = charts::soak_chart(&results_dir()) {
                eprintln!("bench soak-chart: {e:#}");
                std::process::exit(1);
            }
        }
        "charts" => {
            if let Err(e) = charts::charts(&results_dir()) {
                eprintln!("bench charts: {e:#}");
                std::process::exit(1);
            }
        }
        "intercept" => match intercept::intercept_bench(if quick() { 0.5 } else { 2.0 }) {
            Ok(report) => write_report("intercept.md", &report),
            Err(e) => {
                eprintln!("bench: intercept: {e:#}");
                std::process::exit(1);
            }
        },
        other => {
            eprintln!("bench: unknown benchmark `{other}` (known: engine, intercept, gen, send, sink, charts, soak-chart)");
            std::process::exit(2);
        }
    }
}
