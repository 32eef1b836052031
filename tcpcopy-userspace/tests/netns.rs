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
use tcpcopy::send::Sender as _;
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
    let (_ip_a, ip_b) = (pair.ip_a(), pair.ip_b());
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
            xdp.set_keys("FILTER", &[port_key(8080)]).unwrap();
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
            let mut records = Vec::new();
            for i in 0..tcpcopy_common::RECORD_RINGS {
                let map = xdp.ebpf_mut().take_map(&format!("RECORDS{i}")).unwrap();
                let mut ring = RingBuf::try_from(map).unwrap();
                while let Some(item) = ring.next() {
                    let mut r = [0u8; 64];
                    r.copy_from_slice(&item[..64]);
                    records.push(ResponseRecord::new(r));
                }
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
                xdp.set_keys("SOURCES", &[port_key(8080)]).unwrap();
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

/// Namespaces `R` (a hand-driven replayer and fake tcpcopy), `T` (target
/// with a real nginx) and `S` (assistant running the intercept binary):
/// R–T 10.211.N.0/24, T–S 10.212.N.0/24, R–S control link 10.213.N.0/24.
/// T routes 10.9.9.0/24 (the replayed client) via S, and S forwards it on
/// to R, so any response intercept failed to drop would reach R.
struct Triangle {
    r: String,
    t: String,
    s: String,
    n: u32,
    dir: std::path::PathBuf,
}

impl Triangle {
    fn new() -> Triangle {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tri = Triangle {
            r: format!("tct-{pid}-{n}-r"),
            t: format!("tct-{pid}-{n}-t"),
            s: format!("tct-{pid}-{n}-s"),
            n,
            dir: std::env::temp_dir().join(format!("tct-{pid}-{n}")),
        };
        std::fs::create_dir_all(&tri.dir).unwrap();
        for ns in [&tri.r, &tri.t, &tri.s] {
            sh(&format!("ip netns add {ns}"));
            sh(&format!("ip -n {ns} link set lo up"));
            sh(&format!("ip netns exec {ns} sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"));
        }
        let (r, t, s) = (&tri.r, &tri.t, &tri.s);
        for (a, an, b, bn, net, ha, hb) in [
            (r, "rt", t, "tr", 211, 1, 2),
            (t, "ts", s, "st", 212, 2, 3),
            (r, "rs", s, "sr", 213, 1, 3),
        ] {
            sh(&format!(
                "ip -n {a} link add {an} type veth peer name {bn} netns {b}"
            ));
            sh(&format!("ip -n {a} addr add 10.{net}.{n}.{ha}/24 dev {an}"));
            sh(&format!("ip -n {b} addr add 10.{net}.{n}.{hb}/24 dev {bn}"));
            sh(&format!("ip -n {a} link set {an} up"));
            sh(&format!("ip -n {b} link set {bn} up"));
        }
        sh(&format!("ip -n {r} addr add 10.9.9.5/32 dev lo"));
        sh(&format!("ip -n {t} route add 10.9.9.0/24 via 10.212.{n}.3"));
        sh(&format!("ip -n {s} route add 10.9.9.0/24 via 10.213.{n}.1"));
        sh(&format!(
            "ip netns exec {s} sysctl -qw net.ipv4.ip_forward=1"
        ));
        tri
    }
    fn target_ip(&self) -> std::net::Ipv4Addr {
        format!("10.211.{}.2", self.n).parse().unwrap()
    }
    fn control_addr(&self) -> SocketAddr {
        format!("10.213.{}.3:36524", self.n).parse().unwrap()
    }
    /// Start nginx in T on target_ip:8080; returns the access log path.
    fn start_nginx(&self) -> std::path::PathBuf {
        let d = self.dir.display();
        let conf = self.dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log {d}/access.log; client_body_temp_path {d}/body;\n\
                 server {{ listen {}:8080; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
                self.target_ip()
            ),
        )
        .unwrap();
        sh(&format!(
            "ip netns exec {} nginx -e {d}/nginx-error.log -c {}",
            self.t,
            conf.display()
        ));
        self.dir.join("access.log")
    }
}

impl Drop for Triangle {
    fn drop(&mut self) {
        for ns in [&self.r, &self.t, &self.s] {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"
                ))
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Read records from a fake-tcpcopy connection until `want` matches one.
fn await_record(
    conn: &mut TcpStream,
    dec: &mut tcpcopy::proto::RecordDecoder,
    seen: &mut Vec<ResponseRecord>,
    want: impl Fn(&tcpcopy::proto::ResponseHeader) -> bool,
) -> Option<tcpcopy::proto::ResponseHeader> {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(h) = seen.iter().map(|r| r.header()).find(|h| want(h)) {
            return Some(h);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                dec.feed(&buf[..n], seen).expect("well-formed frames");
            }
            Err(_) => {}
        }
    }
}

