//! Search replicas: the messages between a tenant's `IngestQueue` (the one
//! writer of its index) and its `SearchReplica` objects
//! (`${tenantId}:search-<k>`), which answer its searches.
//!
//! The writer numbers every change of its index (`seq`, 1, 2, 3, … with no
//! gap) and sends them, in batches, to every replica before it reports the
//! work done; a replica applies a change only on top of the one before it, and
//! otherwise copies the whole index again from the writer, one
//! [`ChunkPage`] at a time.

use crate::ingest::Metadata;
use serde::{Deserialize, Serialize};

/// Most chunks in one [`ChunkPage`]: at 768 dimensions (3 KiB a vector),
/// with a chunk's text and its document's metadata (at most 4 KiB), at most
/// about 4 MB of MessagePack, inside [`crate::MAX_MESSAGE_BYTES`].
pub const MAX_PAGE_CHUNKS: u32 = 256;

/// Most replicas a deployment may run per tenant (`SEARCH_REPLICAS`).
pub const MAX_REPLICAS: u32 = 16;

/// One chunk of the index as the writer holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The chunk's vector id.
    pub id: String,
    /// Its embedding; empty where the vectors live in Vectorize. Sent as
    /// one MessagePack `bin` of little-endian `f32`s ([`vector_bytes`]),
    /// not an array of floats: a chunk's 768 values are one copy each way
    /// instead of 768 encoded numbers.
    #[serde(with = "vector_bytes")]
    pub values: Vec<f32>,
    /// Its metadata, `text` and `title` included.
    pub metadata: Metadata,
}

/// One change of the writer's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicaChange {
    /// Chunks written (new or replaced).
    Upsert(Vec<ChunkRecord>),
    /// Chunks removed, by id.
    Delete(Vec<String>),
}

impl ReplicaChange {
    /// The chunks (or ids) it carries, counting an empty change as one:
    /// what bounds how many are kept and sent together.
    pub fn records(&self) -> usize {
        match self {
            ReplicaChange::Upsert(chunks) => chunks.len(),
            ReplicaChange::Delete(ids) => ids.len(),
        }
        .max(1)
    }
}

/// Writer → replica: change number `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    /// The change's number; the one before it is `seq - 1`.
    pub seq: u64,
    /// The change.
    pub change: ReplicaChange,
}

/// Writer → replica: changes in number order, sent together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicateBatch {
    /// The changes, numbers rising by one.
    pub changes: Vec<Replicate>,
    /// The replica has left the deployment's set (`SEARCH_REPLICAS` was
    /// lowered) and will get no more changes: it drops its copy's number,
    /// so it copies the index again if it is ever used again.
    #[serde(default)]
    pub forget: bool,
}

/// Answers [`ReplicateBatch`]: where the replica stands after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replicated {
    /// The last change the replica holds; `None` while it has no copy of
    /// the index it can answer from (it is copying one, or will on its
    /// next search).
    pub seq: Option<u64>,
}

/// Replica → writer: the chunks after row `after`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportChunks {
    /// The row id after which to start (0 for the first page).
    pub after: i64,
    /// 1 to [`MAX_PAGE_CHUNKS`].
    pub limit: u32,
}

/// Answers [`ExportChunks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPage {
    /// The writer's last change when the page was read.
    pub seq: u64,
    /// The chunks, in row order.
    pub records: Vec<ChunkRecord>,
    /// The row id to ask after for the next page; `None` on the last one.
    pub next: Option<i64>,
}

/// An operator's view of one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    /// The last change it holds; `None` while it holds no usable copy.
    pub seq: Option<u64>,
    /// Chunks it holds.
    pub chunks: u64,
    /// Searches it answered since it last woke.
    pub searches: u64,
    /// Whole copies of the index it took from the writer since it last woke.
    pub copies: u64,
    /// Changes it applied since it last woke.
    pub applied: u64,
}

