//! One worker's control channel (spec §3.1–3.2, 3.7): `-C` connections to
//! every `-s` intercept, each opened with a blocking connect at start
//! (failure is fatal there) and greeted with the version message.
//! CLIENT_ADDs go to every live server, round-robin over its connections;
//! response records are read without blocking. A connection that fails is
//! closed; a server with none left is inactive until it is reconnected:
//! the worker starts non-blocking connects on a [`Backoff`] (from 100 ms)
//! and looks at them on every turn (`reconnect`), so an unreachable
//! intercept never holds the worker's loop up, and a restarted one is back
//! in use within a fraction of a second.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::proto::{
    Extension, Framing, Negotiation, ProtoError, RecordDecoder, ResponseRecord, RouteMsg,
};

struct Conn {
    stream: TcpStream,
    decoder: RecordDecoder,
    /// Route messages not yet written (the socket is non-blocking).
    out: Vec<u8>,
    /// IPv6 route messages waiting for intercept's answer to our offer:
    /// written once it granted IPv6, dropped (and counted) if it did not.
    held_v6: Vec<u8>,
}

/// What became of a route message given to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    /// To be written.
    Out,
    /// An IPv6 route, held until intercept answers our offer.
    Held,
    /// An IPv6 route this intercept cannot take (a C intercept, or one
    /// that did not grant IPv6).
    Refused,
}

impl Conn {
    fn queue(&mut self, msg: &RouteMsg) -> Queued {
        if !msg.is_ipv6() {
            msg.encode_into(&mut self.out);
            return Queued::Out;
        }
        match self.decoder.negotiation() {
            Negotiation::Granted(e) if e.ipv6 => {
                msg.encode_into(&mut self.out);
                Queued::Out
            }
            Negotiation::Offered => {
                msg.encode_into(&mut self.held_v6);
                Queued::Held
            }
            _ => Queued::Refused,
        }
    }
    /// Once intercept answered our offer: write the IPv6 routes held for
    /// it, or drop them; returns how many were dropped.
    fn settle_held(&mut self) -> u64 {
        if self.held_v6.is_empty() {
            return 0;
        }
        match self.decoder.negotiation() {
            Negotiation::Offered => 0,
            Negotiation::Granted(e) if e.ipv6 => {
                self.out.append(&mut self.held_v6);
                0
            }
            _ => {
                let n = self.held_v6.len() / crate::proto::ROUTE_MSG_V6_LEN;
                self.held_v6.clear();
                n as u64
            }
        }
    }
}

struct Server {
    addr: SocketAddr,
    conns: Vec<Conn>,
    next: usize,
    /// Non-blocking connects in progress (while the server is inactive),
    /// and when they started.
    pending: Vec<(socket2::Socket, Instant)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelStats {
    pub records: u64,
    pub frames: u64,
    pub routes_sent: u64,
    /// CLIENT_ADDs that no server took (every connection was down).
    pub routes_unsent: u64,
    /// CLIENT_ADDs of IPv6 sessions an intercept could not take (it did
    /// not grant our IPv6 extension: a C intercept, or an older one).
    pub routes_ipv6_refused: u64,
    pub conns_lost: u64,
}

/// How tcpcopy greets an intercept: the framing it expects, and our
/// extension when it asks for the target's payload prefixes (`--verdict`)
/// or has IPv6 targets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Greeting {
    pub framing: Framing,
    pub offer: Option<Extension>,
}

pub struct Channel {
    servers: Vec<Server>,
    per_server: usize,
    greeting: Greeting,
    pub stats: ChannelStats,
    /// Where records are read into, allocated once.
    read_buf: Box<[u8]>,
    /// Bumped whenever a connection is closed or opened (its fd may be
    /// reused by the next one): whoever watches the fds re-registers.
    generation: u64,
}

/// Bytes read from a control connection at a time.
const READ_BUF: usize = 64 * 1024;

