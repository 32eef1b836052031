//! IPv4 networks as the options write them (`10.0.1.0/24`, or one
//! address): intercept's `--allow`, tcpcopy's `--only-clients` and
//! `--skip-clients`.

use std::net::Ipv4Addr;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{option}: bad network `{item}`: expected A.B.C.D or A.B.C.D/LEN (LEN 0..32)")]
pub struct CidrError {
    option: &'static str,
    item: String,
}

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    /// `A.B.C.D[/LEN]`, for `option` (named in the error).
    pub fn parse(option: &'static str, s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError {
            option,
            item: s.to_string(),
        };
        let (addr, len) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        Ok(Cidr {
            addr: addr.parse().map_err(|_| bad())?,
            len,
        })
    }

    /// A comma-separated list (empty items ignored).
    pub fn parse_list(option: &'static str, s: &str) -> Result<Vec<Cidr>, CidrError> {
        s.split(',')
            .filter(|i| !i.trim().is_empty())
            .map(|i| Cidr::parse(option, i))
            .collect()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_bad_ones_name_the_option() {
        let c = Cidr::parse_list("--skip-clients", "10.0.1.11,10.9.0.0/16").unwrap();
        assert!(c[0].contains(Ipv4Addr::new(10, 0, 1, 11)));
        assert!(!c[0].contains(Ipv4Addr::new(10, 0, 1, 10)));
        assert!(c[1].contains(Ipv4Addr::new(10, 9, 200, 1)));
        assert!(!c[1].contains(Ipv4Addr::new(10, 8, 200, 1)));
        assert!(Cidr::parse("x", "0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in ["10.0.1", "10.0.1.0/33", "10.0.1.0/x", "host", "x"] {
            let e = Cidr::parse_list("--only-clients", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--only-clients") && e.contains(bad), "{e}");
        }
    }
}
