//! Messages of the `IngestQueue` actor (`${tenantId}:ingest`), which owns the
//! tenant's documents: ingestion jobs, the index, deletes and search.
//!
//! Validation of every request lives here too, so the gateway (for early,
//! clear 4xx answers) and the actor (defence in depth) apply the same rules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most documents in one ingest request.
pub const MAX_DOCUMENTS: usize = 100;
/// Longest document id, in bytes.
pub const MAX_DOC_ID_LEN: usize = 128;
/// Largest document text, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Most metadata keys on a document.
pub const MAX_METADATA_KEYS: usize = 32;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Largest metadata of one document, as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Largest search filter, as compact JSON: Vectorize refuses 2 KiB or more,
/// and the platform adds the `tenantId` condition (up to 80 bytes) to it.
pub const MAX_FILTER_BYTES: usize = 1900;
/// Largest whole number a metadata value or filter may hold (either sign):
/// 2^53 - 1, the largest JavaScript (and so Vectorize) holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Longest search query, in characters.
pub const MAX_QUERY_CHARS: usize = 2000;
/// Largest `topK` (Vectorize's limit when metadata is returned).
pub const MAX_TOP_K: u32 = 20;
/// `topK` when a search names none.
pub const DEFAULT_TOP_K: u32 = 5;
/// The relevance floor of a hybrid search when neither the search
/// (`minScore`) nor the tenant (`searchFloor`) sets one (vector and keyword
/// have none: [`ScoreFloor::default_for`]). Chosen from data with the
/// embedded embedder (`local/hashed-768`): on the Rust docs corpus (8,359
/// chunks) it leaves 5 of the held-out set's 6 off-topic questions without a
/// match and none of its 101 on-topic questions (docs/benchmarks.md); on a
/// tenant of a few short technical documents off-topic questions score below
/// it (docs/api.md).
pub const DEFAULT_SEARCH_FLOOR: f64 = 0.35;
/// Metadata keys the platform sets on every chunk; a client may not set them,
/// so that no document can claim another tenant or another document.
pub const RESERVED_METADATA_KEYS: &[&str] = &["text", "tenantId", "docId", "chunk"];

/// A metadata value: a string, a number or a boolean. Written as the bare
/// value (`"a.md"`, `3`, `0.5`, `true`); read by [`MetaValue`]'s own
/// `Deserialize`, which takes the value's type from the format in one step
/// (an untagged enum buffers each value and builds, then drops, an error
/// message for every variant it tries first: most of the cost of reading a
/// chunk's metadata).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A string.
    Str(String),
}

impl<'de> Deserialize<'de> for MetaValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetaValueVisitor)
    }
}

/// Reads a [`MetaValue`] as the untagged enum did (a boolean, else an
/// integer that fits `i64`, else a number, else a string), without trying
/// the variants one by one.
struct MetaValueVisitor;