/// How long the connect at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a non-blocking reconnect may stay in progress before it is
/// given up (and started again on the backoff).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn open(addr: SocketAddr, greeting: Greeting, timeout: Duration) -> io::Result<Conn> {
    greet(TcpStream::connect_timeout(&addr, timeout)?, greeting)
}

/// A connected stream, greeted with the version message (offering our
/// extension when asked to).
fn greet(mut stream: TcpStream, greeting: Greeting) -> io::Result<Conn> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let (version, decoder) = match greeting.offer {
        Some(ext) => (
            RouteMsg::version_offering(ext),
            RecordDecoder::offering(greeting.framing),
        ),
        None => (RouteMsg::version(), RecordDecoder::new(greeting.framing)),
    };
    stream.write_all(&version.encode())?;
    stream.set_nonblocking(true)?;
    Ok(Conn {
        stream,
        decoder,
        out: Vec::new(),
        held_v6: Vec::new(),
    })
}

impl Channel {
    pub fn connect(addrs: &[SocketAddr], per_server: usize, greeting: Greeting) -> Result<Self> {
        let mut servers = Vec::new();
        for &addr in addrs {
            let conns = (0..per_server)
                .map(|_| open(addr, greeting, CONNECT_TIMEOUT))
                .collect::<io::Result<Vec<_>>>()
                .with_context(|| format!("cannot connect to intercept at {addr}"))?;
            servers.push(Server {
                addr,
                conns,
                next: 0,
                pending: Vec::new(),
            });
        }
        Ok(Channel {
            servers,
            per_server,
            greeting,
            stats: ChannelStats::default(),
            read_buf: vec![0u8; READ_BUF].into_boxed_slice(),
            generation: 0,
        })
    }

    /// Servers with at least one connection.
    pub fn active(&self) -> usize {
        self.servers.iter().filter(|s| !s.conns.is_empty()).count()
    }

