//! `cargo xtask bench [--quick]`: every benchmark, one report.
//! - `bench engine` and `bench intercept` (in `bench/`): the session engine
//!   on one core, intercept's ring buffer → tcpcopy record rate;
//! - in the lab, with the real binaries, for AF_XDP (mirror box), tap and
//!   AF_PACKET capture: replay fidelity, drain time, CPU per request and
//!   peak memory under wrk (1, 10, 50 keep-alive and 10 short-lived
//!   connections); capture rate under a packet generator (`bench gen`,
//!   AF_XDP TX, rising rates); worker scaling on the 2-queue mirror; offline
//!   `--speed max` against the live rate.
//!
//! Writes `bench/results/REPORT.md` with the machine it ran on, CSV files of
//! the raw numbers and SVG charts (`bench charts`); `--quick` writes into
//! `bench/results/quick/` instead. The AF_PACKET capture
//! measured in the same run is the baseline of every comparison. Figures,
//! never assertions. `--quick` runs a reduced set in under 3 minutes.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context, Result};

use crate::{
    lab::{self, in_ns, CLIENT, MIRROR, ONLINE, ONLINE_IP},
    replay::{self, Replay, Start},
    util,
};

/// Where this run's report goes: `bench/results/`, or its `quick/`
/// subfolder for `--quick` (so a quick run never overwrites the full one).
fn results() -> PathBuf {
    let dir = util::root().join("bench/results");
    if std::env::var_os("BENCH_QUICK").is_some() {
        dir.join("quick")
    } else {
        dir
    }
}

pub(crate) fn csv(name: &str, header: &str, rows: &[String]) -> Result<()> {
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(results().join(name), text)?;
    Ok(())
}

