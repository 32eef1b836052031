//! The Ethernet addresses `--send xdp` and `--send packet` need: the output interface's own
//! MAC, and the MAC of the next hop toward each target (the target itself
//! on its link, else its gateway), asked of the kernel over rtnetlink
//! (netlink-packet-route): the route as `ip route get` finds it (every
//! table and rule), then the neighbour table (ARP for IPv4, neighbour
//! discovery for IPv6). A missing neighbour is resolved by sending the
//! next hop one UDP datagram from the interface, as any first packet
//! would. [`watch`] keeps the answers current: it
//! listens for route, rule and neighbour changes and resolves again.

use std::{
    collections::HashMap,
    net::{IpAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::session::parse_mac;

/// The interface's MAC address.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("-o {iface}: {path}"))?;
    parse_mac(text.trim()).ok_or_else(|| anyhow!("-o {iface}: no Ethernet address ({text})"))
}

/// A NETLINK_ROUTE socket asking the kernel one question at a time.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
        socket.bind_auto().context("binding the netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("netlink connect")?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Send `msg`, collect the replies (a dump's until its end).
    fn ask(&mut self, msg: RouteNetlinkMessage, dump: bool) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).context("netlink send")?;
        let mut replies = Vec::new();
        let mut rx = vec![0u8; 64 << 10];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .context("netlink recv")?;
            let mut off = 0;
            while off < n {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n]).context("netlink reply")?;
                let len = m.header.length as usize;
                let ours = m.header.sequence_number == self.seq;
                match m.payload {
                    NetlinkPayload::Done(_) if ours => return Ok(replies),
                    NetlinkPayload::Error(e) if ours => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(std::io::Error::from_raw_os_error(-code.get()).into())
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) if ours => {
                        replies.push(inner);
                        if !dump {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The kernel's own answer to "how does a packet to `dst` leave?"
    /// (`ip route get`: every routing table and rule considered): the
    /// output interface's index and the next hop (the gateway, or `dst`
    /// itself on its link).
    fn route_get(&mut self, dst: IpAddr) -> Result<(u32, IpAddr)> {
        let mut msg = RouteMessage::default();
        match dst {
            IpAddr::V4(d) => {
                msg.header.address_family = AddressFamily::Inet;
                msg.header.destination_prefix_length = 32;
                msg.attributes
                    .push(RouteAttribute::Destination(RouteAddress::Inet(d)));
            }
            IpAddr::V6(d) => {
                msg.header.address_family = AddressFamily::Inet6;
                msg.header.destination_prefix_length = 128;
                msg.attributes
                    .push(RouteAttribute::Destination(RouteAddress::Inet6(d)));
            }
        }
        let replies = self
            .ask(RouteNetlinkMessage::GetRoute(msg), false)
            .with_context(|| format!("no route to {dst}"))?;
        let Some(RouteNetlinkMessage::NewRoute(route)) = replies.into_iter().next() else {
            bail!("no route to {dst}");
        };
        let mut oif = None;
        let mut hop = dst;
        for a in route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop = g.into(),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop = g.into(),
                _ => {}
            }
        }
        Ok((
            oif.ok_or_else(|| anyhow!("the route to {dst} names no interface"))?,
            hop,
        ))
    }

    /// The link-layer address of `ip` on interface `ifindex`, if the
    /// neighbour table has a usable one.
    fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = ifindex;
        let replies = self.ask(RouteNetlinkMessage::GetNeighbour(msg), true)?;
        Ok(replies.into_iter().find_map(|r| {
            let RouteNetlinkMessage::NewNeighbour(n) = r else {
                return None;
            };
            let usable = !matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            );
            if n.header.ifindex != ifindex || !usable {
                return None;
            }
            let mut dst = None;
            let mut mac = None;
            for a in n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                        dst = Some(IpAddr::from(d))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                        dst = Some(IpAddr::from(d))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
                    }
                    _ => {}
                }
            }
            (dst == Some(ip)).then_some(mac).flatten()
        }))
    }
}

/// The index of interface `iface`.
pub fn ifindex(iface: &str) -> Result<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .with_context(|| format!("-o {iface}: no such interface"))?
        .trim()
        .parse()
        .with_context(|| format!("-o {iface}: ifindex"))
}

