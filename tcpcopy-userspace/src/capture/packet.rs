//! AF_PACKET capture without eBPF (the C tool's raw-socket capture): one
//! SOCK_DGRAM socket per worker, read by that worker, up to [`SLOTS`]
//! frames a `recvmmsg`; with more than one worker the sockets are a
//! fanout group whose classic BPF program (`cbpf`) gives each flow to
//! one of them, so no thread hands segments on. Each socket's filter
//! (`cbpf` too) takes only TCP segments of the `-x` ports. Only frames
//! arriving at the host are taken (our own replayed packets leave as
//! "outgoing" and are skipped), and only IP/TCP segments (either family)
//! that match a `-x` source (with `--verdict`, the online server's answers too).

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::{cbpf, Capture, CaptureStats};
use crate::session::Config;

/// Frames one `recvmmsg` takes at most.
const SLOTS: usize = 32;
/// Bytes of each frame's slot: a GRO frame may be this long.
const SLOT_BYTES: usize = 65536;
/// Each socket's receive buffer: what waits while its worker is busy.
const RECEIVE_BUFFER: libc::c_int = 32 << 20;

pub struct PacketSocket {
    fd: OwnedFd,
    config: Arc<Config>,
    /// [`SLOTS`] slots of [`SLOT_BYTES`], one per frame of a `recvmmsg`.
    buf: Vec<u8>,
    /// Each slot's sender address (its packet type and protocol) and
    /// length.
    addrs: Vec<libc::sockaddr_ll>,
    lens: [usize; SLOTS],
    stats: CaptureStats,
    /// Frames the kernel dropped at this socket (its receive buffer was
    /// full), summed: PACKET_STATISTICS resets on every read.
    socket_dropped: AtomicU64,
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        return Err(context(io::Error::last_os_error(), what));
    }
    Ok(())
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The protocol the sockets take: IPv4 only, unless an IPv6 target or
/// `--verdict` (the host's outgoing packets, the online server's answers
/// among them, reach only ETH_P_ALL sockets) needs every frame.
fn protocol(config: &Config) -> u16 {
    let ipv6 = config.transfers.iter().any(|t| t.dst_ip.is_ipv6());
    if config.verdict.is_some() || ipv6 {
        (libc::ETH_P_ALL as u16).to_be()
    } else {
        (libc::ETH_P_IP as u16).to_be()
    }
}

/// A SOCK_DGRAM packet socket for `proto` (network order), not bound yet.
fn socket(proto: u16) -> io::Result<OwnedFd> {
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
    // Without CAP_NET_ADMIN the kernel's default buffer stays; its drops
    // are counted all the same.
    let _ = set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &RECEIVE_BUFFER,
        "SO_RCVBUFFORCE",
    );
    Ok(fd)
}

/// Bind `fd` to `ifindex` and `proto`: from here on frames reach it.
fn bind(fd: &OwnedFd, ifindex: u32, proto: u16) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid fd and sockaddr of the stated size.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        },
        "binding the AF_PACKET socket",
    )
}

/// A classic BPF program that takes no frame.
const REFUSE_ALL: libc::sock_filter = libc::sock_filter {
    code: (libc::BPF_RET | libc::BPF_K) as u16,
    jt: 0,
    jf: 0,
    k: 0,
};

fn program_of(code: &[libc::sock_filter]) -> libc::sock_fprog {
    libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    }
}

/// `setsockopt(fd, level, option, value)`, an error naming `what`.
/// `value` must be the plain-data type the option takes (a `sock_fprog`
/// names code that outlives the call).
fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: valid fd; `value` is a live T of the stated size.
    check(
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                option,
                value as *const T as *const libc::c_void,
                size_of::<T>() as libc::socklen_t,
            )
        },
        what,
    )
}

/// Attach `code` as `fd`'s socket filter.
fn set_filter(fd: &OwnedFd, code: &[libc::sock_filter]) -> io::Result<()> {
    set_option(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &program_of(code),
        "filtering the AF_PACKET socket (SO_ATTACH_FILTER)",
    )
}

fn set_int(fd: &OwnedFd, option: libc::c_int, value: u32, what: &str) -> io::Result<()> {
    set_option(fd, libc::SOL_PACKET, option, &value, what)
}

