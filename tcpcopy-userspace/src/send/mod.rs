//! Sending replayed segments to the target: a raw IPv4 socket (the kernel
//! routes and resolves the next hop; the default) — AF_XDP TX is not built
//! yet.

mod raw;

pub use raw::RawSender;
