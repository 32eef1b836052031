//! One worker's control channel (spec §3.1–3.2, 3.7): `-C` connections to
//! every `-s` intercept, each opened with a blocking connect (failure is
//! fatal at startup) and greeted with the version message. CLIENT_ADDs go
//! to every live server, round-robin over its connections; response records
//! are read without blocking. A connection that fails is closed; a server
//! with none left is inactive until `reconnect`, which the worker calls on
//! a [`Backoff`] (from 100 ms): a restarted intercept is back in use
//! within a fraction of a second.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::proto::{Framing, ProtoError, RecordDecoder, ResponseRecord, RouteMsg};

struct Conn {
    stream: TcpStream,
    decoder: RecordDecoder,
    /// Route messages not yet written (the socket is non-blocking).
    out: Vec<u8>,
}

struct Server {
    addr: SocketAddrV4,
    conns: Vec<Conn>,
    next: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelStats {
    pub records: u64,
    pub frames: u64,
    pub routes_sent: u64,
    /// CLIENT_ADDs that no server took (every connection was down).
    pub routes_unsent: u64,
    pub conns_lost: u64,
}

pub struct Channel {
    servers: Vec<Server>,
    per_server: usize,
    framing: Framing,
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
/// How long a reconnect may take: it runs in the worker's loop, which it
/// holds up meanwhile (an intercept on the same LAN answers in well under
/// a millisecond, or refuses at once while it restarts).
const RECONNECT_TIMEOUT: Duration = Duration::from_millis(100);

fn open(addr: SocketAddrV4, framing: Framing, timeout: Duration) -> io::Result<Conn> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    stream.set_nodelay(true)?;
    stream.write_all(&RouteMsg::version().encode())?;
    stream.set_nonblocking(true)?;
    Ok(Conn {
        stream,
        decoder: RecordDecoder::new(framing),
        out: Vec::new(),
    })
}

impl Channel {
    pub fn connect(addrs: &[SocketAddrV4], per_server: usize, framing: Framing) -> Result<Self> {
        let mut servers = Vec::new();
        for &addr in addrs {
            let conns = (0..per_server)
                .map(|_| open(addr, framing, CONNECT_TIMEOUT))
                .collect::<io::Result<Vec<_>>>()
                .with_context(|| format!("cannot connect to intercept at {addr}"))?;
            servers.push(Server {
                addr,
                conns,
                next: 0,
            });
        }
        Ok(Channel {
            servers,
            per_server,
            framing,
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
        let bytes = msg.encode();
        let mut any = false;
        for s in &mut self.servers {
            if s.conns.is_empty() {
                continue;
            }
            let i = s.next % s.conns.len();
            s.next = s.next.wrapping_add(1);
            s.conns[i].out.extend_from_slice(&bytes);
            any = true;
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
                        Ok(f) => frames += f,
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
        self.stats.conns_lost += lost;
        self.generation += lost;
        self.stats.frames += frames as u64;
        self.stats.records += (out.len() - before) as u64;
    }

    /// Servers with no connection left.
    pub fn inactive(&self) -> usize {
        self.servers.len() - self.active()
    }

    /// Re-open the connections of inactive servers; returns the indices of
    /// those that are back (a restarted intercept knows no routes: the
    /// caller announces its sessions' again with [`Channel::queue_route_to`]).
    pub fn reconnect(&mut self) -> Vec<usize> {
        let mut back = Vec::new();
        for (i, s) in self.servers.iter_mut().enumerate() {
            if !s.conns.is_empty() {
                continue;
            }
            match (0..self.per_server)
                .map(|_| open(s.addr, self.framing, RECONNECT_TIMEOUT))
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(conns) => {
                    tracing::info!(addr = %s.addr, "reconnected to intercept");
                    s.conns = conns;
                    self.generation += 1;
                    back.push(i);
                }
                Err(e) => {
                    tracing::debug!(addr = %s.addr, error = %e, "intercept still unreachable")
                }
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
        s.conns[i].out.extend_from_slice(&msg.encode());
        self.stats.routes_sent += 1;
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
    use super::Backoff;
    use std::time::{Duration, Instant};

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
}