    /// Changes whenever the set of connections (and so of fds) changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fds(&self, out: &mut Vec<RawFd>) {
        for s in &self.servers {
            out.extend(s.conns.iter().map(|c| c.stream.as_raw_fd()));
        }
    }

    /// Queue a CLIENT_ADD for every live server (written by [`flush`]).
    /// Returns whether one took it.
    ///
    /// [`flush`]: Channel::flush
    pub fn queue_route(&mut self, msg: &RouteMsg) -> bool {
        let mut any = false;
        for s in &mut self.servers {
            if s.conns.is_empty() {
                continue;
            }
            let i = s.next % s.conns.len();
            s.next = s.next.wrapping_add(1);
            match s.conns[i].queue(msg) {
                Queued::Out | Queued::Held => any = true,
                Queued::Refused => self.stats.routes_ipv6_refused += 1,
            }
        }
        if any {
            self.stats.routes_sent += 1;
        } else {
            self.stats.routes_unsent += 1;
        }
        any
    }

    /// Write pending route messages; a connection that fails is closed.
    pub fn flush(&mut self) {
        let mut lost = 0;
        for s in &mut self.servers {
            let addr = s.addr;
            s.conns.retain_mut(|c| {
                while !c.out.is_empty() {
                    match c.stream.write(&c.out) {
                        Ok(0) => break,
                        Ok(n) => {
                            c.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "intercept connection lost (write)");
                            lost += 1;
                            return false;
                        }
                    }
                }
                if c.out.len() > 4 << 20 {
                    tracing::warn!(%addr, "intercept connection stuck: 4 MiB of route messages unsent");
                    lost += 1;
                    return false;
                }
                true
            });
        }
        self.stats.conns_lost += lost;
        self.generation += lost;
    }

    /// Read every waiting response record.
    pub fn poll_records(&mut self, out: &mut Vec<ResponseRecord>) {
        let buf = &mut self.read_buf[..];
        let before = out.len();
        let mut lost = 0;
        let mut frames = 0;
        let mut refused = 0;
        for s in &mut self.servers {
            let addr = s.addr;
            s.conns.retain_mut(|c| loop {
                match c.stream.read(buf) {
                    Ok(0) => {
                        tracing::warn!(%addr, "intercept closed a connection");
                        lost += 1;
                        return false;
                    }
                    Ok(n) => match c.decoder.feed(&buf[..n], out) {
                        Ok(f) => {
                            frames += f;
                            refused += c.settle_held();
                            if n < buf.len() {
                                // Drained: a read that would block is a
                                // wasted system call (the wait is level-
                                // triggered, so what came meanwhile wakes
                                // the next turn).
                                return true;
                            }
                        }
                        Err(e @ ProtoError::BadCount(_)) => {
                            tracing::warn!(%addr, "bad frame from intercept ({e}): closing the connection");
                            lost += 1;
                            return false;
                        }
                        Err(e) => {
                            tracing::warn!(%addr, "intercept: {e}");
                            lost += 1;
                            return false;
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "intercept connection lost (read)");
                        lost += 1;
                        return false;
                    }
                }
            });
        }
        if refused > 0 && self.stats.routes_ipv6_refused == 0 {
            tracing::warn!("intercept did not grant IPv6 (a C intercept, or an older one): IPv6 sessions cannot be routed");
        }
        self.stats.routes_ipv6_refused += refused;
        self.stats.conns_lost += lost;
        self.generation += lost;
        self.stats.frames += frames as u64;
        self.stats.records += (out.len() - before) as u64;
    }

    /// Whether the intercepts send the target's payload prefixes: any
    /// connection that declined our extension makes the answer no (its
    /// responses carry none); None while no connection has told yet.
    pub fn prefixes_granted(&self) -> Option<bool> {
        let mut told = None;
        for c in self.servers.iter().flat_map(|s| &s.conns) {
            match c.decoder.negotiation() {
                Negotiation::Granted(_) => told = Some(told.unwrap_or(true)),
                Negotiation::Declined | Negotiation::NotOffered => return Some(false),
                Negotiation::Offered => {}
            }
        }
        told
    }

    /// Servers with no connection left.
    pub fn inactive(&self) -> usize {
        self.servers.len() - self.active()
    }

    /// Whether connects are in progress (to be looked at by `reconnect`).
    pub fn reconnecting(&self) -> bool {
        self.servers.iter().any(|s| !s.pending.is_empty())
    }

    /// Start non-blocking connects to every inactive server that has none
    /// in progress (the worker calls this on its backoff).
    pub fn start_reconnects(&mut self) {
        for s in &mut self.servers {
            if !s.conns.is_empty() || !s.pending.is_empty() {
                continue;
            }
            for _ in 0..self.per_server {
                match start_connect(s.addr) {
                    Ok(sock) => s.pending.push((sock, Instant::now())),
                    Err(e) => {
                        tracing::debug!(addr = %s.addr, error = %e, "intercept still unreachable")
                    }
                }
            }
        }
    }

    /// Look at the connects in progress (without waiting): the servers
    /// that have a connection again are returned by index (a restarted
    /// intercept knows no routes: the caller announces its sessions' again
    /// with [`Channel::queue_route_to`]). Failed or overdue connects are
    /// dropped.
    pub fn reconnect(&mut self) -> Vec<usize> {
        let mut back = Vec::new();
        for (i, s) in self.servers.iter_mut().enumerate() {
            if s.pending.is_empty() {
                continue;
            }
            let addr = s.addr;
            let greeting = self.greeting;
            let mut conns = Vec::new();
            s.pending
                .retain(|(sock, started)| match connect_state(sock) {
                    Connecting::Done => {
                        match sock
                            .try_clone()
                            .and_then(|c| greet(TcpStream::from(c), greeting))
                        {
                            Ok(conn) => conns.push(conn),
                            Err(e) => {
                                tracing::debug!(%addr, error = %e, "greeting intercept failed")
                            }
                        }
                        false
                    }
                    Connecting::InProgress => started.elapsed() < RECONNECT_TIMEOUT,
                    Connecting::Failed(e) => {
                        tracing::debug!(%addr, error = %e, "intercept still unreachable");
                        false
                    }
                });
            if !conns.is_empty() {
                if s.conns.is_empty() {
                    tracing::info!(%addr, "reconnected to intercept");
                    back.push(i);
                }
                s.conns.extend(conns);
                self.generation += 1;
            }
        }
        back
    }

    /// Queue a CLIENT_ADD for server `index` only.
    pub fn queue_route_to(&mut self, index: usize, msg: &RouteMsg) {
        let Some(s) = self.servers.get_mut(index) else {
            return;
        };
        if s.conns.is_empty() {
            return;
        }
        let i = s.next % s.conns.len();
        s.next = s.next.wrapping_add(1);
        if s.conns[i].queue(msg) == Queued::Refused {
            self.stats.routes_ipv6_refused += 1;
        } else {
            self.stats.routes_sent += 1;
        }
    }
}

