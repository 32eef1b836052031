//! Packet views and builders: Ethernet/802.1Q framing, IPv4, IPv6 and TCP
//! headers,
//! TCP options, checksums. Views borrow the bytes they describe and never
//! trust a captured checksum (offloads leave them partial): everything that
//! is emitted gets its checksums recomputed.

pub mod build;
mod checksum;
mod cidr;
mod ip;
mod ipv4;
mod ipv6;
mod segment;
mod seq;
mod tcp;

pub use checksum::{internet_checksum, tcp_checksum, tcp_pseudo_header_sum};
pub use cidr::{Cidr, CidrError};
pub use ip::{Fragmentation, IpPacket};
pub use ipv4::{Ipv4View, IPV4_MIN_HEADER};
pub use ipv6::{Ipv6View, IPV6_HEADER};
pub use segment::{SegmentError, SegmentRepr};
pub use seq::SeqNumber;
pub use tcp::{TcpFlags, TcpOptions, TcpView, TCP_MIN_HEADER};

use thiserror::Error;

/// Why a frame or packet was not accepted.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("frame too short")]
    Truncated,
    #[error("not IP")]
    NotIp,
    #[error("not TCP")]
    NotTcp,
    #[error("bad IP header length or extension headers")]
    BadIpHeader,
    #[error("bad TCP header length")]
    BadTcpHeader,
}

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Offset of the IP header (either family) inside an Ethernet frame (one
/// 802.1Q/802.1ad tag allowed).
pub fn ip_offset_in_ethernet(frame: &[u8]) -> Result<usize, WireError> {
    if frame.len() < ETH_HLEN {
        return Err(WireError::Truncated);
    }
    let mut proto = u16::from_be_bytes([frame[12], frame[13]]);
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        if frame.len() < ETH_HLEN + 4 {
            return Err(WireError::Truncated);
        }
        proto = u16::from_be_bytes([frame[16], frame[17]]);
        off += 4;
    }
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return Err(WireError::NotIp);
    }
    Ok(off)
}

/// The IP packet inside an Ethernet frame, trimmed to its stated length
/// (Ethernet padding removed).
pub fn ip_in_ethernet(frame: &[u8]) -> Result<&[u8], WireError> {
    let off = ip_offset_in_ethernet(frame)?;
    trim_to_ip_len(&frame[off..])
}

/// Trim trailing link padding: the packet ends at the length its IP header
/// states. A stated length of 0 (TSO/GSO super-packets) or one longer than
/// the bytes present keeps what is there.
pub fn trim_to_ip_len(packet: &[u8]) -> Result<&[u8], WireError> {
    Ok(IpPacket::parse(packet)?.bytes)
}

/// The destination address of an IP packet of either family (its fixed
/// header only: the packets tcpcopy builds).
pub fn ip_destination(packet: &[u8]) -> Option<std::net::IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?.into()),
        6 => Some(<[u8; 16]>::try_from(packet.get(24..40)?).ok()?.into()),
        _ => None,
    }
}

/// The source address of the same.
pub fn ip_source(packet: &[u8]) -> Option<std::net::IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?.into()),
        6 => Some(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?.into()),
        _ => None,
    }
}

/// The Ethernet type of an IP packet of this family.
pub fn ethertype(ip: std::net::IpAddr) -> u16 {
    if ip.is_ipv4() {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    }
}
