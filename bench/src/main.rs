//! Benchmark harness, run by `cargo xtask bench`:
//! - `engine`: the session engine on one core (segments per second for
//!   small HTTP-sized keep-alive requests, memory per idle session) →
//!   `bench/results/engine.md`;
//! - `engine-work NAME ROUNDS`: one of the engine's fixed workloads, whose
//!   instructions `cargo xtask bench --instructions` counts;
//! - `intercept`: intercept's ring-buffer-to-tcpcopy record rate →
//!   `bench/results/intercept.md` (needs root);
//! - `gen IFACE SRC DST RATE SECONDS [QUEUE]`: the lab's packet generator
//!   (AF_XDP TX);
//! - `send HOST:PORT BITS_PER_S SECONDS` and `sink PORT FILE`: one bulk TCP
//!   stream at a fixed rate, and a byte-counting server (elephant flows);
//! - `charts`: the report's SVG charts from the lab benchmarks' CSV files;
//!   `soak-chart`: the soak run's memory curve.
//!
//! `BENCH_QUICK=1` shortens engine and intercept for `cargo xtask bench --quick`.

mod bulk;
mod chart;
mod charts;
mod engine;
mod gen;
mod intercept;

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// `BENCH_OUT` (set by `cargo xtask bench`), else `bench/results/`.
fn results_dir() -> std::path::PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results"))
}

fn write_report(name: &str, report: &str) {
    println!("{report}");
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, report) {
        eprintln!("bench: could not write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!("bench: wrote {}", path.display());
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "engine".into());
    match what.as_str() {
        "engine" => write_report("engine.md", &engine::timed_bench(quick())),
        "engine-work" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let (Some(name), Some(Ok(rounds))) = (a.first(), a.get(1).map(|r| r.parse::<u32>()))
            else {
                eprintln!(
                    "usage: bench engine-work NAME ROUNDS (names: {:?})",
                    engine::WORKLOADS
                );
                std::process::exit(2);
            };
            match engine::work(name, rounds) {
                Ok(w) => println!(
                    "inputs {} requests {} packets_sent {}",
                    w.inputs, w.requests, w.packets_sent
                ),
                Err(e) => {
                    eprintln!("bench engine-work: {e}");
                    std::process::exit(2);
                }
            }
        }
        "gen" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let parsed = (|| -> Option<gen::GenArgs> {
                Some(gen::GenArgs {
                    iface: a.first()?.clone(),
                    src: a.get(1)?.parse().ok()?,
                    dst: a.get(2)?.parse().ok()?,
                    rate: a.get(3)?.parse().ok()?,
                    seconds: a.get(4)?.parse().ok()?,
                    queue: a.get(5).map_or(Some(0), |q| q.parse().ok())?,
                })
            })();
            let Some(args) = parsed else {
                eprintln!("usage: bench gen IFACE SRC_IP DST_IP RATE_PPS SECONDS [QUEUE]");
                std::process::exit(2);
            };
            match gen::generate(&args) {
                Ok((n, secs)) => println!("sent {n} in {secs:.3} s"),
                Err(e) => {
                    eprintln!("bench gen: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        "send" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let (Some(addr), Some(Ok(rate)), Some(Ok(secs))) = (
                a.first(),
                a.get(1).map(|r| r.parse::<f64>()),
                a.get(2).map(|s| s.parse::<f64>()),
            ) else {
                eprintln!("usage: bench send HOST:PORT BITS_PER_S SECONDS");
                std::process::exit(2);
            };
            match bulk::send(addr, rate, secs) {
                Ok((n, s)) => println!(
                    "sent {n} bytes in {s:.3} s ({:.3} Gbit/s)",
                    n as f64 * 8.0 / s / 1e9
                ),
                Err(e) => {
                    eprintln!("bench send: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        "sink" => {
            let a: Vec<String> = std::env::args().skip(2).collect();
            let (Some(Ok(port)), Some(out)) = (a.first().map(|p| p.parse::<u16>()), a.get(1))
            else {
                eprintln!("usage: bench sink PORT FILE");
                std::process::exit(2);
            };
            if let Err(e) = bulk::sink(port, out.into()) {
                eprintln!("bench sink: {e:#}");
                std::process::exit(1);
            }
        }
        "soak-chart" => {
            if let Err(e) = charts::soak_chart(&results_dir()) {
                eprintln!("bench soak-chart: {e:#}");
                std::process::exit(1);
            }
        }
        "charts" => {
            if let Err(e) = charts::charts(&results_dir()) {
                eprintln!("bench charts: {e:#}");
                std::process::exit(1);
            }
        }
        "intercept" => match intercept::intercept_bench(if quick() { 0.5 } else { 2.0 }) {
            Ok(report) => write_report("intercept.md", &report),
            Err(e) => {
                eprintln!("bench: intercept: {e:#}");
                std::process::exit(1);
            }
        },
        other => {
            eprintln!("bench: unknown benchmark `{other}` (known: engine, engine-work, intercept, gen, send, sink, charts, soak-chart)");
            std::process::exit(2);
        }
    }
}
