//! Benchmark harness (`cargo xtask bench`). Not built out yet: the session
//! engine micro-benchmark comes with the engine, the lab benchmarks with the
//! live pipeline.

fn main() {
    eprintln!("bench: no benchmarks yet");
    std::process::exit(2);
}
