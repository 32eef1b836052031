//! intercept's control channel server (spec §3.1–3.4): one thread, one
//! epoll loop (mio) over the listen socket, every tcpcopy connection and the
//! record source. Route messages go into the [`Router`]; response records
//! are routed and written to their connection in combined frames (≤ 16
//! records) or bare. A peer that sends garbage, the old 8-byte protocol,
//! half a message, or stops reading is dropped with one log line; the others
//! are not affected. Another protocol version is served with a warning, as
//! the C intercept does (the messages are the same). A message type other than CLIENT_ADD/CLIENT_DEL means
//! the stream is out of step (the C tcpcopy never sends one), so its peer is
//! dropped instead of the C tool's "log and read on".

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    os::fd::RawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hashbrown::HashMap;
use mio::{
    net::{TcpListener, TcpStream},
    unix::SourceFd,
    Events, Interest, Poll, Token,
};

use super::{
    peer::{Misbehaved, PeerProtocol, Request},
    router::{Disposition, PeerId, Router, RouterStats},
};
use crate::{
    proto::{Framing, ResponseRecord, INTERNAL_VERSION},
    wake::Coalesce,
};

const LISTENER: Token = Token(0);
const SOURCE: Token = Token(1);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub framing: Framing,
    pub max_routes: usize,
    pub delay_table_size: usize,
    /// Empty: everyone may connect.
    pub allow: Vec<crate::wire::Cidr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections: u64,
    pub refused: u64,
    /// Peers dropped for misbehaving (garbage, bad version, stuck).
    pub dropped_peers: u64,
    pub closed_peers: u64,
    pub records_in: u64,
    pub records_sent: u64,
    pub frames_sent: u64,
    pub route_dels: u64,
}

struct Peer {
    stream: TcpStream,
    addr: SocketAddr,
    protocol: PeerProtocol,
}

pub struct ControlServer {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    peers: HashMap<PeerId, Peer>,
    next_peer: PeerId,
    router: Router,
    cfg: ServerConfig,
    stats: ServerStats,
    started: Instant,
    scratch: Vec<ResponseRecord>,
    /// Where peers' route messages are read into, allocated once.
    read_buf: Box<[u8]>,
    // A turn's lists, kept to reuse their memory.
    ready: Vec<(Token, bool, bool)>,
    with_pending: Vec<PeerId>,
    /// When a wake's work is taken (`--wake-pause`; none by default).
    coalesce: Coalesce,
    /// The most payload bytes a granted peer asked for (0: none): the
    /// source is told once it grows.
    prefix_wanted: u16,
    prefix_told: u16,
}

/// Where response records come from: the XDP ring buffer in production, a
/// channel or generator in tests and benchmarks.
pub trait RecordSource {
    /// The file descriptors that become readable when records wait (none:
    /// the source is drained on every turn).
    fn fds(&self, out: &mut Vec<RawFd>);
    /// Append up to `max` waiting records to `out`.
    fn drain(&mut self, out: &mut Vec<ResponseRecord>, max: usize);
    /// From now on, records carry up to `bytes` of their response's
    /// payload (a tcpcopy was granted our extension). Sources without
    /// payloads ignore it.
    fn want_prefixes(&mut self, _bytes: u16) {}
}

impl ControlServer {
    pub fn bind(cfg: ServerConfig) -> Result<Self> {
        let poll = Poll::new().context("creating epoll")?;
        let mut listener = TcpListener::bind(cfg.listen)
            .with_context(|| format!("listening on {}", cfg.listen))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        // The stop bell ends a turn's sleep at once (a wake like the
        // ring's: nothing to take from it).
        if let Some(bell) = crate::process::stop_bell() {
            poll.registry()
                .register(&mut SourceFd(&bell), SOURCE, Interest::READABLE)?;
        }
        Ok(ControlServer {
            poll,
            events: Events::with_capacity(256),
            listener,
            peers: HashMap::new(),
            next_peer: 2,
            router: Router::new(cfg.max_routes, cfg.delay_table_size),
            cfg,
            stats: ServerStats::default(),
            started: Instant::now(),
            scratch: Vec::new(),
            read_buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            ready: Vec::new(),
            with_pending: Vec::new(),
            coalesce: Coalesce::new(Duration::ZERO),
            prefix_wanted: 0,
            prefix_told: 0,
        })
    }