impl<'de> serde::de::Visitor<'de> for MetaValueVisitor {
    type Value = MetaValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string, a number or a boolean")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<MetaValue, E> {
        Ok(MetaValue::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MetaValue, E> {
        Ok(MetaValue::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MetaValue, E> {
        // Past i64::MAX the untagged enum fell through to the float.
        Ok(i64::try_from(v).map_or(MetaValue::Float(v as f64), MetaValue::Int))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MetaValue, E> {
        Ok(MetaValue::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MetaValue, E> {
        Ok(MetaValue::Str(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<MetaValue, E> {
        Ok(MetaValue::Str(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<MetaValue, E> {
        std::str::from_utf8(v)
            .map(|s| MetaValue::Str(s.to_owned()))
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))
    }
}

/// Metadata of a document or a chunk.
pub type Metadata = BTreeMap<String, MetaValue>;

/// A document to ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The client's id of the document; re-ingesting an id replaces it.
    pub id: String,
    /// The text.
    pub text: String,
    /// Scalar metadata, returned with every match.
    #[serde(default)]
    pub metadata: Metadata,
}

/// A relevance floor in [0, 1]: a search drops the matches scoring below it.
/// Only built by [`ScoreFloor::new`] (decoding too), so never NaN or out of
/// range.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct ScoreFloor(f64);

// Never NaN (see `new`), so equality is an equivalence.
impl Eq for ScoreFloor {}

impl ScoreFloor {
    /// No floor: every match is kept.
    pub const NONE: ScoreFloor = ScoreFloor(0.0);
    /// [`DEFAULT_SEARCH_FLOOR`].
    pub const DEFAULT: ScoreFloor = ScoreFloor(DEFAULT_SEARCH_FLOOR);

    /// The floor a search in `mode` gets when neither it nor the tenant
    /// sets one: [`DEFAULT_SEARCH_FLOOR`] for hybrid, none for vector and
    /// keyword, whose scores alone do not tell an off-topic question from an
    /// on-topic one in the embedded configuration (the quality benchmark:
    /// at 0.35 vector mode loses nearly every answer, keyword mode keeps
    /// every off-topic question).
    pub fn default_for(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Hybrid => Self::DEFAULT,
            SearchMode::Vector | SearchMode::Keyword => Self::NONE,
        }
    }

    /// `value` as a floor, if it is a number in [0, 1].
    pub fn new(value: f64) -> Result<Self, IngestError> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(IngestError::MinScore)
        }
    }

    /// The floor's value.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether a match of `score` stays.
    pub fn keeps(self, score: f64) -> bool {
        score >= self.0
    }
}

impl TryFrom<f64> for ScoreFloor {
    type Error = IngestError;
    fn try_from(value: f64) -> Result<Self, IngestError> {
        Self::new(value)
    }
}

impl From<ScoreFloor> for f64 {
    fn from(floor: ScoreFloor) -> f64 {
        floor.0
    }
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Nearest neighbours of the query's embedding.
    Vector,
    /// Full-text (BM25) over the chunks.
    Keyword,
    /// Both, fused by the weighted mean of their relevances.
    Hybrid,
}

impl SearchMode {
    /// The mode's name on the wire and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Vector => "vector",
            SearchMode::Keyword => "keyword",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

/// How a search's matches are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchGroup {
    /// One match per document, its best chunk, the match's `id` the
    /// document's id: the default, the seed's shape (it stored one vector
    /// per document, so its ids were document ids).
    #[default]
    Document,
    /// Every chunk on its own, the match's `id` the chunk's vector id.
    Chunk,
}

impl SearchGroup {
    /// The grouping's name on the wire and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchGroup::Document => "document",
            SearchGroup::Chunk => "chunk",
        }
    }

    /// The grouping named `name` (`document`, `chunk`).
    pub fn parse(name: &str) -> Result<Self, IngestError> {
        match name {
            "document" => Ok(SearchGroup::Document),
            "chunk" => Ok(SearchGroup::Chunk),
            _ => Err(IngestError::Group),
        }
    }
}

/// A request to the ingest queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IngestRequest {
    /// Store documents durably and queue them for indexing.
    Enqueue(Enqueue),
    /// Status of a job.
    GetJob(GetJob),
    /// Remove a document and its chunks.
    DeleteDocument(DeleteDocument),
    /// Search the tenant's documents.
    Search(Search),
    /// An operator's look at the queue.
    Inspect(Inspect),
    /// Make the next embedder calls fail (only where the deployment allows it).
    InjectFaults(InjectFaults),
    /// Embed texts with the tenant's embedding model (`POST /v1/embeddings`);
    /// nothing is stored.
    Embed(Embed),
    /// A page of the tenant's indexed documents.
    ListDocuments(crate::listing::ListDocuments),
    /// Writer → search replica: changes of the index, in order.
    Replicate(crate::replica::ReplicateBatch),
    /// Search replica → writer: a page of the whole index, to copy it.
    ExportChunks(crate::replica::ExportChunks),
}

/// Most texts in one [`Embed`].
pub const MAX_EMBED_TEXTS: usize = 256;
/// Longest text of an [`Embed`], in characters.
pub const MAX_EMBED_CHARS: usize = 8_000;

/// Payload of [`IngestRequest::Embed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Embed {
    /// 1 to [`MAX_EMBED_TEXTS`] texts, each 1 to [`MAX_EMBED_CHARS`] characters.
    pub texts: Vec<String>,
    /// Whom the embeddings are charged to (as in [`Enqueue`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl Embed {
    /// Checks the bounds; the message says which.
    pub fn validate(&self) -> Result<(), String> {
        if self.texts.is_empty() || self.texts.len() > MAX_EMBED_TEXTS {
            return Err(format!("input must hold 1 to {MAX_EMBED_TEXTS} texts"));
        }
        if let Some(i) = self
            .texts
            .iter()
            .position(|t| t.is_empty() || t.chars().count() > MAX_EMBED_CHARS)
        {
            return Err(format!(
                "input[{i}] must be 1 to {MAX_EMBED_CHARS} characters"
            ));
        }
        Ok(())
    }
}

/// Answers [`IngestRequest::Embed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    /// The model that embedded them.
    pub model: String,
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// The tokens charged for them.
    pub tokens: u64,
}

/// Payload of [`IngestRequest::Enqueue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enqueue {
    /// The documents, 1 to [`MAX_DOCUMENTS`].
    pub documents: Vec<Document>,
    /// Whom the embeddings are charged to in the usage records (a key id,
    /// [`crate::usage::ANONYMOUS`] or [`crate::usage::OPERATOR`]); set by
    /// the gateway, never by a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// Payload of [`IngestRequest::GetJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetJob {
    /// The job id returned by `Enqueue`.
    pub job_id: String,
}

