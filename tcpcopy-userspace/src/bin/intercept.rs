//! The `intercept` program: see [`tcpcopy::intercept`].

use clap::Parser;
use tcpcopy::intercept::{run, InterceptOptions};

fn main() {
    let opts = InterceptOptions::parse();
    if let Some(what) = opts.common.generate {
        use clap::CommandFactory;
        if let Err(e) = tcpcopy::docs::generate(InterceptOptions::command(), what) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return;
    }
    if opts.common.version {
        println!(
            "intercept version:{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            tcpcopy::proto::INTERNAL_VERSION
        );
        return;
    }
    if let Err(e) = run(opts) {
        tcpcopy::process::tell(&format!("intercept: {e:#}"), true);
        std::process::exit(1);
    }
}
