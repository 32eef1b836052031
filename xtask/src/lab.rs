//! `cargo xtask lab up|down|status`: five network namespaces on veth pairs,
//! never touching the machine's own interfaces.
//!
//! ```text
//!  client 10.0.1.10,.11 ─cli0──onl0─ online 10.0.1.1  (nginx :80, redis :6379, tcpcopy)
//!                                    online 10.0.2.1 ─onl1──tgt0─ target 10.0.2.2 (nginx :8080, redis :6379)
//!  target 10.0.3.2 ─tgt1──ast0─ assistant 10.0.3.3 (intercept; ip_forward=0: a black hole)
//!  online 10.0.4.1 ─onl2──ast1─ assistant 10.0.4.3 (control channel, port 36524)
//!  online 10.0.5.1 ─onl3──mir0─ mirror 10.0.5.2 (2 queues): client→online frames mirrored by tc,
//!                                    as a switch port would; mirror reaches target and assistant via online
//! ```
//! target routes the client network (10.0.1.0/24) and the `-c` pool
//! (10.9.9.0/24) to assistant, so the target's answers to replayed sessions
//! never reach the real client. `down` removes everything `up` made, also
//! after a crash or a half-finished `up`.

use crate::util::{sh, sh_quiet, stdout};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

pub const NAMESPACES: &[&str] = &["client", "online", "target", "assistant", "mirror"];
pub const RUN_DIR: &str = "/run/tcpcopy-lab";

pub const CLIENT_IP: &str = "10.0.1.10";
pub const ONLINE_IP: &str = "10.0.1.1";
pub const TARGET_IP: &str = "10.0.2.2";
pub const ASSISTANT_CTL_IP: &str = "10.0.4.3";

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
        sh(&format!("ip netns add {ns}"))?;
        in_ns(ns, "ip link set lo up")?;
    }
    let veth = |a: &str, ans: &str, b: &str, bns: &str, extra: &str| {
        sh(&format!(
            "ip link add {a} netns {ans} {extra} type veth peer name {b} netns {bns} {extra}"
        ))
    };
    veth("cli0", "client", "onl0", "online", "")?;
    veth("onl1", "online", "tgt0", "target", "")?;
    veth("tgt1", "target", "ast0", "assistant", "")?;
    veth("onl2", "online", "ast1", "assistant", "")?;
    veth(
        "onl3",
        "online",
        "mir0",
        "mirror",
        "numrxqueues 2 numtxqueues 2",
    )?;
    let addrs = [
        ("client", "cli0", "10.0.1.10/24"),
        ("client", "cli0", "10.0.1.11/24"),
        ("online", "onl0", "10.0.1.1/24"),
        ("online", "onl1", "10.0.2.1/24"),
        ("target", "tgt0", "10.0.2.2/24"),
        ("target", "tgt1", "10.0.3.2/24"),
        ("assistant", "ast0", "10.0.3.3/24"),
        ("online", "onl2", "10.0.4.1/24"),
        ("assistant", "ast1", "10.0.4.3/24"),
        ("online", "onl3", "10.0.5.1/24"),
        ("mirror", "mir0", "10.0.5.2/24"),
    ];
    for (ns, dev, addr) in addrs {
        in_ns(ns, &format!("ip addr add {addr} dev {dev}"))?;
    }
    for (ns, dev) in [
        ("client", "cli0"),
        ("online", "onl0"),
        ("online", "onl1"),
        ("online", "onl2"),
        ("online", "onl3"),
        ("target", "tgt0"),
        ("target", "tgt1"),
        ("assistant", "ast0"),
        ("assistant", "ast1"),
        ("mirror", "mir0"),
    ] {
        in_ns(ns, &format!("ip link set {dev} up"))?;
    }
    // Wire-sized segments between client and online, as a real NIC shows
    // them to XDP (no TSO/GSO/GRO super-packets).
    in_ns("client", "ethtool -K cli0 tso off gso off gro off")?;
    in_ns("online", "ethtool -K onl0 tso off gso off gro off")?;
    // Replayed sessions: the target answers via the assistant.
    in_ns("target", "ip route add 10.0.1.0/24 via 10.0.3.3")?;
    in_ns("target", "ip route add 10.9.9.0/24 via 10.0.3.3")?;
    for ns in ["target", "assistant", "online"] {
        in_ns(
            ns,
            "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        )?;
    }
    in_ns("target", "sysctl -qw net.ipv4.conf.tgt0.rp_filter=0")?;
    in_ns("assistant", "sysctl -qw net.ipv4.ip_forward=0")?;
    in_ns("mirror", "ip link set mir0 promisc on")?;
    // A NIC's RSS keeps a connection on one RX queue. veth picks the queue
    // from the sender's socket hash, which TCP re-rolls on retransmissions
    // unless txrehash is off: off, so the mirror's queues behave like RSS.
    in_ns("client", "sysctl -qw net.core.txrehash=0")?;
    // RSS would also keep a reused (address, port) on its queue; veth does
    // not (a new socket, a new hash), so the clients get the whole port
    // range and a short test does not reuse ports.
    in_ns(
        "client",
        "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'",
    )?;
    // The mirror box replays through online, which forwards to target and
    // assistant (and only that: client traffic is addressed to online).
    in_ns("mirror", "ip route add default via 10.0.5.1")?;
    in_ns(
        "online",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.onl3.rp_filter=0",
    )?;
    in_ns("assistant", "ip route add 10.0.5.0/24 via 10.0.4.1")?;
    // Switch-mirror port: copy every frame arriving from the client.
    in_ns("online", "tc qdisc add dev onl0 ingress")?;
    in_ns(
        "online",
        "tc filter add dev onl0 parent ffff: protocol all u32 match u32 0 0 action mirred egress mirror dev onl3",
    )?;
    start_servers()
}

