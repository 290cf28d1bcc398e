//! What a chunk looks like in the index: its id and metadata.

use super::keys::vector_id;
use protocol::ingest::{MetaValue, Metadata};
use protocol::TenantId;

/// Vectorize's metadata limit per vector, with a little room to spare.
pub const MAX_CHUNK_METADATA_BYTES: usize = 10 * 1024 - 256;

/// The metadata of chunk `chunk` of a document: the document's own metadata
/// plus `tenantId`, `docId`, `chunk` and `text`. The text is shortened (at a
/// character boundary) if the whole would not fit Vectorize's 10 KiB.
pub fn chunk_metadata(
    tenant: &TenantId,
    doc_id: &str,
    doc_meta: &Metadata,
    chunk: u32,
    text: &str,
) -> Metadata {
    let mut meta = doc_meta.clone();
    meta.insert(
        "tenantId".into(),
        MetaValue::Str(tenant.as_str().to_owned()),
    );
    meta.insert("docId".into(), MetaValue::Str(doc_id.to_owned()));
    meta.insert("chunk".into(), MetaValue::Int(i64::from(chunk)));
    meta.insert("text".into(), MetaValue::Str(String::new()));
    let base = serde_json::to_vec(&meta).map(|v| v.len()).unwrap_or(0);
    let room = MAX_CHUNK_METADATA_BYTES.saturating_sub(base);
    // JSON may escape a byte into up to 6 bytes; budget for the worst case
    // only when the plain text does not fit.
    let text = if serde_json::to_vec(text)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
        <= room
    {
        text.to_owned()
    } else {
        let mut cut = String::new();
        for c in text.chars() {
            if (cut.len() + c.len_utf8()) * 6 > room {
                break;
            }
            cut.push(c);
        }
        cut
    };
    meta.insert("text".into(), MetaValue::Str(text));
    meta
}

/// The ids of chunks `from..to` of a document.
pub fn chunk_ids(tenant: &TenantId, doc_id: &str, from: u32, to: u32) -> Vec<String> {
    (from..to).map(|i| vector_id(tenant, doc_id, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_has_the_platform_keys_and_fits() {
        let t = TenantId::parse("acme").unwrap();
        let doc_meta = Metadata::from([("source".to_owned(), MetaValue::Str("a.md".into()))]);
        let m = chunk_metadata(&t, "d1", &doc_meta, 2, "hello");
        assert_eq!(m["tenantId"], MetaValue::Str("acme".into()));
        assert_eq!(m["docId"], MetaValue::Str("d1".into()));
        assert_eq!(m["chunk"], MetaValue::Int(2));
        assert_eq!(m["text"], MetaValue::Str("hello".into()));
        assert_eq!(m["source"], MetaValue::Str("a.md".into()));
        let huge = "\"é".repeat(20_000);
        let m = chunk_metadata(&t, "d1", &doc_meta, 0, &huge);
        assert!(serde_json::to_vec(&m).unwrap().len() <= MAX_CHUNK_METADATA_BYTES);
        let MetaValue::Str(kept) = &m["text"] else {
            panic!()
        };
        assert!(!kept.is_empty() && huge.starts_with(kept.as_str()));
    }

    #[test]
    fn ids_of_a_range() {
        let t = TenantId::parse("acme").unwrap();
        let ids = chunk_ids(&t, "d", 1, 4);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], vector_id(&t, "d", 1));
        assert!(chunk_ids(&t, "d", 4, 4).is_empty());
    }
}
