//! Request metrics: what the gateway records per request, how a metrics
//! object keeps it (5-minute cells with a fixed log-scale latency
//! histogram), and the report `GET /admin/metrics` answers.
//!
//! Everything here is plain data and pure functions (percentiles from a
//! histogram, merging shards, the report's shape), so the gateway merges
//! the shards' answers exactly as the objects would.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The width of one metrics cell: 5 minutes.
pub const BUCKET_MS: u64 = 5 * 60 * 1000;
/// Cells in the "hour" window: the current one and the 11 before it
/// (55 to 60 minutes, depending on where in its cell `now` is).
pub const HOUR_BUCKETS: u64 = 12;
/// Cells in the "day" window (and kept at all): 288 × 5 minutes.
pub const DAY_BUCKETS: u64 = 288;
/// How many metrics objects share one tenant's requests (see
/// `docs/architecture.md`): a busy tenant's writes spread over this many
/// objects, and a report reads them all.
pub const SHARDS: u32 = 4;
/// Most samples in one [`MetricsRequest::Record`].
pub const MAX_SAMPLES: usize = 64;
/// The longest route label or error code accepted.
pub const MAX_LABEL_LEN: usize = 64;
/// Distinct routes one cell keeps; more fold into [`OTHER_ROUTE`] (route
/// labels are the gateway's fixed templates, so this is a guard only).
pub const MAX_ROUTES_PER_BUCKET: usize = 64;
/// Where routes beyond [`MAX_ROUTES_PER_BUCKET`] are counted.
pub const OTHER_ROUTE: &str = "other";

/// Upper bounds (inclusive, ms) of the latency histogram's buckets, each
/// about 1.4 times the one before; a last bucket holds everything above
/// 120 s. A percentile read from it is the bound of its bucket, so it is at
/// most about 40 % above the true value (and never above the window's
/// largest latency: see [`Histogram::percentile`]).
pub const LATENCY_BOUNDS_MS: [u64; 34] = [
    1, 2, 3, 4, 5, 7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320, 448, 640, 896, 1_280, 1_792,
    2_560, 3_584, 5_120, 7_168, 10_240, 14_336, 20_480, 28_672, 40_960, 57_344, 81_920, 120_000,
];

/// The start of the 5-minute cell holding `at_ms`.
pub fn bucket_of(at_ms: u64) -> u64 {
    at_ms - at_ms % BUCKET_MS
}

/// A latency histogram: counts per bucket of [`LATENCY_BOUNDS_MS`] (plus
/// one for anything larger) and the largest latency seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket; shorter than the bounds when the tail is empty.
    pub counts: Vec<u64>,
    /// The largest latency recorded, in ms.
    pub max_ms: u64,
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, latency_ms: u64) {
        let index = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        if let Some(count) = self.counts.get_mut(index) {
            *count = count.saturating_add(1);
        }
        self.max_ms = self.max_ms.max(latency_ms);
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// How many latencies were recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// The `pct`-th percentile (0 < pct ≤ 100): the upper bound of the
    /// bucket holding the sample of rank ⌈pct/100 × n⌉, capped at the
    /// largest latency seen; `None` when empty.
    pub fn percentile(&self, pct: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((pct / 100.0) * total as f64)
            .ceil()
            .clamp(1.0, total as f64) as u64;
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                let bound = LATENCY_BOUNDS_MS.get(index).copied().unwrap_or(self.max_ms);
                return Some(bound.min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }
}

/// One route's counts over one cell (or a window, once merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteCell {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a status of 400 or more.
    pub errors: u64,
    /// Requests per status (`"200"`, `"429"`, ...).
    pub by_status: BTreeMap<String, u64>,
    /// Failed requests per error code (`"rate_limited"`, ...).
    pub by_code: BTreeMap<String, u64>,
    /// Latencies.
    pub latency: Histogram,
}

impl RouteCell {
    /// Counts one request.
    pub fn record(&mut self, sample: &RequestSample) {
        self.requests = self.requests.saturating_add(1);
        if sample.status >= 400 {
            self.errors = self.errors.saturating_add(1);
        }
        let status = self.by_status.entry(sample.status.to_string()).or_default();
        *status = status.saturating_add(1);
        if let Some(code) = &sample.code {
            let count = self.by_code.entry(code.clone()).or_default();
            *count = count.saturating_add(1);
        }
        self.latency.record(sample.latency_ms);
    }

