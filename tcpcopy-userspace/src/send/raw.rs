//! A raw IPv4 socket with the IP header included: sends the session engine's
//! packets exactly as built (source = the impersonated client). Packets are
//! batched and leave in one `sendmmsg` per flush (or per full batch).

use std::{io, os::fd::AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::batch::{send_all, Batch, BATCH};

pub struct RawSender {
    socket: Socket,
    batch: Batch,
    // The system call's arrays, kept to reuse their memory.
    addrs: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    sent: u64,
    errors: u64,
}

// SAFETY: the raw pointers inside `iovecs` and `msgs` are only written and
// read within `flush`, pointing into buffers this struct owns; between
// calls they are dead values.
unsafe impl Send for RawSender {}

impl RawSender {
    /// Needs CAP_NET_RAW.
    pub fn new() -> io::Result<Self> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        socket.set_header_included_v4(true)?;
        // Never receive on it: IPPROTO_RAW sockets are send-only anyway.
        let _ = socket.set_send_buffer_size(4 << 20);
        Ok(RawSender {
            socket,
            batch: Batch::new(),
            addrs: Vec::with_capacity(BATCH),
            iovecs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
            sent: 0,
            errors: 0,
        })
    }

    /// Send the batch, each packet to its destination address.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.addrs.clear();
        self.iovecs.clear();
        self.msgs.clear();
        for p in self.batch.iter() {
            self.addrs.push(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                // Network order, as in the header.
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
                },
                sin_zero: [0; 8],
            });
            self.iovecs.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        for i in 0..self.batch.len() {
            // SAFETY: an all-zero msghdr is valid; the fields set point into
            // `addrs` and `iovecs`, which outlive the call below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut self.iovecs[i];
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        let mut failed = 0;
        // SAFETY: the headers point into `addrs`, `iovecs` and the batch,
        // none of which changes during the call.
        unsafe { send_all(self.socket.as_raw_fd(), &mut self.msgs, |_, _| failed += 1) };
        self.sent += (self.msgs.len() - failed) as u64;
        self.errors += failed as u64;
        self.batch.clear();
    }
}

impl super::Sender for RawSender {
    /// Queue one IPv4 packet for its destination address; a full batch goes
    /// out at once.
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let full = self.batch.push(packet).inspect_err(|_| self.errors += 1)?;
        if full {
            self.send_batch();
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.send_batch();
    }

    fn counts(&self) -> super::SendCounts {
        super::SendCounts {
            sent: self.sent,
            errors: self.errors,
            gso_frames: 0,
        }
    }
}
