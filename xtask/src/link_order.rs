//! `cargo xtask link-order`: writes `agent/link-order.txt`, the functions a release agent runs
//! while it starts, carries traffic and sits idle, hottest first. agent/build.rs hands the list
//! to the linker, so those functions share a few hundred pages instead of touching nearly
//! every page of the text.
//!
//! How the list is found: a release agent (the order of its text does not matter); one uprobe
//! counter per function of its symbol table (every process, CPU 0), with the agents pinned to
//! CPU 0 by a wrapper; a run of the L4 bench's kinds of traffic in the netns harness; every
//! function whose counter moved is listed, by its name without the build's hashes
//! ([`hash_free`]). Needs root and a kernel with uprobes. Opening the counters took seconds on
//! one host and ten minutes on another (14k functions, session 17); removing them takes the
//! kernel many minutes after the tool exits (one RCU grace period per uprobe), and a second
//! run started meanwhile opens its counters just as slowly.
//!
//! `cargo xtask link-order waypoint` writes `waypoint/link-order.txt` the cheaper way: `perf`
//! samples of the waypoint while it carries the L7 bench's load (its max-rate run, then its
//! 1000-rps run, through the bench's 20 routes and 20 rules). Sampling finds the functions
//! that cost time, not every function that ran; for a proxy whose steady state is one
//! request path, that is the path the layout is for.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::tool;

/// A function of the agent's text: where it starts in the file, and its symbol.
struct Function {
    file_offset: u64,
    symbol: String,
}

pub fn write() -> Result<()> {
    crate::bench::ensure_tools()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // Symbol names depend on how the crates were built: profile the build the bench and the
    // images use.
    let release = crate::bench::release_binaries()?;
    // The harness runs `$LANYARD_BIN_DIR/lanyard-agent`: a wrapper pins it to CPU 0, where
    // the counters are.
    let tmp = tempfile::tempdir()?;
    let bins = tmp.path();
    for bin in ["lanyard-ca", "lanyard-waypoint", "e2e-tool", "e2e-app"] {
        if release.join(bin).exists() {
            std::os::unix::fs::symlink(release.join(bin), bins.join(bin))?;
        }
    }
    let agent = bins.join("lanyard-agent.real");
    std::fs::copy(release.join("lanyard-agent"), &agent)?;
    let wrapper = bins.join("lanyard-agent");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec taskset -c 0 {} \"$@\"\n", agent.display()),
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::env::set_var("LANYARD_BIN_DIR", bins);

    let functions = functions(&agent)?;
    let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("no uprobe PMU in this kernel")?
        .trim()
        .parse()?;
    let counters = functions
        .iter()
        .map(|f| uprobe_counter(pmu, &agent, f.file_offset).map(File::from))
        .collect::<Result<Vec<_>>>()?;
    eprintln!("counting calls of {} functions…", functions.len());
    traffic()?;
    let mut hits: Vec<(u64, &str)> = Vec::new();
    for (f, c) in functions.iter().zip(&counters) {
        let mut n = [0u8; 8];
        (&*c).read_exact(&mut n)?;
        let n = u64::from_ne_bytes(n);
        if n > 0 {
            hits.push((n, &f.symbol));
        }
    }
    let ran = hits.len();
    write_list(&root.join("agent/link-order.txt"), hits)?;
    eprintln!(
        "agent/link-order.txt: {} of {} functions ran; the kernel now removes the uprobes, \
         which takes many minutes",
        ran,
        functions.len()
    );
    drop(counters);
    Ok(())
}