/// The next hop toward `dst` and its MAC, as the kernel would route a
/// packet to `dst` out of `iface`, resolving the neighbour if needed
/// (waits up to `wait`).
fn next_hop_mac(
    rtnl: &mut Rtnl,
    iface: &str,
    dst: IpAddr,
    wait: Duration,
) -> Result<(IpAddr, [u8; 6])> {
    let want = ifindex(iface)?;
    let (oif, hop) = rtnl.route_get(dst)?;
    if oif != want {
        bail!(
            "-o {iface}: the kernel routes {dst} out of interface index {oif}, not -o {iface} ({want}): \
             send out of that interface, or route {dst} via {iface}"
        );
    }
    let start = Instant::now();
    let mut poked = false;
    loop {
        if let Some(mac) = rtnl.neighbour(want, hop)? {
            return Ok((hop, mac));
        }
        if !poked {
            poke(iface, hop);
            poked = true;
        }
        if start.elapsed() > wait {
            bail!(
                "-o {iface}: the next hop {hop} toward {dst} does not answer ARP or neighbour \
                 solicitation on {iface}; give its MAC as -x ...-{dst}:PORT@MAC"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next hop's MAC toward `dst` out of `iface`, resolving it if needed.
pub fn resolve(iface: &str, dst: IpAddr) -> Result<[u8; 6]> {
    let mut rtnl = Rtnl::open()?;
    Ok(next_hop_mac(&mut rtnl, iface, dst, Duration::from_secs(3))?.1)
}

/// The next-hop MAC of every target, shared by the senders and kept
/// current by [`watch`]: a sender reloads its copy when `generation`
/// moves (one atomic load per packet).
#[derive(Debug, Default)]
pub struct NextHops {
    generation: AtomicU64,
    table: Mutex<HashMap<IpAddr, [u8; 6]>>,
}

impl NextHops {
    pub fn new(table: HashMap<IpAddr, [u8; 6]>) -> Arc<NextHops> {
        Arc::new(NextHops {
            generation: AtomicU64::new(1),
            table: Mutex::new(table),
        })
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    pub fn snapshot(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn update(&self, table: HashMap<IpAddr, [u8; 6]>) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if *t != table {
            *t = table;
            self.generation.fetch_add(1, Ordering::Release);
        }
    }
}

/// rtnetlink multicast groups: neighbours, IPv4 routes, IPv4 rules, IPv6
/// routes, IPv6 rules.
const WATCHED_GROUPS: [u32; 5] = [3, 7, 8, 11, 19];

/// A thread that re-resolves the next hop of each target in `targets`
/// (those without a fixed `@MAC`) whenever the kernel's routes, rules or
/// neighbours change, and at least every 10 s, until `stop`. A next hop
/// that cannot be resolved keeps its last MAC (and is said once).
pub fn watch(
    iface: String,
    targets: Vec<IpAddr>,
    hops: Arc<NextHops>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let mut events = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    events.bind_auto().context("binding the netlink socket")?;
    for g in WATCHED_GROUPS {
        events
            .add_membership(g)
            .context("netlink multicast membership")?;
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setting a receive timeout on our own socket.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&events),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut rtnl = Rtnl::open()?;
    std::thread::Builder::new()
        .name("next-hops".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut last = Instant::now();
            let mut said = false;
            while !stop.load(Ordering::Relaxed) {
                let changed = events.recv(&mut &mut buf[..], 0).is_ok_and(|n| n > 0);
                if !changed && last.elapsed() < Duration::from_secs(10) {
                    continue;
                }
                // Let a burst of changes settle, then read them all.
                std::thread::sleep(Duration::from_millis(20));
                while events.recv(&mut &mut buf[..], libc::MSG_DONTWAIT).is_ok() {}
                last = Instant::now();
                let mut table = hops.snapshot();
                for &dst in &targets {
                    match next_hop_mac(&mut rtnl, &iface, dst, Duration::from_millis(500)) {
                        Ok((hop, mac)) => {
                            if table.get(&dst) != Some(&mac) {
                                tracing::info!(%dst, %hop, mac = ?mac, "-o: next hop changed");
                            }
                            table.insert(dst, mac);
                        }
                        Err(e) if !said => {
                            tracing::warn!("{e:#}; keeping the last next hop");
                            said = true;
                        }
                        Err(_) => {}
                    }
                }
                hops.update(table);
            }
        })
        .context("starting the next-hop thread")
}

/// One UDP datagram to the discard port of `hop`, out of `iface`, so the
/// kernel resolves its address (ARP, or neighbour discovery).
fn poke(iface: &str, hop: IpAddr) {
    let any = if hop.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let Ok(sock) = UdpSocket::bind(any) else {
        return;
    };
    let s2 = socket2::SockRef::from(&sock);
    let _ = s2.bind_device(Some(iface.as_bytes()));
    let _ = sock.send_to(b"", std::net::SocketAddr::new(hop, 9));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_routes_loopback_out_of_lo() {
        let mut rtnl = Rtnl::open().unwrap();
        for lo in [IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()] {
            let (oif, hop) = rtnl.route_get(lo).unwrap();
            assert_eq!(oif, ifindex("lo").unwrap(), "{lo}");
            assert_eq!(hop, lo);
        }
    }

    #[test]
    fn next_hops_move_their_generation_only_on_change() {
        let a = IpAddr::from([10, 0, 2, 2]);
        let hops = NextHops::new(HashMap::from([(a, [1; 6])]));
        let g = hops.generation();
        hops.update(HashMap::from([(a, [1; 6])]));
        assert_eq!(hops.generation(), g);
        hops.update(HashMap::from([(a, [2; 6])]));
        assert_eq!(hops.generation(), g + 1);
        assert_eq!(hops.snapshot()[&a], [2; 6]);
    }
}
