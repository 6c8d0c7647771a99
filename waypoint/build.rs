//! Lays out the waypoint's hot functions together (`link-order.txt`), as agent/build.rs does
//! for the agent: release builds hand the list to the linker through the workspace's driver.

use std::path::PathBuf;

fn main() {
    let order = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=LANYARD_NO_LINK_ORDER");
    let release_with_lld = std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    if release_with_lld && order.exists() && std::env::var_os("LANYARD_NO_LINK_ORDER").is_none() {
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
            println!("cargo:rustc-link-arg-bin=lanyard-waypoint={arg}");
        }
    }
}
