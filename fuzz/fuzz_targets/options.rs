//! The option parsers (-x, -c, -s, -F, --allow): any text is accepted or
//! refused with a message; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcopy::{
    intercept::{parse_cidr, parse_filter},
    session::{parse_transfers, ClientPool},
    tcpcopy::parse_servers,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = parse_transfers(s) {
        if let Ok(pool) = ClientPool::parse(s, &t) {
            let _ = pool.bind("10.0.1.1".parse().unwrap());
            let _ = pool.bind("2001:db8::1".parse().unwrap());
        }
        let _ = ClientPool::parse("10.9.9.x,2001:db8:ff::/112", &t);
    }
    let _ = parse_servers(s, 36524);
    let _ = parse_filter(s);
    let _ = parse_cidr(s);
});
