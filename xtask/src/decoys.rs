//! Decoys for `cargo xtask test`: what a user's machine may hold that the
//! tools must never touch. A process named `nginx` and one named
//! `redis-server` in the host's own namespace (copies of `sleep`, which a
//! kill by process name would take), and a namespace named `client` with a
//! process in it (the lab's own namespaces are `tcl-client`, ...). After the
//! run every decoy must still be there; then they are removed (only what
//! this module made).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{ensure, Context, Result};

/// The namespace a user might have made.
const NAMESPACE: &str = "client";

pub struct Decoys {
    dir: PathBuf,
    /// (what it stands for, the process).
    processes: Vec<(String, Child)>,
    /// Whether `client` was made here (a host's own is checked, never removed).
    made_namespace: bool,
    namespace_present: bool,
}

impl Decoys {
    /// The two host processes.
    pub fn start() -> Result<Decoys> {
        let dir = std::env::temp_dir().join(format!("tcl-decoys-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let sleep = which_sleep()?;
        let mut decoys = Decoys {
            dir,
            processes: Vec::new(),
            made_namespace: false,
            namespace_present: false,
        };
        for name in ["nginx", "redis-server"] {
            let bin = decoys.dir.join(name);
            std::fs::copy(&sleep, &bin).with_context(|| format!("copying {}", sleep.display()))?;
            let child = Command::new(&bin)
                .arg("86400")
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the {name} decoy"))?;
            decoys
                .processes
                .push((format!("the host process named {name}"), child));
        }
        Ok(decoys)
    }

    /// The namespace `client` with a process in it (root only; once `ip` is
    /// installed). A host that has its own `client` keeps it, and it is
    /// checked the same way.
    pub fn add_namespace(&mut self) -> Result<()> {
        if !crate::util::is_root() {
            return Ok(());
        }
        let path = PathBuf::from("/run/netns").join(NAMESPACE);
        if !path.exists() {
            crate::util::sh(&format!("ip netns add {NAMESPACE}"))?;
            self.made_namespace = true;
        }
        self.namespace_present = true;
        let child = Command::new("ip")
            .args(["netns", "exec", NAMESPACE])
            .arg(which_sleep()?)
            .arg("86400")
            .stdin(Stdio::null())
            .spawn()
            .context("starting a process in the decoy namespace")?;
        self.processes
            .push((format!("the process in namespace {NAMESPACE}"), child));
        Ok(())
    }

    /// Every decoy is still there.
    pub fn check(&mut self) -> Result<()> {
        for (what, child) in &mut self.processes {
            let status = child.try_wait()?;
            ensure!(
                status.is_none(),
                "{what} was stopped ({}) by the run: the tools touched what they did not make",
                status.map(|s| s.to_string()).unwrap_or_default()
            );
        }
        if self.namespace_present {
            ensure!(
                PathBuf::from("/run/netns").join(NAMESPACE).exists(),
                "the namespace {NAMESPACE} was removed by the run"
            );
        }
        println!(
            "decoys: {} untouched{}",
            self.processes
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if self.namespace_present {
                format!(", namespace {NAMESPACE} still there")
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

impl Drop for Decoys {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.made_namespace {
            let _ = Command::new("ip")
                .args(["netns", "del", NAMESPACE])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which_sleep() -> Result<PathBuf> {
    ["/usr/bin/sleep", "/bin/sleep"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("no sleep binary for the decoys")
}
