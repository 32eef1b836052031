//! A view over a TCP header, its flags and the options tcpcopy cares about.

use super::WireError;

pub const TCP_MIN_HEADER: usize = 20;

/// TCP flag bits as in byte 13 of the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    pub fn psh(self) -> bool {
        self.0 & Self::PSH != 0
    }
}

/// Borrowed TCP header plus whatever follows it in the buffer.
#[derive(Clone, Copy)]
pub struct TcpView<'a> {
    b: &'a [u8],
}

impl<'a> TcpView<'a> {
    pub fn new_checked(b: &'a [u8]) -> Result<Self, WireError> {
        if b.len() < TCP_MIN_HEADER {
            return Err(WireError::Truncated);
        }
        let hl = ((b[12] >> 4) as usize) * 4;
        if hl < TCP_MIN_HEADER {
            return Err(WireError::BadTcpHeader);
        }
        if b.len() < hl {
            return Err(WireError::Truncated);
        }
        Ok(TcpView { b })
    }
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b[0], self.b[1]])
    }
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b[2], self.b[3]])
    }
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.b[4], self.b[5], self.b[6], self.b[7]])
    }
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes([self.b[8], self.b[9], self.b[10], self.b[11]])
    }
    pub fn header_len(&self) -> usize {
        ((self.b[12] >> 4) as usize) * 4
    }
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.b[13])
    }
    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.b[14], self.b[15]])
    }
    pub fn options_bytes(&self) -> &'a [u8] {
        &self.b[TCP_MIN_HEADER..self.header_len()]
    }
    pub fn options(&self) -> TcpOptions {
        TcpOptions::parse(self.options_bytes())
    }
    pub fn payload(&self) -> &'a [u8] {
        &self.b[self.header_len()..]
    }
}

/// The options tcpcopy reads or rewrites. `ts_offset` is the offset of the
/// timestamp option's kind byte inside the options area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub timestamps: Option<(u32, u32)>,
    pub ts_offset: Option<usize>,
}

impl TcpOptions {
    /// Parse leniently: stops at the end-of-list option or at the first
    /// malformed option (whatever was read before is kept).
    pub fn parse(opts: &[u8]) -> TcpOptions {
        let mut out = TcpOptions::default();
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,
                1 => {
                    i += 1;
                    continue;
                }
                kind => {
                    if i + 1 >= opts.len() {
                        break;
                    }
                    let len = opts[i + 1] as usize;
                    if len < 2 || i + len > opts.len() {
                        break;
                    }
                    let body = &opts[i + 2..i + len];
                    match (kind, len) {
                        (2, 4) => out.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                        (3, 3) => out.wscale = Some(body[0].min(14)),
                        (8, 10) => {
                            out.timestamps = Some((
                                u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                                u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                            ));
                            out.ts_offset = Some(i);
                        }
                        _ => {}
                    }
                    i += len;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linux_syn_options() {
        // MSS 1460, SACK-permitted, TS 1/0, NOP, WS 7 — a Linux SYN.
        let o = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let p = TcpOptions::parse(&o);
        assert_eq!(p.mss, Some(1460));
        assert_eq!(p.wscale, Some(7));
        assert_eq!(p.timestamps, Some((1, 0)));
        assert_eq!(p.ts_offset, Some(6));
    }

    #[test]
    fn malformed_option_stops_parsing() {
        let o = [1, 1, 2, 4, 0x05, 0xb4, 8, 0xff];
        let p = TcpOptions::parse(&o);
        assert_eq!(p.mss, Some(1460));
        assert_eq!(p.timestamps, None);
        let zero_len = [5, 0, 2, 4, 1, 1];
        assert_eq!(TcpOptions::parse(&zero_len), TcpOptions::default());
    }

    #[test]
    fn short_header_rejected() {
        assert_eq!(
            TcpView::new_checked(&[0u8; 19]).err(),
            Some(WireError::Truncated)
        );
        let mut h = [0u8; 20];
        h[12] = 4 << 4;
        assert_eq!(
            TcpView::new_checked(&h).err(),
            Some(WireError::BadTcpHeader)
        );
        h[12] = 6 << 4;
        assert_eq!(TcpView::new_checked(&h).err(), Some(WireError::Truncated));
    }
}
