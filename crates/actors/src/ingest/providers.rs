//! Moved to [`crate::providers`], shared by every actor; re-exported here so
//! existing `crate::ingest::providers::..` paths keep working.

pub use crate::providers::*;
