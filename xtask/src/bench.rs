//! `cargo xtask bench`: the session engine micro-benchmark, intercept's
//! record rate (both in `bench/`), then replay fidelity and cost in the lab
//! with the real binaries: for AF_XDP (mirror box), tap and AF_PACKET
//! capture, wrk with 1, 10
//! and 50 keep-alive connections and 10 short-lived ones at saturation; the
//! target/online request ratio counted from the nginx logs, how long after
//! the load stopped the target saw its last request, and tcpcopy's CPU
//! seconds per replayed request (from /proc). Writes
//! `bench/results/replay.md`. Figures, never assertions.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use crate::{
    lab::{self, in_ns, ONLINE_IP},
    replay::{self, Replay},
    util,
};

pub fn bench() -> Result<()> {
    util::cargo(&["build", "--release"])?;
    util::cargo(&["run", "--release", "--package", "bench", "--", "engine"])?;
    util::require_root("the intercept and lab benchmarks")?;
    util::cargo(&["run", "--release", "--package", "bench", "--", "intercept"])?;
    replay_bench()
}

fn replay_bench() -> Result<()> {
    let _guard = lab::Guard;
    lab::down();
    lab::up()?;
    let loads: [(&str, String); 4] = [
        (
            "1 keep-alive",
            format!("wrk -t1 -c1 -d3s http://{ONLINE_IP}/"),
        ),
        (
            "10 keep-alive",
            format!("wrk -t2 -c10 -d3s http://{ONLINE_IP}/"),
        ),
        (
            "50 keep-alive",
            format!("wrk -t2 -c50 -d3s http://{ONLINE_IP}/"),
        ),
        (
            "10 short-lived",
            format!("wrk -t2 -c10 -d3s -H 'Connection: close' http://{ONLINE_IP}/"),
        ),
    ];
    let mut table = String::new();
    type Start = fn(&str) -> Result<Replay>;
    let modes: [(&str, Start); 3] = [
        ("xdp (mirror)", Replay::start_mirror),
        ("tap", |tag| {
            // The tap run also records what it captured, for the offline
            // measurement below.
            let rec = lab::run_dir().join("bench.pcapng").display().to_string();
            let mut args = replay::TAP_HTTP.to_vec();
            args.extend(["--record", rec.as_str()]);
            Replay::start(tag, &args)
        }),
        ("packet", |tag| Replay::start(tag, replay::PACKET_HTTP)),
    ];
    let mut live_rate = 0.0;
    let mut notes = String::new();
    for (mode, start) in modes {
        let r = start(&format!("bench-{}", mode.split(' ').next().unwrap_or(mode)))?;
        for (name, cmd) in &loads {
            replay::reset_logs()?;
            let cpu0 = r.tcpcopy.cpu_seconds();
            in_ns("client", &format!("{cmd} > /dev/null 2>&1"))?;
            let online = lab::count_lines("online-nginx-access.log");
            let (target, drain) = replay::wait_until_quiet(
                || lab::count_lines("target-nginx-access.log"),
                Duration::from_millis(1500),
                Duration::from_secs(30),
            );
            let cpu = r.tcpcopy.cpu_seconds() - cpu0;
            let line = format!(
                "| {mode} | {name} | {online} | {target} | {:.4} | {:.2} | {:.2} |",
                target as f64 / online.max(1) as f64,
                drain.as_secs_f64(),
                cpu * 1e6 / target.max(1) as f64
            );
            println!("{line}");
            writeln!(table, "{line}")?;
            if mode == "tap" && *name == "50 keep-alive" {
                live_rate = target as f64 / (3.0 + drain.as_secs_f64());
            }
        }
        let log = r.stop()?;
        let words = log
            .lines()
            .find(|l| l.contains("segments captured"))
            .unwrap_or("(no summary)");
        writeln!(notes, "- {mode}, all four loads: {words}")?;
    }
    let offline = offline_bench(live_rate)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = format!(
        "# Replay fidelity and cost in the lab\n\n\
         Real tcpcopy (2 workers) and intercept in the namespace lab (xdp: tcpcopy on the mirror \
         box, reading a 2-queue veth that tc feeds with a copy of every client frame; tap and \
         packet: tcpcopy on the online host), wrk for 3 s at saturation of \
         the online nginx; the same {cpus}-CPU machine also runs wrk, both nginx and intercept, so \
         the load is whatever wrk reaches with everything sharing it. `ratio` = target / online \
         requests, each counted from the server's own access log; `drain` = seconds from the end \
         of the load to the target's last request (upper bound: the log is polled every 100 ms); \
         `CPU µs/req` = tcpcopy's user+system CPU time over the run divided by replayed requests. \
         The baseline of each row is the packet-capture (AF_PACKET) row of the same load.\n\n\
         | capture | load | online | target | ratio | drain s | CPU µs/req |\n\
         |---|---|---:|---:|---:|---:|---:|\n{table}\n\
         tcpcopy's own summary of each run (where the segments went):\n\n{notes}\n{offline}"
    );
    let path = util::root().join("bench/results/replay.md");
    std::fs::write(&path, report)?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// Replay the file the tap run recorded (every load above, about 12 s of
/// traffic) with `--speed max`; compare its request rate with the live tap
/// replay of 50 keep-alive connections measured in the same run.
fn offline_bench(live_rate: f64) -> Result<String> {
    let file = lab::run_dir().join("bench.pcapng");
    let want = replay::requests_in(&file)?;
    let mut intercept = replay::start_intercept("bench-offline")?;
    replay::reset_logs()?;
    let f = file.display().to_string();
    let start = std::time::Instant::now();
    let log = replay::run_offline(
        "bench-offline",
        &["-x", "80-10.0.2.2:8080", "--offline", &f, "--speed", "max"],
        Duration::from_secs(300),
    )?;
    let wall = start.elapsed().as_secs_f64();
    intercept.stop()?;
    let target = lab::count_lines("target-nginx-access.log");
    let sessions: u64 = log
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("sessions_created")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let rate = target as f64 / wall;
    let line = format!(
        "| offline --speed max | {want} requests, {sessions} sessions in the file | {target} | {:.4} | {wall:.2} s in all | {:.0} req/s, {:.0} sessions/s; ratio to live tap 50 keep-alive ({live_rate:.0} req/s): {:.2} |",
        target as f64 / want.max(1) as f64,
        rate,
        sessions as f64 / wall,
        rate / live_rate.max(1.0),
    );
    println!("{line}");
    Ok(format!(
        "Offline: the file the tap run recorded with `--record` (all four loads), replayed with \
         `--speed max` (paced only by the target's answers); `ratio` = target requests / GET \
         requests in the file (tcpdump's count); the time includes start-up and drain.\n\n\
         | replay | file | target | ratio | time | rate |\n|---|---|---:|---:|---:|---|\n{line}\n"
    ))
}
