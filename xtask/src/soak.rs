//! `cargo xtask bench --soak MINUTES [--faults]`: a long run of the live
//! replay (tap capture, wrk -c10 in 20 s rounds at the online nginx) that
//! records, after every round, the target/online ratio and tcpcopy's
//! memory and session gauges. Writes `bench/results/SOAK.md`, `soak.csv`
//! and `soak.svg`: memory should stay flat and every round should be exact.
//!
//! With `--faults`, one round a minute has a fault injected 5 s into it,
//! each fault in turn (intercept restarted, control link down, target
//! restarted, target link down, online link down, tcpcopy restarted), and
//! the report (`SOAK-FAULTS.md`, `soak-faults.csv`) gives per fault the
//! requests lost, the time the replay took to catch up, and memory.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    lab::{self, in_ns, ASSISTANT_CTL_IP, CLIENT, ONLINE, ONLINE_IP},
    replay::{self, access_log, now_secs, Replay},
    util,
};

/// tcpcopy's arguments in the soak: tap capture, and `-L` so that it
/// lives through intercept's restarts.
const SOAK_ARGS: &[&str] = &[
    "-x",
    "80-10.0.2.2:8080",
    "-i",
    "onl0",
    "--workers",
    "2",
    "-L",
];

const ROUND_SECS: u64 = 20;
/// A fault starts this long into its round.
const FAULT_AT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Fault {
    InterceptRestart,
    ControlLinkDown,
    TargetRestart,
    TargetLinkDown,
    OnlineLinkDown,
    TcpcopyRestart,
}

const FAULTS: [Fault; 6] = [
    Fault::InterceptRestart,
    Fault::ControlLinkDown,
    Fault::TargetRestart,
    Fault::TargetLinkDown,
    Fault::OnlineLinkDown,
    Fault::TcpcopyRestart,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::InterceptRestart => "intercept killed, back 2 s later",
            Fault::ControlLinkDown => "control link down 2 s",
            Fault::TargetRestart => "target nginx restarted (down 300 ms)",
            Fault::TargetLinkDown => "link to the target down 1 s",
            Fault::OnlineLinkDown => "online link down 1 s",
            Fault::TcpcopyRestart => "tcpcopy killed, started again 1 s later",
        }
    }

    /// Do it; returns when it began and ended (wall-clock seconds).
    fn inject(self, r: &mut Replay, tag: &str) -> Result<(f64, f64)> {
        let begin = now_secs();
        let link_down = |ns: &str, link: &str, down: Duration| -> Result<()> {
            in_ns(ns, &format!("ip link set {link} down"))?;
            std::thread::sleep(down);
            in_ns(ns, &format!("ip link set {link} up"))?;
            lab::restore_routes()
        };
        match self {
            Fault::InterceptRestart => {
                r.intercept.kill();
                std::thread::sleep(Duration::from_secs(2));
                r.intercept = replay::start_intercept(tag)?;
            }
            Fault::ControlLinkDown => link_down(ONLINE, "onl2", Duration::from_secs(2))?,
            Fault::TargetRestart => lab::restart_target_nginx()?,
            Fault::TargetLinkDown => link_down(ONLINE, "onl1", Duration::from_secs(1))?,
            Fault::OnlineLinkDown => link_down(ONLINE, "onl0", Duration::from_secs(1))?,
            Fault::TcpcopyRestart => {
                if let Some(held) = replay::tcpcopy_backlog() {
                    println!("    the killed tcpcopy held {held} captured segments unsent");
                }
                r.tcpcopy.kill();
                std::thread::sleep(Duration::from_secs(1));
                r.tcpcopy = replay::start_tcpcopy(tag, ONLINE, ASSISTANT_CTL_IP, SOAK_ARGS)?;
            }
        }
        Ok((begin, now_secs()))
    }
}

/// What a round with a fault cost.
struct FaultCost {
    fault: Fault,
    /// Requests online served while no tcpcopy ran (tcpcopy's restart).
    unseen: u64,
    /// Seconds from the fault's end until the target had served what
    /// online had by then (less what was lost); None if it never did.
    catch_up: Option<f64>,
}

fn fault_cost(fault: Fault, began: f64, ended: f64, lost: u64) -> FaultCost {
    let online = access_log("online-nginx-access.log");
    let mut target: Vec<f64> = access_log("target-nginx-access.log")
        .iter()
        .map(|l| l.at)
        .collect();
    target.sort_by(f64::total_cmp);
    let unseen = match fault {
        Fault::TcpcopyRestart => online
            .iter()
            .filter(|l| l.at >= began && l.at <= ended)
            .count() as u64,
        _ => 0,
    };
    let by_end = online.iter().filter(|l| l.at <= ended).count() as u64;
    let due = by_end.saturating_sub(lost.max(unseen)) as usize;
    let catch_up = match due {
        0 => Some(0.0),
        n => target.get(n - 1).map(|t| (t - ended).max(0.0)),
    };
    FaultCost {
        fault,
        unseen,
        catch_up,
    }
}

