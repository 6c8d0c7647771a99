//! The block a bench run writes at the top of its section of docs/benchmarks.md: a preamble,
//! when and where it ran, and its table. Sessions' notes around the block stay.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

/// Replaces the generated block of the section `## {title}` of docs/benchmarks.md (or
/// appends the section), with a line saying when and where it ran. What a session wrote in
/// the section around the block stays.
pub fn write_section(title: &str, preamble: &str, table: &str) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )?;
    let block = format!(
        "{preamble}\n\nRun: {}, {} on {cores} cores ({cpu}), Linux {}\n\n{}",
        date.trim(),
        binaries_built_from(),
        kernel.trim(),
        table.trim_end()
    );
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let out = splice_section(&existing, title, &block);
    std::fs::write(&path, out)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// What the measured binaries were built from: this tree's commit (and whether it had
/// uncommitted changes), or the directory `$LANYARD_BENCH_BINS` named.
fn binaries_built_from() -> String {
    if let Some(dir) = std::env::var_os("LANYARD_BENCH_BINS") {
        return format!("binaries from {}", dir.to_string_lossy());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // The file a run writes is left changed by the run before it: not a change to the build.
    let status = [
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":(top)",
        ":(top,exclude)docs/benchmarks.md",
    ];
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&status) {
            Some(changes) if changes.is_empty() => format!("commit {commit}"),
            _ => format!("commit {commit} with uncommitted changes"),
        },
        None => "an unknown commit".into(),
    }
}

const BEGIN: &str = "<!-- written by `cargo xtask bench`: begin -->";
const END: &str = "<!-- written by `cargo xtask bench`: end -->";

/// `doc` with `block` between the markers of section `## {title}`: in place of the old
/// block, else first in the section, else in a new section at the end.
fn splice_section(doc: &str, title: &str, block: &str) -> String {
    let marked = format!("{BEGIN}\n{block}\n{END}");
    let mut parts: Vec<String> = doc.split("\n## ").map(str::to_string).collect();
    let head = parts.remove(0);
    let heading = |p: &str| p.lines().next().unwrap_or_default().trim().to_string();
    match parts.iter_mut().find(|p| heading(p) == title) {
        Some(p) => {
            *p = match (p.find(BEGIN), p.find(END)) {
                (Some(b), Some(e)) if b < e => {
                    format!("{}{marked}{}", &p[..b], &p[e + END.len()..])
                }
                _ => {
                    let rest = p.split_once('\n').map_or("", |(_, r)| r);
                    format!("{title}\n\n{marked}\n\n{}", rest.trim_start())
                }
            }
        }
        None => parts.push(format!("{title}\n\n{marked}")),
    }
    let mut out = head.trim_end().to_string();
    for p in parts {
        out += "\n\n## ";
        out += p.trim_end();
    }
    out += "\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nIntro.\n\n## L4 (agent)\n\nSession 15 notes.\n\n## L7 (waypoint)\n\nL7 notes.\n";

    #[test]
    fn a_run_replaces_only_its_block_and_keeps_the_notes() {
        let first = splice_section(DOC, "L4 (agent)", "| run 1 |");
        assert!(
            first.contains(&format!(
                "## L4 (agent)\n\n{BEGIN}\n| run 1 |\n{END}\n\nSession 15 notes."
            )),
            "{first}"
        );
        let second = splice_section(&first, "L4 (agent)", "| run 2 |");
        assert!(!second.contains("run 1"), "{second}");
        let kept = format!("| run 2 |\n{END}\n\nSession 15 notes.");
        assert!(second.contains(&kept), "{second}");
        assert!(
            second.contains("## L7 (waypoint)\n\nL7 notes.\n"),
            "{second}"
        );
        assert_eq!(second.matches(BEGIN).count(), 1);
        assert_eq!(splice_section(&second, "L4 (agent)", "| run 2 |"), second);
    }

    #[test]
    fn a_new_suite_gets_a_section_at_the_end() {
        let out = splice_section(DOC, "Policy engine", "| p |");
        assert!(
            out.ends_with(&format!("## Policy engine\n\n{BEGIN}\n| p |\n{END}\n")),
            "{out}"
        );
        assert!(
            out.starts_with("# Benchmarks\n\nIntro.\n\n## L4 (agent)"),
            "{out}"
        );
    }
}
