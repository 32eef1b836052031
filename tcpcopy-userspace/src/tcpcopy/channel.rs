//! One worker's control channel (spec §3.1–3.2, 3.7): `-C` connections to
//! every `-s` intercept, each opened with a blocking connect (failure is
//! fatal at startup) and greeted with the version message. CLIENT_ADDs go
//! to every live server, round-robin over its connections; response records
//! are read without blocking. A connection that fails is closed; a server
//! with none left is inactive until `reconnect` (used with `-L`).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
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

fn open(addr: SocketAddrV4, framing: Framing) -> io::Result<Conn> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(3))?;
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
                .map(|_| open(addr, framing))
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

    /// Re-open connections of inactive servers (`-L`).
    pub fn reconnect(&mut self) {
        for s in &mut self.servers {
            if !s.conns.is_empty() {
                continue;
            }
            match (0..self.per_server)
                .map(|_| open(s.addr, self.framing))
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(conns) => {
                    tracing::info!(addr = %s.addr, "reconnected to intercept");
                    s.conns = conns;
                    self.generation += 1;
                }
                Err(e) => tracing::warn!(addr = %s.addr, error = %e, "intercept still unreachable"),
            }
        }
    }
}
