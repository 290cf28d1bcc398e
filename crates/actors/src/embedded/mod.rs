//! The embedded implementations of the ports, beside [`crate::cloudflare`]:
//! they run natively and in wasm, need no account and no download, and are
//! what local development and the end-to-end tests use.
//!
//! - [`HashedEmbedder`]: `local/hashed-768` ([`crate::embedding`]), a
//!   deterministic hashed feature embedder, not a neural model;
//! - [`SqlVectorIndex`]: vectors and FTS5 in the tenant's Durable Object
//!   SQLite, with only the vectors in memory;
//! - [`FaultyEmbedder`]: any embedder behind injected failures, for tests.

pub mod faulty;
pub mod hashed;
pub mod sql_index;

pub use faulty::{FaultBudget, FaultyEmbedder};
pub use hashed::HashedEmbedder;
pub use sql_index::SqlVectorIndex;
