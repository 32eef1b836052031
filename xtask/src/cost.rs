//! `cargo xtask bench --cost [--baseline REV]`: what a replayed request
//! costs. For each capture mode (packet, tap, xdp) and load (keep-alive 1,
//! 10 and 50 connections, short connections 10 and 100), wrk at the online
//! nginx, and per request the target served: CPU of tcpcopy and of
//! intercept (user + system, all threads, from /proc), their system calls
//! (`perf stat -e raw_syscalls:sys_enter`), and the packets tcpcopy sent;
//! then each tool's CPU (every thread's schedstat, in nanoseconds) and
//! wake-ups over a few idle seconds. With `--baseline REV`,
//! every cell also runs with the binaries of commit REV (built in
//! `target/tcl-baseline/`), alternating with this build's, so every figure
//! has its before and after from the same run. With `--verdict`, every
//! cell runs with `--verdict` off and on instead (every capture mode),
//! into `COST-VERDICT.md`. Writes `bench/results/COST.md` and `cost.csv`; the full
//! `cargo xtask bench` includes the same section without a baseline.
//! Figures, never assertions.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    lab::{self, in_ns, CLIENT, MIRROR, ONLINE, ONLINE_IP},
    replay::{self, Replay},
    util,
};

/// The loads, by name and wrk arguments (3 s each).
const LOADS: &[(&str, &str)] = &[
    ("1 keep-alive", "-t1 -c1"),
    ("10 keep-alive", "-t2 -c10"),
    ("50 keep-alive", "-t2 -c50"),
    ("10 short", "-t2 -c10 -H 'Connection: close'"),
    ("100 short", "-t2 -c100 -H 'Connection: close'"),
];
const LOAD_SECONDS: u32 = 3;
const IDLE_SECONDS: u64 = 10;
/// Workers of every run: 2 for packet and tap, and one per queue of the
/// 2-queue mirror port for xdp.
const WORKERS: f64 = 2.0;

/// One cell: a load in a mode with one build (summed over its runs).
#[derive(Default)]
struct Cell {
    requests: u64,
    online: u64,
    /// CPU seconds.
    tcpcopy_cpu: f64,
    intercept_cpu: f64,
    tcpcopy_syscalls: f64,
    intercept_syscalls: f64,
    packets: f64,
}

impl Cell {
    fn add(&mut self, o: &Cell) {
        self.requests += o.requests;
        self.online += o.online;
        self.tcpcopy_cpu += o.tcpcopy_cpu;
        self.intercept_cpu += o.intercept_cpu;
        self.tcpcopy_syscalls += o.tcpcopy_syscalls;
        self.intercept_syscalls += o.intercept_syscalls;
        self.packets += o.packets;
    }
}

/// Runs of each cell per build when there is a baseline.
const REPEATS: usize = 2;

/// Idle CPU, percent of one CPU.
struct Idle {
    /// tcpcopy's whole process, percent of a CPU, divided by its workers.
    per_worker: f64,
    /// Times tcpcopy's threads were scheduled in, per second.
    tcpcopy_wakes: f64,
    intercept: f64,
    intercept_wakes: f64,
}

/// What one column of the comparison runs: a build (None: this one) and
/// tcpcopy arguments added to the mode's.
struct Variant {
    label: String,
    bins: Option<PathBuf>,
    extra: &'static [&'static str],
}

/// What is compared: this build alone, against a baseline commit, or
/// with `--verdict` off and on.
pub enum Compare<'a> {
    Alone,
    Baseline(&'a str),
    Verdict,
}

