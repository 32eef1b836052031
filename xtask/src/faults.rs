//! Fault tests that hold a replay to a bound computed from the fault
//! (#25): several intercepts with one of them down, and tcpcopy itself
//! restarted in the middle of a load. (The older fault tests live in
//! `e2e.rs`.)

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::{
    e2e::{exact, summary, summary_counter, TAP},
    lab::{self, in_ns, CLIENT, ONLINE, ONLINE_IP, TARGET},
    lab_client::LabClient,
    replay::{self, access_log, now_secs, Logged, Replay},
};

/// The second intercept's control port, link and metrics.
const SECOND_PORT: u16 = 36525;
const SECOND_IFACE: &str = "ast2";
const SECOND_METRICS: &str = "127.0.0.1:9103";
/// The client whose answers the second intercept sees.
const SECOND_CLIENT: &str = "10.0.1.11";

fn count_from(log: &[Logged], client: &str) -> u64 {
    log.iter().filter(|l| l.client == client).count() as u64
}

/// The target routes one client's answers through a second link, where a
/// second intercept listens (an assistant per path, as a deployment with
/// several intercepts has); removed when dropped.
struct SecondPath;

impl SecondPath {
    fn add() -> Result<SecondPath> {
        in_ns(
            TARGET,
            &format!("ip route replace {SECOND_CLIENT}/32 via 10.0.6.3"),
        )?;
        Ok(SecondPath)
    }
}

impl Drop for SecondPath {
    fn drop(&mut self) {
        let _ = in_ns(TARGET, &format!("ip route del {SECOND_CLIENT}/32"));
    }
}

/// Two intercepts (`-s A,B`): the target answers 10.0.1.10 through A and
/// 10.0.1.11 through B. B is killed 2 s into an 8 s load from both
/// clients and started again 3 s later. A's sessions are untouched: the
/// target goes on serving 10.0.1.10 all through B's outage (never a
/// second without one of its requests). B's sessions wait, and are
/// replayed once B is back: each client's requests reach the target
/// exactly.
pub fn one_of_two_intercepts_down_leaves_the_other_untouched() -> Result<()> {
    let _path = SecondPath::add()?;
    let mut second =
        replay::start_intercept_on("second", SECOND_IFACE, SECOND_PORT, SECOND_METRICS)?;
    let servers = format!(
        "{},{}:{SECOND_PORT}",
        lab::ASSISTANT_CTL_IP,
        lab::ASSISTANT_CTL_IP
    );
    let r = Replay::start_with_servers("two-intercepts", ONLINE, &servers, TAP)?;
    replay::reset_logs()?;
    // wrk from 10.0.1.10, keep-alive curl batches from 10.0.1.11, 8 s.
    let load = format!(
        "bash -c 'wrk -t1 -c4 -d8s http://{ONLINE_IP}/ > /dev/null 2>&1 & \
         end=$((SECONDS+8)); while [ $SECONDS -lt $end ]; do \
         curl -s -o /dev/null --interface {SECOND_CLIENT} \"http://{ONLINE_IP}/b[1-200]\"; done; wait'"
    );
    let client = std::thread::spawn(move || in_ns(CLIENT, &load));
    std::thread::sleep(Duration::from_secs(2));
    let down_at = now_secs();
    second.kill();
    std::thread::sleep(Duration::from_secs(3));
    let up_at = now_secs();
    let mut second =
        replay::start_intercept_on("second-2", SECOND_IFACE, SECOND_PORT, SECOND_METRICS)?;
    client
        .join()
        .map_err(|_| anyhow::anyhow!("load thread"))??;
    let (_, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
    replay::online_served();
    let log = r.stop()?;
    second.stop()?;
    let online = access_log("online-nginx-access.log");
    let target = access_log("target-nginx-access.log");
    let during = |log: &[Logged], client: &str| -> Vec<f64> {
        log.iter()
            .filter(|l| l.client == client && l.at >= down_at && l.at <= up_at)
            .map(|l| l.at)
            .collect()
    };
    let first_during = during(&target, lab::CLIENT_IP);
    let longest_gap = first_during
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
        .max(
            first_during
                .first()
                .map_or(up_at - down_at, |t| t - down_at),
        )
        .max(first_during.last().map_or(0.0, |t| up_at - t));
    println!(
        "    while B was down ({:.1} s): the target served 10.0.1.10 {} times (online {}), longest pause {longest_gap:.2} s; 10.0.1.11 {} times (online {})",
        up_at - down_at,
        first_during.len(),
        during(&online, lab::CLIENT_IP).len(),
        during(&target, SECOND_CLIENT).len(),
        during(&online, SECOND_CLIENT).len(),
    );
    println!("    {}", crate::e2e::in_words(&log));
    ensure!(
        longest_gap < 1.0,
        "the sessions intercept A serves stalled {longest_gap:.2} s while B was down\n{}",
        summary(&log)
    );
    for client in [lab::CLIENT_IP, SECOND_CLIENT] {
        exact(
            &format!("{client}, one of two intercepts down 3 s"),
            count_from(&online, client),
            count_from(&target, client),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))?;
    }
    Ok(())
}

