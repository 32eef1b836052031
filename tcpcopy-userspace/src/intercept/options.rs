//! intercept's command line: the C tool's letters (spec §2.2) with long
//! names, plus `--xdp-mode`, `--bare` and `--allow`; and the `-F` filter,
//! a subset of pcap syntax that an XDP map can express.

use std::net::IpAddr;

use clap::Parser;
use thiserror::Error;

use crate::{
    wire::{Cidr, CidrError},
    xdp::AttachMode,
};

const EXAMPLES: &str = "\
Examples:
  On the assistant host, which the target routes the replayed clients to
  (ip_forward off there: it is a black hole), for a target on port 8080:
    sysctl net.ipv4.ip_forward=0
    intercept -i eth0 -F 'tcp and src port 8080' -b 10.0.4.3 --allow 10.0.4.0/24

  Two services of one target, as a daemon:
    intercept -i eth0 -F 'tcp and src port 8080 or tcp and src port 6379' -d -l /var/log/intercept.log

Exit status: 0 after a clean stop (SIGINT, SIGTERM, SIGHUP); 1 on a start-up
error (said on stderr and in the -l log).";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "intercept",
    disable_version_flag = true,
    about = "Drops the target's responses with XDP and sends their headers to tcpcopy",
    after_help = EXAMPLES
)]
pub struct InterceptOptions {
    /// Interfaces the target's responses arrive on (comma separated or
    /// repeated)
    #[arg(
        short = 'i',
        long = "iface",
        value_name = "IFACE",
        value_delimiter = ',',
        required_unless_present_any = ["version", "generate"],
        help_heading = "Capture"
    )]
    pub ifaces: Vec<String>,
    /// Which responses to take: `tcp and src port N [and src host A]`,
    /// alternatives joined by `or`
    #[arg(
        short = 'F',
        long = "filter",
        value_name = "FILTER",
        required_unless_present_any = ["version", "generate"],
        help_heading = "Capture"
    )]
    pub filter: Option<String>,
    /// XDP attach mode
    #[arg(long = "xdp-mode", value_enum, value_name = "MODE", default_value_t = AttachMode::Auto, help_heading = "Capture")]
    pub xdp_mode: AttachMode,
    /// Port the control channel listens on
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value_t = crate::proto::CONTROL_PORT, help_heading = "Control channel")]
    pub port: u16,
    /// Address the control channel binds to [default: every IPv4 address;
    /// `::` takes both families]
    #[arg(
        short = 'b',
        long = "bind",
        value_name = "IP",
        default_value = "0.0.0.0",
        hide_default_value = true,
        help_heading = "Control channel"
    )]
    pub bind: IpAddr,
    /// Only accept control connections from these networks (CIDR,
    /// repeatable) [default: any peer, with a warning]
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr, help_heading = "Control channel")]
    pub allow: Vec<Cidr>,
    /// Send records back to back, without the u16 count (the C tools'
    /// --disable-combined build)
    #[arg(long = "bare", help_heading = "Control channel")]
    pub bare: bool,
    /// Most responses parked while they wait for their CLIENT_ADD (delay
    /// table)
    #[arg(
        short = 's',
        long = "delay-table-size",
        value_name = "N",
        default_value_t = 65536,
        help_heading = "Limits"
    )]
    pub delay_table_size: usize,
    /// Most routes (client 4-tuples) remembered; the oldest is evicted
    /// beyond it
    #[arg(long = "routes", value_name = "N", default_value_t = 1 << 20, help_heading = "Limits")]
    pub max_routes: usize,
    #[command(flatten)]
    pub common: crate::process::CommonOptions,
}

/// `--allow`'s value parser.
pub fn parse_cidr(s: &str) -> Result<Cidr, CidrError> {
    Cidr::parse("--allow", s)
}

/// One alternative of `-F`: responses from this source port (and address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterClause {
    /// Either family.
    pub src_host: Option<IpAddr>,
    pub src_port: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("-F '{filter}': {why}. Accepted forms: `tcp and src port N`, `tcp and src port N and src host A` (or `src host A and src port N`), several joined by `or`, each optionally in parentheses")]
pub struct FilterError {
    pub filter: String,
    pub why: String,
}