/// Payload of [`IngestRequest::DeleteDocument`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteDocument {
    /// The document id.
    pub doc_id: String,
}

/// Payload of [`IngestRequest::Search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// The query text.
    pub query: String,
    /// How many matches, 1 to [`MAX_TOP_K`].
    pub top_k: u32,
    /// Metadata equality filter: every entry must match.
    #[serde(default)]
    pub filter: Metadata,
    /// The mode; `None` is the backend's best (hybrid where it can).
    pub mode: Option<SearchMode>,
    /// Matches scoring below this are dropped (after ranking); `None`: the
    /// tenant's `searchFloor`, which is what the chat tool gets too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<ScoreFloor>,
    /// Per document (the default, also for senders that know no grouping)
    /// or per chunk.
    #[serde(default)]
    pub group: SearchGroup,
    /// Whom the query's embedding is charged to (as in [`Enqueue`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// Payload of [`IngestRequest::Inspect`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {}

/// Payload of [`IngestRequest::InjectFaults`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectFaults {
    /// How many of the next embedder calls fail.
    pub embed_failures: u32,
}

/// A reply of the ingest queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IngestResponse {
    /// Answers `Enqueue`: the documents are stored and queued.
    Accepted(JobAccepted),
    /// Answers `GetJob`.
    Job(JobView),
    /// Answers `DeleteDocument`.
    Deleted(DocumentDeleted),
    /// Answers `Search`.
    Results(SearchResults),
    /// Answers `Inspect`.
    Snapshot(IngestSnapshot),
    /// Answers `InjectFaults`.
    FaultsInjected(InjectFaults),
    /// Answers `Embed`.
    Embeddings(Embeddings),
    /// Answers `ListDocuments`.
    Documents(crate::listing::DocumentPage),
    /// Answers `Replicate`.
    Replicated(crate::replica::Replicated),
    /// Answers `ExportChunks`.
    Chunks(crate::replica::ChunkPage),
    /// Answers `Inspect` at a search replica.
    Replica(crate::replica::ReplicaView),
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Stored, not started.
    Queued,
    /// Some documents indexed.
    Running,
    /// The last attempt failed; another is scheduled.
    Retrying,
    /// Every document indexed.
    Done,
    /// Gave up after too many failed attempts; the last error says why. The
    /// documents it had not indexed keep their previous version, and its
    /// stored copies are dropped, so none of them stays busy.
    Failed,
}

/// The answer to an accepted ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    /// The job's id.
    pub job_id: String,
    /// Documents accepted.
    pub count: u32,
    /// `queued`, or `done` when the job finished before the answer.
    pub status: JobStatus,
}

/// A job's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// Where it is.
    pub status: JobStatus,
    /// Documents in the job.
    pub documents_total: u32,
    /// Documents indexed.
    pub documents_done: u32,
    /// Chunks written so far.
    pub chunks_done: u32,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the job was accepted (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
    /// When the next attempt is due, if one is scheduled.
    pub next_attempt_at_ms: Option<u64>,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentDeleted {
    /// The document id.
    pub doc_id: String,
    /// Chunks removed from the index.
    pub chunks_removed: u32,
}

/// Search results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResults {
    /// Whether the answer came from the KV cache.
    pub cached: bool,
    /// The mode used.
    pub mode: SearchMode,
    /// The tenant's index version the answer reflects.
    pub index_version: u64,
    /// The floor applied: the request's `minScore`, else the tenant's
    /// `searchFloor` (0 in answers cached before floors existed).
    #[serde(default)]
    pub min_score: f64,
    /// Best first; none scoring below `min_score`. Empty when nothing in
    /// the tenant's documents is relevant enough.
    pub matches: Vec<SearchMatch>,
}

/// One search match: a document and its best chunk (grouped by document,
/// the default), or a chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchMatch {
    /// The document's id (grouped by document), or the chunk's vector id
    /// (grouped by chunk).
    pub id: String,
    /// Relevance in [0, 1], higher is better, the match's rank follows it
    /// (unless a reranker reordered the matches): vector mode the cosine
    /// similarity clamped to [0, 1]; keyword mode the BM25 normalised to
    /// [0, 1); hybrid the weighted mean of the two; in every mode × 0.8 for
    /// a passage in another writing system than the query (see
    /// docs/api.md).
    pub score: f64,
    /// Hybrid only: the vector leg's relevance, absent when that leg did
    /// not find the chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_score: Option<f64>,
    /// Hybrid only: the keyword leg's relevance, absent when that leg did
    /// not find the chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_score: Option<f64>,
    /// With a reranker (deployments that set `RERANK_MODEL`): its score for
    /// the match; the answer is in the reranker's order, and `score` stays
    /// retrieval's relevance (the floor applies to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank_score: Option<f64>,
    /// The document's id.
    #[serde(default)]
    pub doc_id: String,
    /// The chunk's vector id (grouped by document: the best chunk's).
    #[serde(default)]
    pub chunk_id: String,
    /// The chunk's position in its document, from 0.
    #[serde(default)]
    pub chunk: u32,
    /// The chunk's text.
    #[serde(default)]
    pub text: String,
    /// `text`, `tenantId`, `docId`, `chunk`, and the document's own metadata
    /// (the seed's `metadata`).
    pub metadata: Metadata,
}

