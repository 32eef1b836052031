//! The option parsers (-x, -c, -s, -F, --allow): any text is accepted or
//! refused with a message; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcopy::{
    intercept::{parse_cidr, parse_filter},
    session::{parse_client_pool, parse_transfers},
    tcpcopy::parse_servers,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = parse_transfers(s) {
        let _ = parse_client_pool(s, &t);
        let _ = parse_client_pool("10.9.9.x", &t);
    }
    let _ = parse_servers(s, 36524);
    let _ = parse_filter(s);
    let _ = parse_cidr(s);
});
