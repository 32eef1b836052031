//! Running the two real binaries in the lab: intercept on the assistant,
//! tcpcopy on the online host, each a child process that is stopped with
//! SIGINT (so it detaches and prints its summary) when the guard drops.
//! Shared by the demo, the end-to-end tests and the benchmarks.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{self, ASSISTANT_CTL_IP};

pub struct Tool {
    child: Option<Child>,
    pub log: PathBuf,
    name: &'static str,
}

/// Where the tools' binaries come from: `target/release`, unless a
/// benchmark set another build (`use_binaries`).
static BINARIES: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Run the tools from `dir` from now on (None: `target/release`).
pub fn use_binaries(dir: Option<PathBuf>) {
    *BINARIES.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// A tool's binary: from the build a benchmark chose, else from
/// `LAB_BINARIES` (a folder: to run a lab test against another build),
/// else `target/release`.
pub fn binary(name: &str) -> PathBuf {
    BINARIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .or_else(|| std::env::var_os("LAB_BINARIES").map(PathBuf::from))
        .unwrap_or_else(|| crate::util::root().join("target/release"))
        .join(name)
}

/// A process's time on a CPU and how often it was scheduled in (each
/// wake-up is one), from [`Tool::run_time`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RunTime {
    pub on_cpu_ns: u64,
    pub slices: u64,
}

impl RunTime {
    /// Since `earlier`: the share of one CPU over `secs`, in percent, and
    /// the times scheduled in per second.
    pub fn since(self, earlier: RunTime, secs: f64) -> (f64, f64) {
        // Saturating: a thread that ended in between takes its figures
        // out of the later sum (the tools' threads live as long as they).
        let cpu = self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns) as f64 / 1e9 / secs * 100.0;
        let wakes = self.slices.saturating_sub(earlier.slices) as f64 / secs;
        (cpu, wakes)
    }
}

