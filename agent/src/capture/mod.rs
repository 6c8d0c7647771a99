//! Traffic capture with eBPF: which pods are enrolled, and where their connections were going.

mod bpf;
pub mod maps;
pub mod netns;
pub mod probes;

pub use bpf::{Capture, Error, Exempt};
