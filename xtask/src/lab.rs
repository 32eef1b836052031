//! `cargo xtask lab up|down|status`: five network namespaces on veth pairs,
//! never touching the machine's own interfaces. The namespaces are named
//! `tcl-client`, `tcl-online`, ... (below without the prefix); each veth is
//! created inside its namespaces, so its name never appears on the host.
//!
//! ```text
//!  client 10.0.1.10,.11 ─cli0──onl0─ online 10.0.1.1  (nginx :80, redis :6379, tcpcopy)
//!                                    online 10.0.2.1 ─onl1──tgt0─ target 10.0.2.2 (nginx :8080, redis :6379)
//!  target 10.0.3.2 ─tgt1──ast0─ assistant 10.0.3.3 (intercept; ip_forward=0: a black hole)
//!  target 10.0.6.2 ─tgt2──ast2─ assistant 10.0.6.3 (a second intercept's link, for tests
//!                                    that route some clients' answers through it)
//!  online 10.0.4.1 ─onl2──ast1─ assistant 10.0.4.3 (control channel, port 36524)
//!  online 10.0.5.1 ─onl3──mir0─ mirror 10.0.5.2 (2 queues): client↔online frames mirrored by tc,
//!                                    as a switch port would (a 10,000-frame port buffer);
//!                                    mirror reaches target and assistant via online
//! ```
//! target routes the client network (10.0.1.0/24) and the `-c` pool
//! (10.9.9.0/24) to assistant, so the target's answers to replayed sessions
//! never reach the real client.
//!
//! The lab is dual-stack: each address 10.0.N.H has an IPv6 twin
//! fd00:N::H (/64, no duplicate address detection), the servers listen on
//! both, and target routes fd00:1::/64 and the IPv6 pool fd00:99::/64 to
//! assistant the same way. `down` removes everything `up` made, also
//! after a crash or a half-finished `up`.