/// Make `fds` one fanout group: the first asks the kernel for an id of
/// its own (no other program's group can be joined by mistake) and sets
/// the group's program; the rest join by that id.
fn join_group(fds: &[OwnedFd]) -> io::Result<()> {
    let kind = libc::PACKET_FANOUT_CBPF;
    let first = &fds[0];
    set_int(
        first,
        libc::PACKET_FANOUT,
        (kind | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16,
        "creating the AF_PACKET fanout group",
    )?;
    let mut group: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: valid fd; `group` is a u32 of the stated size.
    check(
        unsafe {
            libc::getsockopt(
                first.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                &mut group as *mut _ as *mut libc::c_void,
                &mut len,
            )
        },
        "reading the fanout group's id",
    )?;
    let id = group & 0xffff;
    let code = cbpf::fanout_program();
    set_option(
        first,
        libc::SOL_PACKET,
        libc::PACKET_FANOUT_DATA,
        &program_of(&code),
        "setting the fanout program (PACKET_FANOUT_DATA)",
    )?;
    for fd in &fds[1..] {
        set_int(
            fd,
            libc::PACKET_FANOUT,
            id | kind << 16,
            "joining the AF_PACKET fanout group",
        )?;
    }
    Ok(())
}

impl PacketSocket {
    /// One socket for each of `members` workers on `ifindex` (0 = every
    /// interface), each filtered in the kernel to the `-x` ports (see
    /// `cbpf`). More than one form a `PACKET_FANOUT_CBPF` group whose
    /// program gives each flow, both directions, to one member. Each
    /// socket refuses every frame until the group is whole, so no flow's
    /// first segments queue at a member that will not own it.
    pub fn open_group(ifindex: u32, config: Arc<Config>, members: usize) -> io::Result<Vec<Self>> {
        let proto = protocol(&config);
        let grouped = members > 1;
        let mut ports: Vec<u16> = config.transfers.iter().map(|t| t.src_port).collect();
        ports.sort_unstable();
        ports.dedup();
        let filter = cbpf::port_filter(&ports, config.verdict.is_some());
        let mut fds = Vec::new();
        for _ in 0..members.max(1) {
            let fd = socket(proto)?;
            let first = if grouped { &[REFUSE_ALL][..] } else { &filter };
            set_filter(&fd, first)?;
            bind(&fd, ifindex, proto)?;
            fds.push(fd);
        }
        if grouped {
            join_group(&fds)?;
            for fd in &fds {
                set_filter(fd, &filter)?;
            }
        }
        Ok(fds
            .into_iter()
            .map(|fd| PacketSocket {
                fd,
                config: Arc::clone(&config),
                buf: vec![0u8; SLOTS * SLOT_BYTES],
                // SAFETY: zeroed sockaddr_ll is valid for recvmmsg to fill.
                addrs: vec![unsafe { zeroed() }; SLOTS],
                lens: [0; SLOTS],
                stats: CaptureStats::default(),
                socket_dropped: AtomicU64::new(0),
            })
            .collect())
    }

    /// Up to `slots` waiting frames into the first slots (their lengths in
    /// `lens`, their senders in `addrs`); how many came.
    fn receive(&mut self, slots: usize) -> usize {
        let slots = slots.min(SLOTS);
        let base = self.buf.as_mut_ptr();
        let mut iovs: [libc::iovec; SLOTS] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; SLOTS];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; SLOTS] = unsafe { zeroed() };
        for i in 0..slots {
            // SAFETY: slot i lies inside `buf` (SLOTS × SLOT_BYTES).
            iovs[i].iov_base = unsafe { base.add(i * SLOT_BYTES) } as *mut libc::c_void;
            iovs[i].iov_len = SLOT_BYTES;
            let h = &mut msgs[i].msg_hdr;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        }
        // SAFETY: `slots` valid headers, each naming a valid buffer and
        // address of the stated sizes.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            return 0;
        }
        for (len, m) in self.lens.iter_mut().zip(&msgs[..r as usize]) {
            *len = m.msg_len as usize;
        }
        r as usize
    }
}

/// A frame to take: a segment to a `-x` source arriving at the host, or
/// (`--verdict`) the online server's answer from one.
fn wanted(config: &Config, p: &[u8], outgoing: bool) -> bool {
    let Ok(ip) = crate::wire::IpPacket::parse(p) else {
        return false;
    };
    if ip.protocol != 6 || ip.payload().len() < 4 {
        return false;
    }
    let t = ip.payload();
    let dport = u16::from_be_bytes([t[2], t[3]]);
    if !outgoing && config.transfer_for(ip.dst, dport).is_some() {
        return true;
    }
    // `--verdict`: the online server's answers, from a `-x` source.
    let sport = u16::from_be_bytes([t[0], t[1]]);
    config.verdict.is_some() && !config.rule_for(ip.src, sport).is_empty()
}

impl Capture for PacketSocket {
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.fd.as_raw_fd());
    }

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let asked = (max - n).min(SLOTS);
            let got = self.receive(asked);
            for i in 0..got {
                let sll = &self.addrs[i];
                let len = self.lens[i].min(SLOT_BYTES);
                let packet = &self.buf[i * SLOT_BYTES..i * SLOT_BYTES + len];
                // The host's own outgoing packets are skipped, except the
                // online server's answers the verdict reads.
                let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
                let ip = sll.sll_protocol == (libc::ETH_P_IP as u16).to_be()
                    || sll.sll_protocol == (libc::ETH_P_IPV6 as u16).to_be();
                if !ip || !wanted(&self.config, packet, outgoing) {
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
            if got < asked {
                break; // the socket is drained
            }
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
            self.socket_dropped
                .fetch_add(st.tp_drops as u64, Ordering::Relaxed);
        }
        CaptureStats {
            socket_dropped: self.socket_dropped.load(Ordering::Relaxed),
            ..self.stats
        }
    }
}
