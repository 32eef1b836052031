//! The close policy's state: how much response the client had when it
//! closed or last acknowledged, how that maps to the target's sequence
//! space, and a captured RST or bare FIN waiting for its turn.

use super::segment::ClientSegment;
use crate::wire::SeqNumber;

/// The response stream position of the client (captured) and of the
/// target when the first request went on a target connection: maps the
/// client's response offsets to the target's.
#[derive(Clone, Copy, Debug)]
pub struct ResponseAnchor {
    pub captured_ack: SeqNumber,
    pub target_rcv_nxt: SeqNumber,
}

#[derive(Debug, Default)]
pub struct CloseState {
    /// The captured FIN's (or RST's) ack: how much of the online server's
    /// response the client had when it closed.
    pub close_ack: Option<u32>,
    /// The furthest the client acknowledged the online server's response,
    /// on any captured segment.
    pub client_acked: Option<u32>,
    pub anchor: Option<ResponseAnchor>,
    /// The FIN came on a bare segment (a disposition of its own).
    pub fin_bare: bool,
    /// A captured RST waiting until what came before it is sent (boxed:
    /// rare, and every session would carry its size).
    pub rst: Option<Box<ClientSegment>>,
}

impl CloseState {
    /// The client acknowledged response data up to `ack`.
    pub fn client_acknowledged(&mut self, ack: u32) {
        if self
            .client_acked
            .is_none_or(|a| SeqNumber(ack).is_after(SeqNumber(a)))
        {
            self.client_acked = Some(ack);
        }
    }

    /// Has the target (at `rcv_nxt`) sent as much response as the client
    /// had received when it acknowledged `ack`?
    pub fn answered(&self, ack: Option<u32>, rcv_nxt: SeqNumber) -> bool {
        match (ack, self.anchor) {
            (Some(ack), Some(a)) => {
                let client_got = SeqNumber(ack).since(a.captured_ack);
                let target_sent = rcv_nxt.since(a.target_rcv_nxt);
                target_sent >= client_got
            }
            _ => false,
        }
    }

    /// Has the target sent exactly as much response as the client had
    /// received when it acknowledged `ack`?
    pub fn answered_exactly(&self, ack: u32, rcv_nxt: SeqNumber) -> bool {
        self.anchor.is_some_and(|a| {
            rcv_nxt.since(a.target_rcv_nxt) == SeqNumber(ack).since(a.captured_ack)
        })
    }

    /// Has the target sent more response than the client had received
    /// when it acknowledged `ack` (its answer to what followed has begun)?
    pub fn answer_began(&self, ack: u32, rcv_nxt: SeqNumber) -> bool {
        self.anchor
            .is_some_and(|a| rcv_nxt.since(a.target_rcv_nxt) > SeqNumber(ack).since(a.captured_ack))
    }

    /// Has the target sent as much response as the client had when it
    /// closed?
    pub fn close_answered(&self, rcv_nxt: SeqNumber) -> bool {
        self.answered(self.close_ack, rcv_nxt)
    }

    /// The client's close, or else its latest ack.
    pub fn latest_client_ack(&self) -> Option<u32> {
        self.close_ack.or(self.client_acked)
    }
}

#[cfg(test)]
mod tests {
    use super::{CloseState, ResponseAnchor};
    use crate::wire::SeqNumber;

    #[test]
    fn a_close_is_answered_once_the_target_sent_what_the_client_had() {
        let mut c = CloseState::default();
        assert!(!c.close_answered(SeqNumber(0)));
        c.anchor = Some(ResponseAnchor {
            captured_ack: SeqNumber(u32::MAX - 10),
            target_rcv_nxt: SeqNumber(500),
        });
        c.close_ack = Some(89); // 100 bytes of response after the anchor
        assert!(!c.close_answered(SeqNumber(599)));
        assert!(c.close_answered(SeqNumber(600)));
        c.client_acknowledged(5);
        c.client_acknowledged(3);
        assert_eq!(c.client_acked, Some(5));
    }
}
