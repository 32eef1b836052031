//! Every developer and user task of the project, so nobody needs a shell
//! recipe: `setup`, `build`, `run`, `lab`, `demo`, `dist`, `test`, `e2e`,
//! `fuzz`, `bench`.

mod bench;
mod cost;
mod decoys;
mod demo;
mod dist;
mod e2e;
mod elephants;
mod faults;
mod fuzz;
mod instructions;
mod ipv6;
mod lab;
mod lab_client;
mod replay;
mod setup;
mod shaping;
mod soak;
mod util;
mod verdict;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tcpcopy project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build, the tests and the lab need (idempotent).
    Setup,
    /// Build the release binaries (runs setup first if something is missing).
    Build,
    /// Build and run a binary on a network interface.
    Run {
        /// Interface to capture on (passed as `-i`).
        #[arg(long)]
        iface: String,
        /// Which binary: tcpcopy or intercept.
        #[arg(long, default_value = "tcpcopy")]
        bin: String,
        /// Arguments passed to the binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The namespace lab: client, online, target, assistant and mirror hosts.
    Lab {
        #[command(subcommand)]
        action: lab::Action,
    },
    /// A tarball and a .deb in target/dist/: both binaries, man pages,
    /// shell completions, systemd units and their options files.
    Dist,
    /// Bring the lab up, replay live traffic, print a summary, take it down.
    Demo {
        /// Seconds of load.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// Unit tests, the root-only integration tests in namespaces, then the
    /// end-to-end tests in the lab.
    Test,
    /// Run the fuzz targets (cargo-fuzz, nightly), each for N seconds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (packet, control, pcap, options).
        #[arg(long)]
        target: Option<String>,
    },
    /// Only the end-to-end tests in the lab (real binaries, real servers).
    E2e {
        /// Run only the scenarios whose name contains this text.
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmarks; reports go to bench/results/: session engine, intercept
    /// record rate, replay fidelity and cost in the lab.
    Bench {
        /// A reduced set in under 3 minutes.
        #[arg(long)]
        quick: bool,
        /// Instead: a soak run of this many minutes (memory and exactness
        /// over time, bench/results/SOAK.md).
        #[arg(long, value_name = "MINUTES")]
        soak: Option<u64>,
        /// With --soak: a fault a minute, each in turn (intercept, control
        /// link, target, links, tcpcopy), bench/results/SOAK-FAULTS.md.
        #[arg(long, requires = "soak")]
        faults: bool,
        /// Instead: only what a replayed request costs (CPU, system calls,
        /// packets per request; idle CPU), bench/results/COST.md.
        #[arg(long)]
        cost: bool,
        /// With --cost or --instructions: measure commit REV's binaries
        /// too, in the same run.
        #[arg(long, value_name = "REV", conflicts_with = "verdict")]
        baseline: Option<String>,
        /// With --cost: each cell with --verdict off and on (packet and tap
        /// capture), bench/results/COST-VERDICT.md.
        #[arg(long, requires = "cost")]
        verdict: bool,
        /// Instead: only the elephant section (one bulk stream by each
        /// sender, large values per capture mode),
        /// bench/results/ELEPHANTS.md.
        #[arg(long, conflicts_with_all = ["cost", "soak"])]
        elephants: bool,
        /// Instead: the session engine's instructions per segment, counted
        /// by valgrind (no lab, no root), bench/results/INSTRUCTIONS.md.
        #[arg(long, conflicts_with_all = ["cost", "soak", "elephants"])]
        instructions: bool,
    },
    /// A line-driven HTTP client the e2e tests run in the lab (see
    /// `lab_client.rs`).
    #[command(hide = true)]
    LabClient { addr: std::net::SocketAddr },
    /// An HTTP server that answers every request after a delay, for the
    /// verdict's latency test (see `lab_client.rs`).
    #[command(hide = true)]
    LabSlowServer {
        addr: std::net::SocketAddr,
        delay_ms: u64,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::setup(true),
        Cmd::Build => {
            setup::setup(false)?;
            util::cargo(&["build", "--release"])
        }
        Cmd::Run { iface, bin, args } => {
            setup::setup(false)?;
            util::cargo(&["build", "--release"])?;
            let path = util::root().join("target/release").join(&bin);
            let mut full = vec!["-i".to_string(), iface];
            full.extend(args);
            util::exec_replace(&path, &full)
        }
        Cmd::Lab { action } => lab::run(action),
        Cmd::Demo { seconds } => demo::demo(seconds),
        Cmd::Dist => dist::dist(),
        Cmd::Test => test(),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
        Cmd::E2e { only } => {
            setup::setup(false)?;
            util::cargo(&["build", "--release"])?;
            e2e::run_all(only.as_deref())
        }
        Cmd::LabClient { addr } => lab_client::run(addr),
        Cmd::LabSlowServer { addr, delay_ms } => lab_client::slow_server(addr, delay_ms),
        Cmd::Bench {
            quick,
            soak,
            faults,
            cost,
            baseline,
            verdict,
            elephants,
            instructions,
        } => {
            if baseline.is_some() && !(cost || instructions) {
                anyhow::bail!("--baseline goes with --cost or --instructions");
            }
            setup::setup(false)?;
            if instructions {
                return crate::instructions::run(baseline.as_deref());
            }
            if elephants {
                return crate::elephants::run_bench(quick);
            }
            match (soak, cost) {
                (Some(minutes), _) => soak::soak(minutes, faults),
                (None, true) => cost::run(match (&baseline, verdict) {
                    (Some(rev), _) => cost::Compare::Baseline(rev),
                    (None, true) => cost::Compare::Verdict,
                    (None, false) => cost::Compare::Alone,
                }),
                (None, false) => bench::bench(quick),
            }
        }
    }
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 15;

fn test() -> Result<()> {
    // Decoys of a user's own (an nginx, a redis-server, a namespace
    // `client`): nothing below may touch them; checked at the end.
    let mut decoys = decoys::Decoys::start()?;
    setup::setup(false)?;
    decoys.add_namespace()?;
    // Unit and property tests first: no root, no network.
    util::cargo(&["test", "--release"])?;
    // A short fuzz of every parser (`cargo xtask fuzz` runs longer).
    fuzz::fuzz(FUZZ_SECONDS_IN_TEST, None)?;
    // Then the integration tests that build namespaces; they refuse to skip.
    util::require_root("the namespace integration tests")?;
    util::cargo_env(
        &[
            "test",
            "--release",
            "--package",
            "tcpcopy",
            "--test",
            "netns",
            "--",
            "--test-threads=1",
        ],
        &[("TCPCOPY_NETNS_TESTS", "1")],
    )?;
    util::cargo(&["build", "--release"])?;
    let e2e = e2e::run_all(None);
    let untouched = decoys.check();
    e2e.and(untouched)
}
