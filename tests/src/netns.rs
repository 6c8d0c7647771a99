//! Named network namespaces, and running code inside one from the test process.

use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};

pub fn add(name: &str) -> Result<()> {
    sh(&format!("ip netns add {name}"))
}

pub fn del(name: &str) -> Result<()> {
    sh(&format!("ip netns del {name}"))
}

pub fn sh(script: &str) -> Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()?;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the current thread into namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| path.clone())?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `name`; sockets it makes stay there.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name).expect("entering netns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}