impl SearchMatch {
    /// The match for a chunk of vector id `chunk_id`, scored `score`, with
    /// its `metadata` (where the platform keeps `docId`, `chunk` and
    /// `text`), grouped by `group`: `id` is the document's id or the
    /// chunk's. A chunk without a `docId` (never written by this platform)
    /// stands for itself.
    pub fn new(chunk_id: String, score: f64, metadata: Metadata, group: SearchGroup) -> Self {
        let doc_id = match metadata.get("docId") {
            Some(MetaValue::Str(doc)) => doc.clone(),
            _ => String::new(),
        };
        let chunk = match metadata.get("chunk") {
            Some(MetaValue::Int(n)) => u32::try_from(*n).unwrap_or(0),
            // Vectorize may hand integers back as floats.
            Some(MetaValue::Float(f))
                if f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX) =>
            {
                *f as u32
            }
            _ => 0,
        };
        let text = match metadata.get("text") {
            Some(MetaValue::Str(t)) => t.clone(),
            _ => String::new(),
        };
        let id = match group {
            SearchGroup::Document if !doc_id.is_empty() => doc_id.clone(),
            _ => chunk_id.clone(),
        };
        Self {
            id,
            score,
            vector_score: None,
            keyword_score: None,
            rerank_score: None,
            doc_id,
            chunk_id,
            chunk,
            text,
            metadata,
        }
    }
}

/// An operator's view of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestSnapshot {
    /// The number of the index's last change (grows with every document
    /// indexed, replaced or deleted): the `indexVersion` searches answer
    /// with, part of every cache key.
    pub index_version: u64,
    /// Documents in the index.
    pub documents: u64,
    /// Chunks in the index.
    pub chunks: u64,
    /// Jobs not yet done, oldest first.
    pub pending_jobs: Vec<JobView>,
    /// The most recently finished jobs.
    pub recent_jobs: Vec<JobView>,
    /// The embedding model (`local/hashed-768` for the embedded one).
    pub embedder: String,
    /// The vector backend (`embedded-sqlite` or `vectorize`).
    pub vector_backend: String,
    /// Embedder failures still to inject (tests only).
    pub pending_faults: u32,
    /// Search replicas and what the writer answered itself.
    #[serde(default)]
    pub replication: crate::replica::Replication,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// `documents` is empty.
    #[error("documents must hold at least one document")]
    NoDocuments,
    /// More than [`MAX_DOCUMENTS`].
    #[error("documents holds {0} documents; at most {MAX_DOCUMENTS} per request")]
    TooManyDocuments(usize),
    /// A document id is not acceptable.
    #[error("documents[{index}].id must be 1 to {MAX_DOC_ID_LEN} characters of A-Z a-z 0-9 . _ -")]
    DocId {
        /// Position in the request.
        index: usize,
    },
    /// Two documents of one request share an id.
    #[error("documents[{index}].id {id:?} appears twice in the request")]
    DuplicateId {
        /// Position of the second one.
        index: usize,
        /// The id.
        id: String,
    },
    /// A text is empty or only whitespace.
    #[error("documents[{index}].text must not be empty")]
    EmptyText {
        /// Position in the request.
        index: usize,
    },
    /// A text is too large.
    #[error("documents[{index}].text is larger than {MAX_TEXT_BYTES} bytes")]
    TextTooLarge {
        /// Position in the request.
        index: usize,
    },
    /// Metadata is not acceptable.
    #[error("documents[{index}].metadata: {reason}")]
    Metadata {
        /// Position in the request.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A search query is empty or too long.
    #[error("query must be 1 to {MAX_QUERY_CHARS} characters")]
    Query,
    /// `topK` out of range.
    #[error("topK must be between 1 and {MAX_TOP_K}")]
    TopK,
    /// The filter is not acceptable.
    #[error("filter: {0}")]
    Filter(String),
    /// `minScore` (or `searchFloor`) is not a number from 0 to 1.
    #[error("minScore must be a number from 0 to 1")]
    MinScore,
    /// `group` names no grouping.
    #[error("group must be \"document\" (the default) or \"chunk\"")]
    Group,
}

