//! Lays out the waypoint's hot functions together (`link-order.txt`, from `perf` samples of
//! `cargo xtask bench l7`; docs/benchmarks.md, session 21), as the agent does.

#[path = "../.cargo/linker/link_order.rs"]
mod link_order;

fn main() {
    link_order::apply("lanyard-waypoint");
}
