//! The IPv6 scenarios of the lab (its dual-stack half: clients fd00:1::10
//! and ::11, online fd00:1::1, target fd00:2::2, the pool fd00:99::/64
//! routed to the assistant): keep-alive and short connections over IPv6 in
//! every capture mode and with the framed senders, redis over IPv6, IPv4
//! and IPv6 clients replayed at once by one tcpcopy (its control channel
//! over IPv6), `-n 2` with an IPv6 `-c` pool, and a tcpdump capture of
//! IPv6 traffic replayed offline. Each counts what a user would:
//! requests in the servers' own logs and stats.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::{
    e2e::{drive, exact, in_words, summary},
    lab::{self, in_ns, CLIENT, MIRROR, ONLINE, ONLINE_IP, ONLINE_IP6},
    replay::{self, Replay},
};

/// The IPv6 rules: nginx and redis on the target's IPv6 address.
const RULES: &str = "80-[fd00:2::2]:8080,6379-[fd00:2::2]:6379";

fn wrk6(conns: u32, secs: u32, extra: &str) -> String {
    // Quoted: brackets are a shell pattern.
    format!("wrk -t2 -c{conns} -d{secs}s {extra} \"http://[{ONLINE_IP6}]/\"")
}

/// Lines of a lab nginx log (`online` or `target`) whose client address is
/// IPv6, and IPv4.
fn lines_by_family(server: &str) -> (u64, u64) {
    let log = lab::run_dir().join(format!("{server}-nginx-access.log"));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let v6 = text.lines().filter(|l| l.starts_with("fd00:")).count() as u64;
    (v6, text.lines().count() as u64 - v6)
}

fn target_lines_by_family() -> (u64, u64) {
    lines_by_family("target")
}

/// Keep-alive and short connections from IPv6 clients, each exact, with
/// XDP tap capture, AF_PACKET capture and AF_XDP capture on the mirror.
pub fn keepalive_and_short_in_every_capture_mode() -> Result<()> {
    let modes: [(&str, &str, &[&str]); 3] = [
        ("tap", ONLINE, &["-i", "onl0", "--workers", "2"]),
        (
            "packet",
            ONLINE,
            &["--capture", "packet", "-i", "onl0", "--workers", "2"],
        ),
        ("xdp (mirror)", MIRROR, &["--capture", "xdp", "-i", "mir0"]),
    ];
    for (mode, host, capture) in modes {
        let mut args = vec!["-x", RULES];
        args.extend_from_slice(capture);
        let r = Replay::start_on("ipv6", host, &args)?;
        let keepalive = drive(&wrk6(10, 2, ""));
        let v6_keepalive = target_lines_by_family();
        let short = drive(&wrk6(10, 2, "-H 'Connection: close'"));
        let v6_short = target_lines_by_family();
        let log = r.stop()?;
        let fail = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", summary(&log));
        let (o, t) = keepalive?;
        exact(&format!("IPv6, {mode}: wrk -c10 keep-alive"), o, t).map_err(fail)?;
        let (o2, t2) = short?;
        exact(&format!("IPv6, {mode}: wrk -c10 short connections"), o2, t2).map_err(fail)?;
        ensure!(
            v6_keepalive == (t, 0) && v6_short == (t2, 0),
            "every replayed request should come from an IPv6 client: {v6_keepalive:?}, {v6_short:?}"
        );
        ensure!(
            log.contains("none lost"),
            "IPv6, {mode}: the summary should say none lost:\n{log}"
        );
    }
    Ok(())
}

/// The framed senders over IPv6: `--send packet` out of the online host's
/// port toward the target (the target itself the next hop, found by
/// neighbour discovery), and `--send xdp` out of the mirror port (the
/// online host the next hop, a router): keep-alive and short connections,
/// each exact.
pub fn framed_senders_over_ipv6() -> Result<()> {
    let modes: [(&str, &str, &[&str]); 2] = [
        (
            "--send packet",
            ONLINE,
            &[
                "-i",
                "onl0",
                "--workers",
                "2",
                "--send",
                "packet",
                "-o",
                "onl1",
            ],
        ),
        (
            "--send xdp (mirror)",
            MIRROR,
            &[
                "--capture",
                "xdp",
                "-i",
                "mir0",
                "--send",
                "xdp",
                "-o",
                "mir0",
            ],
        ),
    ];
    for (mode, host, send) in modes {
        let mut args = vec!["-x", RULES];
        args.extend_from_slice(send);
        let r = Replay::start_on("ipv6-send", host, &args)?;
        let keepalive = drive(&wrk6(4, 2, ""));
        let short = drive(&wrk6(4, 2, "-H 'Connection: close'"));
        let log = r.stop()?;
        let fail = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", summary(&log));
        let (o, t) = keepalive?;
        exact(&format!("IPv6, {mode}: wrk -c4 keep-alive"), o, t).map_err(fail)?;
        let (o, t) = short?;
        exact(&format!("IPv6, {mode}: wrk -c4 short connections"), o, t).map_err(fail)?;
        ensure!(
            log.contains("none lost"),
            "IPv6, {mode}: the summary should say none lost:\n{log}"
        );
    }
    Ok(())
}

