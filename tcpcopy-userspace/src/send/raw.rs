//! Raw IP sockets with the IP header included: send the session engine's
//! packets exactly as built (source = the impersonated client). IPv4 on an
//! `IPPROTO_RAW` AF_INET socket (`IP_HDRINCL`); IPv6 on an `IPPROTO_RAW`
//! AF_INET6 socket, which Linux treats as header-included (there is no
//! `IP_HDRINCL` to set for it), opened with the first IPv6 packet. Each
//! family's packets are batched and leave in one `sendmmsg` per flush (or
//! per full batch); routing and netfilter apply as to any local packet.

use std::{io, os::fd::AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::batch::{send_all, Batch, BATCH};

/// A destination address of one family, read from a packet's IP header.
trait Destination: Copy {
    const DOMAIN: Domain;
    fn of(packet: &[u8]) -> Self;
}

impl Destination for libc::sockaddr_in {
    const DOMAIN: Domain = Domain::IPV4;
    fn of(p: &[u8]) -> Self {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            // Network order, as in the header.
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
            },
            sin_zero: [0; 8],
        }
    }
}

impl Destination for libc::sockaddr_in6 {
    const DOMAIN: Domain = Domain::IPV6;
    fn of(p: &[u8]) -> Self {
        libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            // 0: the protocol is the socket's (IPPROTO_RAW, header included).
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: p[24..40].try_into().expect("an IPv6 header"),
            },
            sin6_scope_id: 0,
        }
    }
}

/// One family's socket and batch.
struct RawSocket<A> {
    socket: Socket,
    batch: Batch,
    // The system call's arrays, kept to reuse their memory.
    addrs: Vec<A>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl<A: Destination> RawSocket<A> {
    /// Needs CAP_NET_RAW.
    fn open() -> io::Result<Self> {
        let socket = Socket::new(
            A::DOMAIN,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        if A::DOMAIN == Domain::IPV4 {
            socket.set_header_included_v4(true)?;
        }
        // Never receive on it: IPPROTO_RAW sockets are send-only anyway.
        let _ = socket.set_send_buffer_size(4 << 20);
        Ok(RawSocket {
            socket,
            batch: Batch::new(),
            addrs: Vec::with_capacity(BATCH),
            iovecs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
        })
    }

    /// Send the batch, each packet to its destination address; returns
    /// (sent, failed).
    fn send_batch(&mut self) -> (u64, u64) {
        if self.batch.is_empty() {
            return (0, 0);
        }
        self.addrs.clear();
        self.iovecs.clear();
        self.msgs.clear();
        for p in self.batch.iter() {
            self.addrs.push(A::of(p));
            self.iovecs.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        for i in 0..self.batch.len() {
            // SAFETY: an all-zero msghdr is valid; the fields set point into
            // `addrs` and `iovecs`, which outlive the call below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = &mut self.addrs[i] as *mut A as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<A>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut self.iovecs[i];
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        let mut failed = 0;
        // SAFETY: the headers point into `addrs`, `iovecs` and the batch,
        // none of which changes during the call.
        unsafe { send_all(self.socket.as_raw_fd(), &mut self.msgs, |_, _| failed += 1) };
        let sent = (self.msgs.len() - failed) as u64;
        self.batch.clear();
        (sent, failed as u64)
    }
}

pub struct RawSender {
    v4: RawSocket<libc::sockaddr_in>,
    /// Opened with the first IPv6 packet.
    v6: Option<RawSocket<libc::sockaddr_in6>>,
    /// It could not be opened (IPv6 off on this host): said once, and
    /// every IPv6 packet after counted as a send error without trying
    /// again.
    v6_failed: bool,
    sent: u64,
    errors: u64,
}

// SAFETY: the raw pointers inside the sockets' `iovecs` and `msgs` are only
// written and read within `send_batch`, pointing into buffers this struct
// owns; between calls they are dead values.
unsafe impl Send for RawSender {}

impl RawSender {
    /// Needs CAP_NET_RAW.
    pub fn new() -> io::Result<Self> {
        Ok(RawSender {
            v4: RawSocket::open()?,
            v6: None,
            v6_failed: false,
            sent: 0,
            errors: 0,
        })
    }

    fn count(&mut self, (sent, failed): (u64, u64)) {
        self.sent += sent;
        self.errors += failed;
    }

    fn v6(&mut self) -> io::Result<&mut RawSocket<libc::sockaddr_in6>> {
        if self.v6_failed {
            return Err(io::Error::other("no raw IPv6 socket"));
        }
        if self.v6.is_none() {
            match RawSocket::open() {
                Ok(s) => self.v6 = Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the raw IPv6 send socket: IPv6 sessions are not replayed (counted as send_errors)");
                    self.v6_failed = true;
                    return Err(e);
                }
            }
        }
        Ok(self.v6.as_mut().expect("just opened"))
    }
}

impl super::Sender for RawSender {
    /// Queue one IP packet (either family) for its destination address; a
    /// full batch goes out at once.
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let ipv6 = packet.first().is_some_and(|b| b >> 4 == 6);
        let pushed = match ipv6 {
            true if packet.len() < crate::wire::IPV6_HEADER => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "short packet"))
            }
            true => self.v6().and_then(|s| s.batch.push(packet)),
            false => self.v4.batch.push(packet),
        };
        let full = pushed.inspect_err(|_| self.errors += 1)?;
        if full {
            let n = match ipv6 {
                true => self.v6.as_mut().expect("pushed").send_batch(),
                false => self.v4.send_batch(),
            };
            self.count(n);
        }
        Ok(())
    }

    fn flush(&mut self) {
        let n = self.v4.send_batch();
        self.count(n);
        if let Some(v6) = &mut self.v6 {
            let n = v6.send_batch();
            self.count(n);
        }
    }

    fn counts(&self) -> super::SendCounts {
        super::SendCounts {
            sent: self.sent,
            errors: self.errors,
            gso_frames: 0,
        }
    }
}
