//! Man pages and shell completions, generated from the option definitions
//! themselves (`--generate`, hidden; `cargo xtask dist` packages them), so
//! they never drift from `--help`.

use std::io::Write;

use anyhow::Result;
use clap_complete::Shell;

/// What `--generate` writes to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A man page (roff, section 8).
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Write `what` for the program `cmd` describes to stdout.
pub fn generate(cmd: clap::Command, what: Generate) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    let name = cmd.get_name().to_string();
    match what {
        Generate::Man => clap_mangen::Man::new(cmd).section("8").render(&mut out)?,
        Generate::Bash => clap_complete::generate(Shell::Bash, &mut cmd, name, &mut out),
        Generate::Zsh => clap_complete::generate(Shell::Zsh, &mut cmd, name, &mut out),
        Generate::Fish => clap_complete::generate(Shell::Fish, &mut cmd, name, &mut out),
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn man_pages_hold_every_option_heading() {
        let mut page = Vec::new();
        clap_mangen::Man::new(crate::tcpcopy::TcpcopyOptions::command())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        for needle in ["max\\-session\\-rate", "TARGET AND INTERCEPT", "Examples"] {
            assert!(page.contains(needle), "{needle} missing from the man page");
        }
        let mut bash = Vec::new();
        let mut cmd = crate::intercept::InterceptOptions::command();
        clap_complete::generate(Shell::Bash, &mut cmd, "intercept", &mut bash);
        assert!(String::from_utf8(bash).unwrap().contains("--allow"));
    }
}
