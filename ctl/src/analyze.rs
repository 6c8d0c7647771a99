//! `lanyardctl analyze`: the findings of the analyzers the agent and waypoint run on every
//! config (`lanyard_core::state::analysis`), printed the way `istioctl analyze` prints them.

use clap::Args;
use lanyard_core::state::Level;
use serde::Serialize;

use crate::output;
use crate::{input, Error, Mesh, Outcome, OutputArg};

#[derive(Args)]
pub struct Cmd {
    #[command(flatten)]
    mesh: Mesh,
    #[command(flatten)]
    out: OutputArg,
    /// Exit 1 when a finding is at this level or above.
    #[arg(long, value_enum, default_value_t = Threshold::Error)]
    failure_threshold: Threshold,
    /// Print findings at this level or above.
    #[arg(long, value_enum, default_value_t = Threshold::Info)]
    output_threshold: Threshold,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Threshold {
    Info,
    Warning,
    Error,
}

impl From<Threshold> for Level {
    fn from(t: Threshold) -> Level {
        match t {
            Threshold::Info => Level::Info,
            Threshold::Warning => Level::Warning,
            Threshold::Error => Level::Error,
        }
    }
}

#[derive(Serialize)]
struct Message {
    level: String,
    code: &'static str,
    name: &'static str,
    kind: String,
    namespace: Option<String>,
    object: String,
    field: Option<String>,
    message: String,
}

pub fn run(cmd: Cmd) -> Result<Outcome, Error> {
    let state = input::load(&cmd.mesh)?;
    let shown: Vec<_> = state
        .findings()
        .iter()
        .filter(|f| f.code.level >= cmd.output_threshold.into())
        .collect();
    let messages: Vec<Message> = shown
        .iter()
        .map(|f| Message {
            level: f.code.level.to_string(),
            code: f.code.code,
            name: f.code.name,
            kind: f.object.kind.clone(),
            namespace: f.object.namespace.clone(),
            object: f.object.name.clone(),
            field: f.field.clone(),
            message: f.message.clone(),
        })
        .collect();
    match output::structured(cmd.out.output, &messages)? {
        Some(text) => println!("{text}"),
        None if shown.is_empty() => {
            println!("\u{2714} No validation issues found when analyzing the given files.")
        }
        None => {
            for f in &shown {
                println!("{}", f.analyzer_line());
            }
        }
    }
    let fail = state
        .findings()
        .iter()
        .any(|f| f.code.level >= cmd.failure_threshold.into());
    Ok(if fail { Outcome::No } else { Outcome::Ok })
}
