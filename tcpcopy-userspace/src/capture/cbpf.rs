//! The classic BPF programs of AF_PACKET capture (no eBPF needed):
//!
//! - [`fanout_program`] picks, for each packet, which socket of a
//!   `PACKET_FANOUT_CBPF` group (one AF_PACKET socket per worker) gets it:
//!   a hash of the flow that is the same in both directions (the addresses
//!   XORed, IPv6 folded word by word; the two ports added), so a client's
//!   segments and, with `--verdict`, the online server's answers to it
//!   land at the same worker. The kernel takes the result modulo the group
//!   size.
//! - [`port_filter`] is each socket's filter: only TCP segments to a `-x`
//!   port (with `--verdict`, from one too) are queued to the socket at
//!   all, so the host's other traffic costs the kernel one short program
//!   per frame instead of a copy to tcpcopy. User space still checks each
//!   frame exactly (addresses, direction).
//!
//! Why not `PACKET_FANOUT_HASH`: the kernel's fanout hash is skb->hash,
//! which on veth (and anything forwarding a local socket's packets) is
//! the sender's random txhash, re-rolled by TCP on retransmissions, so one
//! flow could land on two workers and be replayed twice. This program
//! reads only the packet's addresses and ports.
//!
//! Loads are relative to the network header (`SKF_NET_OFF`): a received
//! frame's data starts there, an outgoing one's (the online answers) at
//! the link header. For the fanout, anything that is not IPv4/IPv6 TCP,
//! or is too short, gets 0 (worker 0, whose filter refuses it anyway).

use libc::sock_filter;

/// Offsets of loads relative to the network header.
const NET: u32 = libc::SKF_NET_OFF as u32;

const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
const LDX_IMM: u16 = (libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM) as u16;
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_W_IND: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_IND) as u16;
const LD_MEM: u16 = (libc::BPF_LD | libc::BPF_MEM) as u16;
const LDX_MEM: u16 = (libc::BPF_LDX | libc::BPF_MEM) as u16;
const ST: u16 = libc::BPF_ST as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;

fn alu_k(op: u32) -> u16 {
    (libc::BPF_ALU | op | libc::BPF_K) as u16
}

fn alu_x(op: u32) -> u16 {
    (libc::BPF_ALU | op | libc::BPF_X) as u16
}

/// Scratch memory words the program uses.
const ADDRESSES: u32 = 0;
const PORTS: u32 = 1;
const HASH: u32 = 2;

/// The multipliers of `tcpcopy_common::flow_hash`.
const PORT_MIX: u32 = 0x9e37_79b1;
const HASH_MIX: u32 = 0x85eb_ca6b;

/// Where a jump goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Ipv6,
    Mix,
    Ports,
    Take,
    Refuse,
}

/// What a socket filter returns to take a frame: more than any frame's
/// length, so none is cut.
const TAKE_WHOLE: u32 = 0x0004_0000;
/// `-x` ports the filter names one by one; with more it takes every TCP
/// segment (a conditional jump reaches at most 255 instructions on).
pub const MOST_FILTERED_PORTS: usize = 64;

/// A tiny assembler: instructions, and the forward jumps to patch once
/// every label is placed.
#[derive(Default)]
struct Asm {
    code: Vec<sock_filter>,
    /// (instruction, its target when true, when false); `JA` uses the first.
    jumps: Vec<(usize, Option<Label>, Option<Label>)>,
    placed: Vec<(Label, usize)>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.code.push(sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }
    /// `if A == k` go on, else jump to `otherwise`.
    fn require(&mut self, k: u32, otherwise: Label) {
        self.jumps.push((self.code.len(), None, Some(otherwise)));
        self.op(JEQ_K, k);
    }
    /// `if A == k` jump to `then`, else go on.
    fn when(&mut self, k: u32, then: Label) {
        self.jumps.push((self.code.len(), Some(then), None));
        self.op(JEQ_K, k);
    }
    fn jump(&mut self, to: Label) {
        self.jumps.push((self.code.len(), Some(to), None));
        self.op(JA, 0);
    }
    fn place(&mut self, label: Label) {
        self.placed.push((label, self.code.len()));
    }
    fn finish(mut self) -> Vec<sock_filter> {
        let at = |l: Label| self.placed.iter().find(|p| p.0 == l).map(|p| p.1);
        for &(i, yes, no) in &self.jumps {
            let skip = |l: Option<Label>| l.and_then(at).map_or(0, |t| (t - i - 1) as u32);
            let insn = &mut self.code[i];
            if insn.code == JA {
                insn.k = skip(yes);
            } else {
                let short = |n: u32| u8::try_from(n).expect("a conditional jump spans at most 255");
                insn.jt = short(skip(yes));
                insn.jf = short(skip(no));
            }
        }
        self.code
    }
    /// IPv4 TCP goes on (the header's length in X); IPv6 jumps to
    /// [`Label::Ipv6`]; anything else is refused.
    fn ipv4_tcp(&mut self) {
        self.op(LD_B_ABS, NET);
        self.op(alu_k(libc::BPF_RSH), 4);
        self.require(4, Label::Ipv6);
        self.op(LD_B_ABS, NET + 9);
        self.require(6, Label::Refuse);
        self.op(LD_B_ABS, NET);
        self.op(alu_k(libc::BPF_AND), 0xf);
        self.op(alu_k(libc::BPF_LSH), 2);
        self.op(TAX, 0);
    }
    /// At [`Label::Ipv6`] (A holds the version): IPv6 with TCP right after
    /// the fixed header goes on; anything else is refused.
    fn ipv6_tcp(&mut self) {
        self.place(Label::Ipv6);
        self.require(6, Label::Refuse);
        self.op(LD_B_ABS, NET + 6);
        self.require(6, Label::Refuse);
    }
    /// `h ^= h >> shift`, h in A.
    fn fold(&mut self, shift: u32) {
        self.op(ST, HASH);
        self.op(alu_k(libc::BPF_RSH), shift);
        self.op(TAX, 0);
        self.op(LD_MEM, HASH);
        self.op(alu_x(libc::BPF_XOR), 0);
    }
}