fn nginx_conf(name: &str, listen: &str) -> String {
    format!(
        "worker_processes 1;\npid {RUN_DIR}/{name}-nginx.pid;\nerror_log {RUN_DIR}/{name}-nginx-error.log;\n\
events {{ worker_connections 8192; }}\n\
http {{\n  log_format lab '$remote_addr $remote_port $connection_requests \"$request\" $status $request_time';\n  access_log {RUN_DIR}/{name}-nginx-access.log lab;\n  client_body_temp_path {RUN_DIR}/{name}-body;\n\
  keepalive_requests 1000000;\n\
  server {{ listen {listen} reuseport backlog=4096; location / {{ return 200 \"hello from {name}\\n\"; }} }}\n}}\n"
    )
}

fn start_servers() -> Result<()> {
    for (name, ns, listen) in [
        ("online", "online", "10.0.1.1:80"),
        ("target", "target", "10.0.2.2:8080"),
    ] {
        let conf = run_dir().join(format!("{name}-nginx.conf"));
        std::fs::write(&conf, nginx_conf(name, listen))?;
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
        ("online", "online", ONLINE_IP),
        ("target", "target", TARGET_IP),
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
            ("online", ONLINE_IP, 80),
            ("target", TARGET_IP, 8080),
            ("online", ONLINE_IP, 6379),
            ("target", TARGET_IP, 6379),
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

/// Stop the target's nginx and start it again (a fault test).
pub fn restart_target_nginx() -> Result<()> {
    let conf = run_dir().join("target-nginx.conf");
    in_ns(
        "target",
        &format!(
            "nginx -e {RUN_DIR}/target-nginx-error.log -c {} -s stop",
            conf.display()
        ),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    in_ns(
        "target",
        &format!(
            "nginx -e {RUN_DIR}/target-nginx-error.log -c {}",
            conf.display()
        ),
    )
}

/// Kill every process in the lab's namespaces and delete them. Never fails.
pub fn down() {
    for ns in NAMESPACES {
        let pids = stdout(&format!("ip netns pids {ns} 2>/dev/null"));
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            sh_quiet(&format!("kill -TERM {}", pids.join(" ")));
        }
    }
    for _ in 0..20 {
        let left: usize = NAMESPACES
            .iter()
            .map(|ns| {
                stdout(&format!("ip netns pids {ns} 2>/dev/null"))
                    .split_whitespace()
                    .count()
            })
            .sum();
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for ns in NAMESPACES {
        let pids = stdout(&format!("ip netns pids {ns} 2>/dev/null"));
        if !pids.trim().is_empty() {
            sh_quiet(&format!(
                "kill -KILL {}",
                pids.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        sh_quiet(&format!("ip netns del {ns} 2>/dev/null"));
    }
    let _ = std::fs::remove_dir_all(RUN_DIR);
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

/// Count lines of a file in the lab's run dir (0 when absent).
pub fn count_lines(name: &str) -> u64 {
    std::fs::read_to_string(run_dir().join(name))
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}
