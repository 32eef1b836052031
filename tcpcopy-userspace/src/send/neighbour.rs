//! The Ethernet addresses `--send xdp` needs: the output interface's own
//! MAC, and the MAC of the next hop toward each target (the target itself
//! on its subnet, else its gateway), read from the kernel's routing table
//! (`/proc/net/route`) and neighbour table (`/proc/net/arp`). A missing
//! neighbour is resolved by sending the next hop one UDP datagram from the
//! interface, as any first packet would.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::session::parse_mac;

/// The interface's MAC address.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("-o {iface}: {path}"))?;
    parse_mac(text.trim()).ok_or_else(|| anyhow!("-o {iface}: no Ethernet address ({text})"))
}

/// The next hop toward `dst` out of `iface`, from a routing table in
/// `/proc/net/route` format: the longest matching prefix on that interface.
pub fn next_hop(route_table: &str, iface: &str, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    // The kernel prints each address as the in-memory u32 (network-order
    // bytes) in host byte order.
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|raw| u32::from_be_bytes(raw.to_ne_bytes()))
    };
    let d = u32::from(dst);
    route_table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[0] != iface {
                return None;
            }
            let (dest, gw, mask) = (hex(f[1])?, hex(f[2])?, hex(f[7])?);
            (d & mask == dest & mask).then_some((mask.count_ones(), gw))
        })
        .max_by_key(|(bits, _)| *bits)
        .map(|(_, gw)| if gw == 0 { dst } else { Ipv4Addr::from(gw) })
}

/// The MAC of `ip` on `iface` in a neighbour table in `/proc/net/arp` format.
pub fn arp_lookup(arp_table: &str, iface: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    arp_table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP, HW type, flags (0x2 = complete), MAC, mask, device.
        if f.len() >= 6 && f[5] == iface && f[0].parse::<Ipv4Addr>().ok()? == ip && f[2] != "0x0" {
            parse_mac(f[3]).filter(|m| *m != [0; 6])
        } else {
            None
        }
    })
}

/// The next hop's MAC toward `dst` out of `iface`, resolving it if needed.
pub fn resolve(iface: &str, dst: Ipv4Addr) -> Result<[u8; 6]> {
    let routes = std::fs::read_to_string("/proc/net/route")?;
    let hop = next_hop(&routes, iface, dst)
        .ok_or_else(|| anyhow!("--send xdp: no route to {dst} out of -o {iface}"))?;
    let start = Instant::now();
    let mut poked = false;
    loop {
        let arp = std::fs::read_to_string("/proc/net/arp")?;
        if let Some(mac) = arp_lookup(&arp, iface, hop) {
            return Ok(mac);
        }
        if !poked {
            poke(iface, hop);
            poked = true;
        }
        if start.elapsed() > Duration::from_secs(3) {
            bail!(
                "--send xdp: the next hop {hop} toward {dst} does not answer ARP on {iface}; \
                 give its MAC as -x ...-{dst}:PORT@MAC"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One UDP datagram to the discard port of `hop`, out of `iface`, so the
/// kernel resolves its address.
fn poke(iface: &str, hop: Ipv4Addr) {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    let s2 = socket2::SockRef::from(&sock);
    let _ = s2.bind_device(Some(iface.as_bytes()));
    let _ = sock.send_to(b"", SocketAddrV4::new(hop, 9));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
mir0\t00000000\t0105000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
mir0\t0005000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth9\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn next_hop_is_the_target_on_link_else_the_gateway() {
        let gw = Ipv4Addr::new(10, 0, 5, 1);
        assert_eq!(
            next_hop(ROUTES, "mir0", Ipv4Addr::new(10, 0, 2, 2)),
            Some(gw)
        );
        assert_eq!(
            next_hop(ROUTES, "mir0", Ipv4Addr::new(10, 0, 5, 9)),
            Some(Ipv4Addr::new(10, 0, 5, 9))
        );
        assert_eq!(next_hop(ROUTES, "eth0", Ipv4Addr::new(10, 0, 2, 2)), None);
    }

    #[test]
    fn arp_entries_by_device_and_completeness() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device
10.0.5.1         0x1         0x2         aa:bb:cc:dd:ee:01     *        mir0
10.0.5.7         0x1         0x0         00:00:00:00:00:00     *        mir0
";
        let ip = Ipv4Addr::new(10, 0, 5, 1);
        assert_eq!(
            arp_lookup(arp, "mir0", ip),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1])
        );
        assert_eq!(arp_lookup(arp, "eth0", ip), None);
        assert_eq!(arp_lookup(arp, "mir0", Ipv4Addr::new(10, 0, 5, 7)), None);
    }
}
