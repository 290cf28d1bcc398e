//! Usage accounting: what model calls used, counted per UTC day, caller and
//! model, and the admin view over it (`GET /admin/usage`).
//!
//! Every model call is recorded where its usage becomes known: a chat turn
//! by its session when the turn ends (the usage summed over its model calls,
//! the same figures as the turn's `done` event), a search's query embedding
//! and an ingest job's embeddings by the `IngestQueue` (gathered in memory
//! and written at most once a second). All go to the tenant's ledger, which keeps one row per
//! `(day, caller, model)` and answers reports grouped by key, model or day.

use crate::calendar::{date_string, parse_date};
use crate::limits::{PriceTable, TokenUsage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest range one report covers, in days.
pub const MAX_REPORT_DAYS: u32 = 366;
/// The range of a report that names no `from`, in days (ending today).
pub const DEFAULT_REPORT_DAYS: u32 = 30;
/// Rows older than this many days are dropped.
pub const KEPT_DAYS: u32 = 400;
/// Records one message may carry.
pub const MAX_RECORDS: usize = 64;
/// The caller of anonymous traffic.
pub const ANONYMOUS: &str = "anonymous";
/// The caller of the operator's requests and of unkeyed ones.
pub const OPERATOR: &str = "operator";

/// What one or more model calls of one caller used on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    /// The UTC day (days since 1970-01-01).
    pub day: u32,
    /// The key id, [`ANONYMOUS`] or [`OPERATOR`].
    pub caller: String,
    /// The model that served the calls.
    pub model: String,
    /// Model calls (a chat turn counts its generations).
    pub requests: u64,
    /// Tokens in and out.
    pub usage: TokenUsage,
    /// Cost in micro-dollars (0 where the model is unpriced).
    pub cost_micros: u64,
}

impl UsageRecord {
    /// A record of `requests` calls of `model` that used `usage` on `day`,
    /// priced by `prices`.
    pub fn new(
        day: u32,
        caller: &str,
        model: &str,
        requests: u64,
        usage: TokenUsage,
        prices: &PriceTable,
    ) -> Self {
        Self {
            day,
            caller: caller.to_owned(),
            model: model.to_owned(),
            requests,
            usage,
            cost_micros: prices.cost_micros(model, usage).unwrap_or(0),
        }
    }

    /// Checks the names (they become row keys).
    pub fn validate(&self) -> Result<(), String> {
        let fine = |s: &str| {
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        };
        if !fine(&self.caller) {
            return Err(format!("invalid caller {:?}", self.caller));
        }
        if !fine(&self.model) {
            return Err(format!("invalid model {:?}", self.model));
        }
        Ok(())
    }
}

/// Whether `s` may name a caller or a model in a record: 1 to 128 visible
/// ASCII characters, no quote.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

/// The caller name of a key id, or of the traffic without one.
pub fn caller_of(key_id: Option<&str>, anonymous: bool) -> String {
    match key_id {
        Some(id) => id.to_owned(),
        None if anonymous => ANONYMOUS.to_owned(),
        None => OPERATOR.to_owned(),
    }
}

/// How a report groups its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// By caller (key id).
    Key,
    /// By model.
    Model,
    /// By UTC day (the default).
    #[default]
    Day,
}

