//! `tcpcopy --check`: the preflight checklist (see [`crate::preflight`])
//! for a tcpcopy run (with `--send xdp`, each target's next hop resolved
//! as the senders will), then a probe of the whole loop, which the C tool's
//! README leaves to a long manual diagnosis: one fabricated connection
//! from a replay client address to each target, sent through the replay
//! path (routes to intercept first, then the SYN), and intercept's report
//! of the answer. A SYN-ACK: the loop works (the probe is reset). A RST:
//! the target refused (nothing listens there). Nothing: what that means
//! and where to look, in order. Each target is probed in its own family.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    channel::Channel,
    load_capture_program,
    options::{CaptureMode, Settings, Source},
};
use crate::{
    preflight::{self, Checklist},
    proto::ResponseRecord,
    send::{RawSender, Sender},
    session::{Counters, Engine},
    wire::build::{build, SegmentSpec},
};
use tcpcopy_common::capture_mode;

/// How long the probe waits for the target's answer.
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// MSS option of the probe's SYN.
const SYN_OPTIONS: [u8; 4] = [2, 4, 0x05, 0xb4];

/// Run every check; an error when one failed (exit status 1).
pub fn run(plan: &Settings, probe_from: &[IpAddr]) -> Result<()> {
    let mut list = Checklist::default();
    preflight::kernel(&mut list);
    let live = matches!(plan.source, Source::Live(_));
    preflight::privileges(&mut list, true);
    if live {
        preflight::interfaces(&mut list, &plan.ifaces, Some(plan.config.mtu));
    }
    match plan.source {
        Source::Live(CaptureMode::Tap) => {
            preflight::program_loads(&mut list, "tap capture program", || {
                load_capture_program(plan, capture_mode::TAP).map(drop)
            })
        }
        Source::Live(CaptureMode::Xdp) => {
            preflight::program_loads(&mut list, "AF_XDP capture program", || {
                load_capture_program(plan, capture_mode::XSK).map(drop)
            })
        }
        _ => {}
    }
    for (ip, port) in plan.config.targets() {
        match preflight::route_to(ip) {
            Ok(src) => list.ok(format!(
                "target {}: routed, from {src}",
                std::net::SocketAddr::new(ip, port)
            )),
            Err(e) => list.fail(format!(
                "target {}: no route ({e})",
                std::net::SocketAddr::new(ip, port)
            )),
        }
    }
    if let Some(out) = plan.send.out_iface() {
        for t in &plan.config.transfers {
            let dst = t.dst_ip;
            match t.dst_mac {
                Some(mac) => list.ok(format!(
                    "-o {out}: {} by its given MAC {mac:02x?}",
                    t.dst_ip
                )),
                None => match crate::send::neighbour::resolve(out, dst) {
                    Ok(mac) => list.ok(format!(
                        "-o {out}: the next hop toward {}, MAC {mac:02x?}",
                        t.dst_ip
                    )),
                    Err(e) => list.fail(format!("{e:#}")),
                },
            }
        }
    }
    // Greeted as the replay will be (our extension offered for IPv6).
    let channel = match Channel::connect(&plan.servers, 1, plan.greeting()) {
        Ok(c) => {
            for s in &plan.servers {
                list.ok(format!(
                    "intercept {s}: reached (protocol {})",
                    crate::proto::INTERNAL_VERSION
                ));
            }
            Some(c)
        }
        Err(e) => {
            list.fail(format!("intercept: {e:#}"));
            list.note("is intercept running on the assistant, listening on that address (-b) and port (-p), and does its --allow take this host?");
            None
        }
    };
    match channel {
        Some(channel) => probe_loop(&mut list, plan, channel, probe_from),
        None => list.warn("the loop probe needs intercept: skipped"),
    }
    list.finish()
}

/// An address of documentation (RFC 5737, RFC 3849) of `target`'s family:
/// `n` 1 for a client, 2 for an online server.
fn documentation(target: IpAddr, n: u8) -> IpAddr {
    match target {
        IpAddr::V4(_) => Ipv4Addr::new(192, 0, 2, n).into(),
        IpAddr::V6(_) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n as u16).into(),
    }
}

/// The captured client address the probe of `target` pretends to be, of
/// its family: `--check-from`'s, else (with a `-c` pool of that family)
/// any address, which the pool rewrites.
fn probe_client(plan: &Settings, probe_from: &[IpAddr], target: IpAddr) -> Option<IpAddr> {
    if let Some(ip) = probe_from.iter().find(|a| a.is_ipv4() == target.is_ipv4()) {
        return Some(*ip);
    }
    let any = documentation(target, 1);
    let pool = plan.config.client_pool.as_ref()?;
    (pool.bind(any) != any).then_some(any)
}

