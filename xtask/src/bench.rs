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
    let modes: [(&str, fn(&str) -> Result<Replay>); 3] = [
        ("xdp (mirror)", Replay::start_mirror),
        ("tap", |tag| Replay::start(tag, replay::TAP_HTTP)),
        ("packet", |tag| Replay::start(tag, replay::PACKET_HTTP)),
    ];
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
        }
        r.stop()?;
    }
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
         |---|---|---:|---:|---:|---:|---:|\n{table}"
    );
    let path = util::root().join("bench/results/replay.md");
    std::fs::write(&path, report)?;
    println!("bench: wrote {}", path.display());
    Ok(())
}
