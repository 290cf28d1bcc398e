//! Fault injection as a wrapper of the [`Embedder`] port: the next `n` calls
//! fail as an unreachable service would, then calls go through again.
//!
//! The armed count lives wherever the [`FaultBudget`] keeps it (the ingest
//! queue keeps it in a row of its SQLite, so it survives a restart and stays
//! out of the queue's own state); the wrapper only asks it, once per call.
//! Which embedder is wrapped is chosen by configuration (`FAULT_INJECTION`),
//! never by a flag in production code paths.

use crate::ports::{Embedder, PortError};
use std::cell::Cell;

/// Where armed failures are counted.
pub trait FaultBudget {
    /// Consumes one armed failure; `true` if there was one.
    fn take(&self) -> bool;
}

/// A count in memory (tests, and anything that need not survive a restart).
#[derive(Debug, Default)]
pub struct CountedFaults(pub Cell<u32>);

impl FaultBudget for CountedFaults {
    fn take(&self) -> bool {
        let n = self.0.get();
        self.0.set(n.saturating_sub(1));
        n > 0
    }
}

/// The service name an injected failure reports.
pub const SERVICE: &str = "embedded embedder";
/// The message of an injected failure.
pub const MESSAGE: &str = "injected failure (FAULT_INJECTION)";

/// `E`, except that a call fails while `B` has failures armed.
#[derive(Debug)]
pub struct FaultyEmbedder<E, B> {
    inner: E,
    budget: B,
}

impl<E, B> FaultyEmbedder<E, B> {
    /// `inner` behind the failures counted by `budget`.
    pub fn new(inner: E, budget: B) -> Self {
        Self { inner, budget }
    }
}

impl<E: Embedder, B: FaultBudget> Embedder for FaultyEmbedder<E, B> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError> {
        if self.budget.take() {
            return Err(PortError::Failed {
                service: SERVICE,
                message: MESSAGE.to_owned(),
            });
        }
        self.inner.embed(texts).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::embedded::HashedEmbedder;

    #[test]
    fn the_next_n_calls_fail_then_calls_go_through() {
        let e = FaultyEmbedder::new(HashedEmbedder, CountedFaults(Cell::new(2)));
        let texts = vec!["hello".to_owned()];
        let run = |e: &FaultyEmbedder<HashedEmbedder, CountedFaults>| {
            futures::executor::block_on(e.embed(&texts))
        };
        for _ in 0..2 {
            let err = run(&e).unwrap_err();
            assert!(matches!(err, PortError::Failed { .. }), "{err}");
            assert!(err.to_string().contains("injected"));
        }
        assert_eq!(run(&e).unwrap().len(), 1);
        assert_eq!(e.model(), crate::embedding::HASHED_MODEL);
    }
}
