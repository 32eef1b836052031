//! A raw IPv4 socket with the IP header included: sends the session engine's
//! packets exactly as built (source = the impersonated client).

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub struct RawSender {
    socket: Socket,
    sent: u64,
    errors: u64,
}

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
            sent: 0,
            errors: 0,
        })
    }
}

impl super::Sender for RawSender {
    /// Send one IPv4 packet to its destination address. Errors are counted
    /// and returned; a failed segment is retransmitted by the engine's timer.
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        if packet.len() < 20 {
            self.errors += 1;
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "short packet"));
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let addr = SockAddr::from(SocketAddrV4::new(dst, 0));
        match self.socket.send_to(packet, &addr) {
            Ok(_) => {
                self.sent += 1;
                Ok(())
            }
            Err(e) => {
                self.errors += 1;
                Err(e)
            }
        }
    }

    fn counts(&self) -> (u64, u64) {
        (self.sent, self.errors)
    }
}
