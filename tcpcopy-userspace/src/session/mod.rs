//! The heart of tcpcopy: a sans-IO simulation of each client's TCP stack.
//! No sockets, clocks or threads (shaped like quinn-proto): feed it
//! `(now, captured client packet)`, `(now, response header)` and
//! `handle_timeout(now)`; drain `poll_transmit()` (IPv4 packets for the
//! target), `poll_route()` (CLIENT_ADD messages for intercept, to be sent
//! before the packets) and ask `poll_timeout()` when to call again.
//!
//! Behaviour follows spec §4 (tcpcopy-behaviour.md). Sequence numbers of
//! the client are kept end to end; acknowledgements are translated into the
//! target's sequence space learned from intercept; client pure ACKs after
//! the handshake are absorbed and tcpcopy acknowledges response data itself;
//! a request is held until the response to the previous one is complete
//! (`-W` turns that off); sessions captured mid-stream get a fabricated SYN
//! (`-O` skips them); gaps in the capture are held, and one that does not
//! fill within `gap_skip_ms` is skipped on a new target connection;
//! duplicates are skipped, replayed data retransmitted toward the target.
//!
//! Quirks of the C tool, and what we chose:
//! - replica ports were shifted by `-f` twice: fixed (once);
//! - replicated/shifted ports could collide with live sessions: a port
//!   allocator probes the next free port and counts `port_conflicts`;
//! - distinct clients sharing a 16-bit key shared a `-c` address: bindings
//!   are exact per client address (round-robin, as before);
//! - the gap timeout compared 10000 with seconds: it is 10 s; and a hole
//!   the capture left (nothing will fill it) no longer costs the rest of
//!   its connection: past `gap_skip_ms`, the replay goes on after it;
//! - one fixed 100 ms RTO, retransmitted once: RTO starts at 100 ms and
//!   doubles, up to `max_retransmits` tries, then the session is given up;
//! - the first server greeting was neither acknowledged nor pumped: it is
//!   acknowledged at once and the held request follows it;
//! - `-R`'s value was ignored: not offered;
//! - a request the target never answers held the next one until the
//!   session timeout: released after `response_wait_ms` (counted);
//! - on reconnect the C tool resumed from "the next unsent segment"; we
//!   resume from the first byte the target did not acknowledge, so no byte
//!   the target acknowledged is sent twice and none it did not is skipped;
//! - the response record's TCP header is always at offset 20 (the C tool
//!   used the response's ihl, wrong with IP options);
//! - not a quirk, a cost: the handshake's last ACK is owed until the end of
//!   the worker's turn, and the first request captured meanwhile carries
//!   it (the C tool sent it bare, one packet more per connection); a
//!   target FIN that comes while the client's FIN is in hand is
//!   acknowledged by that FIN (no bare ACK before it). A target that
//!   closes first with no client FIN in hand still gets the ACK, then the
//!   RST (spec §4.14.2, scenario 13).
//!
//! Kept for compatibility: sampling bucket formula (`-r`), replica port
//! formula, the C pacing of LAN clients (RTT ≤ 1 ms: the next request
//! follows the first response segment).

pub mod claims;
mod close;
mod config;
mod conn;
mod counters;
mod deadlines;
mod engine;
mod event;
mod outbox;
mod pacing;
mod pool;
mod segment;
mod shaping;
mod stream;
mod target;
mod timers;

pub use config::{
    is_localhost, parse_mac, parse_transfers, preferred_port, sample_bucket, Config, ConfigError,
    Transfer,
};
pub use counters::Counters;
pub use pool::ClientPool;
pub use shaping::{ClientFilter, Ramp, SessionRate};

/// The `packet` fuzz target's driver, shared with its regression tests:
/// `data` split on 0xa5, even chunks fed as captured client packets (IPv4
/// or IPv6: both families have a rule), odd ones as response records (up
/// to 84 bytes: IPv6 ones are wide); the counters' two invariants are
/// checked after every chunk (a panic names the chunk).
#[doc(hidden)]
pub fn fuzz_engine(data: &[u8]) {
    let cfg = Config {
        transfers: parse_transfers("80-10.0.2.2:8080,80-[fd00:2::2]:8080").expect("constant"),
        replicas: 2,
        ..Config::default()
    };
    let mut e = Engine::new(std::sync::Arc::new(cfg));
    let mut now = 0u64;
    for (i, chunk) in data.split(|&b| b == 0xa5).enumerate() {
        now += 7;
        if i % 2 == 0 {
            e.handle_client_packet(now, chunk);
        } else {
            e.handle_response(
                now,
                &crate::proto::ResponseRecord::from_head(chunk).header(),
                Default::default(),
            );
        }
        e.handle_timeout(now);
        while e.poll_transmit().is_some() {}
        while e.poll_route().is_some() {}
        let c = e.counters();
        assert_eq!(c.captured, c.accepted + c.not_accepted(), "chunk {i}");
        assert_eq!(
            c.session_inputs,
            c.replayed + c.session_dropped() + e.buffered(),
            "chunk {i}: {c:#?}"
        );
    }
    e.shutdown();
}
pub use engine::{address_word, Engine, SessionKey};

#[cfg(test)]
mod tests;
