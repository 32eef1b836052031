//! `cargo xtask bench --instructions [--baseline REV]`: what the session
//! engine spends per segment, in instructions counted by valgrind
//! (cachegrind without its cache model), not in seconds. The count is the
//! same from run to run whatever else the machine does, so a change of a
//! few percent shows, where the timed benchmarks on this shared machine
//! spread by ±20%.
//!
//! Each of the bench binary's engine workloads (`bench engine-work`:
//! keep-alive over IPv4 and IPv6, short connections, one bulk stream)
//! runs at two round counts; the difference of the two counts, over the
//! difference of the inputs handled, is the steady-state cost of one
//! input with the setup taken out. With a baseline, commit REV's engine
//! runs the same workloads (this tree's `bench/src` built against it).
//! Writes
//! `bench/results/INSTRUCTIONS.md`. Figures, never assertions (the
//! workloads assert what they construct themselves).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util;

/// The workloads, with their two round counts: both past the point where
/// a workload is steady (the engine's deadline wheel has turned once, 1 s;
/// short connections linger 6 rounds).
const WORKLOADS: &[(&str, u32, u32)] = &[
    ("keep-alive", 150, 300),
    ("keep-alive-ipv6", 150, 300),
    ("short", 10, 30),
    ("bulk", 300, 600),
];

/// What one run of a workload reported, and its instructions.
struct Run {
    instructions: u64,
    inputs: u64,
    requests: u64,
    packets_sent: u64,
}

/// One workload's steady-state cost with one build.
struct Cost {
    per_input: f64,
    /// None where the rounds are one request (the bulk stream).
    per_request: Option<f64>,
    packets_per_request: Option<f64>,
}

impl Cost {
    /// The three figures as table cells.
    fn cells(&self) -> String {
        format!(
            "{:.0} | {} | {}",
            self.per_input,
            per_request(self.per_request, 0),
            per_request(self.packets_per_request, 2)
        )
    }
}

/// A per-request figure, or a dash where there is none.
fn per_request(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

pub fn run(baseline: Option<&str>) -> Result<()> {
    if !util::sh_ok("command -v valgrind >/dev/null") {
        bail!("valgrind is not installed (apt-get install valgrind)");
    }
    util::cargo(&["build", "--release", "--package", "bench"])?;
    let this = util::root().join("target/release/bench");
    let base = match baseline {
        Some(rev) => {
            // The commit's engine, driven by this tree's workloads.
            let dir = util::build_commit(rev, "bench", &["bench"], &["bench/src"])?;
            Some((rev, dir.join("bench")))
        }
        None => None,
    };
    let mut md = String::new();
    writeln!(
        md,
        "# What the session engine spends per segment, in instructions\n\n\
         Counted by valgrind (cachegrind, no cache model) in `bench engine-work`: the engine \
         in-process with no I/O, driven as a worker drives it (captured packets and \
         response records in, timers, packets drained and their buffers recycled). Each \
         workload runs twice, with two round counts; the difference of the counts over the \
         difference of the inputs is one input's steady-state cost (inputs = captured \
         packets + response records). The same binary gives the same count run after run.\n\n\
         - keep-alive: 200 sessions, a round (10 ms) is one 73-byte request and one \
         200-byte answer on each (IPv4; and IPv6), rounds 150 to 300;\n\
         - short: 100 new connections a round (1 s): handshake, request, answer, both \
         FINs (8 inputs each), rounds 10 to 30;\n\
         - bulk: one upload, a round (4 ms) is 64 segments of 1448 bytes and 32 ACKs, \
         rounds 300 to 600.\n\n\
         Every packet and record carries timestamps, as Linux's do.\n"
    )?;
    let head = if base.is_some() {
        "| workload | build | instructions per input | per request | packets sent per request | after / before |\n|---|---|---:|---:|---:|---:|"
    } else {
        "| workload | instructions per input | per request | packets sent per request |\n|---|---:|---:|---:|"
    };
    writeln!(md, "{head}")?;
    let mut ratios = Vec::new();
    for &(name, low, high) in WORKLOADS {
        let after = cost(&this, name, low, high)?;
        match &base {
            Some((rev, bin)) => {
                let before = cost(bin, name, low, high)?;
                let ratio = after.per_input / before.per_input;
                ratios.push(ratio);
                writeln!(md, "| {name} | before ({rev}) | {} | |", before.cells())?;
                writeln!(
                    md,
                    "| {name} | after | {} | **{ratio:.3}** |",
                    after.cells()
                )?;
            }
            None => writeln!(md, "| {name} | {} |", after.cells())?,
        }
    }
    if !ratios.is_empty() {
        let geomean = ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64;
        writeln!(
            md,
            "\nGeometric mean of after / before over the workloads: **{:.3}**.",
            geomean.exp()
        )?;
    }
    writeln!(
        md,
        "\nMachine: {}; valgrind {}; {}.",
        util::stdout("uname -r").trim(),
        util::stdout("valgrind --version").trim(),
        util::stdout("date -u '+%Y-%m-%d %H:%M UTC'").trim()
    )?;
    println!("{md}");
    let path = util::root().join("bench/results/INSTRUCTIONS.md");
    std::fs::write(&path, md)?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// The steady-state cost of workload `name` between `low` and `high`
/// rounds.
fn cost(bin: &Path, name: &str, low: u32, high: u32) -> Result<Cost> {
    let a = counted(bin, name, low)?;
    let b = counted(bin, name, high)?;
    let inputs = b.inputs.saturating_sub(a.inputs).max(1) as f64;
    let requests = b.requests.saturating_sub(a.requests) as f64;
    let instructions = b.instructions.saturating_sub(a.instructions) as f64;
    let packets = b.packets_sent.saturating_sub(a.packets_sent) as f64;
    let per = |v: f64| (requests > 0.0).then(|| v / requests);
    Ok(Cost {
        per_input: instructions / inputs,
        per_request: per(instructions),
        packets_per_request: per(packets),
    })
}

/// Run one workload under cachegrind.
fn counted(bin: &Path, name: &str, rounds: u32) -> Result<Run> {
    let out = Command::new("valgrind")
        .args([
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
        ])
        .arg(bin)
        .args(["engine-work", name, &rounds.to_string()])
        .output()
        .context("valgrind")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("bench engine-work {name} {rounds} failed under valgrind:\n{stdout}{stderr}");
    }
    // "inputs N requests N packets_sent N" from the workload, and
    // "==PID== I   refs:      1,234,567" from cachegrind.
    let field = |key: &str| -> Option<u64> {
        let mut words = stdout.split_whitespace();
        words.find(|w| *w == key)?;
        words.next()?.parse().ok()
    };
    let instructions = stderr
        .lines()
        .find_map(|l| {
            l.split_once("I   refs:")
                .or_else(|| l.split_once("I refs:"))
        })
        .map(|(_, n)| n.trim().replace(',', ""))
        .and_then(|n| n.parse().ok());
    match (
        instructions,
        field("inputs"),
        field("requests"),
        field("packets_sent"),
    ) {
        (Some(instructions), Some(inputs), Some(requests), Some(packets_sent)) => Ok(Run {
            instructions,
            inputs,
            requests,
            packets_sent,
        }),
        _ => bail!("bench engine-work {name} {rounds}: unreadable output:\n{stdout}{stderr}"),
    }
}