pub fn soak(minutes: u64, faults: bool) -> Result<()> {
    util::cargo(&["build", "--release"])?;
    util::require_root("the soak run")?;
    let _guard = lab::Guard;
    lab::down();
    lab::up()?;
    let mut r = Replay::start("soak", SOAK_ARGS)?;
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut round = 0;
    let mut exact = 0;
    let (mut first_rss, mut last_rss) = (0.0, 0.0);
    let mut injected = 0;
    let mut fault_rows = Vec::new();
    let mut fault_table = String::new();
    while Instant::now() < end {
        round += 1;
        replay::reset_logs()?;
        // One round a minute has a fault (the third of each minute).
        let fault = (faults && round % 3 == 0).then(|| FAULTS[injected % FAULTS.len()]);
        let load = format!("wrk -t2 -c10 -d{ROUND_SECS}s http://{ONLINE_IP}/ > /dev/null 2>&1");
        let client = std::thread::spawn(move || in_ns(CLIENT, &load));
        let window = match fault {
            Some(f) => {
                injected += 1;
                std::thread::sleep(FAULT_AT);
                Some(f.inject(&mut r, &format!("soak-{round}"))?)
            }
            None => None,
        };
        client
            .join()
            .map_err(|_| anyhow::anyhow!("load thread"))??;
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
            "| {round} | {minute:.1} | {} | {online} | {target} | {:.4} | {rss:.1} | {} | {} |",
            fault.map_or("", Fault::name),
            target as f64 / online.max(1) as f64,
            gauge("tcpcopy_active_sessions"),
            gauge("tcpcopy_buffered_segments"),
        );
        println!("{line}");
        writeln!(table, "{line}")?;
        rows.push(format!("{round},{minute:.2},{online},{target},{rss:.2}"));
        if let (Some(f), Some((began, ended))) = (fault, window) {
            let lost = online.saturating_sub(target);
            let cost = fault_cost(f, began, ended, lost);
            let catch_up = cost
                .catch_up
                .map_or("never".to_string(), |s| format!("{s:.2}"));
            let line = format!(
                "| {} | {round} | {:.1} | {online} | {target} | {lost} | {} | {catch_up} | {rss:.1} |",
                cost.fault.name(),
                ended - began,
                cost.unseen,
            );
            println!("{line}");
            writeln!(fault_table, "{line}")?;
            fault_rows.push(format!(
                "{:?},{round},{:.2},{online},{target},{lost},{},{catch_up},{rss:.2}",
                cost.fault,
                ended - began,
                cost.unseen
            ));
        }
    }
    let log = r.stop()?;
    let words = crate::e2e::in_words(&log).to_string();
    let dir = util::root().join("bench/results");
    if faults {
        std::fs::write(
            dir.join("soak-faults.csv"),
            format!(
                "fault,round,fault_s,online,target,lost,unseen,catch_up_s,rss_mib\n{}\n",
                fault_rows.join("\n")
            ),
        )?;
        let report = format!(
            "# Soak run with faults\n\n{minutes} minutes of live tap replay (`-L`), wrk -c10 in \
             {ROUND_SECS} s rounds; one round a minute has a fault injected {} s into it, each \
             fault in turn. Per fault: the round's online and target requests (the servers' own \
             logs), the requests lost (online − target), the requests online served while no \
             tcpcopy ran (only for tcpcopy's own restart: lost by construction), how long after \
             the fault ended the target had served everything online had by then (less what was \
             lost), and tcpcopy's resident memory after the round. {exact} of {round} rounds \
             exact; memory {first_rss:.1} MiB after the first round, {last_rss:.1} MiB after \
             the last.\n\n\
             | fault | round | fault lasted s | online | target | lost | while no tcpcopy ran | caught up after s | RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n{fault_table}\n\
             Every round:\n\n\
             | round | minute | fault | online | target | ratio | RSS MiB | active sessions | buffered |\n\
             |---:|---:|---|---:|---:|---:|---:|---:|---:|\n{table}\n\
             tcpcopy's summary at the end (of the last tcpcopy started): {words}\n",
            FAULT_AT.as_secs()
        );
        let path = dir.join("SOAK-FAULTS.md");
        std::fs::write(&path, report)?;
        println!("soak: wrote {}", path.display());
        return Ok(());
    }
    std::fs::write(
        dir.join("soak.csv"),
        format!("round,minute,online,target,rss_mib\n{}\n", rows.join("\n")),
    )?;
    util::cargo(&["run", "--release", "--package", "bench", "--", "soak-chart"])?;
    let report = format!(
        "# Soak run\n\n{minutes} minutes of live tap replay, wrk -c10 in {ROUND_SECS} s rounds; \
         after each round the target/online ratio (servers' own logs) and tcpcopy's resident \
         memory and gauges. {exact} of {round} rounds exact; memory {first_rss:.1} MiB after the \
         first round, {last_rss:.1} MiB after the last.\n\n\
         | round | minute | fault | online | target | ratio | RSS MiB | active sessions | buffered |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|\n{table}\n![memory](soak.svg)\n\n\
         tcpcopy's summary at the end: {words}\n"
    );
    let path = dir.join("SOAK.md");
    std::fs::write(&path, report)?;
    println!("soak: wrote {}", path.display());
    Ok(())
}
