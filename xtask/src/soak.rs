//! `cargo xtask bench --soak MINUTES`: a long run of the live replay (tap
//! capture, wrk -c10 in 20 s rounds at the online nginx) that records,
//! after every round, the target/online ratio and tcpcopy's memory and
//! session gauges. Writes `bench/results/SOAK.md`, `soak.csv` and
//! `soak.svg`: memory should stay flat and every round should be exact.

use std::{fmt::Write as _, time::Instant};

use anyhow::Result;

use crate::{
    lab::{self, in_ns, CLIENT, ONLINE, ONLINE_IP},
    replay::{self, Replay},
    util,
};

pub fn soak(minutes: u64) -> Result<()> {
    util::cargo(&["build", "--release"])?;
    util::require_root("the soak run")?;
    let _guard = lab::Guard;
    lab::down();
    lab::up()?;
    let r = Replay::start("soak", replay::TAP_HTTP)?;
    let end = Instant::now() + std::time::Duration::from_secs(minutes * 60);
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut round = 0;
    let mut exact = 0;
    let (mut first_rss, mut last_rss) = (0.0, 0.0);
    while Instant::now() < end {
        round += 1;
        replay::reset_logs()?;
        in_ns(
            CLIENT,
            &format!("wrk -t2 -c10 -d20s http://{ONLINE_IP}/ > /dev/null 2>&1"),
        )?;
        let (target, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
        let online = replay::online_served();
        let m = replay::scrape(ONLINE, replay::TCPCOPY_METRICS)?;
        let gauge = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let rss = replay::proc_mib(r.tcpcopy.pid(), "VmRSS");
        if round == 1 {
            first_rss = rss;
        }
        last_rss = rss;
        if online == target {
            exact += 1;
        }
        let minute = start.elapsed().as_secs_f64() / 60.0;
        let line = format!(
            "| {round} | {minute:.1} | {online} | {target} | {:.4} | {rss:.1} | {} | {} |",
            target as f64 / online.max(1) as f64,
            gauge("tcpcopy_active_sessions"),
            gauge("tcpcopy_buffered_segments"),
        );
        println!("{line}");
        writeln!(table, "{line}")?;
        rows.push(format!("{round},{minute:.2},{online},{target},{rss:.2}"));
    }
    let log = r.stop()?;
    let words = log
        .lines()
        .find(|l| l.contains("segments captured"))
        .unwrap_or("(no summary)")
        .to_string();
    let dir = util::root().join("bench/results");
    std::fs::write(
        dir.join("soak.csv"),
        format!("round,minute,online,target,rss_mib\n{}\n", rows.join("\n")),
    )?;
    util::cargo(&["run", "--release", "--package", "bench", "--", "soak-chart"])?;
    let report = format!(
        "# Soak run\n\n{minutes} minutes of live tap replay, wrk -c10 in 20 s rounds; after each \
         round the target/online ratio (servers' own logs) and tcpcopy's resident memory and \
         gauges. {exact} of {round} rounds exact; memory {first_rss:.1} MiB after the first \
         round, {last_rss:.1} MiB after the last.\n\n\
         | round | minute | online | target | ratio | RSS MiB | active sessions | buffered |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n{table}\n![memory](soak.svg)\n\n\
         tcpcopy's summary at the end: {words}\n"
    );
    let path = dir.join("SOAK.md");
    std::fs::write(&path, report)?;
    println!("soak: wrote {}", path.display());
    Ok(())
}