/// tcpcopy SIGKILLed in the middle of a wrk load and started again 1 s
/// later: what came while no tcpcopy ran is lost, and nothing else. Beside
/// wrk, a lab client sends 100 requests on one keep-alive connection
/// before the kill (`/before`, replayed before it), 100 while no tcpcopy
/// runs (`/during`) and 100 after the new one is ready (`/after`, the
/// session picked up mid-stream at its next request): the target gets
/// exactly every `/before` and `/after` and no `/during`; wrk's own
/// requests, never more than online served.
pub fn tcpcopy_restart_loses_only_its_downtime() -> Result<()> {
    const EACH: usize = 100;
    let mut r = Replay::start("restart-1", TAP)?;
    replay::reset_logs()?;
    let load = format!("wrk -t1 -c4 -d6s http://{ONLINE_IP}/ > /dev/null 2>&1");
    let wrk = std::thread::spawn(move || in_ns(CLIENT, &load));
    let mut client = LabClient::spawn(&format!("{ONLINE_IP}:80"))?;
    let served = |phase: &str| {
        let needle = format!("\"GET /{phase} ");
        std::fs::read_to_string(lab::run_dir().join("target-nginx-access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..EACH {
        client.command("get /before")?;
    }
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while served("before") < EACH && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    r.tcpcopy.kill();
    for _ in 0..EACH {
        client.command("get /during")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    r.tcpcopy = replay::start_tcpcopy("restart-2", ONLINE, lab::ASSISTANT_CTL_IP, TAP)?;
    for _ in 0..EACH {
        client.command("get /after")?;
    }
    drop(client);
    wrk.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    let (target, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
    let online = replay::online_served();
    let log = r.stop()?;
    let (before, during, after) = (served("before"), served("during"), served("after"));
    println!(
        "    the target served /before {before}, /during {during}, /after {after} of {EACH} each; \
         all requests: online {online}, target {target}; the new tcpcopy picked up {} sessions mid-stream",
        summary_counter(&log, "syns_fabricated")
    );
    ensure!(
        (before, during, after) == (EACH, 0, EACH) && target <= online,
        "expected every /before and /after and no /during at the target\n{}",
        summary(&log)
    );
    Ok(())
}

/// The online host's client-facing link down 1 s in the middle of a
/// keep-alive load: the clients' retransmissions carry their requests
/// across, online serves them, and the replay is exact.
pub fn online_link_flap_mid_load_loses_nothing() -> Result<()> {
    let r = Replay::start("online-flap", TAP)?;
    link_flap_mid_load(r, ONLINE, "onl0", "the online link down 1 s")
}

/// The link from online to the target down 1 s in the middle of the load:
/// tcpcopy's segments toward the target are dropped while it is down, and
/// its retransmissions carry them across once it is up: exact.
pub fn target_link_flap_mid_load_loses_nothing() -> Result<()> {
    let r = Replay::start("target-flap", TAP)?;
    link_flap_mid_load(r, ONLINE, "onl1", "the link to the target down 1 s")
}

fn link_flap_mid_load(r: Replay, ns: &'static str, link: &'static str, what: &str) -> Result<()> {
    // Paced: while the link is down, and through the retransmission
    // backoff after it (some 3 s in all), a session gathers at most a
    // paced connection's requests, well inside its buffer on any host.
    ensure!(lab::paced_backlog(Duration::from_secs(6)) * 2 < lab::SESSION_BUFFER_SEGMENTS);
    replay::reset_logs()?;
    let load = format!("{} > /dev/null 2>&1", lab::paced_wrk(4, 6)?);
    let client = std::thread::spawn(move || in_ns(CLIENT, &load));
    std::thread::sleep(Duration::from_secs(2));
    let flapped = in_ns(ns, &format!("ip link set {link} down")).and_then(|_| {
        std::thread::sleep(Duration::from_secs(1));
        in_ns(ns, &format!("ip link set {link} up"))
    });
    // A link going down takes the routes through it along.
    let restored = lab::restore_routes();
    client
        .join()
        .map_err(|_| anyhow::anyhow!("load thread"))??;
    flapped?;
    restored?;
    let (target, _) = replay::settle(|| lab::count_lines("target-nginx-access.log"));
    let online = replay::online_served();
    let log = r.stop()?;
    println!("    {}", crate::e2e::in_words(&log));
    exact(what, online, target).map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))
}