impl GroupBy {
    /// Parses the query parameter.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(Self::Key),
            "model" => Some(Self::Model),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// What a report covers: days `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageQuery {
    /// First day.
    pub from: u32,
    /// Last day.
    pub to: u32,
    /// The grouping.
    pub group_by: GroupBy,
    /// Only this caller's usage (a key id, `anonymous` or `operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only this model's usage (the name a record was charged to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl UsageQuery {
    /// The query of `GET /admin/usage?from=&to=&groupBy=&key=` at day
    /// `today`: dates are `YYYY-MM-DD` (UTC), both ends included; `to`
    /// defaults to today, `from` to [`DEFAULT_REPORT_DAYS`] days ending at
    /// `to`; `key` keeps one caller's usage.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        group_by: Option<&str>,
        key: Option<&str>,
        today: u32,
    ) -> Result<Self, String> {
        let date = |name: &str, v: &str| {
            parse_date(v).ok_or_else(|| format!("{name} must be a date YYYY-MM-DD, not {v:?}"))
        };
        let to = match to {
            Some(v) => date("to", v)?,
            None => today,
        };
        let from = match from {
            Some(v) => date("from", v)?,
            None => to.saturating_sub(DEFAULT_REPORT_DAYS - 1),
        };
        if from > to {
            return Err("from is after to".into());
        }
        if to - from >= MAX_REPORT_DAYS {
            return Err(format!("a report covers at most {MAX_REPORT_DAYS} days"));
        }
        let group_by = match group_by {
            None => GroupBy::default(),
            Some(v) => GroupBy::parse(v)
                .ok_or_else(|| format!("groupBy must be key, model or day, not {v:?}"))?,
        };
        let key = match key {
            None => None,
            Some(k) if valid_name(k) => Some(k.to_owned()),
            Some(k) => {
                return Err(format!(
                    "key must be a key id, anonymous or operator, not {k:?}"
                ))
            }
        };
        Ok(Self {
            from,
            to,
            group_by,
            key,
            model: None,
        })
    }

    /// Keeps only `model`'s usage (`&model=` of `GET /admin/usage`), so that
    /// a report by day can be drawn per model.
    pub fn with_model(mut self, model: Option<&str>) -> Result<Self, String> {
        self.model = match model {
            None => None,
            Some(m) if valid_name(m) => Some(m.to_owned()),
            Some(m) => return Err(format!("model must be a model name, not {m:?}")),
        };
        Ok(self)
    }
}

/// One group's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Model calls.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micros: u64,
}

impl UsageTotals {
    fn add(&mut self, r: &UsageRecord) {
        self.requests = self.requests.saturating_add(r.requests);
        self.input_tokens = self.input_tokens.saturating_add(r.usage.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.usage.output_tokens);
        self.cost_micros = self.cost_micros.saturating_add(r.cost_micros);
    }
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    /// The group: a key id, a model or a date.
    pub group: String,
    /// Its totals.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// The answer of `GET /admin/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day, `YYYY-MM-DD`.
    pub to: String,
    /// The grouping.
    pub group_by: GroupBy,
    /// One row per group that used anything, ordered by group.
    pub rows: Vec<UsageRow>,
    /// The sum of the rows.
    pub total: UsageTotals,
}

/// The report of `query` over `records` (any order; those outside the range
/// are left out).
pub fn report(query: &UsageQuery, records: &[UsageRecord]) -> UsageReport {
    let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
    let mut total = UsageTotals::default();
    for r in records.iter().filter(|r| {
        (query.from..=query.to).contains(&r.day)
            && query.key.as_ref().is_none_or(|k| *k == r.caller)
            && query.model.as_ref().is_none_or(|m| *m == r.model)
    }) {
        let group = match query.group_by {
            GroupBy::Key => r.caller.clone(),
            GroupBy::Model => r.model.clone(),
            GroupBy::Day => date_string(r.day),
        };
        groups.entry(group).or_default().add(r);
        total.add(r);
    }
    UsageReport {
        from: date_string(query.from),
        to: date_string(query.to),
        group_by: query.group_by,
        rows: groups
            .into_iter()
            .map(|(group, totals)| UsageRow { group, totals })
            .collect(),
        total,
    }
}

/// A usage message to the tenant's ledger (`${tenantId}:limiter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageRequest {
    /// Add these records (at most [`MAX_RECORDS`]).
    Record(Vec<UsageRecord>),
    /// A report.
    Report(UsageQuery),
    /// Tokens and cost over the last hour and day (the metrics' windows).
    Recent,
    /// Add these records (at most [`MAX_RECORDS`]), and pass the sessions'
    /// registry reports (at most [`MAX_SESSION_REPORTS`]) on to the tenant's
    /// coordinator within a second, with those of other turns: one call
    /// for the turns that ended in a second in up to 16 sessions of an
    /// isolate, and one to the coordinator for many such calls. Answered `Recorded` once the records are stored.
    RecordTurns {
        /// The turns' usage.
        records: Vec<UsageRecord>,
        /// The sessions' registry reports.
        sessions: Vec<crate::listing::SessionReport>,
    },
}

/// Most session reports one [`UsageRequest::RecordTurns`] carries.
pub const MAX_SESSION_REPORTS: usize = 16;

