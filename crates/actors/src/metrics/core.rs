//! The metrics object's pure core: per-route cells of the last day in
//! memory, each change handed to the shell as one row to store, and the
//! windows answered from memory.

use protocol::metrics::{
    bucket_of, RequestSample, RouteCell, RouteWindows, BUCKET_MS, DAY_BUCKETS,
    MAX_ROUTES_PER_BUCKET, MAX_SAMPLES, OTHER_ROUTE,
};
use std::collections::BTreeMap;

/// What the shell stores after a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsEffect {
    /// Insert or replace the cell of `(bucket, route)`.
    Save {
        /// The cell's start (ms since the Unix epoch).
        bucket: u64,
        /// The route.
        route: String,
        /// The cell as it is now.
        cell: RouteCell,
    },
    /// Delete every cell older than `before`.
    Prune {
        /// The oldest cell start kept.
        before: u64,
    },
}

/// The cells of one metrics object.
#[derive(Debug, Default)]
pub struct MetricsCore {
    cells: BTreeMap<(u64, String), RouteCell>,
    /// The cell start at which old cells were last pruned.
    pruned_at: Option<u64>,
}

impl MetricsCore {
    /// The core over the stored cells.
    pub fn restore(rows: impl IntoIterator<Item = (u64, String, RouteCell)>) -> Self {
        Self {
            cells: rows
                .into_iter()
                .map(|(bucket, route, cell)| ((bucket, route), cell))
                .collect(),
            pruned_at: None,
        }
    }

    /// How many cells are held.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no cell is held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Counts `samples` in the cell of `now_ms` (all or none: they are
    /// checked first). Cells older than a day are pruned once per new cell.
    pub fn record(
        &mut self,
        samples: &[RequestSample],
        now_ms: u64,
    ) -> Result<Vec<MetricsEffect>, String> {
        if samples.len() > MAX_SAMPLES {
            return Err(format!("at most {MAX_SAMPLES} samples at once"));
        }
        for sample in samples {
            sample.validate()?;
        }
        let bucket = bucket_of(now_ms);
        let mut effects = Vec::new();
        if self.pruned_at != Some(bucket) {
            self.pruned_at = Some(bucket);
            let before = bucket.saturating_sub((DAY_BUCKETS - 1) * BUCKET_MS);
            let had = self.cells.len();
            self.cells.retain(|(b, _), _| *b >= before);
            if had > 0 {
                effects.push(MetricsEffect::Prune { before });
            }
        }
        let mut changed: Vec<String> = Vec::new();
        for sample in samples {
            let routes_here = self.cells.range((bucket, String::new())..).count();
            let route = if self.cells.contains_key(&(bucket, sample.route.clone()))
                || routes_here < MAX_ROUTES_PER_BUCKET
            {
                sample.route.clone()
            } else {
                OTHER_ROUTE.to_owned()
            };
            self.cells
                .entry((bucket, route.clone()))
                .or_default()
                .record(sample);
            if !changed.contains(&route) {
                changed.push(route);
            }
        }
        for route in changed {
            if let Some(cell) = self.cells.get(&(bucket, route.clone())) {
                effects.push(MetricsEffect::Save {
                    bucket,
                    route,
                    cell: cell.clone(),
                });
            }
        }
        Ok(effects)
    }

    /// The last hour's and day's cells, merged per route, as of `now_ms`.
    pub fn windows(&self, now_ms: u64) -> RouteWindows {
        RouteWindows::from_cells(
            self.cells
                .iter()
                .map(|((bucket, route), cell)| (*bucket, route.as_str(), cell)),
            now_ms,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample(route: &str, status: u16, latency_ms: u64) -> RequestSample {
        RequestSample {
            route: route.into(),
            status,
            code: (status >= 400).then(|| "bad".to_owned()),
            latency_ms,
        }
    }

    const T0: u64 = 20_000 * BUCKET_MS;

    #[test]
    fn records_count_per_route_and_are_stored_as_one_row_per_changed_cell() {
        let mut core = MetricsCore::default();
        let effects = core
            .record(
                &[
                    sample("POST /api/search", 200, 12),
                    sample("POST /api/search", 400, 2),
                    sample("GET /health", 200, 1),
                ],
                T0 + 10,
            )
            .unwrap();
        let saves: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                MetricsEffect::Save { route, cell, .. } => Some((route.as_str(), cell.requests)),
                MetricsEffect::Prune { .. } => None,
            })
            .collect();
        assert_eq!(saves, vec![("POST /api/search", 2), ("GET /health", 1)]);
        let w = core.windows(T0 + 20);
        let search = &w.hour["POST /api/search"];
        assert_eq!((search.requests, search.errors), (2, 1));
        assert_eq!(search.by_status["400"], 1);
        assert_eq!(search.latency.percentile(99.0), Some(12));
    }