/// One fabricated connection per `-x` rule (to each of its targets), the
/// engine driving it as in a replay; the verdict per target from what
/// intercept reported.
fn probe_loop(list: &mut Checklist, plan: &Settings, mut channel: Channel, probe_from: &[IpAddr]) {
    let mut sender = match RawSender::new() {
        Ok(s) => s,
        Err(e) => {
            list.fail(format!(
                "loop probe: raw send socket (needs CAP_NET_RAW): {e}"
            ));
            return;
        }
    };
    let cfg = plan.config.clone();
    let mut engine = Engine::new(cfg.clone());
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let mut rules: Vec<u16> = Vec::new();
    // The replay address each probed rule's connection comes from.
    let mut probed: Vec<(u16, IpAddr)> = Vec::new();
    for t in &cfg.transfers {
        if rules.contains(&t.rule) {
            continue;
        }
        rules.push(t.rule);
        let Some(client) = probe_client(plan, probe_from, t.dst_ip) else {
            let family = if t.dst_ip.is_ipv4() { "IPv4" } else { "IPv6" };
            list.warn(format!(
                "loop probe of {}: needs a replay client address of its family ({family}): skipped",
                SocketAddr::new(t.dst_ip, t.dst_port)
            ));
            list.note(format!("give -c with an {family} address (the probe uses it) or --check-from IP (an {family} address the target routes to the assistant)"));
            continue;
        };
        let replayed = cfg.client_pool.as_ref().map_or(client, |p| p.bind(client));
        probed.push((t.rule, replayed));
        let dst = t.src_ip.unwrap_or(documentation(t.dst_ip, 2));
        let syn = build(&SegmentSpec {
            src: (client, port + t.rule),
            dst: (dst, t.src_port),
            seq: 0x7c0f_fee0,
            ack: 0,
            flags: 0x02,
            window: 64_240,
            options: &SYN_OPTIONS,
            payload: &[],
            ip_id: 1,
            ttl: 64,
            tos: 0,
        });
        engine.handle_client_packet(now(), &syn);
    }
    let probed_targets: Vec<usize> = cfg
        .transfers
        .iter()
        .filter(|t| probed.iter().any(|(r, _)| *r == t.rule))
        .map(|t| t.target as usize)
        .collect();
    let mut records: Vec<ResponseRecord> = Vec::new();
    let deadline = Instant::now() + PROBE_WAIT;
    while Instant::now() < deadline {
        send_outputs(&mut engine, &mut channel, &mut sender);
        records.clear();
        channel.poll_records(&mut records);
        for r in &records {
            engine.handle_response(now(), &r.header(), r.extras());
        }
        engine.handle_timeout(now());
        if answered_all(&engine, &probed_targets) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let per_target: Vec<Counters> = match engine.target_counters() {
        [] => vec![engine.counters().clone()],
        many => many.to_vec(),
    };
    for ((ip, tport), c) in cfg.targets().into_iter().zip(per_target) {
        // The address the probe of this target came from (its first rule).
        let from = cfg
            .transfers
            .iter()
            .filter(|t| (t.dst_ip, t.dst_port) == (ip, tport))
            .find_map(|t| probed.iter().find(|(r, _)| *r == t.rule));
        let Some(&(_, pool)) = from else {
            continue; // not probed: said above
        };
        let target = SocketAddr::new(ip, tport);
        let what = format!("loop probe {pool} → {target}");
        if c.connections > 0 {
            list.ok(format!(
                "{what}: SYN-ACK reported by intercept: the loop works (probe reset)"
            ));
        } else if c.response_rsts > 0 {
            list.fail(format!(
                "{what}: the target answered RST: nothing listens on {target}"
            ));
        } else {
            list.fail(format!(
                "{what}: no answer reported within {} s",
                PROBE_WAIT.as_secs()
            ));
            list.note(format!(
                "the SYN left from {pool}; look, in this order, at:\n\
                 1. the target's route back to {pool}: it must go via the assistant (ip route get {pool} on the target);\n\
                 2. rp_filter on the target's interface the probe arrives on (0 or 2: the source is not on that link);\n\
                 3. forwarding on the assistant (ip_forward; IPv6: net.ipv6.conf.all.forwarding): it must be 0, or the answer is forwarded instead of taken;\n\
                 4. intercept's -F filter: it must take tcp from {ip} port {tport};\n\
                 5. a firewall between this host and the target, or the target and the assistant."
            ));
        }
    }
    engine.shutdown();
    send_outputs(&mut engine, &mut channel, &mut sender);
}

/// What the engine queued: routes to intercept first, then the packets.
fn send_outputs(engine: &mut Engine, channel: &mut Channel, sender: &mut RawSender) {
    while let Some(r) = engine.poll_route() {
        channel.queue_route(&r);
    }
    channel.flush();
    while let Some(p) = engine.poll_transmit() {
        let _ = sender.send(&p);
    }
    sender.flush();
}

/// Has every target answered the probe (a SYN-ACK or a RST)?
fn answered_all(engine: &Engine, probed: &[usize]) -> bool {
    let answered = |c: &Counters| c.connections > 0 || c.response_rsts > 0;
    match engine.target_counters() {
        [] => probed.is_empty() || answered(engine.counters()),
        many => probed.iter().all(|&i| many.get(i).is_some_and(answered)),
    }
}
