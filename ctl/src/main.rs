//! `lanyardctl`: what operators ask of the mesh, answered from config files or from running
//! agents and waypoints.
//!
//! Exit codes are meant for scripts: 0 when all is well (no finding at or above the failure
//! threshold; the connection is allowed), 1 when the answer is "no" (findings; denied), and
//! 2 when the question could not be answered (bad usage, unreadable input, unreachable
//! endpoint).

mod admin;
mod analyze;
mod dump;
mod explain;
mod input;
mod output;
mod topology;
mod waypoint;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use output::Format;

#[derive(Parser)]
#[command(name = "lanyardctl", version, about = "Operate a Lanyard mesh", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How config objects are read: the same settings the agent and waypoint start with.
#[derive(Args, Clone)]
pub struct Mesh {
    /// YAML files or directories of Kubernetes-style objects (`-` reads standard input).
    #[arg(short = 'f', long = "file", required_unless_present = "kube")]
    pub files: Vec<PathBuf>,
    /// Read the objects from the cluster instead (in-cluster credentials or KUBECONFIG).
    #[arg(long, conflicts_with = "files")]
    pub kube: bool,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
}

#[derive(Subcommand)]
enum Command {
    /// Validate config and report Istio analyzer findings (IST codes) and Lanyard's (LYD).
    Analyze(analyze::Cmd),
    /// Would this connection or request be allowed, and which policy decides?
    Explain(explain::Cmd),
    /// Show what a running agent or waypoint has loaded.
    Config {
        #[command(subcommand)]
        command: dump::ConfigCmd,
    },
    /// The service graph, from the agents' and waypoints' metrics: text, DOT and SVG.
    Topology(topology::Cmd),
    /// Waypoints: render the objects that run one for a namespace.
    Waypoint {
        #[command(subcommand)]
        command: waypoint::Cmd,
    },
}

/// What a command concluded, for the exit code.
pub enum Outcome {
    Ok,
    /// The answer is "no": findings at the threshold, or a denied request.
    No,
}

/// Why a command could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML (document {doc}): {source}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        source: serde_yaml::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
    #[error("encoding output: {0}")]
    Encode(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(cmd) => analyze::run(cmd),
        Command::Explain(cmd) => explain::run(cmd),
        Command::Config { command } => dump::run(command),
        Command::Topology(cmd) => topology::run(cmd),
        Command::Waypoint { command } => waypoint::run(command),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lanyardctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--output` for every command that prints a result.
#[derive(Args, Clone, Copy)]
pub struct OutputArg {
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}