/// The ledger's answer to a [`UsageRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageResponse {
    /// Answers `Record`: how many records were added.
    Recorded(u64),
    /// Answers `Report`.
    Report(UsageReport),
    /// Answers `Recent`.
    Recent(crate::metrics::RecentTokens),
}

/// Input tokens of an embedding's text, counted deterministically where the
/// provider reports none (the embedded embedder, Workers AI's embedding
/// models): one token per word piece of at most four characters, the rule of
/// thumb of English BPE vocabularies, and at least one per text.
pub fn embedding_tokens(texts: &[String]) -> u64 {
    texts.iter().map(|t| text_tokens(t)).sum()
}

/// [`embedding_tokens`] of one text, in one pass over its characters.
fn text_tokens(text: &str) -> u64 {
    let (mut pieces, mut run, mut punctuation) = (0u64, 0u64, 0u64);
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += 1;
            continue;
        }
        pieces += run.div_ceil(4);
        run = 0;
        if !c.is_whitespace() {
            punctuation += 1;
        }
    }
    (pieces + run.div_ceil(4) + punctuation).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_tokens_count_word_pieces_and_punctuation() {
        // The rule in two passes, as first written.
        let by_passes = |t: &str| -> u64 {
            let pieces: u64 = t
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(|w| (w.chars().count() as u64).div_ceil(4))
                .sum();
            let punctuation = t
                .chars()
                .filter(|c| !c.is_alphanumeric() && !c.is_whitespace())
                .count() as u64;
            (pieces + punctuation).max(1)
        };
        let texts = [
            "",
            " ",
            "word",
            "words",
            "a bb ccc dddd eeeee",
            "fn main() { println!(\"hi\"); }",
            "trailing punctuation...",
            "所有権とは、Rust の最も特徴的な機能です。",
            "tabs\tand\nnewlines\u{a0}nbsp",
            "x1234567y",
        ];
        for t in texts {
            assert_eq!(text_tokens(t), by_passes(t), "{t:?}");
        }
        assert_eq!(embedding_tokens(&["a bb".into(), "".into()]), 3);
        assert_eq!(text_tokens("abcdefghi, jk"), 5);
    }
    use crate::calendar::parse_date;

    fn record(day: &str, caller: &str, model: &str, input: u64, output: u64) -> UsageRecord {
        UsageRecord::new(
            parse_date(day).unwrap(),
            caller,
            model,
            1,
            TokenUsage {
                input_tokens: input,
                output_tokens: output,
            },
            &PriceTable::workers_ai_defaults(),
        )
    }

    #[test]
    fn a_query_reads_its_dates_and_defaults_to_the_last_30_days() {
        let today = parse_date("2026-11-29").unwrap();
        let q = UsageQuery::parse(None, None, None, None, today).unwrap();
        assert_eq!((q.to, q.to - q.from + 1), (today, 30));
        assert_eq!(q.group_by, GroupBy::Day);
        let q = UsageQuery::parse(
            Some("2026-11-01"),
            Some("2026-11-02"),
            Some("key"),
            Some("0123456789ab"),
            today,
        )
        .unwrap();
        assert_eq!(q.key.as_deref(), Some("0123456789ab"));
        assert_eq!(q.to - q.from, 1);
        assert_eq!(q.group_by, GroupBy::Key);
        for (from, to, by) in [
            (Some("2026-11-03"), Some("2026-11-02"), None),
            (Some("2025-01-01"), Some("2026-11-02"), None),
            (Some("yesterday"), None, None),
            (None, Some("2026-02-30"), None),
            (None, None, Some("week")),
        ] {
            assert!(
                UsageQuery::parse(from, to, by, None, today).is_err(),
                "{from:?} {to:?} {by:?}"
            );
        }
        assert!(UsageQuery::parse(None, None, None, Some("a b"), today).is_err());
    }

    #[test]
    fn reports_group_and_sum_within_the_range() {
        let records = vec![
            record(
                "2026-11-28",
                "k1",
                "@cf/meta/llama-3.1-8b-instruct",
                1_000,
                100,
            ),
            record(
                "2026-11-29",
                "k1",
                "@cf/meta/llama-3.1-8b-instruct",
                2_000,
                200,
            ),
            record("2026-11-29", "k2", "local/extractive", 50, 5),
            record("2026-11-29", ANONYMOUS, "local/hashed-768", 7, 0),
            // Outside the range.
            record("2026-11-27", "k1", "local/extractive", 9_999, 9_999),
        ];
        let q = |by| UsageQuery {
            from: parse_date("2026-11-28").unwrap(),
            to: parse_date("2026-11-29").unwrap(),
            group_by: by,
            key: None,
            model: None,
        };
        let by_key = report(&q(GroupBy::Key), &records);
        let groups: Vec<_> = by_key.rows.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["anonymous", "k1", "k2"]);
        assert_eq!(by_key.rows[1].totals.input_tokens, 3_000);
        assert_eq!(by_key.rows[1].totals.requests, 2);
        // Priced at $0.282/M in and $0.827/M out: 3,000 × 0.282 + 300 × 0.827
        // micro-dollars, rounded up per record.
        assert_eq!(
            by_key.rows[1].totals.cost_micros,
            (1_000 * 282_000 + 100 * 827_000_u64).div_ceil(1_000_000)
                + (2_000 * 282_000 + 200 * 827_000_u64).div_ceil(1_000_000)
        );
        assert_eq!(
            by_key.rows[2].totals.cost_micros, 0,
            "local models are free"
        );
        let by_day = report(&q(GroupBy::Day), &records);
        assert_eq!(by_day.rows[0].group, "2026-11-28");
        assert_eq!(by_day.rows[1].totals.requests, 3);
        let by_model = report(&q(GroupBy::Model), &records);
        assert_eq!(by_model.rows.len(), 3);
        for r in [&by_key, &by_day, &by_model] {
            assert_eq!(r.total.input_tokens, 3_057);
            assert_eq!(r.total.output_tokens, 305);
            let sum: u64 = r.rows.iter().map(|row| row.totals.cost_micros).sum();
            assert_eq!(r.total.cost_micros, sum);
        }
        assert_eq!(by_day.from, "2026-11-28");
        let k1 = report(
            &UsageQuery {
                key: Some("k1".into()),
                ..q(GroupBy::Model)
            },
            &records,
        );
        assert_eq!(k1.rows.len(), 1, "only k1's calls");
        assert_eq!(k1.total.input_tokens, 3_000);
        // One model's days: what a chart per day and model is drawn from.
        let model = q(GroupBy::Day)
            .with_model(Some("@cf/meta/llama-3.1-8b-instruct"))
            .unwrap();
        let llama = report(&model, &records);
        let days: Vec<_> = llama
            .rows
            .iter()
            .map(|r| (r.group.as_str(), r.totals.input_tokens))
            .collect();
        assert_eq!(days, [("2026-11-28", 1_000), ("2026-11-29", 2_000)]);
        assert!(q(GroupBy::Day).with_model(Some("a \"b")).is_err());
        assert_eq!(q(GroupBy::Day).with_model(None).unwrap().model, None);
    }

    #[test]
    fn the_report_serialises_flat_rows() {
        let r = report(
            &UsageQuery {
                model: Default::default(),
                from: 0,
                to: 0,
                group_by: GroupBy::Model,
                key: None,
            },
            &[record("1970-01-01", "k", "m", 3, 4)],
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["groupBy"], "model");
        assert_eq!(v["rows"][0]["group"], "m");
        assert_eq!(v["rows"][0]["inputTokens"], 3);
        assert_eq!(v["total"]["outputTokens"], 4);
    }

    #[test]
    fn embedding_tokens_are_counted_deterministically() {
        let t = |s: &str| embedding_tokens(&[s.to_owned()]);
        assert_eq!(t(""), 1, "at least one");
        assert_eq!(t("the borrow checker"), 1 + 2 + 2);
        assert_eq!(t("Vec<u8>"), 1 + 1 + 2);
        assert_eq!(embedding_tokens(&["a b".into(), "c".into()]), 3);
        assert_eq!(t("héllo"), 2, "characters, not bytes");
    }

    #[test]
    fn records_refuse_names_that_cannot_be_keys() {
        assert!(record("1970-01-01", "k", "m", 0, 0).validate().is_ok());
        assert!(record("1970-01-01", "", "m", 0, 0).validate().is_err());
        assert!(record("1970-01-01", "k", "a b", 0, 0).validate().is_err());
    }
}
