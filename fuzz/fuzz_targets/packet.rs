//! The session engine's input side: arbitrary captured packets, and
//! arbitrary response headers, must never panic, and the counters' two
//! invariants must hold after every input.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tcpcopy::{
    proto::{ResponseRecord, RECORD_LEN},
    session::{parse_transfers, Config, Engine},
};

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        transfers: parse_transfers("80-10.0.2.2:8080").unwrap(),
        replicas: 2,
        ..Config::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    let mut now = 0u64;
    // Inputs are split on a marker byte: even chunks are captured client
    // packets, odd ones response records from intercept.
    for (i, chunk) in data.split(|&b| b == 0xa5).enumerate() {
        now += 7;
        if i % 2 == 0 {
            e.handle_client_packet(now, chunk);
        } else {
            // Any 64 bytes from intercept are a record.
            let mut r = [0u8; RECORD_LEN];
            let n = chunk.len().min(RECORD_LEN);
            r[..n].copy_from_slice(&chunk[..n]);
            e.handle_response(now, &ResponseRecord(r).header());
        }
        e.handle_timeout(now);
        while e.poll_transmit().is_some() {}
        while e.poll_route().is_some() {}
        let c = e.counters();
        assert_eq!(c.captured, c.accepted + c.ingress_dropped());
        assert_eq!(c.session_inputs, c.replayed + c.session_dropped() + e.buffered());
    }
    e.shutdown();
});
