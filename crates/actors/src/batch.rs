//! Work that leaves an isolate in batches: what the gateway's requests send
//! to a tenant's metrics objects after they answer is gathered per tenant
//! and sent at most [`FLUSH_AFTER_MS`] after the first item of a batch, or
//! at once when a batch is full. One call a second per tenant, instead of
//! one beside every answer, where it took turns with the work still being
//! answered (a chat stream's events).
//!
//! Only plain items are shared: whoever began a batch sends it, making the
//! call itself in its own request's I/O context. No promise or I/O object
//! may be shared between requests (nor between Durable Objects: the chat
//! sessions of an isolate share their ended turns' bookkeeping on the same
//! rule, in `chat::runtime`'s `TurnBooks`, which sums and replaces rather
//! than keeps every item): the runtime refuses to let one await I/O
//! another began (see docs/benchmarks.md).
//!
//! Every item is sent exactly once, in the order it was added. Items still
//! gathered when the isolate is evicted are lost: at most
//! [`FLUSH_AFTER_MS`] of them, as for the ingest queue's usage.

use protocol::TenantId;
use std::collections::HashMap;

/// How long a batch gathers before it is sent.
pub const FLUSH_AFTER_MS: u64 = 1_000;

/// What the caller does after [`TenantBatches::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added<T> {
    /// The tenant's batch has just begun: send it in [`FLUSH_AFTER_MS`]
    /// ([`TenantBatches::take`]).
    FlushLater,
    /// The batch is full: send it now.
    FlushNow(Vec<T>),
    /// Gathered into a batch whose send is already arranged.
    Gathered,
}

/// Each tenant's items not sent yet, at most `max` a batch.
#[derive(Debug)]
pub struct TenantBatches<T> {
    pending: HashMap<TenantId, Vec<T>>,
    max: usize,
}

impl<T> TenantBatches<T> {
    /// Batches of at most `max` items (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Adds `tenant`'s `item`.
    pub fn add(&mut self, tenant: &TenantId, item: T) -> Added<T> {
        let batch = self.pending.entry(tenant.clone()).or_default();
        batch.push(item);
        if batch.len() >= self.max {
            // The flush arranged for this batch finds the tenant's batch
            // empty, or a newer one (which arranged its own flush): it sends
            // it early, never twice.
            let full = std::mem::take(batch);
            self.pending.remove(tenant);
            Added::FlushNow(full)
        } else if batch.len() == 1 {
            Added::FlushLater
        } else {
            Added::Gathered
        }
    }

    /// `tenant`'s items, in the order they were added, leaving none.
    pub fn take(&mut self, tenant: &TenantId) -> Vec<T> {
        self.pending.remove(tenant).unwrap_or_default()
    }

    /// How many items are held, for every tenant.
    pub fn len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[test]
    fn the_first_item_of_a_tenant_arranges_the_flush_and_the_rest_join_it() {
        let (a, b) = (tenant("a"), tenant("b"));
        let mut batches = TenantBatches::new(10);
        assert_eq!(batches.add(&a, 1), Added::FlushLater);
        assert_eq!(batches.add(&a, 2), Added::Gathered);
        assert_eq!(batches.add(&b, 3), Added::FlushLater, "per tenant");
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.take(&a), [1, 2]);
        assert!(batches.take(&a).is_empty(), "taken once");
        assert_eq!(batches.add(&a, 4), Added::FlushLater, "a new batch");
        assert_eq!(batches.take(&b), [3], "b's own batch");
        assert_eq!(batches.take(&a), [4]);
        assert!(batches.is_empty());
    }

    #[test]
    fn a_full_batch_is_sent_at_once_and_every_item_exactly_once_in_order() {
        let a = tenant("a");
        let mut batches = TenantBatches::new(4);
        let mut sent = Vec::new();
        for n in 0..11 {
            match batches.add(&a, n) {
                Added::FlushNow(batch) => {
                    assert_eq!(batch.len(), 4);
                    sent.extend(batch);
                }
                Added::FlushLater => assert!(n % 4 == 0, "{n} starts a batch"),
                Added::Gathered => {}
            }
            assert!(batches.len() < 4, "never a full batch held");
        }
        sent.extend(batches.take(&a));
        assert_eq!(sent, (0..11).collect::<Vec<_>>());
        assert!(batches.is_empty());
    }
}