#[test]
fn intercept_binary_routes_real_nginx_responses_to_its_tcpcopy_and_drops_them() {
    use tcpcopy::{
        proto::{Framing, RecordDecoder, RouteMsg},
        send::RawSender,
        wire::build::{build, syn_options, SegmentSpec},
    };
    if !enabled() {
        return;
    }
    let tri = Triangle::new();
    let access_log = tri.start_nginx();
    let log = tri.dir.join("intercept.log");
    let mut intercept = Command::new("ip")
        .args(["netns", "exec", &tri.s, env!("CARGO_BIN_EXE_intercept")])
        .args([
            "-i",
            "st",
            "-F",
            "tcp and src port 8080",
            "--stats-interval",
            "1",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let target = tri.target_ip();
    let control = tri.control_addr();
    let client = (std::net::IpAddr::from([10, 9, 9, 5]), 40000u16);
    let request = b"GET /replayed HTTP/1.1\r\nHost: t\r\n\r\n";

    let outcome = in_netns(&tri.r.clone(), move || {
        let mut conn = None;
        for _ in 0..100 {
            if let Ok(c) = TcpStream::connect_timeout(&control, Duration::from_millis(100)) {
                conn = Some(c);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut conn = conn.expect("intercept listens on the control link");
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // A garbage peer next to the good one.
        let mut garbage = TcpStream::connect(control).unwrap();
        garbage
            .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\0\0\0\0\0\0\0\0\0\0")
            .unwrap();
        // Anything arriving at the replayed client's address (S forwards there).
        let sniffer = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sniffer.set_nonblocking(true).unwrap();

        let mut hello = RouteMsg::version().encode().to_vec();
        hello.extend_from_slice(&RouteMsg::client_add(client, (target.into(), 8080)).encode());
        conn.write_all(&hello).unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let mut raw = RawSender::new().unwrap();
        let seg = |seq, ack, flags, options: &[u8], payload: &[u8]| {
            build(&SegmentSpec {
                src: client,
                dst: (target.into(), 8080),
                seq,
                ack,
                flags,
                window: 65535,
                options,
                payload,
                ip_id: 1,
                ttl: 64,
                tos: 0,
            })
        };
        raw.send(&seg(1000, 0, 0x02, &syn_options(1460), b""))
            .unwrap();
        raw.flush();
        let mut dec = RecordDecoder::new(Framing::Combined);
        let mut seen = Vec::new();
        let synack = await_record(&mut conn, &mut dec, &mut seen, |h| h.flags & 0x12 == 0x12)
            .expect("SYN-ACK header reaches the fake tcpcopy");
        raw.send(&seg(1001, synack.seq.wrapping_add(1), 0x18, &[], request))
            .unwrap();
        raw.flush();
        let reply = await_record(&mut conn, &mut dec, &mut seen, |h| h.payload_len > 0)
            .expect("the response's header reaches the fake tcpcopy");
        raw.send(&seg(1001 + request.len() as u32, 0, 0x04, &[], b""))
            .unwrap();
        raw.flush();
        std::thread::sleep(Duration::from_millis(200));
        let mut leaked = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while let Ok(n) = sniffer.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            let p: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if p.len() >= 24 && u16::from_be_bytes([p[20], p[21]]) == 8080 {
                leaked += 1;
            }
        }
        let mut g = [0u8; 1];
        garbage
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let garbage_closed = matches!(garbage.read(&mut g), Ok(0) | Err(_));
        (synack, reply, leaked, garbage_closed, seen.len())
    });
    let (synack, reply, leaked, garbage_closed, records) = outcome;
    assert_eq!(synack.ack, 1001, "SYN-ACK acknowledges our SYN");
    assert_eq!(synack.src_port, 8080);
    assert_eq!(synack.dst_ip, client.0);
    assert_eq!(reply.ack, 1001 + request.len() as u32, "{reply:?}");
    assert_eq!(reply.seq, synack.seq.wrapping_add(1));
    assert!(records >= 2);
    assert_eq!(leaked, 0, "no response may get past the assistant");
    assert!(garbage_closed, "the garbage peer is dropped");

    sh(&format!("kill -TERM {}", intercept.id()));
    let status = intercept.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "intercept exits cleanly: {text}");
    assert!(text.contains("dropping tcpcopy connection"), "{text}");
    assert!(text.contains("final:"), "{text}");
    let out = Command::new("ip")
        .args(["-n", &tri.s, "link", "show", "st"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("xdp"),
        "detached at exit"
    );
    let hits = std::fs::read_to_string(&access_log).unwrap_or_default();
    assert_eq!(
        hits.matches("/replayed").count(),
        1,
        "nginx saw the request once: {hits}"
    );
}