pub fn write_waypoint() -> Result<()> {
    crate::bench::ensure_tools()?;
    if tool("perf").is_err() {
        crate::bench::apt_install("linux-perf")?;
    }
    crate::bench::use_release_binaries()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut mesh = crate::bench::l7::topology("lordw")?;
    crate::bench::l7::enroll(&mut mesh)?;
    let pid = *crate::bench::l7::cgroup_pids(&crate::bench::l7::waypoint_cgroup(&mesh))
        .first()
        .context("no waypoint process")?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("perf.data");
    let mut perf = Command::new(tool("perf")?)
        .args(["record", "-q", "-F", "1999", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let load = crate::bench::l7::waypoint_load(&mesh);
    // perf writes its data on SIGINT.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let recorded = perf.wait()?;
    drop(mesh);
    load?;
    if !recorded.success() && !data.exists() {
        bail!("perf record: {recorded}");
    }
    let out = Command::new(tool("perf")?)
        .args(["script", "--no-demangle", "-F", "ip,sym,dso", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()?;
    let mut counts: std::collections::HashMap<&str, u64> = Default::default();
    let text = String::from_utf8(out.stdout)?;
    for line in text.lines() {
        // `<address> <symbol> (<dso path>)`: the waypoint's own Rust functions only (C and
        // assembly keep their objects' order; the kernel and libc are not ours to place).
        let [_, symbol, dso] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            continue;
        };
        let rust = symbol.starts_with("_ZN") || symbol.starts_with("_R");
        if rust && dso.trim_end_matches(')').ends_with("/lanyard-waypoint") {
            *counts.entry(symbol).or_default() += 1;
        }
    }
    if counts.len() < 50 {
        bail!(
            "only {} waypoint functions in the samples: is perf allowed to read them?",
            counts.len()
        );
    }
    let hits: Vec<(u64, &str)> = counts.into_iter().map(|(s, n)| (n, s)).collect();
    let listed = write_list(&root.join("waypoint/link-order.txt"), hits)?;
    eprintln!("waypoint/link-order.txt: {listed} functions sampled");
    Ok(())
}

/// Writes the functions hottest first (the data path shares its pages, and TLB entries, with
/// itself), by hash-free name, each once; returns how many were written.
fn write_list(path: &Path, mut hits: Vec<(u64, &str)>) -> Result<usize> {
    hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let symbols: Vec<&str> = hits.iter().map(|(_, s)| *s).collect();
    let mut seen = std::collections::HashSet::new();
    let list: String = hash_free(&symbols)?
        .into_iter()
        .filter(|name| seen.insert(name.clone()))
        .map(|name| format!("{name}\n"))
        .collect();
    std::fs::write(path, list)?;
    Ok(seen.len())
}

/// Each symbol without what differs between builds of the same sources (the legacy
/// mangling's hash, v0 crate disambiguators, LTO's numeric suffixes), by the rule the linker
/// driver resolves the list with: `.cargo/linker/cc --hash-free`, so the two cannot drift.
fn hash_free(symbols: &[&str]) -> Result<Vec<String>> {
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cargo/linker/cc");
    let mut child = Command::new(&driver)
        .arg("--hash-free")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", driver.display()))?;
    let input: String = symbols.iter().map(|s| format!("{s}\n")).collect();
    let mut stdin = child.stdin.take().context("driver's stdin")?;
    // Written from another thread: the driver answers line by line and would fill its pipe.
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
    let out = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    if !out.status.success() {
        bail!("{} --hash-free: {}", driver.display(), out.status);
    }
    let names: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    if names.len() != symbols.len() {
        bail!(
            "{} --hash-free: {} names for {} symbols",
            driver.display(),
            names.len(),
            symbols.len()
        );
    }
    Ok(names)
}

/// The sized Rust functions of the binary's symbol table, with their offsets in the file (uprobes
/// are placed by file offset).
fn functions(bin: &Path) -> Result<Vec<Function>> {
    let out = Command::new("readelf").args(["-lW"]).arg(bin).output()?;
    let headers = String::from_utf8(out.stdout)?;
    // The executable LOAD segment: vaddr − offset turns a symbol's address into an offset.
    let text = headers
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"LOAD") && f.get(6) == Some(&"R") && f.get(7) == Some(&"E"))
        .context("no executable LOAD segment")?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
    let delta = hex(text[2])? - hex(text[1])?;
    let out = Command::new("nm")
        .args(["--defined-only", "-S"])
        .arg(bin)
        .output()?;
    let mut functions = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [addr, _size, kind, symbol] = f[..] {
            // Rust functions only: ring's assembly computes wrong results under uprobes (an
            // agent then failed to decrypt the CA's TLS records, and its pods got no
            // certificates), and C and assembly keep their objects' order anyway.
            let rust = symbol.starts_with("_ZN") || symbol.starts_with("_R");
            if matches!(kind, "t" | "T" | "w" | "W") && rust {
                functions.push(Function {
                    file_offset: hex(addr)? - delta,
                    symbol: symbol.to_string(),
                });
            }
        }
    }
    if functions.is_empty() {
        bail!("no function symbols in {}", bin.display());
    }
    Ok(functions)
}

/// Without it, every process the harness starts inherits the ten thousand counters: iperf3
/// then aborts on a descriptor past `FD_SETSIZE`.
const PERF_FLAG_FD_CLOEXEC: u64 = 8;

