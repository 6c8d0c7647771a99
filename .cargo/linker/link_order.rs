//! Release builds lay out a binary's text with the functions it runs first, in the order of
//! its crate's `link-order.txt`; included by agent/build.rs and waypoint/build.rs. Run
//! scattered over the whole text, those functions keep nearly every page resident and cost
//! TLB and cache misses after each sleep; packed together they fill a few hundred pages
//! (docs/benchmarks.md, sessions 12 and 21).
//!
//! The list names functions without their symbols' hashes, which change with the features a
//! build unifies and from one machine to another; the workspace's linker driver (`cc`, next to
//! this file) turns it into the symbols of this link, in `link-order.resolved`. Until then
//! that file holds the list itself, so a link without the driver loses the layout, never the
//! link. Names the build no longer has are skipped: a stale list costs speed and memory,
//! never correctness.

use std::path::PathBuf;

/// Hands the crate's `link-order.txt`, if any, to the linker for binary `bin`.
pub fn apply(bin: &str) {
    let order = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("link-order.txt");
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
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
}

/// A release build on the target whose default linker is lld, whose options these are.
pub fn release_with_lld() -> bool {
    std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
}
