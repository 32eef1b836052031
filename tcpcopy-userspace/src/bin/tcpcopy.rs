//! The `tcpcopy` program: see [`tcpcopy::tcpcopy`].

use clap::Parser;
use tcpcopy::tcpcopy::{run, TcpcopyOptions};

/// Counts the heap, for `-m`.
#[global_allocator]
static HEAP: tcpcopy::memory::CountingAlloc = tcpcopy::memory::CountingAlloc;

fn main() {
    let opts = TcpcopyOptions::parse();
    if let Some(what) = opts.common.generate {
        use clap::CommandFactory;
        if let Err(e) = tcpcopy::docs::generate(TcpcopyOptions::command(), what) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return;
    }
    if opts.common.version {
        println!(
            "tcpcopy version:{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            tcpcopy::proto::INTERNAL_VERSION
        );
        return;
    }
    if let Err(e) = run(opts) {
        tcpcopy::process::tell(&format!("tcpcopy: {e:#}"), true);
        std::process::exit(1);
    }
}
