//! The engine's counters. Two invariants hold at every moment and answer
//! "where did my requests go?":
//!
//! 1. `captured = accepted + not_tcp + malformed + no_transfer + localhost_dropped
//!    + client_filtered + sampled_out + skipped_ramp + skipped_rate_limit`
//! 2. `session_inputs = replayed + pure_acks_absorbed + duplicates + no_session
//!    + only_complete_skipped + port_conflicts + late_for_closed
//!    + session_limit + lost_* + buffered`
//!
//! (`session_limit` and the `lost_*` counters are the losses: [`Counters::lost`])
//!
//! where `session_inputs` = accepted segments × copies (`-n`), and
//! `buffered` = segments still held by live sessions.

use crate::stats::{Figure, Section};

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident
        $([line $section:ident $key:literal])?
        $([loss $label:literal $words:literal])? ),* $(,)?) => {
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters { $( $(#[$m])* pub $name: u64, )* }
        impl Counters {
            /// (name, value) for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
            /// Add another worker's counters to these.
            pub fn add(&mut self, o: &Counters) {
                $( self.$name += o.$name; )*
            }
            /// Segments lost with their session, every reason: the sum of
            /// the counters declared as losses.
            pub fn lost(&self) -> u64 {
                0 $( $( + { let _ = $label; self.$name } )? )*
            }
            /// Every counter as a figure of the stats room: one series of
            /// `family` (labelled `counter`), listed in the summary under
            /// its name, in the statistics line and the losses where its
            /// declaration says.
            pub fn figures(&self, family: &'static str, help: &'static str) -> Vec<Figure> {
                vec![$(
                    Figure::series(family, "counter", stringify!($name), help, self.$name)
                        .summary(stringify!($name))
                        $(.line(Section::$section, $key))?
                        $(.loss($label, $words))?,
                )*]
            }
        }
    };
}

counters! {
    // --- ingress (invariant 1)
    /// Packets handed to the engine.
    captured [line Traffic "captured"],
    /// Passed the filter, went on to sessions.
    accepted,
    /// Not IPv4/TCP.
    not_tcp,
    /// Truncated or inconsistent headers.
    malformed,
    /// No `-x` entry matched the destination.
    no_transfer,
    /// Localhost rules of spec §4.2 step 5.
    localhost_dropped,
    /// Not in the `-r` sample.
    sampled_out,
    /// Left out by `--only-clients` / `--skip-clients` (packet capture and
    /// offline; tap and xdp capture leave them out in the kernel).
    client_filtered,
    /// Segments of connections the `-g` ramp skipped.
    skipped_ramp,
    /// Segments of connections `--max-session-rate` skipped.
    skipped_rate_limit,
    /// Captured packets that were not plain "DF, offset 0" (counted only).
    fragments,
    /// Captured segments cut because they exceeded `-M`.
    split_oversize,
    // --- sessions (invariant 2)
    /// Segments offered to sessions (accepted × copies, after `-M` cuts).
    session_inputs,
    /// Captured segments sent to the target (first transmission).
    replayed [line Traffic "replayed"],
    /// Client pure ACKs after the handshake: tcpcopy makes its own.
    pure_acks_absorbed,
    /// Client retransmissions and duplicate captures, skipped.
    duplicates,
    /// Bare ACK/FIN/RST of a connection tcpcopy has no session for.
    no_session,
    /// `-O`: mid-stream sessions not replayed.
    only_complete_skipped,
    /// No free (client IP, port) toward the target for a copy.
    port_conflicts,
    /// Lost with new sessions refused at the per-worker session cap.
    session_limit [loss "session_limit" "session limit (--max-sessions) reached"],
    /// Segments of a finished session that arrived during its linger.
    late_for_closed,
    /// Lost when the target refused the connection (RST to our SYN).
    lost_target_refused [loss "target_refused" "target refused the connection"],
    /// Lost when the handshake did not complete in time.
    lost_handshake_timeout [loss "handshake_timeout" "handshake timed out"],
    /// Lost when the session timed out (`-t`/`-k`) or retransmissions gave up.
    lost_timed_out [loss "session_timeout" "session timed out"],
    /// Lost behind a gap in the captured stream that never filled.
    lost_capture_gap [loss "capture_gap" "capture gap never filled"],
    /// Lost because the session's buffer cap was reached.
    lost_buffer_full [loss "session_buffer_full" "session buffer full"],
    /// Lost because the target reset/closed and no reconnect was possible.
    lost_target_closed [loss "target_closed" "target closed or reset"],
    /// Unsent data after the client's RST was forwarded.
    lost_client_reset [loss "client_reset" "client reset"],
    /// Still buffered when tcpcopy shut down.
    lost_shutdown [loss "shutdown" "still buffered at shutdown"],
    /// Lost to the memory limit (`-m`): segments of sessions refused while
    /// memory was short, and of sessions given up when it ran out.
    lost_memory_limit [loss "memory_limit" "memory limit (-m) reached"],
    // --- what was sent
    /// Packets sent to the target (forwarded + fabricated, not retransmissions).
    packets_sent,
    /// Payload bytes replayed (first transmissions).
    bytes_replayed [line Traffic "bytes"],
    /// Requests started (first segment of each request).
    requests_replayed [line Traffic "requests"],
    syns_sent,
    /// Fabricated SYNs for sessions captured without their SYN.
    syns_fabricated,
    fins_sent,
    rsts_sent,
    acks_fabricated,
    reconnects [line Sessions "reconnects"],
    /// Connections the target refused (RST to the SYN) that were asked
    /// again (`--retry-refused`).
    refused_retries,
    /// Holes in a captured stream skipped: the session went on past them
    /// on a new target connection (`--gap-skip`).
    gaps_skipped,
    /// Held requests released because the target never answered the
    /// previous one within the response wait.
    response_waits_expired,
    /// Requests a session sent before the previous response came, to catch
    /// up with a client that ran ahead (`--catch-up`).
    requests_pipelined,
    /// Client RSTs replayed as a FIN because pipelined requests may still
    /// wait in the target's buffer (an RST would discard them).
    resets_as_fin,
    retransmits [line Sent "retransmits"],
    fast_retransmits,
    route_msgs,
    // --- sessions
    sessions_created [line Sessions "created"],
    /// Captured connections not replayed: their bucket was above the `-g`
    /// ramp's share when they started.
    sessions_skipped_ramp,
    /// Captured connections not replayed: `--max-session-rate`'s second
    /// was full when they started.
    sessions_skipped_rate_limit [line Sessions "rate_limited"],
    /// Attempts to open a session refused while memory was short (`-m`).
    sessions_refused_memory,
    /// Sessions left to finish on their own when a new connection reused
    /// their client port before their replay was done.
    sessions_overlapped,
    sessions_destroyed,
    /// Handshakes completed with the target (SYN-ACK received).
    connections [line Sessions "conns"],
    /// Sessions ended by a GC verdict (handshake/idle/gap/buffer).
    obsolete,
    // --- from the target (intercept records)
    responses,
    response_payloads,
    response_fins,
    response_rsts,
    /// Records for no live session.
    responses_unmatched,
}

impl Counters {
    /// Sum of the named drop reasons of invariant 1.
    pub fn ingress_dropped(&self) -> u64 {
        self.not_tcp
            + self.malformed
            + self.no_transfer
            + self.localhost_dropped
            + self.client_filtered
            + self.sampled_out
            + self.skipped_ramp
            + self.skipped_rate_limit
    }
    /// Sum of every disposition of invariant 2 except `replayed` and what
    /// is still buffered.
    pub fn session_dropped(&self) -> u64 {
        self.pure_acks_absorbed
            + self.duplicates
            + self.no_session
            + self.only_complete_skipped
            + self.port_conflicts
            + self.late_for_closed
            + self.lost()
    }
}
