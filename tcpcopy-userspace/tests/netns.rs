//! Root-only integration tests in network namespaces that the tests create
//! and remove themselves (veth pairs, addresses inside them; the machine's
//! own interfaces are never touched). Run by `cargo xtask test`, which sets
//! TCPCOPY_NETNS_TESTS=1; without it (plain `cargo test`) they return early
//! and say so, since they need root.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::maps::RingBuf;
use tcpcopy::{
    proto::ResponseRecord,
    wire::{Ipv4View, TcpView},
    xdp::{AttachMode, AttachedXdp, INTERCEPT_EBPF, TCPCOPY_EBPF},
};
use tcpcopy_common::{capture_mode, intercept_counter, tcpcopy_counter, PortKey, TapHeader};

fn enabled() -> bool {
    if std::env::var_os("TCPCOPY_NETNS_TESTS").is_some() {
        return true;
    }
    eprintln!("namespace test not run: needs root; `cargo xtask test` runs it");
    false
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: `a` (10.200.N.1) and `b`
/// (10.200.N.2). Removed on drop.
struct Pair {
    a: String,
    b: String,
    net: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(1);

impl Pair {
    fn new() -> Pair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let p = Pair {
            a: format!("tct-{pid}-{n}-a"),
            b: format!("tct-{pid}-{n}-b"),
            net: n,
        };
        sh(&format!("ip netns add {}", p.a));
        sh(&format!("ip netns add {}", p.b));
        sh(&format!(
            "ip -n {} link add va type veth peer name vb netns {}",
            p.a, p.b
        ));
        sh(&format!("ip -n {} addr add 10.200.{n}.1/24 dev va", p.a));
        sh(&format!("ip -n {} addr add 10.200.{n}.2/24 dev vb", p.b));
        for (ns, dev) in [(&p.a, "va"), (&p.b, "vb")] {
            sh(&format!("ip -n {ns} link set {dev} up"));
            sh(&format!("ip -n {ns} link set lo up"));
        }
        p
    }
    fn ip_a(&self) -> String {
        format!("10.200.{}.1", self.net)
    }
    fn ip_b(&self) -> String {
        format!("10.200.{}.2", self.net)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Run `f` on a fresh thread that has entered namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd; affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}");
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

fn port_key(port: u16) -> PortKey {
    PortKey::new(0, port.to_be())
}

fn ping(from_ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from_ns, "ping", "-c1", "-W1", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A listener in `ns` that accepts connections for `secs` and echoes.
fn spawn_echo(ns: &str, addr: SocketAddr, secs: u64) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let h = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            let end = std::time::Instant::now() + Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        let mut buf = [0u8; 64];
                        if let Ok(n) = s.read(&mut buf) {
                            let _ = s.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    });
    rx.recv().unwrap();
    h
}

#[test]
fn intercept_program_drops_matched_responses_exports_headers_and_passes_the_rest() {
    if !enabled() {
        return;
    }
    let pair = Pair::new();
    let (ip_a, ip_b) = (pair.ip_a(), pair.ip_b());
    let server = spawn_echo(&pair.b, format!("{ip_b}:8080").parse().unwrap(), 4);
    let other = spawn_echo(&pair.b, format!("{ip_b}:9090").parse().unwrap(), 4);

    let ns_a = pair.a.clone();
    let (records, counters, reached_8080, reached_9090, pinged) =
        in_netns(&pair.a.clone(), move || {
            let mut xdp = AttachedXdp::load(
                INTERCEPT_EBPF,
                "intercept",
                &[],
                &["va".into()],
                AttachMode::Auto,
            )
            .expect("load and attach intercept program");
            xdp.set_port_keys("FILTER", &[port_key(8080)]).unwrap();
            let reached_8080 = TcpStream::connect_timeout(
                &format!("{ip_b}:8080").parse().unwrap(),
                Duration::from_millis(700),
            )
            .is_ok();
            let reached_9090 = {
                let mut s = TcpStream::connect_timeout(
                    &format!("{ip_b}:9090").parse().unwrap(),
                    Duration::from_secs(2),
                )
                .expect("unmatched port must work");
                s.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.read_exact(&mut b).is_ok() && &b == b"ping"
            };
            let pinged = ping(&ns_a, &ip_b);
            let counters = xdp
                .read_counters("COUNTERS", intercept_counter::COUNT)
                .unwrap();
            let mut ring = RingBuf::try_from(xdp.ebpf_mut().take_map("RECORDS").unwrap()).unwrap();
            let mut records = Vec::new();
            while let Some(item) = ring.next() {
                let mut r = [0u8; 64];
                r.copy_from_slice(&item[..64]);
                records.push(ResponseRecord(r));
            }
            drop(xdp);
            (records, counters, reached_8080, reached_9090, pinged)
        });
    server.join().unwrap();
    other.join().unwrap();

    assert!(
        !reached_8080,
        "the SYN-ACK from the matched port must be dropped"
    );
    assert!(reached_9090, "an unmatched port must pass");
    assert!(pinged, "ICMP (and ARP) must pass");
    assert!(!records.is_empty(), "matched responses must be exported");
    for r in &records {
        let h = r.header();
        assert_eq!(h.src_port, 8080);
        assert_eq!(h.src_ip.to_string(), pair.ip_b());
        assert_eq!(h.flags & 0x12, 0x12, "SYN-ACKs (retransmitted) only: {h:?}");
        assert!(h.mss.is_some(), "SYN-ACK options are carried in the record");
    }
    assert_eq!(
        counters[intercept_counter::MATCHED as usize],
        records.len() as u64
    );
    assert_eq!(
        counters[intercept_counter::EXPORTED as usize],
        records.len() as u64
    );
    assert_eq!(counters[intercept_counter::RING_FULL as usize], 0);
    // Nothing stays attached once the guard is gone.
    let out = Command::new("ip")
        .args(["-n", &pair.a, "link", "show", "va"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("xdp"),
        "program still attached"
    );
}

#[test]
fn tcpcopy_program_taps_matched_segments_and_passes_everything() {
    if !enabled() {
        return;
    }
    let pair = Pair::new();
    let ip_b = pair.ip_b();
    let ns_a = pair.a.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The "online" side (b) carries the tap program.
    let tap = std::thread::spawn({
        let ns_b = pair.b.clone();
        move || {
            in_netns(&ns_b, move || {
                let mut xdp = AttachedXdp::load(
                    TCPCOPY_EBPF,
                    "tcpcopy_capture",
                    &[("CAPTURE_MODE", capture_mode::TAP), ("TAP_RINGS", 1)],
                    &["vb".into()],
                    AttachMode::Auto,
                )
                .expect("load and attach tcpcopy program");
                xdp.set_port_keys("SOURCES", &[port_key(8080)]).unwrap();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
                let counters = xdp
                    .read_counters("COUNTERS", tcpcopy_counter::COUNT)
                    .unwrap();
                let mut ring = RingBuf::try_from(xdp.ebpf_mut().take_map("TAP0").unwrap()).unwrap();
                let mut packets = Vec::new();
                while let Some(item) = ring.next() {
                    let hdr_len = std::mem::size_of::<TapHeader>();
                    let len = u32::from_ne_bytes(item[..4].try_into().unwrap()) as usize;
                    packets.push(item[hdr_len..hdr_len + len].to_vec());
                }
                (counters, packets)
            })
        }
    });
    rx.recv().unwrap();
    let server = spawn_echo(&pair.b, format!("{ip_b}:8080").parse().unwrap(), 3);
    let echoed = in_netns(&pair.a, move || {
        let mut s = TcpStream::connect_timeout(
            &format!("{ip_b}:8080").parse().unwrap(),
            Duration::from_secs(2),
        )
        .unwrap();
        s.write_all(b"hello tap").unwrap();
        let mut b = [0u8; 9];
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut b).unwrap();
        b
    });
    let pinged = ping(&ns_a, &pair.ip_b());
    done_tx.send(()).unwrap();
    let (counters, packets) = tap.join().unwrap();
    server.join().unwrap();

    assert_eq!(&echoed, b"hello tap", "tapped traffic must still be served");
    assert!(pinged);
    let matched = counters[tcpcopy_counter::MATCHED as usize];
    assert!(matched >= 3, "SYN, ACK and data at least: {counters:?}");
    assert_eq!(
        counters[tcpcopy_counter::TAPPED as usize],
        packets.len() as u64
    );
    assert_eq!(
        matched,
        packets.len() as u64 + counters[tcpcopy_counter::RING_FULL as usize]
    );
    let mut saw_payload = false;
    for p in &packets {
        let ip = Ipv4View::new_checked(p).unwrap();
        let tcp = TcpView::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.dst_port(), 8080);
        saw_payload |= tcp.payload() == b"hello tap";
    }
    assert!(saw_payload, "the request bytes are in the tap ring");
}
