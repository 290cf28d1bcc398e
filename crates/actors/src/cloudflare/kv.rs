//! The KV cache through a `KvStore` binding (`CACHE`). Locally this is the
//! real KV of `wrangler dev`, persisted with everything else.

use crate::ports::{Kv, PortError};

const SERVICE: &str = "KV";
/// KV's shortest expiration.
pub const MIN_TTL_SECS: u64 = 60;

/// A KV namespace.
pub struct WorkersKv {
    store: worker::kv::KvStore,
}

impl WorkersKv {
    /// The namespace behind `store`.
    pub fn new(store: worker::kv::KvStore) -> Self {
        Self { store }
    }
}

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: SERVICE,
        message: e.to_string(),
    }
}

impl Kv for WorkersKv {
    async fn get(&self, key: &str) -> Result<Option<String>, PortError> {
        self.store.get(key).text().await.map_err(failed)
    }

    async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), PortError> {
        self.store
            .put(key, value)
            .map_err(failed)?
            .expiration_ttl(ttl_secs.max(MIN_TTL_SECS))
            .execute()
            .await
            .map_err(failed)
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), PortError> {
        self.store
            .put(key, value)
            .map_err(failed)?
            .execute()
            .await
            .map_err(failed)
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.store.delete(key).await.map_err(failed)
    }
}
