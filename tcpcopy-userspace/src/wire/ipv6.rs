//! A view over an IPv6 header and the walk over its extension headers to
//! the upper layer (hop-by-hop, routing and destination options skipped; a
//! fragment header noted).

use super::WireError;

pub const IPV6_HEADER: usize = 40;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;
/// Most extension headers walked before giving up (a loop of them is
/// malformed, not a reason to spin).
const MAX_EXTENSIONS: usize = 8;

/// Borrowed IPv6 packet; `new_checked` guarantees the fixed header.
#[derive(Clone, Copy)]
pub struct Ipv6View<'a> {
    b: &'a [u8],
}

/// Where the upper-layer header starts, past the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    pub protocol: u8,
    /// From the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header was on the way: its offset field and M flag
    /// (`0` for an atomic fragment), and its identification.
    pub fragment: Option<(u16, u32)>,
}

impl<'a> Ipv6View<'a> {
    pub fn new_checked(b: &'a [u8]) -> Result<Self, WireError> {
        if b.len() < IPV6_HEADER {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::NotIp);
        }
        Ok(Ipv6View { b })
    }
    pub fn traffic_class(&self) -> u8 {
        (self.b[0] << 4) | (self.b[1] >> 4)
    }
    /// Bytes after the fixed header (0: a jumbogram or a GSO
    /// super-packet, length unstated).
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes([self.b[4], self.b[5]])
    }
    pub fn next_header(&self) -> u8 {
        self.b[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.b[7]
    }
    pub fn src(&self) -> [u8; 16] {
        self.b[8..24].try_into().unwrap()
    }
    pub fn dst(&self) -> [u8; 16] {
        self.b[24..40].try_into().unwrap()
    }
    /// Walk the extension headers present in the buffer.
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        let mut protocol = self.next_header();
        let mut offset = IPV6_HEADER;
        let mut fragment = None;
        for _ in 0..MAX_EXTENSIONS {
            let len = match protocol {
                HOP_BY_HOP | ROUTING | DEST_OPTIONS => {
                    let h = self.b.get(offset..offset + 2).ok_or(WireError::Truncated)?;
                    (h[1] as usize + 1) * 8
                }
                FRAGMENT => {
                    let h = self.b.get(offset..offset + 8).ok_or(WireError::Truncated)?;
                    let field = u16::from_be_bytes([h[2], h[3]]) & 0xfff9;
                    fragment = Some((field, u32::from_be_bytes([h[4], h[5], h[6], h[7]])));
                    8
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment,
                    })
                }
            };
            protocol = self.b[offset];
            offset += len;
            if offset > self.b.len() {
                return Err(WireError::Truncated);
            }
        }
        Err(WireError::BadIpHeader)
    }
}