    /// Adds `other` to this cell.
    pub fn merge(&mut self, other: &RouteCell) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (status, n) in &other.by_status {
            let count = self.by_status.entry(status.clone()).or_default();
            *count = count.saturating_add(*n);
        }
        for (code, n) in &other.by_code {
            let count = self.by_code.entry(code.clone()).or_default();
            *count = count.saturating_add(*n);
        }
        self.latency.merge(&other.latency);
    }
}

/// One request as the gateway saw it, recorded after its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSample {
    /// The route's template (`"POST /api/search"`), or `"unmatched"`.
    pub route: String,
    /// The status answered.
    pub status: u16,
    /// The error code, when the answer was an error.
    pub code: Option<String>,
    /// From the request's arrival to its answer's headers, in ms.
    pub latency_ms: u64,
}

impl RequestSample {
    /// Checks the labels' bounds.
    pub fn validate(&self) -> Result<(), String> {
        let label_ok = |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_LEN;
        if !label_ok(&self.route) {
            return Err(format!("a route label is 1 to {MAX_LABEL_LEN} bytes"));
        }
        if self.code.as_deref().is_some_and(|c| !label_ok(c)) {
            return Err(format!("an error code is 1 to {MAX_LABEL_LEN} bytes"));
        }
        if !(100..=599).contains(&self.status) {
            return Err("a status is 100 to 599".into());
        }
        Ok(())
    }
}

/// A message to a metrics object (`${tenantId}:metrics:<shard>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricsRequest {
    /// Count these requests (at most [`MAX_SAMPLES`]).
    Record(Vec<RequestSample>),
    /// The object's windows now.
    Report,
}

/// A metrics object's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricsResponse {
    /// Answers `Record`: how many samples were counted.
    Recorded(u64),
    /// Answers `Report`.
    Windows(RouteWindows),
}

/// Per-route cells merged over the two windows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteWindows {
    /// The last hour (see [`HOUR_BUCKETS`]).
    pub hour: BTreeMap<String, RouteCell>,
    /// The last day (see [`DAY_BUCKETS`]).
    pub day: BTreeMap<String, RouteCell>,
}

impl RouteWindows {
    /// Adds another shard's windows.
    pub fn merge(&mut self, other: &RouteWindows) {
        for (mine, theirs) in [(&mut self.hour, &other.hour), (&mut self.day, &other.day)] {
            for (route, cell) in theirs {
                mine.entry(route.clone()).or_default().merge(cell);
            }
        }
    }

    /// Merges `cells` (each a cell's start and a route's counts) into the
    /// windows that end with the cell of `now_ms`.
    pub fn from_cells<'a>(
        cells: impl IntoIterator<Item = (u64, &'a str, &'a RouteCell)>,
        now_ms: u64,
    ) -> Self {
        let current = bucket_of(now_ms);
        let hour_from = current.saturating_sub((HOUR_BUCKETS - 1) * BUCKET_MS);
        let day_from = current.saturating_sub((DAY_BUCKETS - 1) * BUCKET_MS);
        let mut windows = RouteWindows::default();
        for (bucket, route, cell) in cells {
            if bucket > current || bucket < day_from {
                continue;
            }
            windows.day.entry(route.to_owned()).or_default().merge(cell);
            if bucket >= hour_from {
                windows
                    .hour
                    .entry(route.to_owned())
                    .or_default()
                    .merge(cell);
            }
        }
        windows
    }
}

/// Tokens and cost over a window, from the tenant's usage records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenTotals {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micros: u64,
}

impl TokenTotals {
    /// Adds `other`.
    pub fn add(&mut self, other: &TokenTotals) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }
}

/// Recent token totals per window, kept by the tenant's ledger beside its
/// daily usage rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentTokens {
    /// The last hour.
    pub hour: TokenTotals,
    /// The last day.
    pub day: TokenTotals,
}

impl RecentTokens {
    /// Sums `cells` (each a cell's start and its totals) into the windows
    /// that end with the cell of `now_ms`.
    pub fn from_cells(cells: impl IntoIterator<Item = (u64, TokenTotals)>, now_ms: u64) -> Self {
        let current = bucket_of(now_ms);
        let hour_from = current.saturating_sub((HOUR_BUCKETS - 1) * BUCKET_MS);
        let day_from = current.saturating_sub((DAY_BUCKETS - 1) * BUCKET_MS);
        let mut recent = RecentTokens::default();
        for (bucket, totals) in cells {
            if bucket > current || bucket < day_from {
                continue;
            }
            recent.day.add(&totals);
            if bucket >= hour_from {
                recent.hour.add(&totals);
            }
        }
        recent
    }
}