/// The fanout program (see the module's comment).
pub fn fanout_program() -> Vec<sock_filter> {
    let mut a = Asm::default();
    // IPv4: the ports after the header's own length; the addresses XORed.
    a.ipv4_tcp();
    a.op(LD_W_IND, NET);
    a.op(ST, PORTS);
    a.op(LD_W_ABS, NET + 12);
    a.op(TAX, 0);
    a.op(LD_W_ABS, NET + 16);
    a.op(alu_x(libc::BPF_XOR), 0);
    a.op(ST, ADDRESSES);
    a.op(LD_MEM, PORTS);
    a.jump(Label::Mix);
    // IPv6: the eight address words XORed.
    a.ipv6_tcp();
    a.op(LD_W_ABS, NET + 8);
    for word in 1..8 {
        a.op(TAX, 0);
        a.op(LD_W_ABS, NET + 8 + 4 * word);
        a.op(alu_x(libc::BPF_XOR), 0);
    }
    a.op(ST, ADDRESSES);
    a.op(LD_W_ABS, NET + 40);
    // A holds source port << 16 | destination port: add them, then mix
    // as `flow_hash` does.
    a.place(Label::Mix);
    a.op(ST, PORTS);
    a.op(alu_k(libc::BPF_RSH), 16);
    a.op(TAX, 0);
    a.op(LD_MEM, PORTS);
    a.op(alu_k(libc::BPF_AND), 0xffff);
    a.op(alu_x(libc::BPF_ADD), 0);
    a.op(alu_k(libc::BPF_MUL), PORT_MIX);
    a.op(LDX_MEM, ADDRESSES);
    a.op(alu_x(libc::BPF_XOR), 0);
    a.fold(16);
    a.op(alu_k(libc::BPF_MUL), HASH_MIX);
    a.fold(13);
    a.op(RET_A, 0);
    a.place(Label::Refuse);
    a.op(RET_K, 0);
    a.finish()
}

/// The socket filter (see the module's comment): TCP segments whose
/// destination port is one of `ports` (with `answers`, whose source port
/// is one too), IPv4 or IPv6 (TCP right after the fixed header); every
/// TCP segment when `ports` are more than [`MOST_FILTERED_PORTS`].
pub fn port_filter(ports: &[u16], answers: bool) -> Vec<sock_filter> {
    let mut a = Asm::default();
    a.ipv4_tcp();
    a.jump(Label::Ports);
    a.ipv6_tcp();
    a.op(LDX_IMM, 40);
    // X: where the TCP header starts.
    a.place(Label::Ports);
    if ports.len() > MOST_FILTERED_PORTS {
        a.jump(Label::Take);
    } else {
        a.op(LD_H_IND, NET + 2);
        for &p in ports {
            a.when(p as u32, Label::Take);
        }
        if answers {
            a.op(LD_H_IND, NET);
            for &p in ports {
                a.when(p as u32, Label::Take);
            }
        }
    }
    a.place(Label::Refuse);
    a.op(RET_K, 0);
    a.place(Label::Take);
    a.op(RET_K, TAKE_WHOLE);
    a.finish()
}