/// Checks a document id (also used for `DELETE /api/documents/<id>`). An
/// id of dots alone (`.`, `..`) is refused: a URL's path drops or resolves
/// such a segment before any server sees it, so the document could never
/// be deleted.
pub fn valid_doc_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOC_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.bytes().all(|b| b == b'.')
}

fn check_metadata(metadata: &Metadata, allow_reserved: bool) -> Result<(), String> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(format!("at most {MAX_METADATA_KEYS} keys"));
    }
    for (key, value) in metadata {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_METADATA_KEY_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !key_ok {
            // No '.': Vectorize reads it as a path into nested metadata.
            return Err(format!(
                "key {key:?} must be 1 to {MAX_METADATA_KEY_LEN} characters of A-Z a-z 0-9 _ -"
            ));
        }
        if !allow_reserved && RESERVED_METADATA_KEYS.contains(&key.as_str()) {
            return Err(format!("key {key:?} is set by the platform"));
        }
        match value {
            MetaValue::Float(f) if !f.is_finite() => {
                return Err(format!("value of {key:?} must be a finite number"));
            }
            MetaValue::Int(i) if i.unsigned_abs() > MAX_SAFE_INTEGER => {
                return Err(format!(
                    "value of {key:?} must be a whole number from -{MAX_SAFE_INTEGER} to {MAX_SAFE_INTEGER} (what JavaScript, and so Vectorize, holds exactly)"
                ));
            }
            _ => {}
        }
    }
    let size = serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(format!("at most {MAX_METADATA_BYTES} bytes as JSON"));
    }
    Ok(())
}

