//! The session engine's input side: arbitrary captured packets and
//! arbitrary response records must never panic, and the counters' two
//! invariants must hold after every input (the driver is
//! `tcpcopy::session::fuzz_engine`, shared with the regression tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tcpcopy::session::fuzz_engine(data);
});
