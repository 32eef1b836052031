//! Request pacing: a request goes when the response to the previous one
//! is complete (or the wait for it has expired), a server-first greeting
//! is waited for, and a backlog is caught up with pipelined. Also the
//! client's round-trip time, which sets how long "quiet" is.

/// Where the session is in the request/response rhythm.
#[derive(Debug)]
pub struct Pacing {
    /// A request was sent and its response is not complete: the next one
    /// is held.
    pub waiting: bool,
    /// Sending the backlog pipelined (see `Config::catch_up_segments`).
    pub catching_up: bool,
    /// Requests went pipelined on this target connection: some may still
    /// wait, unanswered, in the target's buffer.
    pub pipelined: bool,
    /// The captured ack of the current request's first segment: segments
    /// with the same ack continue it.
    current_request_ack: u32,
    /// Response data came since the last response tick.
    pub response_since_tick: bool,
    /// Response data came since the current request was sent: only then
    /// can a quiet period mean "the response is complete".
    pub response_for_request: bool,
    /// The last response segment was full-sized (more is likely coming).
    pub last_response_full: bool,
    /// The captured ack the last forwarded segment carried (None: none
    /// forwarded on this target connection yet).
    pub last_captured_ack: Option<u32>,
    first_request_sent: bool,
    pub greeting_received: bool,
    /// The client's round-trip time (from its handshake), milliseconds.
    pub rtt: u64,
    /// When the captured SYN went, until the client's next segment
    /// measures the RTT.
    syn_time: Option<u64>,
}

impl Pacing {
    pub fn new(rtt: u64, syn_time: Option<u64>) -> Pacing {
        Pacing {
            waiting: false,
            catching_up: false,
            pipelined: false,
            current_request_ack: 0,
            response_since_tick: false,
            response_for_request: false,
            last_response_full: false,
            last_captured_ack: None,
            first_request_sent: false,
            greeting_received: false,
            rtt,
            syn_time,
        }
    }

    /// The client's next segment after its SYN measures its RTT.
    pub fn measure_rtt(&mut self, now: u64) {
        if let Some(t) = self.syn_time.take() {
            self.rtt = now.saturating_sub(t).max(1);
        }
    }

    pub fn any_request_sent(&self) -> bool {
        self.first_request_sent
    }

    /// Does a segment with captured ack `ack` continue the current request
    /// (the client received no response bytes in between)?
    pub fn continues_request(&self, ack: u32) -> bool {
        self.first_request_sent && ack == self.current_request_ack
    }

    /// Must the first request wait for a server-first greeting? The client
    /// had seen server data before it (its ack moved since the handshake).
    pub fn awaits_greeting(&self, ack: u32) -> bool {
        !self.first_request_sent
            && !self.greeting_received
            && self.last_captured_ack.is_some_and(|a| a != ack)
    }

    /// A new request (captured ack `ack`) went: hold the next one unless
    /// `no_wait`.
    pub fn request_sent(&mut self, ack: u32, no_wait: bool) {
        self.first_request_sent = true;
        self.waiting = !no_wait;
        self.current_request_ack = ack;
        self.response_since_tick = false;
        self.response_for_request = false;
    }

    /// A new target connection: nothing sent on it yet.
    pub fn restart(&mut self) {
        self.pipelined = false;
        self.waiting = false;
        self.catching_up = false;
        self.first_request_sent = false;
        self.greeting_received = false;
        self.last_captured_ack = None;
    }
}

#[cfg(test)]
mod tests {
    use super::Pacing;

    #[test]
    fn a_request_holds_the_next_and_its_continuations_go() {
        let mut p = Pacing::new(1, Some(100));
        p.measure_rtt(130);
        assert_eq!(p.rtt, 30);
        p.measure_rtt(500); // once only
        assert_eq!(p.rtt, 30);
        assert!(!p.continues_request(7), "nothing sent yet");
        p.request_sent(7, false);
        assert!(p.waiting && p.any_request_sent());
        assert!(p.continues_request(7));
        assert!(!p.continues_request(8), "a new ack is a new request");
        p.request_sent(8, true);
        assert!(!p.waiting, "-W: nothing is held");
    }

    #[test]
    fn the_first_request_waits_for_a_greeting_the_client_had_seen() {
        let mut p = Pacing::new(1, None);
        p.last_captured_ack = Some(1000); // the handshake ACK
        assert!(!p.awaits_greeting(1000));
        assert!(p.awaits_greeting(1020), "the client had 20 bytes first");
        p.greeting_received = true;
        assert!(!p.awaits_greeting(1020));
        p.request_sent(1020, false);
        p.pipelined = true;
        p.restart();
        assert!(!p.any_request_sent() && !p.pipelined && !p.greeting_received);
        assert_eq!(p.last_captured_ack, None);
    }
}
