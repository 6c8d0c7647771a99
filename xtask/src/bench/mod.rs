//! `cargo xtask bench …`: the benchmark suites, each measuring Lanyard against a baseline in the
//! same run (the machine is shared and noisy), and what they share: the load tools, reading a
//! process's CPU and memory, the release binaries they run, and the block each writes into
//! docs/benchmarks.md.
//!
//! - [`l4`]: the agent, direct against meshed (and against two relays that do nothing);
//! - [`l7`]: the waypoint, against direct and against nginx;
//! - [`policy`]: the policy engine's criterion benchmark.

mod at_rate;
mod doc;
pub mod l4;
pub mod l7;
pub mod policy;
mod steal;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use doc::write_section;

pub fn tool(name: &str) -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    for dir in [
        format!("{home}/.cargo/bin"),
        "/usr/bin".into(),
        "/usr/local/bin".into(),
    ] {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: `cargo xtask bench` installs it, or install it yourself")
}

/// A Debian package a bench needs (root; the machine's apt sources).
pub fn apt_install(package: &str) -> Result<()> {
    let s = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .status()?;
    if !s.success() {
        bail!("apt-get install {package} failed");
    }
    Ok(())
}

pub fn ensure_tools() -> Result<()> {
    if tool("iperf3").is_err() {
        apt_install("iperf3")?;
    }
    if tool("oha").is_err() {
        crate::cargo(&["install", "oha", "--locked"])?;
    }
    Ok(())
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (user, system) = at_rate::cpu_split(pid)?;
    Ok(user + system)
}

pub fn rss_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
pub fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

pub fn run_json(mut cmd: Command) -> Result<Value> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Fails unless every request of an oha run got a 200: a rate counts only answered requests
/// (a failing path can be fast). Requests cut off by the end of a timed run are not failures.
pub fn all_ok(oha: &Value, what: &str) -> Result<()> {
    let codes = oha["statusCodeDistribution"]
        .as_object()
        .with_context(|| format!("{what}: no statusCodeDistribution"))?;
    let errors = oha["errorDistribution"].as_object();
    let failed = codes.keys().any(|c| c != "200")
        || errors.is_some_and(|e| e.keys().any(|k| k != "aborted due to deadline"));
    if failed || codes.is_empty() {
        bail!(
            "{what}: not every request succeeded: status codes {}, errors {}",
            oha["statusCodeDistribution"],
            oha["errorDistribution"]
        );
    }
    Ok(())
}

/// Release binaries: those in `$LANYARD_BENCH_BINS` when set (built earlier, e.g. to compare
/// two versions while the tree changes), else a fresh release build of the workspace.
pub fn release_binaries() -> Result<PathBuf> {
    let dir = match std::env::var_os("LANYARD_BENCH_BINS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            crate::cargo(&["build", "--release", "--workspace", "--bins"])?;
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release")
        }
    };
    if !dir.join("lanyard-agent").exists() {
        bail!("no lanyard-agent in {}", dir.display());
    }
    Ok(dir)
}

/// Points the harness at [`release_binaries`].
pub fn use_release_binaries() -> Result<()> {
    std::env::set_var("LANYARD_BIN_DIR", release_binaries()?);
    Ok(())
}