/// A counter of calls to the function at `file_offset` of `bin`, by any process on CPU 0
/// (`pmu`: the uprobe PMU's perf type).
fn uprobe_counter(pmu: u32, bin: &Path, file_offset: u64) -> Result<OwnedFd> {
    let path = std::ffi::CString::new(bin.as_os_str().as_encoded_bytes())?;
    // struct perf_event_attr, v8 (136 bytes): type, size, config, then config1 (the path) and
    // config2 (the offset) at byte 56 and 64.
    let mut attr = [0u8; 136];
    attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
    attr[4..8].copy_from_slice(&136u32.to_ne_bytes());
    attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&file_offset.to_ne_bytes());
    // SAFETY: attr is a valid perf_event_attr that outlives the call; path outlives it too.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("uprobe at {file_offset:#x} of {}", bin.display()));
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the L4 bench makes an agent do, shorter: enrol pods, bulk transfer, requests over
/// kept-alive and new connections, idle connections held, then idle long enough for pooled
/// connections to expire. A failed step fails the run: the list would miss the code that
/// step should have run (as it did while ring's assembly was probed).
fn traffic() -> Result<()> {
    let mesh = crate::bench::l4::mesh("lord", true)?;
    let (iperf, oha) = (tool("iperf3")?, tool("oha")?);
    let server = mesh.pod("server").ip.to_string();
    let url = format!("http://{server}:8080/");
    let runs: [(&Path, Vec<&str>); 3] = [
        (&iperf, vec!["-c", &server, "-p", "5201", "-t", "3"]),
        (
            &oha,
            vec!["-z", "3s", "-q", "200", "-c", "4", "--no-tui", &url],
        ),
        (
            &oha,
            vec![
                "-z",
                "3s",
                "-c",
                "4",
                "--disable-keepalive",
                "--no-tui",
                &url,
            ],
        ),
    ];
    for (program, args) in runs {
        let status = mesh
            .exec_command("client", program.to_str().unwrap(), &args)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} {args:?}: {status}", program.display());
        }
    }
    let held = mesh
        .hold(
            "client",
            &format!("{server}:9000"),
            200,
            Duration::from_secs(30),
        )
        .context("holding connections")?;
    std::thread::sleep(Duration::from_secs(2));
    drop(held);
    std::thread::sleep(Duration::from_secs(35));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hash_free;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn names_lose_what_depends_on_the_build_and_nothing_else() {
        for (symbol, name) in [
            (
                "_ZN7aya_obj3btf3btf8BtfTypes4push17h9c7a150d4882c5aeE",
                "_ZN7aya_obj3btf3btf8BtfTypes4push",
            ),
            (
                "_RNvCsfLfy6EI15iL_7___rustc12___rust_alloc",
                "_RNv7___rustc12___rust_alloc",
            ),
            (
                "_RNvNtCslNYArtu3iFV_5alloc5boxed14box_new_uninit.4247",
                "_RNvNt5alloc5boxed14box_new_uninit",
            ),
            (
                "_ZN4core3fmt5write17h0123456789abcdefE.llvm.42",
                "_ZN4core3fmt5write",
            ),
            // Not a hash: upper-case hex, or no `17h` before it.
            ("_ZN3foo3bar17hABCE", "_ZN3foo3bar17hABCE"),
            ("_ZN3foo9bar_cafeE", "_ZN3foo9bar_cafeE"),
            ("_ZN3foo8CsvThing3new", "_ZN3foo8CsvThing3new"),
            ("sha256_block_data_order", "sha256_block_data_order"),
        ] {
            assert_eq!(hash_free(&[symbol]).unwrap(), [name], "{symbol}");
        }
    }

    /// The linker driver, on a C object whose function names look like Rust's: it writes the
    /// link's own symbols for the listed names, in the list's order, and lld lays out the text
    /// that way.
    #[test]
    fn the_linker_driver_resolves_the_list_and_lld_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cold, hot, warm) = (
            "_ZN4demo4cold17h00000000000000aaE",
            "_ZN4demo3hot17h1111111111111111E",
            "_RNvCs1234abcd_4demo4warm",
        );
        std::fs::write(
            d.join("demo.c"),
            format!(
                "int {cold}(void) {{ return 1; }}\nint {hot}(void) {{ return 2; }}\n\
                 int {warm}(void) {{ return 3; }}\n\
                 int main(void) {{ return {cold}() + {hot}() + {warm}(); }}\n"
            ),
        )
        .unwrap();
        run(Command::new("cc")
            .args(["-c", "-O0", "-ffunction-sections", "-o"])
            .arg(d.join("demo.o"))
            .arg(d.join("demo.c")));
        let list = hash_free(&[hot, warm]).unwrap().join("\n") + "\n";
        assert_eq!(list, "_ZN4demo3hot\n_RNv4demo4warm\n");
        for file in ["link-order.wanted", "link-order.resolved"] {
            std::fs::write(d.join(file), &list).unwrap();
        }
        let sysroot = String::from_utf8(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let lld = Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld");
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cargo/linker/cc");
        run(Command::new(driver)
            .arg(d.join("demo.o"))
            .arg(format!("-B{}", lld.display()))
            .arg("-fuse-ld=lld")
            .arg(format!(
                "-Wl,--symbol-ordering-file={}",
                d.join("link-order.resolved").display()
            ))
            .arg("-o")
            .arg(d.join("demo")));

        let resolved = std::fs::read_to_string(d.join("link-order.resolved")).unwrap();
        assert_eq!(resolved, format!("{hot}\n{warm}\n"));
        let nm = Command::new("nm")
            .arg("-n")
            .arg(d.join("demo"))
            .output()
            .unwrap();
        let order: Vec<String> = String::from_utf8(nm.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .filter(|s| [cold, hot, warm].contains(s))
            .map(str::to_string)
            .collect();
        assert_eq!(order, [hot, warm, cold]);
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