    #[test]
    fn the_hour_rolls_over_and_cells_older_than_a_day_are_pruned() {
        let mut core = MetricsCore::default();
        core.record(&[sample("GET /health", 200, 1)], T0).unwrap();
        // 30 minutes later: both in the hour.
        core.record(&[sample("GET /health", 200, 1)], T0 + 6 * BUCKET_MS)
            .unwrap();
        assert_eq!(
            core.windows(T0 + 6 * BUCKET_MS).hour["GET /health"].requests,
            2
        );
        // An hour after the first: it left the hour, not the day.
        let later = T0 + 12 * BUCKET_MS;
        let w = core.windows(later);
        assert_eq!(w.hour["GET /health"].requests, 1);
        assert_eq!(w.day["GET /health"].requests, 2);
        // A day after the first, a record prunes it from memory and storage.
        let next_day = T0 + DAY_BUCKETS * BUCKET_MS;
        let effects = core
            .record(&[sample("GET /health", 200, 1)], next_day)
            .unwrap();
        assert!(effects.contains(&MetricsEffect::Prune {
            before: next_day - (DAY_BUCKETS - 1) * BUCKET_MS
        }));
        assert_eq!(core.len(), 2, "the cell of T0 is gone");
        assert_eq!(core.windows(next_day).day["GET /health"].requests, 2);
        // Pruning runs once per cell, not per record.
        let again = core
            .record(&[sample("GET /health", 200, 1)], next_day + 1)
            .unwrap();
        assert!(!again
            .iter()
            .any(|e| matches!(e, MetricsEffect::Prune { .. })));
    }

    #[test]
    fn a_restored_core_answers_as_the_one_that_stored() {
        let mut core = MetricsCore::default();
        let mut rows = Vec::new();
        for (i, s) in [
            sample("a", 200, 5),
            sample("b", 503, 900),
            sample("a", 200, 7),
        ]
        .iter()
        .enumerate()
        {
            let at = T0 + i as u64 * BUCKET_MS;
            for effect in core.record(std::slice::from_ref(s), at).unwrap() {
                if let MetricsEffect::Save {
                    bucket,
                    route,
                    cell,
                } = effect
                {
                    rows.retain(|(b, r, _): &(u64, String, RouteCell)| {
                        !(*b == bucket && *r == route)
                    });
                    rows.push((bucket, route, cell));
                }
            }
        }
        let restored = MetricsCore::restore(rows);
        let now = T0 + 3 * BUCKET_MS;
        assert_eq!(restored.windows(now), core.windows(now));
    }

    #[test]
    fn bad_samples_and_too_many_routes() {
        let mut core = MetricsCore::default();
        assert!(core.record(&[sample("", 200, 1)], T0).is_err());
        assert!(core.is_empty(), "nothing counted from a refused batch");
        let many: Vec<_> = (0..MAX_SAMPLES + 1).map(|_| sample("a", 200, 1)).collect();
        assert!(core.record(&many, T0).is_err());
        for i in 0..MAX_ROUTES_PER_BUCKET + 3 {
            core.record(&[sample(&format!("r{i}"), 200, 1)], T0)
                .unwrap();
        }
        let w = core.windows(T0);
        assert_eq!(w.hour.len(), MAX_ROUTES_PER_BUCKET + 1);
        assert_eq!(w.hour[OTHER_ROUTE].requests, 3);
    }
}
