//! `cargo xtask …`: the project's own commands.
//!
//! - `setup`: installs the system packages builds and tests need (clang, libbpf headers…);
//! - `test`: setup, lints, every test (end-to-end ones as root, one at a time), the demo;
//! - `lint`: rustfmt and clippy with warnings as errors;
//! - `crds`: writes deploy/'s Istio CRDs from the schema Lanyard parses them with;
//! - `manifests`: renders the Helm chart to deploy/lanyard.yaml (no helm needed);
//! - `e2e-clean`: removes what a killed end-to-end run left (namespaces, cgroups, pins);
//! - `demo [--keep]`: a local two-node mesh, walked through step by step;
//! - `bench l4` / `bench l7` / `bench policy`: figures written to docs/benchmarks.md.

mod bench;
mod chart;
mod crds;
mod demo;
mod demo_l7;
#[cfg(test)]
mod deploy_tests;
mod link_order;
mod setup;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the system packages the build and tests need, and fetch helm.
    Setup,
    /// Lint, build, and run every test.
    Test,
    /// rustfmt --check and clippy -D warnings.
    Lint,
    /// Remove network namespaces, cgroups and BPF pins left by killed end-to-end runs.
    E2eClean,
    /// Benchmarks: `l4` (agent, direct vs meshed), `l7` (waypoint vs direct and nginx),
    /// `policy` (authorization engine).
    Bench {
        #[arg(default_value = "l4")]
        suite: String,
    },
    /// Write agent/link-order.txt (`agent`: uprobes, a few minutes) or
    /// waypoint/link-order.txt (`waypoint`: perf samples under the L7 bench's load): the
    /// functions a release binary runs, which release builds place together in its text.
    LinkOrder {
        #[arg(default_value = "agent")]
        binary: String,
    },
    /// Write deploy/'s Istio CRDs from the schema Lanyard reads them with.
    Crds,
    /// Render the Helm chart (with the CRDs) to deploy/lanyard.yaml.
    Manifests,
    /// Run the local demo mesh and walk through it.
    Demo {
        /// Leave the mesh running until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::ensure().and_then(|()| setup::helm().map(drop)),
        Cmd::Test => test(),
        Cmd::Lint => lint(),
        Cmd::E2eClean => setup::clean_e2e(),
        Cmd::LinkOrder { binary } => {
            setup::ensure()?;
            match binary.as_str() {
                "agent" => link_order::write(),
                "waypoint" => link_order::write_waypoint(),
                other => bail!("no link order for {other:?} (have: agent, waypoint)"),
            }
        }
        Cmd::Crds => crds::write(),
        Cmd::Manifests => chart::write_manifest(),
        Cmd::Bench { suite } => match suite.as_str() {
            "l4" => {
                setup::ensure()?;
                bench::l4::run()
            }
            "policy" => bench::policy::run(),
            "l7" => {
                setup::ensure()?;
                bench::l7::run()
            }
            other => bail!("unknown benchmark suite {other:?} (have: l4, l7, policy)"),
        },
        Cmd::Demo { keep } => {
            setup::ensure()?;
            cargo(&["build", "--workspace", "--bins"])?;
            demo::run(keep)
        }
    }
}

pub fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    if std::env::var_os("CI").is_some() {
        // A CI clone is built once: incremental caches would only take disk space.
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn test() -> Result<()> {
    setup::ensure()?;
    setup::helm()?;
    lint()?;
    // The end-to-end tests run the workspace's binaries: build them first.
    cargo(&["build", "--workspace", "--bins"])?;
    cargo(&["test", "--workspace", "--exclude", "lanyard-e2e"])?;
    setup::clean_e2e()?;
    // Each end-to-end test builds a whole mesh; one at a time keeps them within two cores.
    cargo(&["test", "-p", "lanyard-e2e", "--", "--test-threads=1"])?;
    // The demo is a test too: every step asserts, and it takes well under a minute.
    demo::run(false)
}