/// A non-blocking connect to `addr`, in progress.
fn start_connect(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

enum Connecting {
    Done,
    InProgress,
    Failed(io::Error),
}

/// Where a non-blocking connect stands, without waiting.
fn connect_state(sock: &socket2::Socket) -> Connecting {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n == 0 {
        return Connecting::InProgress;
    }
    match sock.take_error() {
        Ok(None) if n > 0 && pfd.revents & libc::POLLOUT != 0 => Connecting::Done,
        Ok(None) => Connecting::Failed(io::Error::other("connect failed")),
        Ok(Some(e)) | Err(e) => Connecting::Failed(e),
    }
}

/// When to try an unreachable intercept again: soon after it went (it may
/// only be restarting), then less often, up to a cap.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    next: Instant,
}

impl Backoff {
    /// The first retry comes this soon after a loss.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// Retries never come further apart than this: an intercept that
    /// comes back is in use again within half a second.
    pub const MAX: Duration = Duration::from_millis(500);

    pub fn new(now: Instant) -> Backoff {
        Backoff {
            delay: Backoff::FIRST,
            next: now + Backoff::FIRST,
        }
    }
    /// Is a retry due?
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }
    /// No retry has failed yet in this outage.
    pub fn is_first(&self) -> bool {
        self.delay == Backoff::FIRST
    }
    /// A retry failed (or only partly worked): wait twice as long.
    pub fn failed(&mut self, now: Instant) {
        self.delay = (self.delay * 2).min(Backoff::MAX);
        self.next = now + self.delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Poll a connect in progress until it settles (at most 2 s).
    fn settle(sock: &socket2::Socket) -> Connecting {
        let start = Instant::now();
        loop {
            match connect_state(sock) {
                Connecting::InProgress if start.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn reconnects_never_wait_and_tell_done_from_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let sock = start_connect(addr).unwrap();
        assert!(started.elapsed() < Duration::from_millis(50), "no waiting");
        assert!(matches!(settle(&sock), Connecting::Done));
        drop(listener);
        match start_connect(addr) {
            Ok(sock) => assert!(matches!(settle(&sock), Connecting::Failed(_))),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        }
    }

    #[test]
    fn retries_start_soon_and_back_off_to_a_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        assert!(!b.due(t0));
        assert!(b.due(t0 + Duration::from_millis(100)));
        let mut now = t0 + Duration::from_millis(100);
        let mut delays = Vec::new();
        for _ in 0..7 {
            b.failed(now);
            let mut d = Duration::ZERO;
            while !b.due(now + d) {
                d += Duration::from_millis(50);
            }
            delays.push(d.as_millis());
            now += d;
        }
        assert_eq!(delays, vec![200, 400, 500, 500, 500, 500, 500]);
    }

    /// What the fake intercept read: the version message, and what came
    /// after it.
    type Heard = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

    /// A fake intercept on loopback: accepts one connection, reads the
    /// version message, answers with `reply`; returns what tcpcopy wrote
    /// after the version message within 300 ms.
    fn fake_intercept(reply: Vec<u8>) -> (SocketAddr, Heard) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut version = vec![0u8; crate::proto::ROUTE_MSG_LEN];
            s.read_exact(&mut version).unwrap();
            s.write_all(&reply).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut rest = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&buf[..n]);
            }
            (version, rest)
        });
        (addr, t)
    }

    fn routes() -> (RouteMsg, RouteMsg) {
        let v4 = RouteMsg::client_add(
            ("10.9.9.5".parse().unwrap(), 40000),
            ("10.0.2.2".parse().unwrap(), 8080),
        );
        let v6 = RouteMsg::client_add(
            ("fd00:99::5".parse().unwrap(), 40000),
            ("fd00:2::2".parse().unwrap(), 8080),
        );
        (v4, v6)
    }

    /// Offer IPv6, queue an IPv4 and an IPv6 route before intercept has
    /// answered, then read what it answers and flush.
    fn run_against(reply: Vec<u8>) -> (Vec<u8>, Vec<u8>, ChannelStats) {
        let (addr, t) = fake_intercept(reply);
        let greeting = Greeting {
            framing: Framing::Combined,
            offer: Some(Extension::with_ipv6(0)),
        };
        let mut ch = Channel::connect(&[addr], 1, greeting).unwrap();
        let (v4, v6) = routes();
        assert!(ch.queue_route(&v4) && ch.queue_route(&v6));
        ch.flush();
        let mut records = Vec::new();
        let start = Instant::now();
        while records.is_empty() && start.elapsed() < Duration::from_secs(2) {
            ch.poll_records(&mut records);
            std::thread::sleep(Duration::from_millis(5));
        }
        ch.flush();
        assert_eq!(records.len(), 1, "the one response record");
        let (version, rest) = t.join().unwrap();
        (version, rest, ch.stats)
    }

    fn one_record(granted: Option<Extension>) -> Vec<u8> {
        let mut p = vec![0u8; 52];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&52u16.to_be_bytes());
        p[9] = 6;
        p[32] = 5 << 4;
        let r = ResponseRecord::from_ip_packet(&p).unwrap();
        let mut out = Vec::new();
        if let Some(ext) = granted {
            crate::proto::encode_records(
                Framing::Combined,
                None,
                &[ext.acknowledgement()],
                0,
                &mut out,
            );
        }
        crate::proto::encode_records(Framing::Combined, granted, &[r], 0, &mut out);
        out
    }

    /// A protocol-6 intercept (recorded bytes: one plain record) declines
    /// the offer: it gets the IPv4 route as protocol 6 writes it and never
    /// the IPv6 one, which is counted.
    #[test]
    fn a_protocol_6_intercept_never_sees_an_ipv6_route() {
        let plain = one_record(None);
        assert_eq!(plain.len(), 2 + 64);
        let (version, rest, stats) = run_against(plain);
        assert_eq!(&version[8..12], b"TCP6", "the offer");
        let (v4, _) = routes();
        assert_eq!(rest, v4.encode(), "only the 14 protocol-6 bytes");
        assert_eq!(stats.routes_ipv6_refused, 1);
    }

    /// An intercept that grants IPv6 gets the held IPv6 route once its
    /// acknowledgement came.
    #[test]
    fn a_granting_intercept_gets_the_held_ipv6_route() {
        let ext = Extension::with_ipv6(0);
        let (_, rest, stats) = run_against(one_record(Some(ext)));
        let (v4, v6) = routes();
        let mut want = v4.encode();
        want.extend_from_slice(&v6.encode());
        assert_eq!(rest, want, "IPv4 at once, IPv6 after the grant");
        assert_eq!(stats.routes_ipv6_refused, 0);
    }
}