impl Tool {
    fn spawn(name: &'static str, ns: &str, args: &[String], tag: &str) -> Result<Tool> {
        let log = lab::run_dir().join(format!("{name}-{tag}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary(name))
            .args(args)
            // LAB_RUST_LOG=debug (or a filter) to look inside a lab run.
            .env(
                "RUST_LOG",
                std::env::var("LAB_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Tool {
            child: Some(child),
            log,
            name,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Time on a CPU and times scheduled in, so far, summed over the
    /// threads alive now (`/proc/PID/task/*/schedstat`: nanoseconds, not
    /// the 10 ms ticks of `stat`, so a few idle seconds measure to better
    /// than 0.01% of a CPU). [`Tool::cpu_seconds`] stays for loads: it
    /// counts threads that have ended too.
    pub fn run_time(&self) -> RunTime {
        let Some(pid) = self.pid() else {
            return RunTime::default();
        };
        let mut total = RunTime::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return total;
        };
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let f: Vec<u64> = text
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [on_cpu_ns, _waiting_ns, slices] = f[..] {
                total.on_cpu_ns += on_cpu_ns;
                total.slices += slices;
            }
        }
        total
    }

    /// User + system CPU seconds the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses).
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
        let hz = 100.0;
        (ticks(11) + ticks(12)) / hz
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str, max: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < max {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "{} exited ({status}) before it was ready:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not ready after {max:?}:\n{}",
            self.name,
            self.log_text()
        )
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            // `ip netns exec` execs the binary, so the pid is the tool's.
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Wait for the tool to exit by itself (at most `max`); returns the log,
    /// or an error if it failed or had to be killed.
    pub fn wait(&mut self, max: Duration) -> Result<String> {
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                if let Some(status) = c.try_wait()? {
                    ensure!(
                        status.success(),
                        "{} exited with {status}:\n{}",
                        self.name,
                        self.log_text()
                    );
                    break;
                }
                if start.elapsed() > max {
                    self.child = Some(c);
                    let log = self.stop();
                    bail!(
                        "{} still running after {max:?}:\n{}",
                        self.name,
                        log.unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(self.log_text())
    }

    /// SIGKILL and reap; returns the log.
    pub fn kill(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.log_text()
    }

    /// Has it exited? (the exit status and log if so)
    pub fn exited(&mut self) -> Option<(std::process::ExitStatus, String)> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some((status, self.log_text()))
    }

    /// Wait until the log contains `needle` (at most `max`).
    pub fn wait_for_log(&mut self, needle: &str, max: Duration) -> Result<()> {
        self.wait_for(needle, max)
    }

    /// SIGINT and wait; returns the log.
    pub fn stop(&mut self) -> Result<String> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let start = Instant::now();
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() {
                        bail!("{} exited with {status}:\n{}", self.name, self.log_text());
                    }
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    bail!("{} did not stop on SIGINT", self.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(self.log_text())
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// tcpdump on the online host's client-facing port, writing a capture file
/// for the offline tests; stopped with SIGINT (on drop too).
pub struct Tcpdump(Option<Child>);

impl Tcpdump {
    /// Capture what `filter` takes into `file`; returns once tcpdump
    /// listens (it writes the file's header then).
    pub fn start(file: &std::path::Path, filter: &str) -> Result<Tcpdump> {
        let _ = std::fs::remove_file(file);
        let child = Command::new("ip")
            .args(["netns", "exec", lab::ONLINE, "tcpdump", "-i", "onl0"])
            // Each packet written as it comes: without, the last block may
            // still wait in the kernel when it stops.
            .args(["--immediate-mode", "-U", "-w"])
            .arg(file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tcpdump")?;
        let dump = Tcpdump(Some(child));
        let listening = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::metadata(file).is_ok_and(|m| m.len() >= 24)
        });
        ensure!(listening, "tcpdump did not start listening in 5 s");
        std::thread::sleep(Duration::from_millis(200));
        Ok(dump)
    }

    /// Stop it: what it captured is in the file.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        self.end();
    }
}

/// A way to start the lab's replay, given a tag for the logs.
pub type Start = fn(&str) -> Result<Replay>;

/// intercept + tcpcopy, started in that order (tcpcopy connects at start).
pub struct Replay {
    pub tcpcopy: Tool,
    pub intercept: Tool,
    /// On the mirror box: the frames its port had dropped when the replay
    /// started.
    mirror_drops: Option<u64>,
}

/// tcpcopy arguments for the lab's nginx: XDP tap capture, two workers.
pub const TAP_HTTP: &[&str] = &["-x", "80-10.0.2.2:8080", "-i", "onl0", "--workers", "2"];
/// The same with AF_PACKET capture.
pub const PACKET_HTTP: &[&str] = &[
    "-x",
    "80-10.0.2.2:8080",
    "--capture",
    "packet",
    "-i",
    "onl0",
    "--workers",
    "2",
];

/// AF_XDP capture on the mirror box's 2-queue port: one worker per queue.
pub const MIRROR_HTTP: &[&str] = &["-x", "80-10.0.2.2:8080", "--capture", "xdp", "-i", "mir0"];

/// Where the lab's intercept serves metrics (inside the assistant).
pub const INTERCEPT_METRICS: &str = "127.0.0.1:9102";
/// Where a lab tcpcopy serves its metrics (inside its namespace).
pub const TCPCOPY_METRICS: &str = "127.0.0.1:9101";

/// Scrape a metrics endpoint inside namespace `ns`: sample name (with its
/// labels) → value.
pub fn scrape(ns: &str, addr: &str) -> Result<std::collections::HashMap<String, f64>> {
    let out = crate::util::output(&format!(
        "ip netns exec {ns} curl -sS --max-time 5 http://{addr}/metrics"
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.trim_end().ends_with("# EOF"),
        "no metrics from {addr} in {ns}: {text}"
    );
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// The `-F` filter for the lab's target services.
/// (5201: the bulk-stream sinks of the elephant-flow tests; 8081: the
/// second target nginx, for fan-out; 8082: the verdict test's slow
/// server.)
pub const FILTER: &str = "tcp and src port 8080 or tcp and src port 8081 or tcp and src port 8082 or tcp and src port 6379 or tcp and src port 5201";

impl Replay {
    /// tcpcopy on the online host; `tcpcopy_args` come after `-s` (which
    /// points at the assistant).
    pub fn start(tag: &str, tcpcopy_args: &[&str]) -> Result<Replay> {
        Replay::start_on(tag, lab::ONLINE, tcpcopy_args)
    }

    /// tcpcopy on the mirror box, capturing with AF_XDP.
    pub fn start_mirror(tag: &str) -> Result<Replay> {
        Replay::start_on(tag, lab::MIRROR, MIRROR_HTTP)
    }

    /// The mirror box with extra tcpcopy arguments.
    pub fn start_mirror_with(tag: &str, extra: &[&str]) -> Result<Replay> {
        let mut args = MIRROR_HTTP.to_vec();
        args.extend_from_slice(extra);
        Replay::start_on(tag, lab::MIRROR, &args)
    }

    /// The same, sending with AF_XDP TX out of the mirror port too.
    pub fn start_mirror_xdp_send(tag: &str) -> Result<Replay> {
        let mut args = MIRROR_HTTP.to_vec();
        args.extend(["--send", "xdp", "-o", "mir0"]);
        Replay::start_on(tag, lab::MIRROR, &args)
    }

    /// tcpcopy in namespace `host` with `tcpcopy_args` after `-s`.
    pub fn start_on(tag: &str, host: &str, tcpcopy_args: &[&str]) -> Result<Replay> {
        Replay::start_with_servers(tag, host, ASSISTANT_CTL_IP, tcpcopy_args)
    }

    /// The lab's intercept and tcpcopy in namespace `host`, told `-s
    /// servers` (other intercepts named there are the caller's to start).
    pub fn start_with_servers(
        tag: &str,
        host: &str,
        servers: &str,
        tcpcopy_args: &[&str],
    ) -> Result<Replay> {
        let intercept = start_intercept(tag)?;
        let tcpcopy = start_tcpcopy(tag, host, servers, tcpcopy_args)?;
        let mirror_drops = (host == lab::MIRROR).then(lab::mirror_port_drops);
        Ok(Replay {
            tcpcopy,
            intercept,
            mirror_drops,
        })
    }

    /// Stop both (tcpcopy first) and return tcpcopy's log. Frames the
    /// mirror port dropped meanwhile are reported: tcpcopy never saw
    /// them, so a request missing at the target is the lab's loss.
    pub fn stop(mut self) -> Result<String> {
        let log = self.tcpcopy.stop()?;
        self.intercept.stop()?;
        if let Some(before) = self.mirror_drops {
            let dropped = lab::mirror_port_drops().saturating_sub(before);
            if dropped > 0 {
                println!(
                    "    the mirror port dropped {dropped} frames during this replay (before tcpcopy: not counted by it)"
                );
            }
        }
        Ok(log)
    }
}

/// tcpcopy in namespace `host`, told `-s servers`, once it is ready.
pub fn start_tcpcopy(tag: &str, host: &str, servers: &str, tcpcopy_args: &[&str]) -> Result<Tool> {
    let mut args: Vec<String> = vec![
        "-s".into(),
        servers.into(),
        "--stats-interval".into(),
        "5".into(),
        "--metrics".into(),
        TCPCOPY_METRICS.into(),
    ];
    args.extend(tcpcopy_args.iter().map(|s| s.to_string()));
    let mut tcpcopy = Tool::spawn("tcpcopy", host, &args, tag)?;
    tcpcopy.wait_for("tcpcopy ready", Duration::from_secs(10))?;
    Ok(tcpcopy)
}

/// intercept on the assistant, ready for tcpcopy to connect.
pub fn start_intercept(tag: &str) -> Result<Tool> {
    start_intercept_on(tag, "ast0", crate::lab::CONTROL_PORT, INTERCEPT_METRICS)
}

/// An intercept on the assistant's interface `iface`, taking tcpcopy's
/// connections on `port` and serving metrics on `metrics`.
pub fn start_intercept_on(tag: &str, iface: &str, port: u16, metrics: &str) -> Result<Tool> {
    start_intercept_bound(tag, iface, ASSISTANT_CTL_IP, port, metrics)
}

/// The same, its control channel bound to `bind` (`-b`).
pub fn start_intercept_bound(
    tag: &str,
    iface: &str,
    bind: &str,
    port: u16,
    metrics: &str,
) -> Result<Tool> {
    let port = port.to_string();
    let intercept_args: Vec<String> = [
        "-i",
        iface,
        "-F",
        FILTER,
        "-b",
        bind,
        "-p",
        &port,
        "--stats-interval",
        "5",
        "--metrics",
        metrics,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut intercept = Tool::spawn("intercept", lab::ASSISTANT, &intercept_args, tag)?;
    intercept.wait_for("intercept ready", Duration::from_secs(10))?;
    Ok(intercept)
}

/// An offline tcpcopy on the online host (intercept must be running): runs
/// until it exits by itself; returns its log.
pub fn run_offline(tag: &str, args: &[&str], max: Duration) -> Result<String> {
    let mut all: Vec<String> = vec!["-s".into(), ASSISTANT_CTL_IP.into()];
    all.extend(args.iter().map(|s| s.to_string()));
    Tool::spawn("tcpcopy", lab::ONLINE, &all, tag)?.wait(max)
}

/// HTTP GET requests in a capture file, counted by tcpdump.
pub fn requests_in(file: &std::path::Path) -> Result<u64> {
    let out = crate::util::output(&format!(
        "tcpdump -nn -r {} 'tcp[((tcp[12]&0xf0)>>2):4] = 0x47455420' 2>/dev/null | wc -l",
        file.display()
    ))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A memory figure of a process from /proc/PID/status (`VmRSS`, `VmHWM`),
/// MiB; 0 when it cannot be read.
pub fn proc_mib(pid: Option<u32>, field: &str) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Captured segments the running lab tcpcopy still holds unsent (from its
/// metrics, in whichever namespace it runs); None if none answers.
pub fn tcpcopy_backlog() -> Option<f64> {
    [lab::ONLINE, lab::MIRROR].iter().find_map(|ns| {
        let m = scrape(ns, TCPCOPY_METRICS).ok()?;
        m.get("tcpcopy_buffered_segments").copied()
    })
}

/// After a load: wait until the target's count is quiet for 1.5 s and the
/// lab tcpcopy holds nothing unsent (its metrics), so no replay of this
/// load leaks into the next one. Returns the count and when it last moved.
pub fn settle(count: impl Fn() -> u64) -> (u64, Duration) {
    let (mut seen, mut changed) =
        wait_until_quiet(&count, Duration::from_millis(1500), Duration::from_secs(30));
    let start = Instant::now();
    while tcpcopy_backlog().is_some_and(|b| b > 0.0) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    if start.elapsed() > Duration::from_millis(200) {
        let (later, moved) =
            wait_until_quiet(&count, Duration::from_millis(500), Duration::from_secs(5));
        if later != seen {
            seen = later;
            changed = start.elapsed() + moved;
        }
    }
    (seen, changed)
}

/// Requests the online nginx served, counted from its access log once the
/// log holds still. nginx writes a request's line after its response, and
/// wrk returns as soon as it stops, so the requests in flight then (up to
/// one per connection) are logged a few milliseconds after wrk is gone:
/// counted at once, the online count comes out short and the replay looks
/// a request long per connection.
pub fn online_served() -> u64 {
    wait_until_quiet(
        &|| lab::count_lines("online-nginx-access.log"),
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .0
}

/// Wait until `count` stops changing for `quiet` (at most `max`); returns
/// the last value and how long after the call it last changed.
pub fn wait_until_quiet(
    count: &impl Fn() -> u64,
    quiet: Duration,
    max: Duration,
) -> (u64, Duration) {
    let start = Instant::now();
    let mut last = count();
    let mut changed = Duration::ZERO;
    while start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now != last {
            last = now;
            changed = start.elapsed();
        } else if start.elapsed() - changed >= quiet {
            break;
        }
    }
    (last, changed)
}

/// Truncate the nginx access logs (nginx appends with O_APPEND, so the next
/// line starts at 0).
pub fn reset_logs() -> Result<()> {
    for name in [
        "online-nginx-access.log",
        "target-nginx-access.log",
        "target2-nginx-access.log",
    ] {
        std::fs::write(lab::run_dir().join(name), b"")?;
    }
    Ok(())
}

/// Run `redis-benchmark ARGS` from the client at the online redis; returns
/// the commands the online and (once quiet) the target redis processed.
pub fn redis_load(args: &str) -> Result<(u64, u64)> {
    use crate::lab::ONLINE_IP;
    redis_load_with(&format!("redis-benchmark -h {ONLINE_IP} {args} -q"))
}

/// Run `command` in the client namespace; returns the commands the online
/// and (once quiet) the target redis processed meanwhile.
pub fn redis_load_with(command: &str) -> Result<(u64, u64)> {
    use crate::lab::{in_ns, CLIENT, ONLINE, ONLINE_IP, TARGET, TARGET_IP};
    let before = (
        redis_commands(ONLINE, ONLINE_IP)?,
        redis_commands(TARGET, TARGET_IP)?,
    );
    in_ns(CLIENT, &format!("{command} > /dev/null"))?;
    let online = redis_commands(ONLINE, ONLINE_IP)? - before.0;
    let (target, _) = wait_until_quiet(
        &|| redis_commands(TARGET, TARGET_IP).unwrap_or(0),
        Duration::from_millis(2000),
        Duration::from_secs(30),
    );
    Ok((online, target - before.1))
}

/// Commands a redis server has processed, not counting our own INFO calls
/// (the sum of `info commandstats` calls except `info`).
pub fn redis_commands(ns: &str, ip: &str) -> Result<u64> {
    let out = crate::util::output(&format!(
        "ip netns exec {ns} redis-cli -h {ip} info commandstats"
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("Commandstats"),
        "redis-cli info commandstats failed: {text}"
    );
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

/// Wall-clock seconds, as nginx's `$msec` writes them.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One line of the lab's nginx access log: client address and `$msec`.
pub struct Logged {
    pub client: String,
    pub at: f64,
}

/// The lines of the lab's access log `name` (in its run dir).
pub fn access_log(name: &str) -> Vec<Logged> {
    std::fs::read_to_string(lab::run_dir().join(name))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let client = l.split_whitespace().next()?.to_string();
            let at = l.rsplit_once(' ')?.1.parse().ok()?;
            Some(Logged { client, at })
        })
        .collect()
}
