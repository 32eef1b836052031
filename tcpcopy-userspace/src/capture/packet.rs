//! AF_PACKET capture without eBPF (the C tool's raw-socket capture): one
//! SOCK_DGRAM socket, read by the dispatcher (see `dispatch` for why not a
//! kernel fanout group). Only frames arriving at the host
//! are taken (our own replayed packets leave as "outgoing" and are skipped),
//! and only IPv4/TCP segments that match a `-x` source.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::{Capture, CaptureStats};
use crate::session::Config;

pub struct PacketSocket {
    fd: OwnedFd,
    config: Arc<Config>,
    buf: Vec<u8>,
    stats: CaptureStats,
    /// Frames the kernel dropped at this socket (its receive buffer was
    /// full), summed: PACKET_STATISTICS resets on every read.
    kernel_dropped: AtomicU64,
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

impl PacketSocket {
    /// `ifindex` 0 = every interface.
    pub fn open(ifindex: u32, config: Arc<Config>) -> io::Result<Self> {
        // The host's outgoing packets reach only ETH_P_ALL sockets: with
        // `--verdict` the online server's answers are among them.
        let proto = if config.verdict.is_some() {
            (libc::ETH_P_ALL as u16).to_be()
        } else {
            (libc::ETH_P_IP as u16).to_be()
        };
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        check(raw, "AF_PACKET socket (needs CAP_NET_RAW)")?;
        // SAFETY: raw is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: valid fd and sockaddr of the stated size.
        check(
            unsafe {
                libc::bind(
                    raw,
                    &sll as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            },
            "binding the AF_PACKET socket",
        )?;
        let rcvbuf: libc::c_int = 32 << 20;
        // SAFETY: valid fd and option value of the stated size.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcvbuf as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as u32,
            );
        }
        Ok(PacketSocket {
            fd,
            config,
            buf: vec![0u8; 65536],
            stats: CaptureStats::default(),
            kernel_dropped: AtomicU64::new(0),
        })
    }

    fn wanted(&self, p: &[u8], outgoing: bool) -> bool {
        let Ok(ip) = crate::wire::Ipv4View::new_checked(p) else {
            return false;
        };
        if ip.protocol() != 6 || ip.payload().len() < 4 {
            return false;
        }
        let t = ip.payload();
        let dport = u16::from_be_bytes([t[2], t[3]]);
        if !outgoing
            && self
                .config
                .transfer_for(std::net::Ipv4Addr::from(ip.dst()), dport)
                .is_some()
        {
            return true;
        }
        // `--verdict`: the online server's answers, from a `-x` source.
        let sport = u16::from_be_bytes([t[0], t[1]]);
        self.config.verdict.is_some()
            && !self
                .config
                .rule_for(std::net::Ipv4Addr::from(ip.src()), sport)
                .is_empty()
    }
}

impl Capture for PacketSocket {
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.fd.as_raw_fd());
    }

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            // SAFETY: zeroed sockaddr_ll is valid for recvfrom to fill.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffer and address are valid for the stated sizes.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if r < 0 {
                break;
            }
            let packet = &self.buf[..r as usize];
            // The host's own outgoing packets are skipped, except the
            // online server's answers the verdict reads.
            let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
            let ipv4 = sll.sll_protocol == (libc::ETH_P_IP as u16).to_be();
            if !ipv4 || !self.wanted(packet, outgoing) {
                self.stats.skipped += 1;
                continue;
            }
            match crate::wire::trim_to_ip_len(packet) {
                Ok(p) => f(p),
                Err(_) => {
                    self.stats.malformed += 1;
                    continue;
                }
            }
            n += 1;
        }
        self.stats.packets += n as u64;
        n
    }

    fn stats(&self) -> CaptureStats {
        // SAFETY: tpacket_stats is plain integers; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid fd; `st` is a tpacket_stats of the stated size.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r == 0 {
            self.kernel_dropped
                .fetch_add(st.tp_drops as u64, Ordering::Relaxed);
        }
        CaptureStats {
            kernel_dropped: self.kernel_dropped.load(Ordering::Relaxed),
            ..self.stats
        }
    }
}
