//! Lab tests of elephant flows and large messages (#19): one bulk stream
//! replayed byte for byte, large redis values and HTTP bodies in every
//! capture mode, and a stream the target cannot take given up once, with
//! no storm of fabricated connections. The byte counts come from
//! `bench sink` servers on the online host and on the target.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};

use crate::{
    e2e::{drive, summary, summary_counter, TAP},
    lab::{self, in_ns, CLIENT, MIRROR, ONLINE, ONLINE_IP, TARGET, TARGET_IP},
    replay::{self, Replay},
};

/// The port of the bulk-stream sinks (in intercept's lab filter).
const BULK_PORT: u16 = 5201;

/// A `bench sink` in a namespace; killed (it is ours: its pid) when
/// dropped.
struct Sink {
    child: Child,
    file: PathBuf,
}

impl Sink {
    fn start(ns: &str, name: &str) -> Result<Sink> {
        let file = lab::run_dir().join(format!("sink-{name}.txt"));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(crate::util::root().join("target/release/bench"))
            .args(["sink", &BULK_PORT.to_string()])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bench sink")?;
        let sink = Sink { child, file };
        for _ in 0..50 {
            if sink.file.exists() {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("bench sink in {ns} did not start")
    }

    /// Bytes received over the connections that have ended.
    fn bytes(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tcpcopy arguments for the bulk stream (tap, two workers).
fn bulk_args() -> Vec<String> {
    [
        "-x",
        &format!("{BULK_PORT}-{TARGET_IP}:{BULK_PORT}"),
        "-i",
        "onl0",
        "--workers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One stream from the client: `bench send` at `bits_per_s` for `secs`.
fn send_stream(bits_per_s: f64, secs: f64) -> Result<()> {
    let bench = crate::util::root().join("target/release/bench");
    in_ns(
        CLIENT,
        &format!(
            "{} send {ONLINE_IP}:{BULK_PORT} {bits_per_s} {secs} > /dev/null",
            bench.display()
        ),
    )
}

/// The target sink's count once it has stopped changing.
fn target_bytes_settled(sink: &Sink) -> u64 {
    replay::wait_until_quiet(
        &|| sink.bytes(),
        Duration::from_millis(2000),
        Duration::from_secs(30),
    )
    .0
}

/// One bulk TCP stream, 64 KiB writes at 500 Mbit/s for 3 s (about
/// 130,000 segments), captured by tap: the target's sink receives every
/// byte the online one did, over one connection.
pub fn one_bulk_stream_exact() -> Result<()> {
    let online = Sink::start(ONLINE, "online")?;
    let target = Sink::start(TARGET, "target")?;
    let args = bulk_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = Replay::start_on("bulk", ONLINE, &args)?;
    send_stream(5e8, 3.0)?;
    let o = online.bytes();
    let t = target_bytes_settled(&target);
    let log = r.stop()?;
    println!("    one stream at 500 Mbit/s: online {o} bytes, target {t}");
    ensure!(o > 100_000_000, "too little load: {o} bytes");
    ensure!(
        t == o,
        "the target received {t} bytes of {o}\n{}",
        summary(&log)
    );
    ensure!(
        summary_counter(&log, "syns_sent") == 1,
        "one connection expected:\n{}",
        summary(&log)
    );
    Ok(())
}

/// A stream the target cannot take: the target's sink is stopped before a
/// 4 s stream at 500 Mbit/s starts (about 170,000 segments), so its
/// receive window closes and the session's buffer (32,768 segments)
/// overflows by construction. The replay is given up once and counted
/// ("session buffer full"), the rest of the flow is counted under the same
/// reason, and the target sees that one connection: no SYN is fabricated
/// for the segments that follow (before: thousands).
pub fn a_stream_the_target_cannot_take_is_given_up_once() -> Result<()> {
    let online = Sink::start(ONLINE, "online-2")?;
    let target = Sink::start(TARGET, "target-2")?;
    target.signal("-STOP");
    let args = bulk_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = Replay::start_on("bulk-stopped", ONLINE, &args)?;
    send_stream(5e8, 4.0)?;
    std::thread::sleep(Duration::from_millis(1500));
    let log = r.stop()?;
    target.signal("-CONT");
    let o = online.bytes();
    let lost = summary_counter(&log, "lost_buffer_full");
    let (syns, fabricated) = (
        summary_counter(&log, "syns_sent"),
        summary_counter(&log, "syns_fabricated"),
    );
    println!(
        "    target stopped: online {o} bytes; {lost} segments lost (session buffer full), {syns} SYN sent, {fabricated} fabricated"
    );
    ensure!(o > 100_000_000, "too little load: {o} bytes");
    ensure!(
        lost > 32_768 && syns == 1 && fabricated == 0,
        "expected one connection given up once, the rest counted:\n{}",
        summary(&log)
    );
    ensure!(
        log.contains("session buffer full"),
        "the summary should name the reason:\n{}",
        summary(&log)
    );
    Ok(())
}

/// Large messages in every capture mode: redis SETs of 64 KiB values (500
/// from 10 clients, about 33 MB: less than the capture holds whole, 2 × 64
/// MiB of tap ring or 2 × 32,768 AF_XDP frames, however slowly the workers
/// run), SETs of 1 MiB values (20 from 2 clients) and 20 HTTP POSTs of
/// 1 MiB bodies: each reaches the target once.
pub fn large_messages_exact_in_every_capture_mode() -> Result<()> {
    let body = lab::run_dir().join("post-1m.bin");
    if !body.exists() {
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        std::fs::write(&body, data)?;
    }
    let mut packet = TAP.to_vec();
    packet.extend(["--capture", "packet"]);
    let xdp = [
        "-x",
        "80-10.0.2.2:8080,6379-10.0.2.2:6379",
        "--capture",
        "xdp",
        "-i",
        "mir0",
        "--xsk-ring",
        "32768",
    ];
    let modes: [(&str, &str, &[&str]); 3] = [
        ("tap", ONLINE, TAP),
        ("packet", ONLINE, &packet),
        ("xdp", MIRROR, &xdp),
    ];
    for (mode, host, args) in modes {
        let r = Replay::start_on(&format!("large-{mode}"), host, args)?;
        let result = (|| -> Result<()> {
            for (size, clients, n) in [(65_536, 10, 500), (1_048_576, 2, 20)] {
                redis_sets_exact(
                    &format!("{mode}: redis SET of {size}-byte values"),
                    size,
                    clients,
                    n,
                )?;
            }
            let post = format!(
                "sh -c 'for i in $(seq 20); do curl -s -o /dev/null --data-binary @{} http://{ONLINE_IP}/; done'",
                body.display()
            );
            let (o, t) = drive(&post)?;
            println!("    {mode}: 20 POSTs of 1 MiB: online {o}, target {t}");
            ensure!(o == 20 && t == o, "{mode}: POSTs: online {o}, target {t}");
            Ok(())
        })();
        let log = r.stop()?;
        result.map_err(|e| anyhow::anyhow!("{e}\n{}", summary(&log)))?;
    }
    Ok(())
}

/// `redis-benchmark -t set -d SIZE -c CLIENTS -n N` at the online redis;
/// the target's redis must process as many commands.
fn redis_sets_exact(what: &str, size: u32, clients: u32, n: u32) -> Result<()> {
    let before = (
        replay::redis_commands(ONLINE, ONLINE_IP)?,
        replay::redis_commands(TARGET, TARGET_IP)?,
    );
    in_ns(
        CLIENT,
        &format!(
            "redis-benchmark -h {ONLINE_IP} -t set -d {size} -c {clients} -n {n} -q > /dev/null"
        ),
    )?;
    let online = replay::redis_commands(ONLINE, ONLINE_IP)? - before.0;
    let (target, _) = replay::wait_until_quiet(
        &|| replay::redis_commands(TARGET, TARGET_IP).unwrap_or(0),
        Duration::from_millis(2000),
        Duration::from_secs(30),
    );
    let target = target - before.1;
    println!("    {what}: online {online}, target {target}");
    ensure!(online >= n as u64, "{what}: too little load ({online})");
    ensure!(target == online, "{what}: target {target}, online {online}");
    Ok(())
}
