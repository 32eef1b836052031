//! The `intercept` program. Its control channel is not wired up yet; until
//! it is, this binary says so instead of pretending to serve tcpcopy.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v" || a == "--version") {
        println!(
            "intercept version:{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            tcpcopy::proto::INTERNAL_VERSION
        );
        return;
    }
    eprintln!("intercept: the control channel is not built yet (see README: status)");
    std::process::exit(2);
}