/// What [`fanout_program`] computes for IP packet `p`, in plain Rust: the
/// reference the tests hold the program to.
#[cfg(test)]
pub fn symmetric_flow_hash(p: &[u8]) -> u32 {
    let word = |i: usize| -> Option<u32> {
        p.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let parts = || -> Option<(u32, u32)> {
        match p.first()? >> 4 {
            4 if *p.get(9)? == 6 => {
                let ihl = (p[0] & 0xf) as usize * 4;
                Some((word(12)? ^ word(16)?, word(ihl)?))
            }
            6 if *p.get(6)? == 6 => {
                let mut folded = 0;
                for w in 0..8 {
                    folded ^= word(8 + 4 * w)?;
                }
                Some((folded, word(40)?))
            }
            _ => None,
        }
    };
    let Some((addresses, ports)) = parts() else {
        return 0;
    };
    let ports = (ports >> 16).wrapping_add(ports & 0xffff);
    let mut h = addresses ^ ports.wrapping_mul(PORT_MIX);
    h ^= h >> 16;
    h = h.wrapping_mul(HASH_MIX);
    h ^= h >> 13;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions [`program`] uses,
    /// over an IP packet (`SKF_NET_OFF` + n is byte n); a load past the
    /// end returns 0, as the kernel's does.
    fn run(prog: &[sock_filter], p: &[u8]) -> u32 {
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let load = |at: u32, size: usize| -> Option<u32> {
            let at = at.wrapping_sub(NET) as usize;
            let b = p.get(at..at + size)?;
            Some(b.iter().fold(0, |v, &byte| v << 8 | byte as u32))
        };
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            let alu = |a: u32, v: u32| match (i.code as u32) & 0xf0 {
                libc::BPF_ADD => a.wrapping_add(v),
                libc::BPF_MUL => a.wrapping_mul(v),
                libc::BPF_AND => a & v,
                libc::BPF_LSH => a << v,
                libc::BPF_RSH => a >> v,
                libc::BPF_XOR => a ^ v,
                other => panic!("ALU op {other:#x} not used"),
            };
            match i.code {
                LD_B_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_W_ABS => match load(i.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_W_IND => match load(i.k.wrapping_add(x), 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_H_IND => match load(i.k.wrapping_add(x), 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDX_IMM => x = i.k,
                LD_MEM => a = m[i.k as usize],
                LDX_MEM => x = m[i.k as usize],
                ST => m[i.k as usize] = a,
                TAX => x = a,
                RET_A => return a,
                RET_K => return i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                c if c as u32 & 0x07 == libc::BPF_ALU && c as u32 & 0x08 == libc::BPF_X => {
                    a = alu(a, x)
                }
                c if c as u32 & 0x07 == libc::BPF_ALU => a = alu(a, i.k),
                c => panic!("opcode {c:#x} not used"),
            }
        }
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, options: usize) -> Vec<u8> {
        let ihl = 5 + options / 4;
        let mut p = vec![0u8; ihl * 4 + 20];
        p[0] = 0x40 | ihl as u8;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[ihl * 4..ihl * 4 + 2].copy_from_slice(&sport.to_be_bytes());
        p[ihl * 4 + 2..ihl * 4 + 4].copy_from_slice(&dport.to_be_bytes());
        p
    }

    fn ipv6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = 6;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p[40..42].copy_from_slice(&sport.to_be_bytes());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn the_program_computes_the_reference_hash() {
        let prog = fanout_program();
        let client = [10, 0, 1, 10];
        let server = [10, 0, 1, 1];
        let mut v6_client = [0u8; 16];
        v6_client[..2].copy_from_slice(&[0xfd, 0x00]);
        v6_client[15] = 10;
        let mut v6_server = v6_client;
        v6_server[15] = 1;
        for port in [1u16, 80, 40000, 65535] {
            for options in [0, 4, 40] {
                let p = ipv4(client, server, port, 80, options);
                assert_eq!(run(&prog, &p), symmetric_flow_hash(&p));
                assert_ne!(run(&prog, &p), 0);
            }
            let p = ipv6(v6_client, v6_server, port, 80);
            assert_eq!(run(&prog, &p), symmetric_flow_hash(&p));
            assert_ne!(run(&prog, &p), 0);
        }
    }

    #[test]
    fn both_directions_of_a_flow_hash_alike() {
        let prog = fanout_program();
        let request = ipv4([192, 168, 7, 9], [10, 0, 1, 1], 51234, 80, 0);
        let answer = ipv4([10, 0, 1, 1], [192, 168, 7, 9], 80, 51234, 8);
        assert_eq!(run(&prog, &request), run(&prog, &answer));
        let (c, s) = ([0x20; 16], [0x30; 16]);
        assert_eq!(
            run(&prog, &ipv6(c, s, 40000, 443)),
            run(&prog, &ipv6(s, c, 443, 40000))
        );
    }

    #[test]
    fn what_is_not_tcp_or_is_cut_short_goes_to_the_first_member() {
        let prog = fanout_program();
        let mut udp = ipv4([1, 2, 3, 4], [5, 6, 7, 8], 1000, 53, 0);
        udp[9] = 17;
        assert_eq!(run(&prog, &udp), 0);
        let full = ipv4([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80, 0);
        assert_eq!(run(&prog, &full[..21]), 0);
        let mut v6_udp = ipv6([1; 16], [2; 16], 1000, 53);
        v6_udp[6] = 17;
        assert_eq!(run(&prog, &v6_udp), 0);
        assert_eq!(run(&prog, &[0x50; 40]), 0, "neither version");
    }

    #[test]
    fn clients_spread_over_the_members() {
        let prog = fanout_program();
        for members in [2u32, 3, 16] {
            let mut per = vec![0u32; members as usize];
            for port in 32768..33768u16 {
                let p = ipv4([10, 0, 1, 10], [10, 0, 1, 1], port, 80, 0);
                per[(run(&prog, &p) % members) as usize] += 1;
            }
            let fair = 1000 / members;
            assert!(
                per.iter().all(|&n| n > fair * 2 / 3 && n < fair * 4 / 3),
                "{members} members: {per:?}"
            );
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let many: Vec<u16> = (1..=MOST_FILTERED_PORTS as u16).collect();
        let too_many: Vec<u16> = (1..=MOST_FILTERED_PORTS as u16 + 1).collect();
        for prog in [
            fanout_program(),
            port_filter(&[80], false),
            port_filter(&many, true),
            port_filter(&too_many, true),
        ] {
            assert!(prog.len() < 4096, "BPF_MAXINSNS");
            assert_eq!(prog.last().map(|i| i.code), Some(RET_K));
            for (i, insn) in prog.iter().enumerate() {
                let far = match insn.code {
                    JEQ_K => insn.jt.max(insn.jf) as usize,
                    JA => insn.k as usize,
                    _ => continue,
                };
                assert!(i + 1 + far < prog.len(), "instruction {i}");
            }
        }
    }

    #[test]
    fn the_filter_takes_segments_to_and_with_answers_from_the_ports() {
        let client = [10, 0, 1, 10];
        let server = [10, 0, 1, 1];
        let requests_only = port_filter(&[80, 6379], false);
        let with_answers = port_filter(&[80, 6379], true);
        for options in [0, 12] {
            let to_80 = ipv4(client, server, 40000, 80, options);
            let to_6379 = ipv4(client, server, 40001, 6379, options);
            let from_80 = ipv4(server, client, 80, 40000, options);
            let elsewhere = ipv4(client, server, 40000, 22, options);
            assert_eq!(run(&requests_only, &to_80), TAKE_WHOLE);
            assert_eq!(run(&requests_only, &to_6379), TAKE_WHOLE);
            assert_eq!(run(&requests_only, &from_80), 0, "an answer, unasked");
            assert_eq!(run(&requests_only, &elsewhere), 0);
            assert_eq!(run(&with_answers, &from_80), TAKE_WHOLE);
            assert_eq!(run(&with_answers, &elsewhere), 0);
        }
        let (c6, s6) = ([0x20; 16], [0x30; 16]);
        assert_eq!(run(&requests_only, &ipv6(c6, s6, 40000, 80)), TAKE_WHOLE);
        assert_eq!(run(&requests_only, &ipv6(c6, s6, 40000, 443)), 0);
        assert_eq!(run(&with_answers, &ipv6(s6, c6, 6379, 40000)), TAKE_WHOLE);
        let mut udp = ipv4(client, server, 40000, 80, 0);
        udp[9] = 17;
        assert_eq!(run(&with_answers, &udp), 0, "not TCP");
        let mut v6_udp = ipv6(c6, s6, 40000, 80);
        v6_udp[6] = 17;
        assert_eq!(run(&with_answers, &v6_udp), 0, "not TCP");
        let cut = ipv4(client, server, 40000, 80, 0);
        assert_eq!(run(&with_answers, &cut[..21]), 0, "cut short");
    }

    #[test]
    fn with_more_ports_than_it_names_the_filter_takes_all_tcp() {
        let ports: Vec<u16> = (1000..1000 + MOST_FILTERED_PORTS as u16 + 1).collect();
        let prog = port_filter(&ports, false);
        let p = ipv4([1, 2, 3, 4], [5, 6, 7, 8], 40000, 22, 0);
        assert_eq!(run(&prog, &p), TAKE_WHOLE);
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(run(&prog, &udp), 0);
    }
}