/// One route in a window of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteReport {
    /// The route's template.
    pub route: String,
    /// Requests answered.
    pub requests: u64,
    /// Answered with a status of 400 or more.
    pub errors: u64,
    /// Requests per status.
    pub by_status: BTreeMap<String, u64>,
    /// Failed requests per error code.
    pub by_code: BTreeMap<String, u64>,
    /// Median latency (ms; see [`Histogram::percentile`]).
    pub p50_ms: Option<u64>,
    /// 99th percentile latency (ms).
    pub p99_ms: Option<u64>,
}

/// One window of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowReport {
    /// Per route, busiest first (then by name).
    pub routes: Vec<RouteReport>,
    /// Tokens and cost.
    pub tokens: TokenTotals,
}

impl WindowReport {
    /// The window's report from its merged cells and tokens.
    pub fn new(cells: &BTreeMap<String, RouteCell>, tokens: TokenTotals) -> Self {
        let mut routes: Vec<RouteReport> = cells
            .iter()
            .map(|(route, cell)| RouteReport {
                route: route.clone(),
                requests: cell.requests,
                errors: cell.errors,
                by_status: cell.by_status.clone(),
                by_code: cell.by_code.clone(),
                p50_ms: cell.latency.percentile(50.0),
                p99_ms: cell.latency.percentile(99.0),
            })
            .collect();
        routes.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
        Self { routes, tokens }
    }
}

/// Both windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Windows {
    /// The last hour.
    pub hour: WindowReport,
    /// The last day.
    pub day: WindowReport,
}

/// The answer of `GET /admin/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    /// The tenant.
    pub tenant_id: String,
    /// When the report was made (ms since the Unix epoch).
    pub generated_at_ms: u64,
    /// The windows.
    pub windows: Windows,
}

impl MetricsReport {
    /// The report from the shards' merged windows and the ledger's tokens.
    pub fn new(tenant_id: &str, now_ms: u64, routes: &RouteWindows, tokens: &RecentTokens) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            generated_at_ms: now_ms,
            windows: Windows {
                hour: WindowReport::new(&routes.hour, tokens.hour),
                day: WindowReport::new(&routes.day, tokens.day),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(route: &str, status: u16, code: Option<&str>, latency_ms: u64) -> RequestSample {
        RequestSample {
            route: route.into(),
            status,
            code: code.map(str::to_owned),
            latency_ms,
        }
    }

    #[test]
    fn percentiles_come_from_the_buckets_and_never_exceed_the_max() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        assert_eq!(h.total(), 100);
        // Rank 50 is 50 ms, in the bucket (40, 56]: its bound.
        assert_eq!(h.percentile(50.0), Some(56));
        // Rank 99 is 99 ms, in (80, 112]: capped at the max seen, 100.
        assert_eq!(h.percentile(99.0), Some(100));
        assert_eq!(h.percentile(100.0), Some(100));
        let mut one = Histogram::default();
        one.record(0);
        assert_eq!(one.percentile(99.0), Some(0));
        let mut slow = Histogram::default();
        slow.record(500_000);
        assert_eq!(slow.counts.len(), LATENCY_BOUNDS_MS.len() + 1);
        assert_eq!(slow.percentile(50.0), Some(500_000));
    }

