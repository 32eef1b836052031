//! `cargo xtask demo`: the main job on an embedded default. Brings the lab
//! up, starts intercept on the assistant and tcpcopy (XDP tap capture, two
//! workers) on the online host, drives wrk at the online nginx, waits until
//! the target stops receiving, prints what the servers themselves counted
//! next to tcpcopy's own summary, and takes the lab down (whatever happens).

use crate::{
    lab::{self, in_ns, CLIENT, ONLINE_IP},
    replay::{self, Replay},
};
use anyhow::Result;
use std::time::Duration;

pub fn demo(seconds: u32) -> Result<()> {
    crate::util::require_root("the demo")?;
    crate::setup::setup(false)?;
    crate::util::cargo(&["build", "--release"])?;
    println!("demo: bringing the lab up");
    let _guard = lab::Guard;
    lab::up()?;
    let args = replay::TAP_HTTP;
    println!(
        "demo: intercept on the assistant, tcpcopy {} on the online host",
        args.join(" ")
    );
    let replay = Replay::start("demo", args)?;
    replay::reset_logs()?;

    println!("demo: wrk -c10 for {seconds}s at http://{ONLINE_IP}/ from the client namespace");
    in_ns(
        CLIENT,
        &format!(
            "wrk -t2 -c10 -d{seconds}s http://{ONLINE_IP}/ > {}/wrk.txt 2>&1",
            lab::RUN_DIR
        ),
    )?;
    let (target, last_change) = replay::wait_until_quiet(
        &|| lab::count_lines("target-nginx-access.log"),
        Duration::from_secs(2),
        Duration::from_secs(20),
    );
    // The wait starts as the load stops: its last change is the drain time.
    let drain = last_change;
    let online = replay::online_served();
    let log = replay.stop()?;

    println!();
    println!("== summary ==");
    println!("requests served by online nginx (its access log): {online}");
    println!("requests served by target nginx (its access log): {target}");
    if online > 0 {
        println!(
            "replay ratio target/online: {:.4}; target's last request {:.2}s after the load stopped",
            target as f64 / online as f64,
            drain.as_secs_f64()
        );
    }
    println!();
    match log.find("tcpcopy summary") {
        Some(i) => println!(
            "{}",
            log[i..]
                .lines()
                .filter(|l| !l.contains(" INFO "))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        None => println!("(tcpcopy printed no summary)\n{log}"),
    }
    Ok(())
}