/// The section's markdown (and `cost.csv` beside the report).
pub fn section(compare: Compare) -> Result<String> {
    let builds: Vec<Variant> = match compare {
        Compare::Baseline(rev) => vec![
            Variant {
                label: format!("before ({rev})"),
                bins: Some(util::build_commit(
                    rev,
                    "tcpcopy",
                    &["tcpcopy", "intercept"],
                    &[],
                )?),
                extra: &[],
            },
            Variant {
                label: "after".into(),
                bins: None,
                extra: &[],
            },
        ],
        Compare::Verdict => vec![
            Variant {
                label: "verdict off".into(),
                bins: None,
                extra: &[],
            },
            Variant {
                label: "--verdict".into(),
                bins: None,
                extra: &["--verdict"],
            },
        ],
        Compare::Alone => vec![Variant {
            label: "this build".into(),
            bins: None,
            extra: &[],
        }],
    };
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut idle_table = String::new();
    // With a baseline, each cell runs REPEATS times per build in the order
    // A B B A ..., each run with freshly started tools, and the mean is
    // reported: the builds see the same conditions, whatever drifts.
    let repeats = if builds.len() > 1 { REPEATS } else { 1 };
    for (mode, _) in modes() {
        for (load, wrk) in LOADS {
            let mut sums: Vec<Cell> = builds.iter().map(|_| Cell::default()).collect();
            for rep in 0..repeats {
                for k in 0..builds.len() {
                    let b = if rep % 2 == 0 {
                        k
                    } else {
                        builds.len() - 1 - k
                    };
                    replay::use_binaries(builds[b].bins.clone());
                    let r = start(mode, builds[b].extra)?;
                    let c = measure(&r, mode, wrk)?;
                    r.stop()?;
                    sums[b].add(&c);
                }
            }
            for (Variant { label: build, .. }, c) in builds.iter().zip(&sums) {
                let per = |x: f64| x / c.requests.max(1) as f64;
                let us = |cpu: f64| cpu * 1e6 / c.requests.max(1) as f64;
                let line = format!(
                    "| {mode} | {load} | {build} | {}/{} | {:.1} | {:.1} | **{:.1}** | {:.2} | {:.2} | {:.2} |",
                    c.requests,
                    c.online,
                    us(c.tcpcopy_cpu),
                    us(c.intercept_cpu),
                    us(c.tcpcopy_cpu + c.intercept_cpu),
                    per(c.tcpcopy_syscalls),
                    per(c.intercept_syscalls),
                    per(c.packets),
                );
                println!("{line}");
                writeln!(table, "{line}")?;
                rows.push(format!(
                    "{mode},{load},{build},{},{},{:.2},{:.2},{:.3},{:.3},{:.3}",
                    c.online,
                    c.requests,
                    us(c.tcpcopy_cpu),
                    us(c.intercept_cpu),
                    per(c.tcpcopy_syscalls),
                    per(c.intercept_syscalls),
                    per(c.packets)
                ));
            }
        }
        for Variant {
            label: build,
            bins,
            extra,
        } in &builds
        {
            replay::use_binaries(bins.clone());
            let r = start(mode, extra)?;
            let idle = idle(&r, mode)?;
            r.stop()?;
            writeln!(
                idle_table,
                "| {mode} | {build} | {:.3}% | {:.0} | {:.3}% | {:.0} |",
                idle.per_worker, idle.tcpcopy_wakes, idle.intercept, idle.intercept_wakes
            )?;
        }
    }
    replay::use_binaries(None);
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("cost.csv"),
        format!(
            "mode,load,build,online,target,tcpcopy_us_per_req,intercept_us_per_req,tcpcopy_syscalls_per_req,intercept_syscalls_per_req,packets_per_req\n{}\n",
            rows.join("\n")
        ),
    )?;
    Ok(format!(
        "wrk for {LOAD_SECONDS} s at saturation of the online nginx; tcpcopy with 2 workers \
         (xdp: on the mirror box, one per queue), intercept on the assistant. Per request the \
         target served (`requests` = target/online, from the servers' access logs): CPU \
         (user + system, every thread) of each tool, their system calls, and the packets \
         tcpcopy sent to the target; with a baseline, each cell is {REPEATS} runs per \
         build, alternating (A B B A), with freshly started tools, and the figures are over \
         all of them. Everything shares this machine's CPUs, and on veth the \
         receiving stack runs inside the sender's system call: a tool's system time includes \
         part of the target's (tcpcopy) or tcpcopy's (intercept) TCP receive path.\n\n\
         | capture | load | build | requests | tcpcopy µs | intercept µs | together µs | tcpcopy syscalls | intercept syscalls | packets sent |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n{table}\n\
         Idle: {IDLE_SECONDS} s with no traffic and no sessions, a freshly started replay \
         after the loads: percent of one CPU (time on a CPU from every thread's schedstat, in \
         nanoseconds) and wake-ups per second (times its threads were scheduled in):\n\n\
         | capture | build | tcpcopy (whole process) per worker | tcpcopy wake-ups/s | intercept | intercept wake-ups/s |\n|---|---|---:|---:|---:|---:|\n{idle_table}"
    ))
}

