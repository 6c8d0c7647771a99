//! System packages and machine state the project needs.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// (what must exist, Debian package that provides it)
const NEEDS: &[(&str, &str)] = &[
    ("/usr/bin/clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    (
        "/usr/include/x86_64-linux-gnu/asm/types.h",
        "linux-libc-dev",
    ),
    ("/usr/sbin/ip", "iproute2"),
];

pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|(p, _)| !Path::new(p).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing system packages {missing:?}: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("installing system packages: {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    run_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    run_env(cmd, args, &[])
}

fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed", args.join(" "));
    }
    Ok(())
}

/// Removes every `lanyard-e2e-*` network namespace (killing its processes), cgroup tree and
/// bpffs pin directory. Only for leftovers: it also ends a run in progress.
pub fn clean_e2e() -> Result<()> {
    const PREFIX: &str = "lanyard-e2e-";
    let netns = Path::new("/run/netns");
    for entry in std::fs::read_dir(netns).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let pids = Command::new("ip").args(["netns", "pids", &name]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/bpf"] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                remove_tree(&entry.path(), root.ends_with("bpf"));
            }
        }
    }
    Ok(())
}

fn remove_tree(path: &Path, files_too: bool) {
    if files_too {
        let _ = std::fs::remove_dir_all(path);
        return;
    }
    // cgroup directories: kill what is left inside, then remove deepest first.
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path(), false);
        }
    }
    if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(path).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
