//! A view over an IPv4 header (and the packet that follows it).

use super::WireError;

pub const IPV4_MIN_HEADER: usize = 20;

/// Borrowed IPv4 packet; `new_checked` guarantees the fixed header and the
/// options announced by IHL are present.
#[derive(Clone, Copy)]
pub struct Ipv4View<'a> {
    b: &'a [u8],
}

impl<'a> Ipv4View<'a> {
    pub fn new_checked(b: &'a [u8]) -> Result<Self, WireError> {
        if b.len() < IPV4_MIN_HEADER {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::NotIp);
        }
        let hl = ((b[0] & 0x0f) as usize) * 4;
        if hl < IPV4_MIN_HEADER {
            return Err(WireError::BadIpHeader);
        }
        if b.len() < hl {
            return Err(WireError::Truncated);
        }
        Ok(Ipv4View { b })
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.b
    }
    pub fn header_len(&self) -> usize {
        ((self.b[0] & 0x0f) as usize) * 4
    }
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes([self.b[2], self.b[3]])
    }
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b[4], self.b[5]])
    }
    /// Flags and fragment offset as one field.
    pub fn frag_field(&self) -> u16 {
        u16::from_be_bytes([self.b[6], self.b[7]])
    }
    pub fn ttl(&self) -> u8 {
        self.b[8]
    }
    pub fn tos(&self) -> u8 {
        self.b[1]
    }
    pub fn protocol(&self) -> u8 {
        self.b[9]
    }
    pub fn src(&self) -> [u8; 4] {
        [self.b[12], self.b[13], self.b[14], self.b[15]]
    }
    pub fn dst(&self) -> [u8; 4] {
        [self.b[16], self.b[17], self.b[18], self.b[19]]
    }
    /// Everything after the IPv4 header, up to the end of the buffer.
    pub fn payload(&self) -> &'a [u8] {
        &self.b[self.header_len()..]
    }
}