/// `cargo xtask bench --cost`: the section alone, in `COST.md` (with
/// `--verdict`: off against on, in `COST-VERDICT.md`).
pub fn run(compare: Compare) -> Result<()> {
    util::cargo(&["build", "--release"])?;
    util::require_root("the cost benchmark")?;
    let _guard = lab::Guard;
    lab::up()?;
    let (file, title) = match compare {
        Compare::Verdict => (
            "COST-VERDICT.md",
            "What --verdict costs per replayed request",
        ),
        _ => ("COST.md", "What a replayed request costs"),
    };
    let md = section(compare)?;
    let path = results_dir().join(file);
    std::fs::write(&path, format!("# {title}\n\n{}\n{md}", machine_line()))?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

fn results_dir() -> PathBuf {
    util::root().join("bench/results")
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "Machine: {cpus} CPUs, Linux {}; {}.\n",
        util::stdout("uname -r").trim(),
        util::stdout("date -u '+%Y-%m-%d %H:%M UTC'").trim()
    )
}

fn modes() -> [(&'static str, &'static str); 3] {
    [("packet", ONLINE), ("tap", ONLINE), ("xdp", MIRROR)]
}

fn start(mode: &str, extra: &[&str]) -> Result<Replay> {
    let tag = format!("cost-{mode}");
    let with = |base: &[&'static str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    match mode {
        "packet" => Replay::start(&tag, &with(replay::PACKET_HTTP)),
        "tap" => Replay::start(&tag, &with(replay::TAP_HTTP)),
        _ => Replay::start_mirror_with(&tag, extra),
    }
}

fn ns_of(mode: &str) -> &'static str {
    if mode == "xdp" {
        MIRROR
    } else {
        ONLINE
    }
}

fn sent_packets(mode: &str) -> Result<f64> {
    let m = replay::scrape(ns_of(mode), replay::TCPCOPY_METRICS)?;
    m.get("tcpcopy_sent_packets_total")
        .copied()
        .context("no tcpcopy_sent_packets_total in tcpcopy's metrics")
}

fn measure(r: &Replay, mode: &str, wrk: &str) -> Result<Cell> {
    replay::reset_logs()?;
    let pids = (
        r.tcpcopy.pid().context("tcpcopy pid")?,
        r.intercept.pid().context("intercept pid")?,
    );
    let cpu0 = (r.tcpcopy.cpu_seconds(), r.intercept.cpu_seconds());
    let sent0 = sent_packets(mode)?;
    let perf = (Syscalls::count(pids.0)?, Syscalls::count(pids.1)?);
    in_ns(
        CLIENT,
        &format!("wrk {wrk} -d{LOAD_SECONDS}s http://{ONLINE_IP}/ > /dev/null 2>&1"),
    )?;
    let (requests, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
    let online = replay::online_served();
    let syscalls = (perf.0.finish()?, perf.1.finish()?);
    let cpu1 = (r.tcpcopy.cpu_seconds(), r.intercept.cpu_seconds());
    // The metrics lag the workers by up to 200 ms.
    std::thread::sleep(Duration::from_millis(300));
    let sent = sent_packets(mode)? - sent0;
    Ok(Cell {
        requests,
        online,
        tcpcopy_cpu: cpu1.0 - cpu0.0,
        intercept_cpu: cpu1.1 - cpu0.1,
        tcpcopy_syscalls: syscalls.0,
        intercept_syscalls: syscalls.1,
        packets: sent,
    })
}

fn idle(r: &Replay, mode: &str) -> Result<Idle> {
    // Idle means no sessions: let the last load's linger and go first.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let m = replay::scrape(ns_of(mode), replay::TCPCOPY_METRICS)?;
        if m.get("tcpcopy_active_sessions").copied().unwrap_or(0.0) == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    let t0 = (r.tcpcopy.run_time(), r.intercept.run_time());
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let t1 = (r.tcpcopy.run_time(), r.intercept.run_time());
    let secs = IDLE_SECONDS as f64;
    let (tcpcopy, tcpcopy_wakes) = t1.0.since(t0.0, secs);
    let (intercept, intercept_wakes) = t1.1.since(t0.1, secs);
    Ok(Idle {
        per_worker: tcpcopy / WORKERS,
        tcpcopy_wakes,
        intercept,
        intercept_wakes,
    })
}

/// `perf stat` counting one process's system calls (every thread).
struct Syscalls {
    child: Child,
    out: PathBuf,
}

impl Syscalls {
    fn count(pid: u32) -> Result<Syscalls> {
        let out = lab::run_dir().join(format!("perf-{pid}.txt"));
        let child = Command::new("perf")
            .args(["stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf stat (Debian linux-perf)")?;
        // perf attaches in a few ms; the load starts after this.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Syscalls { child, out })
    }

    fn finish(mut self) -> Result<f64> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next()?.trim().parse().ok())
            .with_context(|| format!("no count from perf stat: {text}"))
    }
}

impl Drop for Syscalls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
