//! Compiles the BPF programs in ../ebpf with clang; the agent embeds the object.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let ebpf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("capture.bpf.o");
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{}", ebpf.display()))
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(ebpf.join("capture.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running clang to build BPF programs ({e}); install it with `cargo xtask setup` or `apt-get install clang libbpf-dev`"));
    assert!(
        status.success(),
        "clang failed to compile ebpf/capture.bpf.c"
    );
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("capture.bpf.c").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("lanyard.h").display()
    );
    println!("cargo:rerun-if-env-changed=CLANG");
    link_order();
    pack_relocations();
}

/// Release builds pack the relative relocations (DT_RELR, glibc 2.36+, as in the image's
/// Debian 12 base). The loader reads every relocation once at start-up and the pages stay
/// resident: 472 KiB of RELA entries, 6 KiB packed. Idle file-backed RSS fell by about
/// 0.13 MiB (paired reads; the kernel maps neighbouring cached pages on a fault anyway).
fn pack_relocations() {
    if release_with_lld() {
        println!("cargo:rustc-link-arg-bin=lanyard-agent=-Wl,-z,pack-relative-relocs");
    }
}

/// Release builds lay out the agent's text with the functions it runs first, in the order of
/// `link-order.txt` (xtask `link-order` writes it). Started, an agent touches about a fifth of
/// its code; scattered over the whole text, those functions keep nearly every page resident,
/// while packed together they fill a few hundred pages (docs/benchmarks.md, session 12).
///
/// The list names functions without their symbols' hashes, which change with the features a
/// build unifies and from one machine to another; the workspace's linker driver (.cargo/linker/cc) turns it into the symbols of
/// this link, in `link-order.resolved`. Until then that file holds the list itself, so a link
/// without the driver loses the layout, never the link. Names the build no longer has are
/// skipped: a stale list costs memory, never correctness.
fn link_order() {
    let order = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=LANYARD_NO_LINK_ORDER");
    if release_with_lld() && order.exists() && std::env::var_os("LANYARD_NO_LINK_ORDER").is_none() {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let resolved = out.join("link-order.resolved");
        for file in ["link-order.wanted", "link-order.resolved"] {
            std::fs::copy(&order, out.join(file))
                .unwrap_or_else(|e| panic!("copying {} to {file}: {e}", order.display()));
        }
        for arg in [
            format!("-Wl,--symbol-ordering-file={}", resolved.display()),
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ] {
            println!("cargo:rustc-link-arg-bin=lanyard-agent={arg}");
        }
    }
}

/// A release build on the target whose default linker is lld, whose options these are.
fn release_with_lld() -> bool {
    std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
}