use crate::util::{sh, sh_quiet, stdout};
use anyhow::{ensure, Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

/// Every namespace, and the run dir, carry this prefix, so the lab is never
/// mistaken for a user's own (a host may well have a namespace `client`).
pub const PREFIX: &str = "tcl-";
pub const CLIENT: &str = "tcl-client";
pub const ONLINE: &str = "tcl-online";
pub const TARGET: &str = "tcl-target";
pub const ASSISTANT: &str = "tcl-assistant";
pub const MIRROR: &str = "tcl-mirror";
pub const NAMESPACES: &[&str] = &[CLIENT, ONLINE, TARGET, ASSISTANT, MIRROR];
pub const RUN_DIR: &str = "/run/tcl-lab";
/// The namespaces this lab created, one a line, written as each is made:
/// `down` removes these and nothing else, also after a crash. It lives
/// beside the run dir, which `down` empties first.
const CREATED: &str = "/run/tcl-lab.namespaces";

pub const CLIENT_IP: &str = "10.0.1.10";
pub const ONLINE_IP: &str = "10.0.1.1";
pub const TARGET_IP: &str = "10.0.2.2";
pub const ASSISTANT_CTL_IP: &str = "10.0.4.3";
pub const ONLINE_IP6: &str = "fd00:1::1";
pub const TARGET_IP6: &str = "fd00:2::2";

/// The IPv6 twin of a lab address: 10.0.N.H/24 is fd00:N::H/64.
fn ipv6_twin(v4: &str) -> String {
    let (addr, _) = v4.split_once('/').unwrap_or((v4, ""));
    let o: Vec<&str> = addr.split('.').collect();
    format!("fd00:{}::{}/64", o[2], o[3])
}
/// The control channel's port (intercept's default).
pub const CONTROL_PORT: u16 = 36524;

#[derive(Subcommand, Clone, Copy)]
pub enum Action {
    /// Create the namespaces and start the servers.
    Up,
    /// Stop everything and remove the namespaces.
    Down,
    /// Show what exists.
    Status,
}

pub fn run(action: Action) -> Result<()> {
    crate::util::require_root("the lab")?;
    match action {
        Action::Up => {
            crate::setup::setup(false)?;
            up()?;
            println!("lab is up: client {CLIENT_IP} → online {ONLINE_IP}:80 (nginx), target {TARGET_IP}:8080, assistant {ASSISTANT_CTL_IP}");
            Ok(())
        }
        Action::Down => {
            down();
            println!("lab is down");
            Ok(())
        }
        Action::Status => {
            status();
            Ok(())
        }
    }
}

/// Run `cmd` inside namespace `ns`.
pub fn in_ns(ns: &str, cmd: &str) -> Result<()> {
    sh(&format!("ip netns exec {ns} {cmd}"))
}

/// At most this many requests a second on each connection of a
/// [`paced_wrk`] load: wrk waits a whole millisecond (its `delay()`, a
/// timer of its event loop) before each request.
pub const PACED_PER_CONNECTION: u64 = 1000;

/// A keep-alive wrk load paced to at most [`PACED_PER_CONNECTION`]
/// requests a second per connection, whatever the machine's speed: a test
/// that holds requests back for a while (a fault) knows by construction
/// how many a session can gather, not by how fast this host happens to be.
pub fn paced_wrk(conns: u32, secs: u32) -> Result<String> {
    paced_wrk_with(conns, secs, "")
}

/// The same with more wrk arguments (`-H 'Connection: close'`: short
/// connections, at most [`PACED_PER_CONNECTION`] a second on each of
/// `conns`).
pub fn paced_wrk_with(conns: u32, secs: u32, extra: &str) -> Result<String> {
    Ok(format!(
        "wrk -t2 -c{conns} -d{secs}s -s {} {extra} http://{ONLINE_IP}/",
        paced_script()?.display()
    ))
}

/// wrk's script for a paced load (`-s`): a millisecond before each
/// request.
pub fn paced_script() -> Result<PathBuf> {
    let script = run_dir().join("paced.lua");
    std::fs::write(&script, "function delay()\n  return 1\nend\n")?;
    Ok(script)
}

/// The most requests a [`paced_wrk`] load of `conns` connections sends in
/// `secs` seconds.
pub fn paced_most(conns: u32, secs: u32) -> u64 {
    PACED_PER_CONNECTION * conns as u64 * secs as u64
}

/// The most segments one session of a [`paced_wrk`] load gathers while
/// its replay is held back for `held`: one request a segment.
pub fn paced_backlog(held: std::time::Duration) -> u64 {
    PACED_PER_CONNECTION * held.as_millis() as u64 / 1000
}

/// The fewest segments a session buffers at the engine's default bound:
/// full frames, 64 MiB over 1,448 bytes and 184 of bookkeeping each
/// (`max_buffered_bytes`, `SEGMENT_BOOKKEEPING` in
/// `tcpcopy-userspace/src/session/`; xtask does not link the engine).
/// Smaller segments fit more.
pub const SESSION_BUFFER_SEGMENTS: u64 = 41_000;

/// Frames the mirror port (online's onl3) has dropped: the veth's and
/// its queue's. tcpcopy on the mirror box never sees them.
pub fn mirror_port_drops() -> u64 {
    let veth = stdout(&format!(
        "ip netns exec {ONLINE} cat /sys/class/net/onl3/statistics/tx_dropped"
    ));
    let queue = stdout(&format!("ip netns exec {ONLINE} tc -s qdisc show dev onl3"));
    let queue = queue
        .split_once("dropped ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next());
    [Some(veth.trim()), queue]
        .into_iter()
        .flatten()
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

pub fn run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR)
}

pub fn up() -> Result<()> {
    down();
    let r = build();
    if r.is_err() {
        down();
    }
    r
}

fn build() -> Result<()> {
    std::fs::create_dir_all(RUN_DIR)?;
    for ns in NAMESPACES {
        if created().iter().all(|c| c != ns) && namespace_exists(ns) {
            anyhow::bail!(
                "a namespace {ns} exists that this lab did not make (it records its own in \
                 {CREATED}): it is left alone; remove it yourself if it is a leftover"
            );
        }
        sh(&format!("ip netns add {ns}"))?;
        record_created(ns)?;
        in_ns(ns, "ip link set lo up")?;
        // IPv6 addresses stay when a link goes down (fault tests take
        // links down and up).
        in_ns(
            ns,
            "sysctl -qw net.ipv6.conf.all.keep_addr_on_down=1 net.ipv6.conf.default.keep_addr_on_down=1",
        )?;
    }
    let veth = |a: &str, ans: &str, b: &str, bns: &str, extra: &str| {
        sh(&format!(
            "ip link add {a} netns {ans} {extra} type veth peer name {b} netns {bns} {extra}"
        ))
    };
    veth("cli0", CLIENT, "onl0", ONLINE, "")?;
    veth("onl1", ONLINE, "tgt0", TARGET, "")?;
    veth("tgt1", TARGET, "ast0", ASSISTANT, "")?;
    veth("onl2", ONLINE, "ast1", ASSISTANT, "")?;
    veth("tgt2", TARGET, "ast2", ASSISTANT, "")?;
    veth(
        "onl3",
        ONLINE,
        "mir0",
        MIRROR,
        "numrxqueues 2 numtxqueues 2",
    )?;
    let addrs = [
        (CLIENT, "cli0", "10.0.1.10/24"),
        (CLIENT, "cli0", "10.0.1.11/24"),
        (ONLINE, "onl0", "10.0.1.1/24"),
        (ONLINE, "onl1", "10.0.2.1/24"),
        (TARGET, "tgt0", "10.0.2.2/24"),
        (TARGET, "tgt1", "10.0.3.2/24"),
        (ASSISTANT, "ast0", "10.0.3.3/24"),
        (ONLINE, "onl2", "10.0.4.1/24"),
        (ASSISTANT, "ast1", "10.0.4.3/24"),
        (TARGET, "tgt2", "10.0.6.2/24"),
        (ASSISTANT, "ast2", "10.0.6.3/24"),
        (ONLINE, "onl3", "10.0.5.1/24"),
        (MIRROR, "mir0", "10.0.5.2/24"),
    ];
    for (ns, dev, addr) in addrs {
        in_ns(ns, &format!("ip addr add {addr} dev {dev}"))?;
        in_ns(
            ns,
            &format!("ip -6 addr add {} dev {dev} nodad", ipv6_twin(addr)),
        )?;
    }
    for (ns, dev) in LINKS {
        in_ns(ns, &format!("ip link set {dev} up"))?;
    }
    // Wire-sized segments between client and online, as a real NIC shows
    // them to XDP (no TSO/GSO/GRO super-packets).
    in_ns(CLIENT, "ethtool -K cli0 tso off gso off gro off")?;
    in_ns(ONLINE, "ethtool -K onl0 tso off gso off gro off")?;
    // Replayed sessions: the target answers via the assistant.
    restore_routes()?;
    for ns in [TARGET, ASSISTANT, ONLINE] {
        in_ns(
            ns,
            "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        )?;
    }
    in_ns(TARGET, "sysctl -qw net.ipv4.conf.tgt0.rp_filter=0")?;
    in_ns(ASSISTANT, "sysctl -qw net.ipv4.ip_forward=0")?;
    in_ns(MIRROR, "ip link set mir0 promisc on")?;
    // A NIC's RSS keeps a connection on one RX queue. veth picks the queue
    // from the sender's socket hash, which TCP re-rolls on retransmissions
    // unless txrehash is off: off, so the mirror's queues behave like RSS.
    in_ns(CLIENT, "sysctl -qw net.core.txrehash=0")?;
    // RSS would also keep a reused (address, port) on its queue; veth does
    // not (a new socket, a new hash), so the clients get the whole port
    // range and a short test does not reuse ports.
    in_ns(
        CLIENT,
        "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'",
    )?;
    // The mirror box replays through online, which forwards to target and
    // assistant (and only that: client traffic is addressed to online).
    in_ns(MIRROR, "ip route add default via 10.0.5.1")?;
    in_ns(MIRROR, "ip -6 route add default via fd00:5::1")?;
    in_ns(
        ONLINE,
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.onl3.rp_filter=0 net.ipv6.conf.all.forwarding=1",
    )?;
    in_ns(ASSISTANT, "ip route add 10.0.5.0/24 via 10.0.4.1")?;
    in_ns(ASSISTANT, "ip -6 route add fd00:5::/64 via fd00:4::1")?;
    // Switch-mirror port: copy every frame arriving from the client, and
    // every frame the online host sends back (a mirror carries both
    // directions; the verdict reads the answers).
    in_ns(ONLINE, "tc qdisc add dev onl0 clsact")?;
    for dir in ["ingress", "egress"] {
        in_ns(ONLINE, &mirror_rule(dir))?;
    }
    // A switch's mirror port has a buffer. A veth has none of its own: a
    // frame finding mir0's ring (256 frames) full is dropped unless onl3
    // has a qdisc, which the veth then holds the frame in (veth's
    // backpressure, in Linux since 2025). Without one, a 2.5 Gbit/s
    // stream lost a frame whenever mir0's poll ran 1.2 ms late, a hole no
    // replay can fill.
    in_ns(ONLINE, "tc qdisc add dev onl3 root pfifo limit 10000")?;
    wait_for_carrier()?;
    start_servers()
}

/// The tc rule that copies online's frames to the mirror port: `ingress`
/// the client's, `egress` online's answers. Tests that cut the mirror
/// (`tc filter del dev onl0 ingress`) put it back with this.
pub fn mirror_rule(dir: &str) -> String {
    format!("tc filter add dev onl0 {dir} protocol all u32 match u32 0 0 action mirred egress mirror dev onl3")
}

/// Cut the mirror of the client's frames for `gap` (a switch's mirror port
/// dropping them), then put it back; it is put back also if the cut
/// failed.
pub fn cut_mirror(gap: std::time::Duration) -> Result<()> {
    let cut = in_ns(ONLINE, "tc filter del dev onl0 ingress");
    std::thread::sleep(gap);
    let back = in_ns(ONLINE, &mirror_rule("ingress"));
    cut.and(back)
}

/// Every veth end of the lab, by namespace.
const LINKS: [(&str, &str); 12] = [
    (CLIENT, "cli0"),
    (ONLINE, "onl0"),
    (ONLINE, "onl1"),
    (ONLINE, "onl2"),
    (ONLINE, "onl3"),
    (TARGET, "tgt0"),
    (TARGET, "tgt1"),
    (TARGET, "tgt2"),
    (ASSISTANT, "ast0"),
    (ASSISTANT, "ast1"),
    (ASSISTANT, "ast2"),
    (MIRROR, "mir0"),
];

/// Every lab link reports carrier (operstate up: a veth takes a moment
/// after `ip link set up`), so a test starting right away finds them up.
fn wait_for_carrier() -> Result<()> {
    for _ in 0..50 {
        let up = LINKS.iter().all(|(ns, dev)| {
            crate::util::output(&format!(
                "ip netns exec {ns} cat /sys/class/net/{dev}/operstate"
            ))
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "up")
        });
        if up {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("the lab's links did not come up within 5 s")
}

fn nginx_conf(name: &str, listen: &[String]) -> String {
    // The version under test answers one path differently (the verdict's
    // tests): 503 where online says 200.
    let differs = if name.starts_with("target") {
        "location = /differs { return 503 \"not here\\n\"; } "
    } else {
        ""
    };
    let listen: String = listen
        .iter()
        .map(|l| format!("listen {l} reuseport backlog=4096; "))
        .collect();
    format!(
        "worker_processes 1;\npid {RUN_DIR}/{name}-nginx.pid;\nerror_log {RUN_DIR}/{name}-nginx-error.log;\n\
events {{ worker_connections 16384; }}\n\
http {{\n  log_format lab '$remote_addr $remote_port $connection_requests \"$request\" $status $request_time $msec';\n  access_log {RUN_DIR}/{name}-nginx-access.log lab;\n  client_body_temp_path {RUN_DIR}/{name}-body;\n\
  keepalive_requests 1000000;\n\
  server {{ {listen}{differs}location / {{ return 200 \"hello from {name}\\n\"; }} }}\n}}\n"
    )
}

fn start_servers() -> Result<()> {
    for (name, ns, ip, ip6, port) in [
        ("online", ONLINE, ONLINE_IP, ONLINE_IP6, 80),
        ("target", TARGET, TARGET_IP, TARGET_IP6, 8080),
        // A second version under test, for fan-out (`-x 80-A+B`).
        ("target2", TARGET, TARGET_IP, TARGET_IP6, 8081),
    ] {
        let conf = run_dir().join(format!("{name}-nginx.conf"));
        let listen = [format!("{ip}:{port}"), format!("[{ip6}]:{port}")];
        std::fs::write(&conf, nginx_conf(name, &listen))?;
        in_ns(
            ns,
            &format!(
                "nginx -e {RUN_DIR}/{name}-nginx-error.log -c {}",
                conf.display()
            ),
        )
        .with_context(|| format!("starting nginx in {ns}"))?;
    }
    for (name, ns, bind) in [
        ("online", ONLINE, format!("{ONLINE_IP} {ONLINE_IP6}")),
        ("target", TARGET, format!("{TARGET_IP} {TARGET_IP6}")),
    ] {
        in_ns(
            ns,
            &format!(
                "redis-server --bind {bind} --port 6379 --daemonize yes --protected-mode no \
                 --save '' --appendonly no --dir {RUN_DIR} --pidfile {RUN_DIR}/{name}-redis.pid \
                 --logfile {RUN_DIR}/{name}-redis.log"
            ),
        )
        .with_context(|| format!("starting redis in {ns}"))?;
    }
    // Wait until every server answers.
    for _ in 0..50 {
        let ok = [
            (ONLINE, ONLINE_IP, 80),
            (TARGET, TARGET_IP, 8080),
            (TARGET, TARGET_IP, 8081),
            (ONLINE, ONLINE_IP, 6379),
            (TARGET, TARGET_IP, 6379),
            (ONLINE, ONLINE_IP6, 80),
            (TARGET, TARGET_IP6, 8080),
            (ONLINE, ONLINE_IP6, 6379),
            (TARGET, TARGET_IP6, 6379),
        ]
        .iter()
        .all(|(ns, ip, port)| {
            sh(&format!(
                "ip netns exec {ns} bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"
            ))
            .is_ok()
        });
        if ok {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("the lab's servers did not come up (see {RUN_DIR}/*.log)")
}

/// The target's routes to the client networks through assistant (a link
/// that went down took them along).
pub fn restore_routes() -> Result<()> {
    in_ns(TARGET, "ip route replace 10.0.1.0/24 via 10.0.3.3")?;
    in_ns(TARGET, "ip route replace 10.9.9.0/24 via 10.0.3.3")?;
    in_ns(TARGET, "ip -6 route replace fd00:1::/64 via fd00:3::3")?;
    in_ns(TARGET, "ip -6 route replace fd00:99::/64 via fd00:3::3")
}

/// Stop the target's nginx and start it again (a fault test).
pub fn restart_target_nginx() -> Result<()> {
    restart_target_nginx_after(std::time::Duration::from_millis(300))
}

/// Stop the target's nginx, and start it again after `down`.
pub fn restart_target_nginx_after(down: std::time::Duration) -> Result<()> {
    stop_target_nginx()?;
    std::thread::sleep(down);
    start_target_nginx()
}

/// Restart the target's nginx as a service manager does (`-s quit`: it
/// finishes the requests it has begun and closes each connection after
/// its current answer), down for 300 ms before it starts again.
pub fn restart_target_nginx_gracefully() -> Result<()> {
    let conf = run_dir().join("target-nginx.conf");
    in_ns(
        TARGET,
        &format!(
            "nginx -e {RUN_DIR}/target-nginx-error.log -c {} -s quit",
            conf.display()
        ),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    start_target_nginx()
}

/// Stop the target's nginx (its port then refuses connections).
pub fn stop_target_nginx() -> Result<()> {
    let conf = run_dir().join("target-nginx.conf");
    in_ns(
        TARGET,
        &format!(
            "nginx -e {RUN_DIR}/target-nginx-error.log -c {} -s stop",
            conf.display()
        ),
    )
}

/// Start the target's nginx again after [`stop_target_nginx`], and wait
/// until it runs (its pid file is written once it listens).
pub fn start_target_nginx() -> Result<()> {
    let conf = run_dir().join("target-nginx.conf");
    let pid_file = run_dir().join("target-nginx.pid");
    let wait_for = |present: bool, what: &str| -> Result<()> {
        let start = std::time::Instant::now();
        while pid_file.exists() != present {
            ensure!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "the target's nginx: {what} after 5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    };
    // The old master may still be exiting: wait for its pid file to go
    // (it deletes it just before it closes its listening socket; the new
    // master's bind retries meanwhile).
    wait_for(false, "the old master still runs")?;
    in_ns(
        TARGET,
        &format!(
            "nginx -e {RUN_DIR}/target-nginx-error.log -c {}",
            conf.display()
        ),
    )?;
    wait_for(true, "no pid file")
}

/// The namespaces this lab made and has not removed yet.
fn created() -> Vec<String> {
    std::fs::read_to_string(CREATED)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

fn record_created(ns: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(CREATED)
        .with_context(|| format!("recording the lab's namespaces in {CREATED}"))?;
    writeln!(f, "{ns}")?;
    Ok(())
}

fn namespace_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// The processes inside namespace `ns`.
fn pids_in(ns: &str) -> Vec<String> {
    stdout(&format!("ip netns pids {ns} 2>/dev/null"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Kill every process in the namespaces this lab made and delete them
/// (only those: a namespace of the same name it did not make is never
/// touched). Never fails.
pub fn down() {
    let ours = created();
    for ns in &ours {
        let pids = pids_in(ns);
        if !pids.is_empty() {
            sh_quiet(&format!("kill -TERM {}", pids.join(" ")));
        }
    }
    for _ in 0..20 {
        if ours.iter().all(|ns| pids_in(ns).is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for ns in &ours {
        let pids = pids_in(ns);
        if !pids.is_empty() {
            sh_quiet(&format!("kill -KILL {}", pids.join(" ")));
        }
        sh_quiet(&format!("ip netns del {ns} 2>/dev/null"));
    }
    let _ = std::fs::remove_dir_all(RUN_DIR);
    let left: Vec<&String> = ours.iter().filter(|ns| namespace_exists(ns)).collect();
    if left.is_empty() {
        let _ = std::fs::remove_file(CREATED);
    } else {
        let text: String = left.iter().map(|ns| format!("{ns}\n")).collect();
        let _ = std::fs::write(CREATED, text);
    }
}

fn status() {
    let list = stdout("ip netns list");
    for ns in NAMESPACES {
        let present = list.split_whitespace().any(|w| w == *ns);
        if !present {
            println!("{ns:10} absent");
            continue;
        }
        let pids = stdout(&format!("ip netns pids {ns}"));
        let procs: Vec<String> = pids
            .split_whitespace()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                format!("{}({p})", comm.trim())
            })
            .collect();
        let xdp = stdout(&format!(
            "ip netns exec {ns} ip -o link show | grep -o '^[0-9]*: [^:@]*\\|prog/xdp id [0-9]*'"
        ));
        println!(
            "{ns:10} up; processes: {}; {}",
            if procs.is_empty() {
                "none".into()
            } else {
                procs.join(" ")
            },
            xdp.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}

/// Takes the lab down when dropped (the demo, tests and benchmarks hold one).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        down();
    }
}

/// A wrk script that gives every request its own path, `/THREAD/N`, so
/// the two nginx logs name each request lost or served twice
/// ([`compare_paths`]). Written to the run dir; returns its path.
pub fn numbered_requests_script() -> Result<PathBuf> {
    let path = run_dir().join("numbered-requests.lua");
    std::fs::write(
        &path,
        "local threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"id\", threads) end\n\
         local n = 0\n\
         function request() n = n + 1; return wrk.format(\"GET\", \"/\" .. id .. \"/\" .. n) end\n",
    )?;
    Ok(path)
}

/// The online and the target nginx logs compared request by request
/// (by path: [`numbered_requests_script`]'s loads).
pub struct PathComparison {
    /// Paths online served and the target never did.
    pub missing: Vec<String>,
    /// Times the target served a path more often than online did.
    pub served_again: u64,
}

pub fn compare_paths() -> PathComparison {
    let paths = |name: &str| {
        let mut counts = std::collections::HashMap::<String, i64>::new();
        let text = std::fs::read_to_string(run_dir().join(name)).unwrap_or_default();
        // `$request` is the fourth field: "GET /1/7 HTTP/1.1".
        for path in text.lines().filter_map(|l| l.split(' ').nth(4)) {
            *counts.entry(path.to_string()).or_default() += 1;
        }
        counts
    };
    let (online, target) = (
        paths("online-nginx-access.log"),
        paths("target-nginx-access.log"),
    );
    let mut missing: Vec<String> = online
        .keys()
        .filter(|p| !target.contains_key(*p))
        .cloned()
        .collect();
    missing.sort();
    let served_again = target
        .iter()
        .map(|(p, n)| (n - online.get(p).copied().unwrap_or(0)).max(0) as u64)
        .sum();
    PathComparison {
        missing,
        served_again,
    }
}

/// Count lines of a file in the lab's run dir (0 when absent).
pub fn count_lines(name: &str) -> u64 {
    std::fs::read_to_string(run_dir().join(name))
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}