pub fn bench(quick: bool) -> Result<()> {
    util::cargo(&["build", "--release"])?;
    if quick {
        // Read by results() here and by the bench binary (shorter runs).
        std::env::set_var("BENCH_QUICK", "1");
    }
    std::fs::create_dir_all(results())?;
    let out = results().display().to_string();
    let bench = |what: &str| {
        util::cargo_env(
            &["run", "--release", "--package", "bench", "--", what],
            &[("BENCH_OUT", out.as_str())],
        )
    };
    bench("engine")?;
    util::require_root("the intercept and lab benchmarks")?;
    bench("intercept")?;
    let _guard = lab::Guard;
    lab::down();
    lab::up()?;
    let (replay_md, live_rate) = replay_section(quick)?;
    let capture_md = capture_section(quick)?;
    let scaling_md = scaling_section(quick)?;
    let offline_md = offline_section(live_rate)?;
    let elephants_md = crate::elephants::bench_section(quick)?;
    let cost_md = if quick {
        "Not in `--quick`: see `cargo xtask bench --cost`.\n".to_string()
    } else {
        crate::cost::section(crate::cost::Compare::Alone)?
    };
    bench("charts")?;
    let read = |name: &str| std::fs::read_to_string(results().join(name)).unwrap_or_default();
    let report = format!(
        "# tcpcopy benchmark report\n\n{}\n\
         Everything below was measured in one run of `cargo xtask bench{}` on this machine; \
         the lab's clients, servers, intercept and tcpcopy all share its CPUs. Raw numbers: \
         the `.csv` files next to this report.\n\n\
         ## 1. Replay fidelity, drain time and cost\n\n{replay_md}\n\
         ## 2. Capture rate\n\n{capture_md}\n\
         ## 3. intercept\n\n{}\n\
         ## 4. Session engine\n\n{}\n\
         ## 5. Scaling\n\n{scaling_md}\n\
         ## 6. Offline replay\n\n{offline_md}\n\
         ## 7. What a replayed request costs\n\n{cost_md}\n\
         ## 8. Elephant flows and large values\n\n{elephants_md}\n\
         ## 9. Faults over a long run\n\n{}\n",
        machine(),
        if quick { " --quick" } else { "" },
        demote(&read("intercept.md")),
        demote(&read("engine.md")),
        soak_faults(),
    );
    let path = results().join("REPORT.md");
    std::fs::write(&path, report)?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// The latest `bench --soak MINUTES --faults` (a separate, long run; not
/// repeated here): its per-fault table.
fn soak_faults() -> String {
    let md = std::fs::read_to_string(results().join("SOAK-FAULTS.md")).unwrap_or_default();
    if md.is_empty() {
        return "*not run yet: `cargo xtask bench --soak 10 --faults`*\n".into();
    }
    let upto = md.find("\nEvery round:").unwrap_or(md.len());
    format!(
        "From the latest `cargo xtask bench --soak MINUTES --faults` (its own run, \
         `SOAK-FAULTS.md` has every round):\n\n{}",
        demote(&md[..upto])
    )
}

/// A sub-report's own `# title` becomes a plain line under our heading.
fn demote(md: &str) -> String {
    md.lines()
        .map(|l| {
            l.strip_prefix("# ")
                .map_or(l.to_string(), |t| format!("*{t}*"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = util::stdout("uname -r").trim().to_string();
    let mem = util::stdout("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo");
    let date = util::stdout("date -u '+%Y-%m-%d %H:%M UTC'")
        .trim()
        .to_string();
    format!("Machine: {cpus} × {cpu}, {mem}, Linux {kernel}; {date}.\n")
}

/// The three capture modes; packet (AF_PACKET) is the baseline. With
/// `record`, the tap run also records what it captured, for the offline
/// section.
fn modes(record: bool) -> [(&'static str, &'static str, Start); 3] {
    let tap: Start = if record {
        |tag| {
            let rec = lab::run_dir().join("bench.pcapng").display().to_string();
            let mut args = replay::TAP_HTTP.to_vec();
            args.extend(["--record", rec.as_str()]);
            Replay::start(tag, &args)
        }
    } else {
        |tag| Replay::start(tag, replay::TAP_HTTP)
    };
    [
        ("packet", ONLINE, |tag| {
            Replay::start(tag, replay::PACKET_HTTP)
        }),
        ("tap", ONLINE, tap),
        ("xdp", MIRROR, Replay::start_mirror),
    ]
}

fn replay_section(quick: bool) -> Result<(String, f64)> {
    let secs = if quick { 2 } else { 3 };
    let mut loads: Vec<(&str, String)> = vec![
        (
            "10 keep-alive",
            format!("wrk -t2 -c10 -d{secs}s http://{ONLINE_IP}/"),
        ),
        (
            "10 short-lived",
            format!("wrk -t2 -c10 -d{secs}s -H 'Connection: close' http://{ONLINE_IP}/"),
        ),
    ];
    if !quick {
        loads.insert(
            0,
            (
                "1 keep-alive",
                format!("wrk -t1 -c1 -d{secs}s http://{ONLINE_IP}/"),
            ),
        );
        loads.insert(
            2,
            (
                "50 keep-alive",
                format!("wrk -t2 -c50 -d{secs}s http://{ONLINE_IP}/"),
            ),
        );
    }
    let mut table = String::new();
    let mut rows = Vec::new();
    let mut notes = String::new();
    let mut live_rate = 0.0;
    let mut baseline_cpu = std::collections::HashMap::new();
    for (mode, _, start) in modes(true) {
        let r = start(&format!("bench-{mode}"))?;
        for (name, cmd) in &loads {
            replay::reset_logs()?;
            let cpu0 = r.tcpcopy.cpu_seconds();
            in_ns(CLIENT, &format!("{cmd} > /dev/null 2>&1"))?;
            let (target, drain) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
            let online = replay::online_served();
            let cpu_us = (r.tcpcopy.cpu_seconds() - cpu0) * 1e6 / target.max(1) as f64;
            if mode == "packet" {
                baseline_cpu.insert(*name, cpu_us);
            }
            let vs = cpu_us / baseline_cpu.get(name).copied().unwrap_or(cpu_us).max(1e-9);
            let ratio = target as f64 / online.max(1) as f64;
            let line = format!(
                "| {mode} | {name} | {online} | {target} | {ratio:.4} | {:.2} | {cpu_us:.1} | {vs:.2} |",
                drain.as_secs_f64()
            );
            println!("{line}");
            writeln!(table, "{line}")?;
            rows.push(format!(
                "{mode},{name},{online},{target},{ratio:.6},{:.3},{cpu_us:.2}",
                drain.as_secs_f64()
            ));
            if mode == "tap" && *name == "10 keep-alive" {
                live_rate = target as f64 / (secs as f64 + drain.as_secs_f64());
            }
        }
        let rss = replay::proc_mib(r.tcpcopy.pid(), "VmHWM");
        let log = r.stop()?;
        let words = log
            .lines()
            .find(|l| l.contains("segments captured"))
            .unwrap_or("(no summary)");
        writeln!(notes, "- {mode}: peak RSS {rss:.0} MiB; {words}")?;
    }
    csv(
        "replay.csv",
        "mode,load,online,target,ratio,drain_s,cpu_us_per_request",
        &rows,
    )?;
    Ok((
        format!(
            "wrk for {secs} s at saturation of the online nginx; tcpcopy with 2 workers (xdp: on \
             the mirror box, one worker per queue of its 2-queue port; tap and packet: on the \
             online host). `ratio` = target / online requests, each from the server's own \
             access log; `drain` = seconds from the end of the load to the target's last \
             request; `CPU` = tcpcopy's user+system time per replayed request; `vs packet` = \
             that CPU cost over the packet (AF_PACKET) baseline's for the same load.\n\n\
             | capture | load | online | target | ratio | drain s | CPU µs/req | vs packet |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n{table}\n\
             ![ratio](replay_ratio.svg)\n\n![CPU per request](replay_cpu.svg)\n\n\
             tcpcopy's own summary of each run, and its peak memory:\n\n{notes}"
        ),
        live_rate,
    ))
}

/// Segments the running tcpcopy has taken in (engine `captured`).
fn captured(ns: &str) -> Result<f64> {
    let m = replay::scrape(ns, replay::TCPCOPY_METRICS)?;
    m.get("tcpcopy_engine_segments_total{counter=\"captured\"}")
        .copied()
        .context("no captured counter")
}

/// Offer `rate` packets/s for `secs` from the client; returns the packets
/// sent and the seconds the generator took to send them.
fn generate(rate: u64, secs: f64) -> Result<(u64, f64)> {
    let bin = util::root().join("target/release/bench");
    let out = util::output(&format!(
        "ip netns exec {CLIENT} {} gen cli0 10.0.1.10 {ONLINE_IP} {rate} {secs}",
        bin.display()
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (n, rest) = l.strip_prefix("sent ")?.split_once(" in ")?;
            Some((n.parse().ok()?, rest.trim_end_matches(" s").parse().ok()?))
        })
        .with_context(|| {
            format!(
                "bench gen said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Frames received by the online host's client-facing port.
fn online_port_rx() -> Result<u64> {
    util::stdout(&format!(
        "ip netns exec {ONLINE} cat /sys/class/net/onl0/statistics/rx_packets"
    ))
    .trim()
    .parse()
    .context("onl0 rx_packets")
}

/// tcpcopy's `captured` once it has stopped moving (its metrics lag the
/// workers by up to half a second).
fn captured_settled(ns: &str) -> Result<f64> {
    let mut last = captured(ns)?;
    let start = std::time::Instant::now();
    let mut still = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(150));
        let now = captured(ns)?;
        if now != last {
            last = now;
            still = std::time::Instant::now();
        } else if still.elapsed() >= Duration::from_millis(900) {
            break;
        }
    }
    Ok(last)
}

struct Step {
    offered_rate: f64,
    loss: f64,
}

/// One capture mode under rising generator rates.
fn capture_curve(
    mode: &str,
    ns: &str,
    start: Start,
    rates: &[u64],
    secs: f64,
    rows: &mut Vec<String>,
) -> Result<Vec<Step>> {
    let r = start(&format!("capture-{mode}"))?;
    let mut steps = Vec::new();
    for &rate in rates {
        let c0 = captured_settled(ns)?;
        let rx0 = online_port_rx()?;
        let (_, took) = generate(rate, secs)?;
        let got = captured_settled(ns)? - c0;
        // What reached the online port (veth drops what the generator
        // pushes beyond that; the mirror gets a copy of exactly this).
        let offered = (online_port_rx()? - rx0) as f64;
        let offered_rate = offered / took.max(1e-3);
        let loss = (1.0 - got / offered.max(1.0)).max(0.0);
        println!(
            "capture {mode}: asked {rate}/s, arrived {offered} ({offered_rate:.0}/s), captured {got}, loss {:.4}%",
            loss * 100.0
        );
        rows.push(format!(
            "{mode},{rate},{offered},{got},{loss:.6},{offered_rate:.0}"
        ));
        steps.push(Step { offered_rate, loss });
    }
    r.stop()?;
    Ok(steps)
}

fn capture_section(quick: bool) -> Result<String> {
    let rates: &[u64] = if quick {
        &[100_000, 400_000]
    } else {
        &[50_000, 100_000, 200_000, 300_000, 400_000, 600_000, 800_000]
    };
    let secs = if quick { 1.0 } else { 2.0 };
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut baseline = 0.0;
    for (mode, ns, start) in modes(false) {
        let steps = capture_curve(mode, ns, start, rates, secs, &mut rows)?;
        let best = steps
            .iter()
            .filter(|s| s.loss < 0.001)
            .map(|s| s.offered_rate)
            .fold(0.0, f64::max);
        if mode == "packet" {
            baseline = best;
        }
        let worst = steps.last().map_or(0.0, |s| s.loss);
        writeln!(
            table,
            "| {mode} | {:.0} | {:.2} | {:.2}% |",
            best,
            best / baseline.max(1.0),
            worst * 100.0
        )?;
    }
    csv(
        "capture.csv",
        "mode,asked_pps,arrived,captured,loss,offered_pps",
        &rows,
    )?;
    Ok(format!(
        "`bench gen` (AF_XDP TX on the client's port) offers small TCP segments (pure ACKs from \
         4096 client ports) to the online host at rising rates, {secs} s each. Offered = frames \
         the online port received (its rx_packets; the mirror port gets a copy of each); \
         captured = what tcpcopy's engines took in, from its metrics. The generator shares the \
         CPUs with everything else, so the top rates are what it reached, not what was \
         asked.\n\n\
         | capture | highest rate with < 0.1% loss (pps) | vs packet | loss at the top rate |\n\
         |---|---:|---:|---:|\n{table}\n\
         Where a mode lost nothing at any step, its figure is the rate the generator reached \
         in that run, not the mode's limit.\n\n![capture loss](capture_loss.svg)\n"
    ))
}

/// A counter's value in tcpcopy's exit summary (0 when it is not there).
fn summary_value(log: &str, name: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .find_map(|rest| rest.trim().parse().ok())
        .unwrap_or(0)
}

/// What tcpcopy's summary in words says it lost ("none lost", or the
/// count and its reasons).
fn losses_in_words(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("segments captured"))
        .and_then(|l| l.split_once("; "))
        .map_or("(no summary)".into(), |(_, lost)| {
            lost.trim_end_matches('.').to_string()
        })
}

fn scaling_section(quick: bool) -> Result<String> {
    let (rate, secs) = if quick {
        (400_000, 1.0)
    } else {
        (800_000, 2.0)
    };
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut one = 0.0;
    for workers in [1u32, 2] {
        let r = Replay::start_mirror_with(
            &format!("scale-{workers}"),
            &["--workers", &workers.to_string()],
        )?;
        let c0 = captured_settled(MIRROR)?;
        let rx0 = online_port_rx()?;
        let (_, took) = generate(rate, secs)?;
        let got = captured_settled(MIRROR)? - c0;
        let sent = online_port_rx()? - rx0;
        let log = r.stop()?;
        // Captured per second of sending (the workers may finish later).
        let pps = got / took.max(1e-3);
        if workers == 1 {
            one = pps;
        }
        let steered = summary_value(&log, "steered_to_owner");
        let losses = losses_in_words(&log);
        println!("scaling: {workers} worker(s): {pps:.0} captured/s of {sent} sent, {steered} steered; {losses}");
        rows.push(format!("{workers},{sent},{got},{pps:.0},{steered}"));
        writeln!(
            table,
            "| {workers} | {sent} | {got} | {pps:.0} | {:.2} | {:.2}% | {losses} |",
            pps / one.max(1.0),
            100.0 * steered as f64 / got.max(1.0)
        )?;
    }
    csv(
        "scaling.csv",
        "workers,sent,captured,captured_pps,steered",
        &rows,
    )?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(format!(
        "AF_XDP capture on the mirror box's 2-queue port, 1 and 2 workers, under the generator \
         asked for {rate} pps for {secs} s (`offered` = frames the online port received, each \
         mirrored). This machine has {cpus} CPUs for the generator, the \
         kernel's copy-mode AF_XDP and the workers together, so the ratio says more about CPU \
         contention than about tcpcopy; a multi-core box is needed for a real scaling curve.\n\n\
         `steered` = captured segments one worker read and handed to the worker owning \
         the flow (a worker owns the flows of its RX queues, so only a flow that moved \
         queues is handed over); losses are tcpcopy's own, by reason.\n\n\
         | workers | offered | captured | captured/s | vs 1 worker | steered | losses |\n\
         |---:|---:|---:|---:|---:|---:|---|\n{table}\n\
         ![scaling](scaling.svg)\n"
    ))
}

/// Replay the file the tap run recorded (every load of section 1) with
/// `--speed max`; compare its request rate with the live tap replay of 10
/// keep-alive connections measured in the same run.
fn offline_section(live_rate: f64) -> Result<String> {
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
    csv(
        "offline.csv",
        "requests_in_file,sessions,target,seconds,requests_per_s,live_requests_per_s",
        &[format!(
            "{want},{sessions},{target},{wall:.3},{rate:.0},{live_rate:.0}"
        )],
    )?;
    Ok(format!(
        "The file the tap run recorded with `--record` (every load of section 1), replayed with \
         `--speed max` (paced only by the target's answers). Baseline: the live tap replay of \
         10 keep-alive connections in section 1.\n\n\
         | requests in file | sessions | target saw | ratio | time (start-up and drain included) | requests/s | sessions/s | vs live |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {want} | {sessions} | {target} | {:.4} | {wall:.2} s | {rate:.0} | {:.0} | {:.2} |\n",
        target as f64 / want.max(1) as f64,
        sessions as f64 / wall,
        rate / live_rate.max(1.0),
    ))
}