impl Enqueue {
    /// Checks every document.
    pub fn validate(&self) -> Result<(), IngestError> {
        if self.documents.is_empty() {
            return Err(IngestError::NoDocuments);
        }
        if self.documents.len() > MAX_DOCUMENTS {
            return Err(IngestError::TooManyDocuments(self.documents.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, doc) in self.documents.iter().enumerate() {
            if !valid_doc_id(&doc.id) {
                return Err(IngestError::DocId { index });
            }
            if !seen.insert(doc.id.as_str()) {
                return Err(IngestError::DuplicateId {
                    index,
                    id: doc.id.clone(),
                });
            }
            if doc.text.trim().is_empty() {
                return Err(IngestError::EmptyText { index });
            }
            if doc.text.len() > MAX_TEXT_BYTES {
                return Err(IngestError::TextTooLarge { index });
            }
            check_metadata(&doc.metadata, false)
                .map_err(|reason| IngestError::Metadata { index, reason })?;
        }
        Ok(())
    }
}

impl Search {
    /// Checks the query, `topK` and filter.
    pub fn validate(&self) -> Result<(), IngestError> {
        let chars = self.query.trim().chars().count();
        if chars == 0 || chars > MAX_QUERY_CHARS {
            return Err(IngestError::Query);
        }
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return Err(IngestError::TopK);
        }
        check_metadata(&self.filter, true).map_err(IngestError::Filter)?;
        let size = serde_json::to_vec(&self.filter)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_FILTER_BYTES {
            return Err(IngestError::Filter(format!(
                "at most {MAX_FILTER_BYTES} bytes as JSON"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
            metadata: Metadata::new(),
        }
    }

    #[test]
    fn enqueue_validation() {
        let ok = Enqueue {
            caller: None,
            documents: vec![doc("a-1.md", "hello"), doc("...a", "dots and more")],
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (vec![], IngestError::NoDocuments),
            (vec![doc("a", "x"); 101], IngestError::TooManyDocuments(101)),
            (vec![doc("", "x")], IngestError::DocId { index: 0 }),
            (
                vec![doc("a", "x"), doc("a/b", "x")],
                IngestError::DocId { index: 1 },
            ),
            (
                vec![doc(&"a".repeat(129), "x")],
                IngestError::DocId { index: 0 },
            ),
            // A URL cannot name these: they could never be deleted.
            (vec![doc("..", "x")], IngestError::DocId { index: 0 }),
            (
                vec![doc("a", "x"), doc(".", "x")],
                IngestError::DocId { index: 1 },
            ),
            (
                vec![doc("a", "x"), doc("a", "y")],
                IngestError::DuplicateId {
                    index: 1,
                    id: "a".into(),
                },
            ),
            (vec![doc("a", "  \n ")], IngestError::EmptyText { index: 0 }),
            (
                vec![doc("a", &"x".repeat(MAX_TEXT_BYTES + 1))],
                IngestError::TextTooLarge { index: 0 },
            ),
        ];
        for (documents, want) in cases {
            assert_eq!(
                Enqueue {
                    caller: None,
                    documents
                }
                .validate(),
                Err(want)
            );
        }
    }

    #[test]
    fn metadata_rules() {
        let with = |k: &str, v: MetaValue| {
            let mut d = doc("a", "x");
            d.metadata.insert(k.into(), v);
            Enqueue {
                caller: None,
                documents: vec![d],
            }
            .validate()
        };
        assert_eq!(with("source", MetaValue::Str("a.md".into())), Ok(()));
        assert_eq!(with("page", MetaValue::Int(3)), Ok(()));
        // Whole numbers JavaScript (and so Vectorize) holds exactly.
        let max = MAX_SAFE_INTEGER as i64;
        for ok in [max, -max, 0] {
            assert_eq!(with("n", MetaValue::Int(ok)), Ok(()), "{ok}");
        }
        for big in [max + 1, -max - 1, i64::MAX, i64::MIN] {
            assert!(with("n", MetaValue::Int(big)).is_err(), "{big}");
        }
        assert_eq!(with("f", MetaValue::Float(1e300)), Ok(()));
        for reserved in RESERVED_METADATA_KEYS {
            assert!(
                with(reserved, MetaValue::Str("x".into())).is_err(),
                "{reserved}"
            );
        }
        assert!(with("bad key", MetaValue::Bool(true)).is_err());
        assert!(
            with("a.b", MetaValue::Bool(true)).is_err(),
            "dots are paths to Vectorize"
        );
        assert!(with("big", MetaValue::Str("x".repeat(5000))).is_err());
        assert!(with("nan", MetaValue::Float(f64::NAN)).is_err());
    }

    #[test]
    fn metadata_values_parse_from_json() {
        let m: Metadata = serde_json::from_str(r#"{"a":"s","b":2,"c":2.5,"d":true}"#).unwrap();
        assert_eq!(m["a"], MetaValue::Str("s".into()));
        assert_eq!(m["b"], MetaValue::Int(2));
        assert_eq!(m["c"], MetaValue::Float(2.5));
        assert_eq!(m["d"], MetaValue::Bool(true));
        assert!(serde_json::from_str::<Metadata>(r#"{"a":{"nested":1}}"#).is_err());
        assert!(serde_json::from_str::<Metadata>(r#"{"a":null}"#).is_err());
        assert!(serde_json::from_str::<Metadata>(r#"{"a":[1]}"#).is_err());
    }

    #[test]
    fn metadata_values_read_as_the_untagged_enum_read_them() {
        // The enum as it was derived before it had its own reader.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            Bool(bool),
            Int(i64),
            Float(f64),
            Str(String),
        }
        fn same(v: &Untagged, m: &MetaValue) -> bool {
            match (v, m) {
                (Untagged::Bool(a), MetaValue::Bool(b)) => a == b,
                (Untagged::Int(a), MetaValue::Int(b)) => a == b,
                (Untagged::Float(a), MetaValue::Float(b)) => a.to_bits() == b.to_bits(),
                (Untagged::Str(a), MetaValue::Str(b)) => a == b,
                _ => false,
            }
        }
        let json = [
            r#""s""#,
            r#""""#,
            r#""ünïcødé 所有権""#,
            "2",
            "-2",
            "0",
            "2.5",
            "-0.0",
            "-0",
            "1.0",
            "1e300",
            "true",
            "false",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775808",
        ];
        for text in json {
            let old: Untagged = serde_json::from_str(text).unwrap();
            let new: MetaValue = serde_json::from_str(text).unwrap();
            assert!(same(&old, &new), "{text}: {old:?} against {new:?}");
            // The same value through MessagePack, as actors send it.
            let packed =
                rmp_serde::to_vec_named(&serde_json::from_str::<serde_json::Value>(text).unwrap())
                    .unwrap();
            let old: Untagged = crate::msgpack::from_slice(&packed).unwrap();
            let new: MetaValue = crate::msgpack::from_slice(&packed).unwrap();
            assert!(same(&old, &new), "{text} packed: {old:?} against {new:?}");
        }
        for bad in ["null", "[1]", r#"{"a":1}"#] {
            assert!(serde_json::from_str::<Untagged>(bad).is_err());
            let e = serde_json::from_str::<MetaValue>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("a string, a number or a boolean"), "{bad}: {e}");
        }
        // A MessagePack f32 is widened to a float, as before.
        let f32_packed = rmp_serde::to_vec(&1.5f32).unwrap();
        let old: Untagged = crate::msgpack::from_slice(&f32_packed).unwrap();
        let new: MetaValue = crate::msgpack::from_slice(&f32_packed).unwrap();
        assert!(same(&old, &new), "f32: {old:?} against {new:?}");
        assert_eq!(new, MetaValue::Float(1.5));
        // A MessagePack byte string of UTF-8 is a string, as before; other bytes are refused.
        let bin = rmp_serde::to_vec(&serde_bytes_like(b"a.md")).unwrap();
        assert_eq!(
            crate::msgpack::from_slice::<MetaValue>(&bin).unwrap(),
            MetaValue::Str("a.md".into())
        );
        assert!(
            matches!(crate::msgpack::from_slice::<Untagged>(&bin).unwrap(), Untagged::Str(s) if s == "a.md")
        );
        let bad = rmp_serde::to_vec(&serde_bytes_like(&[0xff, 0xfe])).unwrap();
        assert!(crate::msgpack::from_slice::<MetaValue>(&bad).is_err());
        // Round trip: written as the bare value.
        for v in [
            MetaValue::Str("x".into()),
            MetaValue::Int(-3),
            MetaValue::Float(0.25),
            MetaValue::Bool(true),
        ] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(
                serde_json::from_str::<MetaValue>(&text).unwrap(),
                v,
                "{text}"
            );
            let packed = rmp_serde::to_vec_named(&v).unwrap();
            assert_eq!(crate::msgpack::from_slice::<MetaValue>(&packed).unwrap(), v);
        }
    }

    /// Serializes as a MessagePack byte string (`bin`).
    fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + '_ {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        Bytes(bytes)
    }

    #[test]
    fn search_validation() {
        let s = |q: &str, k: u32| Search {
            caller: None,
            query: q.into(),
            top_k: k,
            filter: Metadata::new(),
            mode: None,
            min_score: None,
            group: SearchGroup::Document,
        };
        assert_eq!(s("hello", 5).validate(), Ok(()));
        assert_eq!(s("  ", 5).validate(), Err(IngestError::Query));
        assert_eq!(s(&"q".repeat(2001), 5).validate(), Err(IngestError::Query));
        assert_eq!(s("q", 0).validate(), Err(IngestError::TopK));
        assert_eq!(s("q", 21).validate(), Err(IngestError::TopK));
        let mut f = s("q", 1);
        f.filter.insert("docId".into(), MetaValue::Str("x".into()));
        assert_eq!(f.validate(), Ok(()), "filters may name platform keys");
        for i in 0..30 {
            f.filter
                .insert(format!("k{i}"), MetaValue::Str("v".repeat(60)));
        }
        assert!(
            matches!(f.validate(), Err(IngestError::Filter(_))),
            "over {MAX_FILTER_BYTES} bytes"
        );
        let mut big = s("q", 1);
        big.filter
            .insert("n".into(), MetaValue::Int(MAX_SAFE_INTEGER as i64 + 2));
        assert!(matches!(big.validate(), Err(IngestError::Filter(_))));
    }

    #[test]
    fn the_largest_filter_with_the_tenant_condition_stays_under_vectorizes_2_kib() {
        // One long value fills the bound; the platform then adds the
        // tenant's condition, with the longest tenant id.
        let mut filter = Metadata::new();
        filter.insert("k".into(), MetaValue::Str(String::new()));
        let overhead = serde_json::to_vec(&filter).unwrap().len();
        filter.insert(
            "k".into(),
            MetaValue::Str("v".repeat(MAX_FILTER_BYTES - overhead)),
        );
        assert_eq!(serde_json::to_vec(&filter).unwrap().len(), MAX_FILTER_BYTES);
        filter.insert(
            "tenantId".into(),
            MetaValue::Str("t".repeat(crate::ids::MAX_TENANT_ID_LEN)),
        );
        assert!(serde_json::to_vec(&filter).unwrap().len() < 2048);
    }

    #[test]
    fn matches_name_their_document_or_their_chunk() {
        let metadata = Metadata::from([
            ("docId".to_owned(), MetaValue::Str("doc-a".into())),
            ("chunk".to_owned(), MetaValue::Int(3)),
            (
                "text".to_owned(),
                MetaValue::Str("Closures capture.".into()),
            ),
            ("tenantId".to_owned(), MetaValue::Str("acme".into())),
            ("source".to_owned(), MetaValue::Str("a.md".into())),
        ]);
        let by_doc = SearchMatch::new("62a0".into(), 0.5, metadata.clone(), SearchGroup::Document);
        assert_eq!(
            serde_json::to_value(&by_doc).unwrap(),
            serde_json::json!({"id":"doc-a","score":0.5,"docId":"doc-a","chunkId":"62a0","chunk":3,
                "text":"Closures capture.","metadata":{"docId":"doc-a","chunk":3,
                "text":"Closures capture.","tenantId":"acme","source":"a.md"}}),
            "the seed's id (the document) and metadata, with the best chunk beside"
        );
        let by_chunk = SearchMatch::new("62a0".into(), 0.5, metadata.clone(), SearchGroup::Chunk);
        assert_eq!(by_chunk.id, "62a0");
        assert_eq!(
            (
                by_chunk.doc_id.as_str(),
                by_chunk.chunk_id.as_str(),
                by_chunk.chunk
            ),
            ("doc-a", "62a0", 3)
        );
        // Vectorize may answer a whole number as a float.
        let mut float = metadata;
        float.insert("chunk".into(), MetaValue::Float(7.0));
        assert_eq!(
            SearchMatch::new("x".into(), 0.1, float, SearchGroup::Document).chunk,
            7
        );
        // A chunk without a document stands for itself.
        let alone = SearchMatch::new("x".into(), 0.1, Metadata::new(), SearchGroup::Document);
        assert_eq!((alone.id.as_str(), alone.doc_id.as_str()), ("x", ""));
    }

    #[test]
    fn groupings_by_name() {
        for group in [SearchGroup::Document, SearchGroup::Chunk] {
            assert_eq!(SearchGroup::parse(group.as_str()), Ok(group));
            assert_eq!(
                serde_json::to_value(group).unwrap(),
                serde_json::json!(group.as_str())
            );
        }
        assert_eq!(SearchGroup::default(), SearchGroup::Document);
        for bad in ["", "documents", "Chunk", "page"] {
            assert_eq!(SearchGroup::parse(bad), Err(IngestError::Group), "{bad}");
        }
    }

    #[test]
    fn score_floors_are_numbers_from_0_to_1() {
        for ok in [0.0, 0.35, 1.0] {
            assert_eq!(ScoreFloor::new(ok).map(ScoreFloor::get), Ok(ok));
        }
        for bad in [-0.01, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(ScoreFloor::new(bad), Err(IngestError::MinScore), "{bad}");
        }
        assert_eq!(ScoreFloor::DEFAULT.get(), DEFAULT_SEARCH_FLOOR);
        assert_eq!(
            ScoreFloor::default_for(SearchMode::Hybrid),
            ScoreFloor::DEFAULT
        );
        assert_eq!(
            ScoreFloor::default_for(SearchMode::Vector),
            ScoreFloor::NONE
        );
        assert_eq!(
            ScoreFloor::default_for(SearchMode::Keyword),
            ScoreFloor::NONE
        );
        let floor = ScoreFloor::new(0.5).unwrap();
        assert!(floor.keeps(0.5) && floor.keeps(0.9) && !floor.keeps(0.49));
        assert!(ScoreFloor::NONE.keeps(0.0));
        // Decoding validates too: a forged floor is refused.
        assert_eq!(
            serde_json::from_str::<ScoreFloor>("0.25").unwrap().get(),
            0.25
        );
        assert!(serde_json::from_str::<ScoreFloor>("1.5").is_err());
        let bytes = rmp_serde::to_vec_named(&2.0f64).unwrap();
        assert!(crate::msgpack::from_slice::<ScoreFloor>(&bytes).is_err());
    }

    #[test]
    fn search_messages_round_trip_and_old_ones_still_decode() {
        let search = Search {
            caller: None,
            query: "q".into(),
            top_k: 3,
            filter: Metadata::new(),
            mode: Some(SearchMode::Hybrid),
            min_score: Some(ScoreFloor::new(0.2).unwrap()),
            group: SearchGroup::Chunk,
        };
        let bytes = rmp_serde::to_vec_named(&search).unwrap();
        assert_eq!(
            crate::msgpack::from_slice::<Search>(&bytes).unwrap(),
            search
        );
        // A search of a sender that knows no floor: the tenant's floor.
        #[derive(Serialize)]
        struct OldSearch {
            query: String,
            top_k: u32,
            mode: Option<SearchMode>,
        }
        let old = OldSearch {
            query: "q".into(),
            top_k: 3,
            mode: None,
        };
        let decoded: Search =
            crate::msgpack::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(decoded.min_score, None);
        assert_eq!(
            decoded.group,
            SearchGroup::Document,
            "a sender that knows no grouping gets the default"
        );
        // Leg scores appear in JSON only where present; an answer cached
        // before scores had legs (or a floor) still decodes.
        let m = SearchMatch {
            vector_score: Some(0.4),
            ..SearchMatch::new("c".into(), 0.5, Metadata::new(), SearchGroup::Chunk)
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"c","score":0.5,"vectorScore":0.4,"docId":"","chunkId":"c",
                               "chunk":0,"text":"","metadata":{}})
        );
        let old: SearchResults = serde_json::from_str(
            r#"{"cached":false,"mode":"hybrid","indexVersion":3,"matches":[{"id":"c","score":0.03,"metadata":{}}]}"#,
        )
        .unwrap();
        assert_eq!(old.min_score, 0.0);
        assert_eq!(old.matches[0].vector_score, None);
    }
}
