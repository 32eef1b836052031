//! `bench gen`: a packet generator for the capture-rate benchmark. It sends
//! small TCP segments (pure ACKs from rotating client ports to the online
//! server's port 80) through an AF_XDP socket's TX ring on one interface,
//! at a paced rate, and prints how many it sent. The frames are addressed
//! to the next hop's MAC (the online host), so every capture mode sees
//! them as it would real client traffic.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use tcpcopy::{
    capture::XskSocket,
    send::{neighbour, Sender, XskSender},
    wire::build::{build, SegmentSpec},
};

pub struct GenArgs {
    pub iface: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub rate: u64,
    pub seconds: f64,
    /// TX queue of `iface` (veth delivers to the peer's RX queue of the
    /// same number), so several generators can feed several queues.
    pub queue: u32,
}

/// Packets prepared up front and cycled (client port varies).
const DISTINCT: u16 = 4096;
/// Pacing granularity.
const TICK: Duration = Duration::from_micros(200);

/// Returns (packets sent, seconds they took).
pub fn generate(a: &GenArgs) -> Result<(u64, f64)> {
    let src_mac = neighbour::iface_mac(&a.iface)?;
    let dst_mac = neighbour::resolve(&a.iface, a.dst.into())
        .with_context(|| format!("next hop toward {}", a.dst))?;
    let parts = XskSocket::open(&a.iface, a.queue, Default::default())?
        .take_tx()
        .ok_or_else(|| anyhow!("no TX ring"))?;
    let hops = tcpcopy::send::neighbour::NextHops::new(HashMap::from([(a.dst.into(), dst_mac)]));
    let mut tx = XskSender::new(parts, src_mac, hops);
    let packets: Vec<Vec<u8>> = (0..DISTINCT)
        .map(|i| {
            build(&SegmentSpec {
                src: (a.src.into(), 20000 + i + (a.queue as u16 % 8) * DISTINCT),
                dst: (a.dst.into(), 80),
                seq: 1_000_000 + i as u32,
                ack: 1,
                flags: 0x10,
                window: 512,
                options: &[],
                payload: &[],
                ip_id: i,
                ttl: 64,
                tos: 0,
            })
        })
        .collect();
    let start = Instant::now();
    let total = (a.rate as f64 * a.seconds) as u64;
    let mut sent = 0u64;
    let mut i = 0usize;
    while sent < total {
        // Packets due by now at the asked rate.
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while sent < due {
            if tx.send(&packets[i % packets.len()]).is_ok() {
                sent += 1;
                i += 1;
            } else {
                // TX ring full: let the kernel catch up.
                tx.flush();
                break;
            }
        }
        tx.flush();
        if start.elapsed().as_secs_f64() > a.seconds * 3.0 + 1.0 {
            break; // cannot reach the rate; report what went out
        }
        std::thread::sleep(TICK);
    }
    tx.flush();
    let took = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(50));
    tx.flush();
    Ok((sent, took))
}
