//! Config sources and the per-object validation they share.

mod file;
pub mod k8s;
mod object;
mod store;

pub use file::{parse_documents, Error as FileError, FileSource};
pub use object::{Object, ObjectRef, Rejection};
pub use store::{Resource, Snapshot, Store};
