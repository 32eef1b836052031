//! Networks of either family as the options write them (`10.0.1.0/24`,
//! `2001:db8::/64`, or one address): intercept's `--allow`, tcpcopy's
//! `--only-clients`, `--skip-clients` and `-c`.

use std::net::IpAddr;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{option}: bad network `{item}`: expected an address (A.B.C.D or an IPv6 one), with /LEN or not (LEN up to 32, or 128 for IPv6)")]
pub struct CidrError {
    option: &'static str,
    item: String,
}

/// A network of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `ADDR[/LEN]` (an IPv6 address may be in brackets), for `option`
    /// (named in the error).
    pub fn parse(option: &'static str, s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError {
            option,
            item: s.to_string(),
        };
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, len })
    }

    /// A comma-separated list (empty items ignored).
    pub fn parse_list(option: &'static str, s: &str) -> Result<Vec<Cidr>, CidrError> {
        s.split(',')
            .filter(|i| !i.trim().is_empty())
            .map(|i| Cidr::parse(option, i))
            .collect()
    }

    /// Whether `ip` is in the network (never for the other family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_bad_ones_name_the_option() {
        let c = Cidr::parse_list("--skip-clients", "10.0.1.11,10.9.0.0/16").unwrap();
        assert!(c[0].contains(Ipv4Addr::new(10, 0, 1, 11).into()));
        assert!(!c[0].contains(Ipv4Addr::new(10, 0, 1, 10).into()));
        assert!(c[1].contains(Ipv4Addr::new(10, 9, 200, 1).into()));
        assert!(!c[1].contains(Ipv4Addr::new(10, 8, 200, 1).into()));
        assert!(Cidr::parse("x", "0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4).into()));
        let c = Cidr::parse_list("--only-clients", "2001:db8:1::/48,[::1]").unwrap();
        assert!(c[0].contains(ip("2001:db8:1:ffff::7")));
        assert!(!c[0].contains(ip("2001:db8:2::7")));
        assert!(!c[0].contains(ip("10.0.1.1")));
        assert!(c[1].contains(ip("::1")) && !c[1].contains(ip("::2")));
        assert!(!Cidr::parse("x", "0.0.0.0/0").unwrap().contains(ip("::1")));
        for bad in ["10.0.1", "10.0.1.0/33", "10.0.1.0/x", "host", "x", "::/129"] {
            let e = Cidr::parse_list("--only-clients", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--only-clients") && e.contains(bad), "{e}");
        }
    }
}