    #[test]
    fn a_percentile_is_within_its_bucket_of_the_true_value() {
        // Every bound is at most 1.5 times the one before (about 1.4 from 5 ms on).
        for pair in LATENCY_BOUNDS_MS.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            assert!(hi > lo);
            if lo >= 5 {
                assert!(hi * 10 <= lo * 15, "{lo} -> {hi}");
            }
        }
        let mut h = Histogram::default();
        for ms in [300u64; 99] {
            h.record(ms);
        }
        h.record(9_000);
        let p50 = h.percentile(50.0).unwrap();
        assert!((300..=448).contains(&p50), "{p50}");
        let p99 = h.percentile(99.0).unwrap();
        assert!((300..=448).contains(&p99), "{p99}");
    }

    #[test]
    fn histograms_and_cells_merge_exactly() {
        let mut a = RouteCell::default();
        let mut b = RouteCell::default();
        a.record(&sample("POST /api/search", 200, None, 10));
        a.record(&sample("POST /api/search", 429, Some("rate_limited"), 1));
        b.record(&sample("POST /api/search", 200, None, 2_000));
        b.record(&sample("POST /api/search", 400, Some("invalid_search"), 3));
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged.requests, 4);
        assert_eq!(merged.errors, 2);
        assert_eq!(merged.by_status.get("200"), Some(&2));
        assert_eq!(merged.by_status.get("429"), Some(&1));
        assert_eq!(merged.by_code.get("rate_limited"), Some(&1));
        assert_eq!(merged.by_code.get("invalid_search"), Some(&1));
        assert_eq!(merged.latency.total(), 4);
        assert_eq!(merged.latency.max_ms, 2_000);
        // The same four requests in one cell: the same counts.
        let mut one = RouteCell::default();
        for s in [
            sample("r", 200, None, 10),
            sample("r", 429, Some("rate_limited"), 1),
            sample("r", 200, None, 2_000),
            sample("r", 400, Some("invalid_search"), 3),
        ] {
            one.record(&s);
        }
        assert_eq!(one, merged);
    }

    #[test]
    fn windows_take_the_cells_of_the_last_hour_and_day() {
        let now = 1_000 * BUCKET_MS + 1_234;
        let current = bucket_of(now);
        let mut cell = RouteCell::default();
        cell.record(&sample("GET /health", 200, None, 1));
        let cells = [
            (current, "GET /health", &cell),
            (current - 11 * BUCKET_MS, "GET /health", &cell), // the hour's oldest
            (current - 12 * BUCKET_MS, "GET /health", &cell), // day only
            (current - 287 * BUCKET_MS, "GET /health", &cell), // the day's oldest
            (current - 288 * BUCKET_MS, "GET /health", &cell), // too old
            (current + BUCKET_MS, "GET /health", &cell),      // from the future: ignored
        ];
        let w = RouteWindows::from_cells(cells, now);
        assert_eq!(w.hour["GET /health"].requests, 2);
        assert_eq!(w.day["GET /health"].requests, 4);
        // An hour later, the hour window has rolled over.
        let later = RouteWindows::from_cells(cells, now + 12 * BUCKET_MS);
        assert_eq!(later.hour.get("GET /health").map(|c| c.requests), Some(1));
    }

    #[test]
    fn tokens_roll_over_like_requests() {
        let now = 500 * BUCKET_MS;
        let t = |n| TokenTotals {
            input_tokens: n,
            output_tokens: 2 * n,
            cost_micros: 3 * n,
        };
        let cells = [(now, t(1)), (now - 20 * BUCKET_MS, t(10)), (0, t(100))];
        let recent = RecentTokens::from_cells(cells, now);
        assert_eq!(recent.hour, t(1));
        assert_eq!(recent.day, t(11));
    }

    #[test]
    fn the_report_has_the_documented_shape() {
        let mut routes = RouteWindows::default();
        let mut cell = RouteCell::default();
        cell.record(&sample("POST /api/search", 200, None, 12));
        cell.record(&sample("POST /api/search", 429, Some("rate_limited"), 3));
        routes.hour.insert("POST /api/search".into(), cell.clone());
        routes.day.insert("POST /api/search".into(), cell);
        let tokens = RecentTokens {
            hour: TokenTotals {
                input_tokens: 5,
                output_tokens: 6,
                cost_micros: 7,
            },
            day: TokenTotals::default(),
        };
        let report = MetricsReport::new("acme", 42, &routes, &tokens);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "tenantId": "acme", "generatedAtMs": 42,
                "windows": {
                    "hour": {"routes": [{"route": "POST /api/search", "requests": 2, "errors": 1,
                        "byStatus": {"200": 1, "429": 1}, "byCode": {"rate_limited": 1},
                        "p50Ms": 3, "p99Ms": 12}],
                        "tokens": {"inputTokens": 5, "outputTokens": 6, "costMicros": 7}},
                    "day": {"routes": [{"route": "POST /api/search", "requests": 2, "errors": 1,
                        "byStatus": {"200": 1, "429": 1}, "byCode": {"rate_limited": 1},
                        "p50Ms": 3, "p99Ms": 12}],
                        "tokens": {"inputTokens": 0, "outputTokens": 0, "costMicros": 0}}
                }
            })
        );
    }

    #[test]
    fn samples_are_bounded() {
        assert!(sample("GET /health", 200, None, 1).validate().is_ok());
        assert!(sample("", 200, None, 1).validate().is_err());
        assert!(sample(&"r".repeat(65), 200, None, 1).validate().is_err());
        assert!(sample("r", 200, Some(""), 1).validate().is_err());
        assert!(sample("r", 99, None, 1).validate().is_err());
        assert!(sample("r", 600, None, 1).validate().is_err());
    }
}
