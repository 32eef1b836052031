//! End-to-end tests of choosing and shaping the traffic (issue #24): the
//! client filters, the session rate cap, the `-g` ramp and fan-out to two
//! targets. Each builds a load whose right answer it knows (which client
//! sent what, how many connections, at what share) and counts what the
//! target nginx servers logged.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::{
    e2e::{drive, exact, in_words, summary, summary_counter, TAP},
    lab::{self, in_ns, CLIENT, ONLINE, ONLINE_IP},
    replay::{self, Replay, MIRROR_HTTP, PACKET_HTTP},
};

/// One line of a lab nginx access log: client address and port, and when
/// the request was served (seconds, ms resolution).
struct Served {
    addr: String,
    port: u16,
    at: f64,
}

fn served(log: &str) -> Vec<Served> {
    let text = std::fs::read_to_string(lab::run_dir().join(log)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let addr = f.next()?.to_string();
            let port = f.next()?.parse().ok()?;
            let at = l.rsplit(' ').next()?.parse().ok()?;
            Some(Served { addr, port, at })
        })
        .collect()
}

/// The C sampling bucket of a client (spec §4.2 step 8), as the ramp uses it.
fn bucket(addr: &str, port: u16) -> u8 {
    let ip: std::net::Ipv4Addr = addr.parse().expect("an address from the log");
    let [a, b, _, _] = ip.octets();
    let [ph, pl] = port.to_be_bytes();
    let s = ((((pl as u32) << 8) | ph as u32) + (((b as u32) << 8) | a as u32)) & 0xffff;
    (((s >> 8) + (s & 0xff)) % 100) as u8
}

/// `n` short connections from `from` (one request each, one after the
/// other, from each of `parallel` loops); returns how long they took.
fn curl_loop(from: &str, n: u32, parallel: u32) -> Result<Duration> {
    let started = Instant::now();
    let one = format!(
        "for i in $(seq {n}); do curl -s -o /dev/null --interface {from} http://{ONLINE_IP}/; done"
    );
    let all = vec![format!("( {one} ) &"); parallel as usize].join(" ");
    in_ns(CLIENT, &format!("bash -c '{all} wait'"))?;
    Ok(started.elapsed())
}

/// `--skip-clients 10.0.1.11`: wrk from 10.0.1.10 and 100 short
/// connections from 10.0.1.11 at once; the target logs exactly the first
/// client's requests and none of the second's, in tap and xdp capture
/// (left out in the XDP program) and packet capture (in user space).
pub fn skip_clients_leaves_out_one_address() -> Result<()> {
    let skip = ["--skip-clients", "10.0.1.11"];
    let with = |base: &[&'static str]| -> Vec<&'static str> {
        let mut v = base.to_vec();
        v.extend(skip);
        v
    };
    let modes: [(&str, &str, Vec<&str>, &str); 3] = [
        ("tap", ONLINE, with(TAP), "kernel client_skipped"),
        (
            "xdp",
            lab::MIRROR,
            with(MIRROR_HTTP),
            "kernel client_skipped",
        ),
        ("packet", ONLINE, with(PACKET_HTTP), "client_filtered"),
    ];
    for (mode, host, args, counter) in modes {
        let r = Replay::start_on(&format!("skip-{mode}"), host, &args)?;
        replay::reset_logs()?;
        let one = format!(
            "for i in $(seq 100); do curl -s -o /dev/null --interface 10.0.1.11 http://{ONLINE_IP}/; done"
        );
        in_ns(
            CLIENT,
            &format!(
                "bash -c 'wrk -t1 -c4 -d2s http://{ONLINE_IP}/ > /dev/null 2>&1 & {one}; wait'"
            ),
        )?;
        let online = replay::online_served();
        let (_, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
        let log = r.stop()?;
        let by = |log: &str, addr: &str| served(log).iter().filter(|s| s.addr == addr).count();
        let (o10, o11) = (
            by("online-nginx-access.log", "10.0.1.10"),
            by("online-nginx-access.log", "10.0.1.11"),
        );
        let (t10, t11) = (
            by("target-nginx-access.log", "10.0.1.10"),
            by("target-nginx-access.log", "10.0.1.11"),
        );
        println!(
            "    {mode}: online {online} (10.0.1.10: {o10}, 10.0.1.11: {o11}); target 10.0.1.10: {t10}, 10.0.1.11: {t11}; {counter} {}",
            summary_counter(&log, counter)
        );
        ensure!(
            o11 == 100,
            "{mode}: the online server logged {o11} of the 100 curl requests"
        );
        ensure!(
            t11 == 0,
            "{mode}: the skipped client reached the target {t11} times\n{}",
            summary(&log)
        );
        exact(&format!("{mode}: the other client"), o10 as u64, t10 as u64)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))?;
        ensure!(
            summary_counter(&log, counter) > 0,
            "{mode}: {counter} should count the skipped client's segments\n{}",
            summary(&log)
        );
    }
    Ok(())
}