/// The writer's side of replication, in its [`crate::ingest::IngestSnapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    /// Replicas every change is sent to (`SEARCH_REPLICAS`; 0: the writer
    /// answers searches itself).
    pub replicas: u32,
    /// The writer's last change.
    pub seq: u64,
    /// Searches the writer itself answered since it last woke (none while
    /// replicas serve them).
    pub searches: u64,
    /// Pages of its index it exported to replicas since it last woke.
    pub pages_exported: u64,
    /// Batches of changes it sent to the replicas since it last woke.
    pub batches_sent: u64,
}

/// A vector as one byte string of little-endian `f32`s. Reads the byte
/// string, or an array of numbers (how a vector was sent before).
pub mod vector_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Writes `values` as one byte string (as an array of numbers in a
    /// human-readable format such as JSON, whose byte strings are arrays).
    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.collect_seq(values);
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        serializer.serialize_bytes(&bytes)
    }

    /// Reads a byte string whose length is a multiple of 4, or an array of
    /// numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        deserializer.deserialize_any(Values)
    }

    struct Values;

    impl<'de> Visitor<'de> for Values {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string of little-endian f32s, or an array of numbers")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<f32>, E> {
            if !bytes.len().is_multiple_of(4) {
                return Err(E::invalid_length(bytes.len(), &self));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(v) = seq.next_element::<f32>()? {
                values.push(v);
            }
            Ok(values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(values: Vec<f32>) -> ChunkRecord {
        ChunkRecord {
            id: "c1".into(),
            values,
            metadata: Metadata::new(),
        }
    }

    #[test]
    fn a_vector_is_sent_as_one_byte_string_of_its_floats() {
        let values: Vec<f32> = (0..768).map(|i| i as f32 / 7.0 - 50.0).collect();
        let bytes = rmp_serde::to_vec_named(&record(values.clone())).unwrap();
        // `bin 16` (0xc5), its length, then the floats as they are.
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let at = bytes
            .windows(raw.len())
            .position(|w| w == raw.as_slice())
            .expect("the floats' bytes, in one piece");
        assert_eq!(&bytes[at - 3..at], &[0xc5, 0x0c, 0x00]);
        let back: ChunkRecord = crate::msgpack::from_slice(&bytes).unwrap();
        assert_eq!(back.values, values);
        // Empty (the vectors live in Vectorize) stays empty.
        let empty = rmp_serde::to_vec_named(&record(vec![])).unwrap();
        let back: ChunkRecord = crate::msgpack::from_slice(&empty).unwrap();
        assert!(back.values.is_empty());
    }

    #[test]
    fn in_json_a_vector_stays_an_array_of_numbers() {
        let json = serde_json::to_string(&record(vec![0.5, -1.25])).unwrap();
        assert!(json.contains(r#""values":[0.5,-1.25]"#), "{json}");
        let back: ChunkRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.values, vec![0.5, -1.25]);
    }

    #[test]
    fn a_vector_sent_as_an_array_of_numbers_is_still_read() {
        #[derive(Serialize)]
        struct Before {
            id: String,
            values: Vec<f32>,
            metadata: Metadata,
        }
        let before = Before {
            id: "c1".into(),
            values: vec![0.5, -1.25, 3.0],
            metadata: Metadata::new(),
        };
        let bytes = rmp_serde::to_vec_named(&before).unwrap();
        let read: ChunkRecord = crate::msgpack::from_slice(&bytes).unwrap();
        assert_eq!(read.values, before.values);
    }

    #[test]
    fn a_byte_string_that_is_not_whole_floats_is_refused() {
        #[derive(Serialize)]
        struct Bad<'a> {
            id: &'a str,
            #[serde(with = "serde_bytes_like")]
            values: &'a [u8],
            metadata: Metadata,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let bytes = rmp_serde::to_vec_named(&Bad {
            id: "c1",
            values: &[1, 2, 3, 4, 5],
            metadata: Metadata::new(),
        })
        .unwrap();
        assert!(crate::msgpack::from_slice::<ChunkRecord>(&bytes).is_err());
    }
}