/// Parse the `-F` subset. Everything the XDP program cannot express is
/// refused, naming the forms it takes.
pub fn parse_filter(filter: &str) -> Result<Vec<FilterClause>, FilterError> {
    let err = |why: String| FilterError {
        filter: filter.to_string(),
        why,
    };
    let text = filter.trim();
    if text.is_empty() {
        return Err(err("empty filter".into()));
    }
    let mut clauses = Vec::new();
    for alt in split_word(text, "or") {
        let alt = strip_parens(alt.trim());
        let mut host = None;
        let mut port = None;
        let parts = split_word(alt, "and");
        for (i, part) in parts.iter().enumerate() {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                ["tcp"] if i == 0 => {}
                ["src", "port", p] => {
                    let n: u16 = p
                        .parse()
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| err(format!("`{p}` is not a port")))?;
                    if port.replace(n).is_some() {
                        return Err(err("two ports in one alternative".into()));
                    }
                }
                ["src", "host", a] => {
                    let ip: IpAddr = a
                        .parse()
                        .map_err(|_| err(format!("`{a}` is not an IP address")))?;
                    if host.replace(ip).is_some() {
                        return Err(err("two hosts in one alternative".into()));
                    }
                }
                _ => return Err(err(format!("`{}` is not supported", part.trim()))),
            }
        }
        let Some(src_port) = port else {
            return Err(err(format!("`{alt}` names no `src port`")));
        };
        clauses.push(FilterClause {
            src_host: host,
            src_port,
        });
    }
    if clauses.len() > 64 {
        return Err(err("more than 64 alternatives".into()));
    }
    Ok(clauses)
}

/// Split on a whole word (`or`, `and`), outside of nothing fancier: the
/// subset has no nested parentheses.
fn split_word<'a>(s: &'a str, word: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    let w = word.len();
    let mut i = 0;
    while i + w <= s.len() {
        let before_ok = i == 0 || bytes[i - 1].is_ascii_whitespace() || bytes[i - 1] == b')';
        let after_ok =
            i + w == s.len() || bytes[i + w].is_ascii_whitespace() || bytes[i + w] == b'(';
        if before_ok && after_ok && s[i..i + w].eq_ignore_ascii_case(word) {
            out.push(&s[start..i]);
            start = i + w;
            i += w;
        } else {
            i += 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn strip_parens(s: &str) -> &str {
    let t = s.trim();
    if t.starts_with('(') && t.ends_with(')') {
        t[1..t.len() - 1].trim()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn accepted_forms() {
        assert_eq!(
            parse_filter("tcp and src port 8080").unwrap(),
            vec![FilterClause {
                src_host: None,
                src_port: 8080
            }]
        );
        assert_eq!(
            parse_filter("tcp and src port 80 and src host 10.0.2.2 or (tcp and src host 10.0.2.3 and src port 6379)")
                .unwrap(),
            vec![
                FilterClause { src_host: Some(Ipv4Addr::new(10, 0, 2, 2).into()), src_port: 80 },
                FilterClause { src_host: Some(Ipv4Addr::new(10, 0, 2, 3).into()), src_port: 6379 },
            ]
        );
        assert_eq!(parse_filter("src port 11211").unwrap()[0].src_port, 11211);
        assert_eq!(
            parse_filter("tcp and src port 8080 and src host fd00:2::2").unwrap()[0].src_host,
            Some("fd00:2::2".parse().unwrap())
        );
    }

    #[test]
    fn refused_forms_name_the_accepted_ones() {
        for bad in [
            "",
            "tcp",
            "udp and src port 53",
            "tcp and dst port 80",
            "tcp and src port 80 and not src host 1.2.3.4",
            "tcp and src port http",
            "tcp and src port 80 and src port 81",
            "tcp and src host 10.0.0.1",
            "tcp and src port 0",
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert!(e.to_string().contains("Accepted forms"), "{bad}: {e}");
        }
    }

    #[test]
    fn cidr() {
        let n = parse_cidr("10.0.4.0/24").unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 0, 4, 3).into()));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 5, 3).into()));
        assert!(parse_cidr("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4).into()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("x").is_err());
    }
}