/// redis-benchmark against the online redis's IPv6 address, replayed to
/// the target's: counted by both servers' `INFO commandstats`.
pub fn redis_over_ipv6() -> Result<()> {
    let r = Replay::start("ipv6-redis", &["-x", RULES, "-i", "onl0", "--workers", "2"])?;
    let load = replay::redis_load_with(&format!(
        "redis-benchmark -h {ONLINE_IP6} -c 10 -n 20000 -t set,get,incr,lpush -q"
    ));
    let log = r.stop()?;
    let (online, target) = load?;
    exact("IPv6 redis-benchmark -c10", online, target)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))
}

/// One tcpcopy with an IPv4 and an IPv6 rule replays IPv4 and IPv6
/// clients loading the online nginx at the same time: every request once,
/// each in its own family. Its control channel runs over IPv6 (intercept
/// bound to `::`, tcpcopy told `-s [fd00:4::3]`).
pub fn ipv4_and_ipv6_clients_at_once() -> Result<()> {
    let rules = "80-10.0.2.2:8080,80-[fd00:2::2]:8080";
    let mut intercept = replay::start_intercept_bound(
        "dual",
        "ast0",
        "::",
        lab::CONTROL_PORT,
        replay::INTERCEPT_METRICS,
    )?;
    let mut tcpcopy = replay::start_tcpcopy(
        "dual",
        ONLINE,
        "[fd00:4::3]",
        &["-x", rules, "-i", "onl0", "--workers", "2"],
    )?;
    let both = format!(
        "bash -c 'wrk -t1 -c5 -d3s http://{ONLINE_IP}/ & {} ; wait'",
        wrk6(5, 3, "").replace("-t2", "-t1")
    );
    replay::reset_logs()?;
    let (o, t) = drive(&both)?;
    let log = tcpcopy.stop()?;
    let intercept_log = intercept.stop()?;
    ensure!(
        intercept_log.contains("addr=[fd00:4::1]"),
        "tcpcopy should have connected over IPv6:\n{intercept_log}"
    );
    let (online_v6, online_v4) = lines_by_family("online");
    let (target_v6, target_v4) = target_lines_by_family();
    println!(
        "    online: {online_v4} IPv4 + {online_v6} IPv6; target: {target_v4} IPv4 + {target_v6} IPv6"
    );
    exact("IPv4 and IPv6 clients at once", o, t)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))?;
    ensure!(
        online_v6 > 100 && online_v4 > 100,
        "both families should have loaded the online server"
    );
    ensure!(
        (target_v4, target_v6) == (online_v4, online_v6),
        "each family replayed exactly: online {online_v4}/{online_v6}, target {target_v4}/{target_v6}"
    );
    Ok(())
}

/// `-n 2` over IPv6 with an IPv6 `-c` prefix: every request reaches the
/// target twice, from addresses of the pool.
pub fn replicas_double_from_an_ipv6_pool() -> Result<()> {
    let r = Replay::start(
        "ipv6-replicas",
        &[
            "-x",
            RULES,
            "-i",
            "onl0",
            "--workers",
            "2",
            "-n",
            "2",
            "-c",
            "fd00:99::/120",
        ],
    )?;
    let (o, t) = drive(&wrk6(4, 2, ""))?;
    let log = r.stop()?;
    let text = std::fs::read_to_string(lab::run_dir().join("target-nginx-access.log"))?;
    let from_pool = text.lines().filter(|l| l.starts_with("fd00:99::")).count() as u64;
    println!("    IPv6 -n 2 -c fd00:99::/120: online {o}, target {t} ({from_pool} from the pool)");
    ensure!(
        o > 100 && t == 2 * o && from_pool == t,
        "-n 2 should double, every copy from the pool: online {o}, target {t}, from the pool {from_pool}\n{}",
        summary(&log)
    );
    Ok(())
}

/// A tcpdump capture of IPv6 keep-alive traffic replayed offline brings
/// the target exactly the requests the file holds (counted from the file
/// by tcpdump, which names each request packet `HTTP: GET`; its
/// `tcp[...]` filters do not reach past an IPv6 header).
pub fn tcpdump_capture_replayed_offline() -> Result<()> {
    let file = lab::run_dir().join("wrk-ipv6.pcap");
    let dump = replay::Tcpdump::start(&file, "ip6 and tcp dst port 80")?;
    // Below saturation, so tcpdump keeps up with every packet.
    in_ns(CLIENT, &format!("{} > /dev/null 2>&1", wrk6(4, 2, "")))?;
    std::thread::sleep(Duration::from_millis(500));
    dump.stop();
    let out = crate::util::output(&format!(
        "tcpdump -nn -r {} 2>/dev/null | grep -c 'HTTP: GET / HTTP/1.1'",
        file.display()
    ))?;
    let want: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let mut intercept = replay::start_intercept("ipv6-offline")?;
    replay::reset_logs()?;
    let f = file.display().to_string();
    let log = replay::run_offline(
        "ipv6-offline",
        &["-x", "80-[fd00:2::2]:8080", "--offline", &f],
        Duration::from_secs(60),
    )?;
    let (got, _) = replay::wait_until_quiet(
        &|| lab::count_lines("target-nginx-access.log"),
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    intercept.stop()?;
    exact(&format!("IPv6 offline {}", file.display()), want, got)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", in_words(&log)))?;
    ensure!(
        target_lines_by_family() == (got, 0),
        "the offline replay should come from IPv6 clients"
    );
    Ok(())
}
