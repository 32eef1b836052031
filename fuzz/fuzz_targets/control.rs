//! The control channel codecs: any byte stream, in any split, either
//! decodes or is refused; never a panic, never an unbounded buffer; with
//! our extension offered too (a stream whose version message offers
//! `TCP6` goes on with IPv6 route messages and wide records).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcopy::proto::{Framing, RecordDecoder, RouteDecoder};

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut routes = RouteDecoder::default();
    let mut out = Vec::new();
    for chunk in data.chunks(split) {
        if routes.feed(chunk, &mut out).is_err() {
            break;
        }
        assert!(routes.buffered() < tcpcopy::proto::ROUTE_MSG_V6_LEN);
    }
    for (framing, offered) in [
        (Framing::Combined, false),
        (Framing::Bare, false),
        (Framing::Combined, true),
        (Framing::Bare, true),
    ] {
        // Offered: our extension, acknowledged or not by the stream.
        let mut records = if offered {
            RecordDecoder::offering(framing)
        } else {
            RecordDecoder::new(framing)
        };
        let mut out = Vec::new();
        for chunk in data.chunks(split) {
            if records.feed(chunk, &mut out).is_err() {
                break;
            }
        }
        for r in &out {
            let _ = r.header();
            assert!(r.prefix().len() <= tcpcopy::proto::PREFIX_MAX as usize);
        }
    }
});