    /// After a wake that follows a small turn, pause this long before
    /// taking the work (`--wake-pause`).
    pub fn set_wake_pause(&mut self, pause: Duration) {
        self.coalesce = Coalesce::new(pause);
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Watch the source's fds for readiness.
    pub fn register_source(&mut self, source: &dyn RecordSource) -> Result<()> {
        let mut fds = Vec::new();
        source.fds(&mut fds);
        for fd in fds {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), SOURCE, Interest::READABLE)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }
    pub fn router_stats(&self) -> RouterStats {
        self.router.stats()
    }
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
    pub fn routes(&self) -> usize {
        self.router.routes()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One turn of the loop: wait up to `timeout` for sockets or records,
    /// take in route messages, route every waiting record, flush frames.
    /// Returns whether anything woke it before the timeout.
    pub fn turn(&mut self, source: &mut dyn RecordSource, timeout: Duration) -> Result<bool> {
        self.poll
            .poll(&mut self.events, Some(timeout))
            .or_else(|e| {
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        if !self.events.is_empty() && !timeout.is_zero() {
            self.coalesce.after_wake();
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token(),
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable(),
            )
        }));
        for &(token, readable, writable) in &ready {
            match token {
                LISTENER => self.accept_all(),
                SOURCE => {}
                Token(id) => {
                    let id = id as PeerId;
                    if readable {
                        self.read_peer(id);
                    }
                    if writable {
                        self.write_peer(id);
                    }
                }
            }
        }
        self.ready = ready;
        if self.prefix_wanted > self.prefix_told {
            source.want_prefixes(self.prefix_wanted);
            self.prefix_told = self.prefix_wanted;
        }
        // Records are drained every turn, to the last: the ring wakes the
        // poll only for the first record after the reader caught up.
        let now = self.now_ms();
        let records_before = self.stats.records_in;
        loop {
            self.scratch.clear();
            source.drain(&mut self.scratch, 65536);
            if self.scratch.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut self.scratch);
            self.stats.records_in += batch.len() as u64;
            for rec in &batch {
                if let Disposition::Send(peer) = self.router.route(now, rec) {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.protocol.queue(std::slice::from_ref(rec));
                    }
                }
            }
            self.scratch = batch;
            if self.scratch.len() < 65536 {
                break;
            }
        }
        self.coalesce
            .took((self.stats.records_in - records_before) as usize);
        self.router.expire(now);
        let mut ids = std::mem::take(&mut self.with_pending);
        ids.clear();
        ids.extend(
            self.peers
                .iter()
                .filter(|(_, p)| p.protocol.has_pending())
                .map(|(id, _)| *id),
        );
        for &id in &ids {
            self.flush_peer(id);
        }
        self.with_pending = ids;
        Ok(!self.events.is_empty())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, addr)) => {
                    let allowed = self.cfg.allow.is_empty()
                        || self
                            .cfg
                            .allow
                            .iter()
                            .any(|n| n.contains(addr.ip().to_canonical()));
                    if !allowed {
                        self.stats.refused += 1;
                        tracing::warn!(%addr, "refused control connection: not in --allow");
                        continue;
                    }
                    let id = self.next_peer;
                    self.next_peer += 1;
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(id as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(%addr, error = %e, "could not watch control connection");
                        continue;
                    }
                    self.stats.connections += 1;
                    tracing::info!(%addr, peer = id, "tcpcopy connected");
                    self.peers.insert(
                        id,
                        Peer {
                            stream,
                            addr,
                            protocol: PeerProtocol::new(self.cfg.framing),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn read_peer(&mut self, id: PeerId) {
        let mut buf = std::mem::take(&mut self.read_buf);
        self.read_peer_into(id, &mut buf);
        self.read_buf = buf;
    }

    fn read_peer_into(&mut self, id: PeerId, buf: &mut [u8]) {
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            let received = match peer.stream.read(buf) {
                Ok(0) => {
                    match peer.protocol.closed() {
                        Ok(()) => self.close_peer(id),
                        Err(Misbehaved(why)) => self.drop_peer(id, &why),
                    }
                    return;
                }
                Ok(n) => peer.protocol.receive(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.drop_peer(id, &format!("read error: {e}"));
                    return;
                }
            };
            match received {
                Ok(r) => {
                    if let Some(v) = r.other_version {
                        tracing::warn!(addr = %peer.addr, peer = id,
                            "not compatible, client:{v}, intercept:{INTERNAL_VERSION} (served anyway, as the C intercept does)");
                    }
                    if let Some(ext) = r.granted {
                        if ext.prefix_bytes > 0 {
                            tracing::info!(addr = %peer.addr, peer = id, bytes = ext.prefix_bytes,
                                "tcpcopy asked for the target's payload prefixes (--verdict): granted");
                        }
                        if ext.ipv6 {
                            tracing::info!(addr = %peer.addr, peer = id,
                                "tcpcopy replays IPv6: IPv6 routes and records granted");
                        }
                        self.prefix_wanted = self.prefix_wanted.max(ext.prefix_bytes);
                    }
                    self.apply(id, &r.requests);
                }
                Err(Misbehaved(why)) => {
                    self.drop_peer(id, &why);
                    return;
                }
            }
        }
    }

    /// Carry out what peer `id` asked for.
    fn apply(&mut self, id: PeerId, requests: &[Request]) {
        for r in requests {
            match r {
                Request::AddRoute(m) => {
                    let parked = self.router.add_route(m, id);
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.protocol.queue(&parked);
                    }
                }
                Request::DeleteRoute => self.stats.route_dels += 1,
            }
        }
    }

    fn flush_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let e = peer.protocol.encode_pending(super::monotonic_ns());
        self.stats.records_sent += e.records;
        self.stats.frames_sent += e.frames;
        self.write_peer(id);
    }

    fn write_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        while !peer.protocol.unwritten().is_empty() {
            match peer.stream.write(peer.protocol.unwritten()) {
                Ok(0) => break,
                Ok(n) => peer.protocol.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.drop_peer(id, &format!("write error: {e}"));
                    return;
                }
            }
        }
        if let Err(Misbehaved(why)) = peer.protocol.check_backlog() {
            self.drop_peer(id, &why);
        }
    }

    /// Drop a misbehaving peer with one log line.
    fn drop_peer(&mut self, id: PeerId, why: &str) {
        if let Some(p) = self.remove_peer(id) {
            self.stats.dropped_peers += 1;
            tracing::warn!(addr = %p.addr, peer = id, "dropping tcpcopy connection: {why}");
        }
    }

    /// A peer that closed cleanly.
    fn close_peer(&mut self, id: PeerId) {
        if let Some(p) = self.remove_peer(id) {
            self.stats.closed_peers += 1;
            tracing::info!(addr = %p.addr, peer = id, "tcpcopy disconnected");
        }
    }

    fn remove_peer(&mut self, id: PeerId) -> Option<Peer> {
        let mut p = self.peers.remove(&id)?;
        let _ = self.poll.registry().deregister(&mut p.stream);
        self.router.peer_closed(id);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{RecordDecoder, RouteMsg};
    use std::net::Ipv4Addr;
    use std::net::TcpStream as StdStream;

    #[derive(Default)]
    struct VecSource(Vec<ResponseRecord>);
    impl RecordSource for VecSource {
        fn fds(&self, _: &mut Vec<RawFd>) {}
        fn drain(&mut self, out: &mut Vec<ResponseRecord>, max: usize) {
            let n = self.0.len().min(max);
            out.extend(self.0.drain(..n));
        }
    }

    fn server(framing: Framing) -> ControlServer {
        ControlServer::bind(ServerConfig {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            framing,
            max_routes: 1000,
            delay_table_size: 100,
            allow: Vec::new(),
        })
        .unwrap()
    }

    fn connect(s: &ControlServer) -> StdStream {
        let c = StdStream::connect(s.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        c
    }

    fn spin(s: &mut ControlServer, src: &mut VecSource, turns: usize) {
        for _ in 0..turns {
            s.turn(src, Duration::from_millis(2)).unwrap();
        }
    }

    fn record(flags: u8, client_port: u16, seq: u32) -> ResponseRecord {
        super::super::router::test_record(flags, client_port, seq)
    }

    fn hello(port: u16) -> Vec<u8> {
        let mut v = RouteMsg::version().encode().to_vec();
        v.extend_from_slice(
            &RouteMsg::client_add(
                (Ipv4Addr::new(10, 9, 9, 5).into(), port),
                (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
            )
            .encode(),
        );
        v
    }

    fn read_records(c: &mut StdStream, framing: Framing) -> Vec<ResponseRecord> {
        let mut dec = RecordDecoder::new(framing);
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            dec.feed(&buf[..n], &mut out).unwrap();
        }
        out
    }

    fn is_closed(c: &mut StdStream) -> bool {
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0))
            || matches!(c.read(&mut b), Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn garbage_and_old_peers_are_dropped_while_a_good_peer_gets_every_record() {
        let mut s = server(Framing::Combined);
        let mut src = VecSource::default();
        let mut good = connect(&s);
        let mut garbage = connect(&s);
        let mut old = connect(&s);
        let mut short = connect(&s);
        spin(&mut s, &mut src, 3);
        good.write_all(&hello(40000)).unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        old.write_all(&[10, 9, 9, 5, 0x9c, 0x40, 0, 1, 10, 0, 2, 2, 0x1f, 0x90])
            .unwrap();
        short.write_all(&[0, 0, 0]).unwrap();
        drop(short);
        spin(&mut s, &mut src, 5);
        src.0 = (0..100).map(|i| record(0x18, 40000, i)).collect();
        src.0.push(record(0x10, 40001, 0)); // nobody's
        spin(&mut s, &mut src, 5);
        let got = read_records(&mut good, Framing::Combined);
        assert_eq!(got.len(), 100);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, r)| r.header().seq == i as u32));
        assert!(is_closed(&mut garbage));
        assert!(is_closed(&mut old));
        let st = s.stats();
        assert_eq!(st.dropped_peers, 3, "{st:?}");
        assert_eq!(st.records_in, 101);
        assert_eq!(st.records_sent, 100);
        assert_eq!(st.frames_sent, 7);
        assert_eq!(s.router_stats().unrouted, 1);
        assert_eq!(s.peers(), 1);
    }

    #[test]
    fn syn_ack_captured_before_client_add_is_delivered_after_it_bare_framing() {
        let mut s = server(Framing::Bare);
        let mut src = VecSource::default();
        let mut c = connect(&s);
        spin(&mut s, &mut src, 2);
        src.0.push(record(0x12, 40000, 77));
        spin(&mut s, &mut src, 2);
        c.write_all(&hello(40000)).unwrap();
        spin(&mut s, &mut src, 5);
        let got = read_records(&mut c, Framing::Bare);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header().seq, 77);
        assert_eq!(s.router_stats().parked_sent, 1);
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_served() {
        let mut s = server(Framing::Combined);
        let mut src = VecSource::default();
        let mut peer = connect(&s);
        spin(&mut s, &mut src, 3);
        let mut v = hello(40000);
        v[7] = 5; // an older tcpcopy's version number
        peer.write_all(&v).unwrap();
        spin(&mut s, &mut src, 5);
        src.0 = (0..20).map(|i| record(0x18, 40000, i)).collect();
        spin(&mut s, &mut src, 5);
        assert_eq!(read_records(&mut peer, Framing::Combined).len(), 20);
        assert_eq!(s.stats().dropped_peers, 0);
    }

    #[test]
    fn a_peer_that_stops_reading_is_dropped_and_others_go_on() {
        let mut s = server(Framing::Combined);
        let mut src = VecSource::default();
        let mut stuck = connect(&s);
        let mut good = connect(&s);
        spin(&mut s, &mut src, 2);
        stuck.write_all(&hello(1)).unwrap();
        good.write_all(&hello(2)).unwrap();
        spin(&mut s, &mut src, 3);
        let mut received = 0;
        // 64 B a record: 24 MiB for the stuck peer overflows its 16 MiB queue
        // plus the socket buffers.
        for round in 0..40 {
            src.0
                .extend((0..10_000).map(|i| record(0x18, 1, round * 10_000 + i)));
            src.0.push(record(0x18, 2, round));
            spin(&mut s, &mut src, 1);
            received += read_records(&mut good, Framing::Combined).len();
        }
        spin(&mut s, &mut src, 3);
        received += read_records(&mut good, Framing::Combined).len();
        assert_eq!(received, 40);
        assert_eq!(s.stats().dropped_peers, 1);
        assert_eq!(s.peers(), 1);
    }

    #[test]
    fn allow_list_refuses_other_peers() {
        let mut s = ControlServer::bind(ServerConfig {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            framing: Framing::Combined,
            max_routes: 10,
            delay_table_size: 10,
            allow: vec![crate::wire::Cidr::parse("--allow", "10.0.4.0/24").unwrap()],
        })
        .unwrap();
        let mut src = VecSource::default();
        let mut c = connect(&s);
        spin(&mut s, &mut src, 3);
        assert!(is_closed(&mut c));
        assert_eq!(s.stats().refused, 1);
    }
}
