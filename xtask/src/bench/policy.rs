//! `cargo xtask bench policy`: the criterion benchmark of the policy engine.

use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use super::write_section;

/// Runs the benchmark; its medians go to docs/benchmarks.md (its own section, replaced on each
/// run).
pub fn run() -> Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "-p", "lanyard-core", "--bench", "policy"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo bench failed");
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{text}");
    // criterion prints "name\n   time:   [low median high]"
    let mut rows = Vec::new();
    let mut last_name = String::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("time:") {
            let parts: Vec<&str> = rest
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .split_whitespace()
                .collect();
            if parts.len() >= 4 {
                rows.push((last_name.clone(), format!("{} {}", parts[2], parts[3])));
            }
        } else if !line.starts_with(' ') && !line.trim().is_empty() {
            last_name = line.trim().to_string();
        }
    }
    let targets = [("l4 decision", "≤ 1 µs"), ("config update", "≤ 50 ms")];
    let mut table = String::from("| benchmark | median | target |\n|---|---|---|\n");
    for (name, median) in &rows {
        let target = targets
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map_or("", |t| t.1);
        table += &format!("| {name} | {median} | {target} |\n");
    }
    write_section(
        "Policy engine",
        "`cargo xtask bench policy` (criterion, median). 5,000 AuthorizationPolicies in 100 namespaces, 50 applying to the destination workload (the last one matching).",
        &table,
    )
}