/// `--max-session-rate 20` against short connections made faster than
/// that (one request each): no second of the target's log holds more than
/// the cap (plus a little for delivery jitter: the cap applies when
/// tcpcopy sees the SYN), every connection is either replayed or counted
/// as skipped, and every replayed one's request arrives once.
pub fn max_session_rate_caps_new_sessions() -> Result<()> {
    const CAP: usize = 20;
    let mut args = TAP.to_vec();
    args.extend(["--max-session-rate", "20"]);
    let r = Replay::start("rate-cap", &args)?;
    replay::reset_logs()?;
    let took = curl_loop(lab::CLIENT_IP, 150, 2)?;
    let online = replay::online_served();
    let (target, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
    let log = r.stop()?;
    let created = summary_counter(&log, "sessions_created");
    let skipped = summary_counter(&log, "sessions_skipped_rate_limit");
    let secs = took.as_secs_f64();
    let mut times: Vec<f64> = served("target-nginx-access.log")
        .iter()
        .map(|s| s.at)
        .collect();
    times.sort_by(f64::total_cmp);
    let busiest = times
        .iter()
        .map(|&t| times.iter().filter(|&&u| u >= t && u < t + 1.0).count())
        .max()
        .unwrap_or(0);
    println!(
        "    {online} connections in {secs:.1} s ({:.0}/s): {created} replayed, {skipped} skipped; target {target}, busiest second {busiest}",
        online as f64 / secs
    );
    ensure!(
        online as f64 / secs > 2.0 * CAP as f64,
        "the load ({online} in {secs:.1} s) should be well above the cap"
    );
    ensure!(
        created + skipped == online,
        "every connection is replayed or skipped: {created} + {skipped} != {online}\n{}",
        summary(&log)
    );
    ensure!(
        target == created,
        "every replayed session's request once: target {target}, sessions {created}\n{}",
        in_words(&log)
    );
    ensure!(
        busiest <= CAP + 2,
        "a second of the target's log holds {busiest} sessions (cap {CAP})"
    );
    ensure!(
        created as usize <= CAP * (secs.ceil() as usize + 1) && created as usize >= CAP,
        "{created} sessions in {secs:.1} s at {CAP} a second"
    );
    Ok(())
}

/// `-g` over 5 s of steady short connections: each replayed connection's
/// bucket is below the ramp's share when it was served (seconds since the
/// first connection + 1, one second of slack for when tcpcopy saw it), and
/// the share replayed rises from second to second.
pub fn ramp_rises_second_by_second() -> Result<()> {
    let mut args = TAP.to_vec();
    args.push("-g");
    let r = Replay::start("ramp", &args)?;
    let (online, target) = drive("wrk -t1 -c2 -d5s -H 'Connection: close' http://10.0.1.1/")?;
    let log = r.stop()?;
    let created = summary_counter(&log, "sessions_created");
    let skipped = summary_counter(&log, "sessions_skipped_ramp");
    let online_log = served("online-nginx-access.log");
    let start = online_log.iter().map(|s| s.at).fold(f64::MAX, f64::min);
    let mut per_second = [0u64; 6];
    let mut online_per_second = [0u64; 6];
    for s in &online_log {
        online_per_second[((s.at - start) as usize).min(5)] += 1;
    }
    for s in served("target-nginx-access.log") {
        let second = (s.at - start).max(0.0) as usize;
        per_second[second.min(5)] += 1;
        ensure!(
            (bucket(&s.addr, s.port) as usize) < second + 2,
            "{}:{} (bucket {}) replayed in second {second}: above the ramp",
            s.addr,
            s.port,
            bucket(&s.addr, s.port)
        );
    }
    let share_of: Vec<f64> = per_second
        .iter()
        .zip(online_per_second)
        .map(|(t, o)| *t as f64 / o.max(1) as f64)
        .collect();
    let share: Vec<String> = share_of
        .iter()
        .map(|f| format!("{:.1}%", 100.0 * f))
        .collect();
    println!(
        "    online {online}, target {target}: replayed {created}, skipped {skipped}; share by second {share:?}"
    );
    ensure!(
        target <= created && created <= target + 2,
        "each replayed session's request once (wrk may open a connection it never uses): target {target}, sessions {created}\n{}",
        in_words(&log)
    );
    ensure!(
        created + skipped >= online,
        "every connection decided: {created} + {skipped} < {online}"
    );
    // The share, not the count: online's own rate varies second by second.
    ensure!(
        share_of[0] < share_of[2] && share_of[2] < share_of[4],
        "the share should rise: {share:?} ({per_second:?} requests)"
    );
    Ok(())
}

/// `-x 80-10.0.2.2:8080+10.0.2.2:8081`: every request reaches both target
/// nginx instances exactly once, keep-alive and short connections; the
/// summary counts each target's requests.
pub fn fan_out_to_two_targets() -> Result<()> {
    let args = [
        "-x",
        "80-10.0.2.2:8080+10.0.2.2:8081",
        "-i",
        "onl0",
        "--workers",
        "2",
    ];
    let r = Replay::start("fan-out", &args)?;
    let second = || lab::count_lines("target2-nginx-access.log");
    let mut online_total = 0;
    for (what, load) in [
        ("keep-alive", "wrk -t1 -c4 -d2s http://10.0.1.1/"),
        (
            "short",
            "wrk -t1 -c4 -d2s -H 'Connection: close' http://10.0.1.1/",
        ),
    ] {
        let (online, first) = drive(load)?;
        let (second_seen, _) = replay::settle(second);
        exact(&format!("{what}: target :8080"), online, first)?;
        exact(&format!("{what}: target :8081"), online, second_seen)?;
        online_total += online;
    }
    std::thread::sleep(Duration::from_millis(600));
    let m = replay::scrape(ONLINE, replay::TCPCOPY_METRICS)?;
    let n = crate::e2e::dashboard_metrics_exist(&[&m], |name| name.starts_with("tcpcopy_target_"))?;
    ensure!(n > 0, "the dashboard has per-target panels");
    for t in ["10.0.2.2:8080", "10.0.2.2:8081"] {
        let key = format!("tcpcopy_target_requests_total{{target=\"{t}\"}}");
        ensure!(
            m.get(&key).copied() == Some(online_total as f64),
            "{key}: {:?}, expected {online_total}",
            m.get(&key)
        );
    }
    let log = r.stop()?;
    for t in ["10.0.2.2:8080", "10.0.2.2:8081"] {
        let n = summary_counter(&log, &format!("target {t} requests"));
        ensure!(
            n == online_total,
            "the summary's requests for {t}: {n}, expected {online_total}\n{}",
            summary(&log)
        );
    }
    Ok(())
}
