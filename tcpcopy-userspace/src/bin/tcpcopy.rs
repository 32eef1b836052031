//! The `tcpcopy` program. The live pipeline (capture → session engine →
//! send) is not wired up yet; until it is, this binary says so instead of
//! pretending to replay.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v" || a == "--version") {
        println!(
            "tcpcopy version:{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            tcpcopy::proto::INTERNAL_VERSION
        );
        return;
    }
    eprintln!("tcpcopy: the live replay pipeline is not built yet (see README: status)");
    std::process::exit(2);
}
