//! How the shell's storage becomes the core's *facts*: the few synchronous
//! reads the queue needs ([`Records`]), and the measuring of an enqueue, a
//! job's document and a delete into [`EnqueueFacts`], [`DocFacts`] and
//! [`DeleteFacts`].
//!
//! Pure: the reads go through [`Records`], which the shell implements over
//! its SQLite (`store`) and the tests over a map, so which reads are made,
//! and what is made of them, is tested natively.

use super::core::{DeleteFacts, DocFacts, EnqueueFacts, NewDoc, WorkItem};
use crate::chunking;
use crate::providers::Settings;
use crate::sql::SqlError;
use protocol::ingest::{Document, Metadata};
use std::collections::HashMap;

/// What storage says about indexed documents and the documents of
/// unfinished jobs. Synchronous, so a plan can be taken between two awaits
/// without anything else running in between.
pub trait Records {
    /// The chunk count on record for `doc_id`, if it is indexed.
    fn stored_chunks(&self, doc_id: &str) -> Result<Option<u32>, SqlError>;
    /// The chunk counts on record for those of `doc_ids` that are indexed.
    fn stored_chunks_of(&self, doc_ids: &[&str]) -> Result<HashMap<String, u32>, SqlError>;
    /// The chunks of every indexed document together.
    fn indexed_chunks(&self) -> Result<u64, SqlError>;
    /// An unfinished job that stores `doc_id`, if any.
    fn pending_job(&self, doc_id: &str) -> Result<Option<String>, SqlError>;
}

/// A stored document of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDoc {
    /// The document id.
    pub doc_id: String,
    /// Its text.
    pub text: String,
    /// Its own metadata.
    pub metadata: Metadata,
}

impl JobDoc {
    /// The document of `item` from its `job_docs` row (`doc_id`, `text`,
    /// metadata as JSON), or why it cannot be worked on.
    pub fn from_row(
        item: &WorkItem,
        row: Result<Option<(String, String, String)>, SqlError>,
    ) -> Result<Self, String> {
        let Some((doc_id, text, meta)) = row.map_err(|e| e.to_string())? else {
            return Err(format!(
                "document {} of {} is missing from storage",
                item.doc_index, item.job_id
            ));
        };
        Ok(Self {
            doc_id,
            text,
            metadata: serde_json::from_str(&meta).map_err(|e| e.to_string())?,
        })
    }
}

/// Measures an enqueue for the core: text bytes, and where the index has a
/// bound of ours, the chunks each document will have and replace (only then
/// is storage read, and the texts chunked).
pub fn enqueue_facts(
    job_id: String,
    documents: &[Document],
    settings: &Settings,
    records: &impl Records,
) -> Result<EnqueueFacts, SqlError> {
    let counting = settings.queue_bounds().max_chunks.is_some();
    let stored = if counting {
        let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
        records.stored_chunks_of(&ids)?
    } else {
        HashMap::new()
    };
    let mut docs = Vec::with_capacity(documents.len());
    for d in documents {
        let (chunks, replaces_chunks) = if counting {
            let chunks = chunking::chunk(&d.text, settings.chunking).len();
            let stored = stored.get(&d.id).copied().unwrap_or(0);
            (u32::try_from(chunks).unwrap_or(u32::MAX), stored)
        } else {
            (0, 0)
        };
        docs.push(NewDoc {
            doc_id: d.id.clone(),
            text_bytes: d.text.len() as u64,
            chunks,
            replaces_chunks,
        });
    }
    let indexed_chunks = if counting {
        records.indexed_chunks()?
    } else {
        0
    };
    Ok(EnqueueFacts {
        caller: None,
        job_id,
        docs,
        indexed_chunks,
    })
}

/// What the core needs to plan `doc`, cut into `chunks`: their count and the
/// count of the version on record.
pub fn doc_facts(
    doc: &JobDoc,
    chunks: &[String],
    records: &impl Records,
) -> Result<DocFacts, String> {
    Ok(DocFacts {
        doc_id: doc.doc_id.clone(),
        chunks: u32::try_from(chunks.len()).map_err(|e| e.to_string())?,
        previous_chunks: records
            .stored_chunks(&doc.doc_id)
            .map_err(|e| e.to_string())?
            .unwrap_or(0),
    })
}

/// What the core needs to decide a delete of `doc_id`.
pub fn delete_facts(doc_id: &str, records: &impl Records) -> Result<DeleteFacts, SqlError> {
    Ok(DeleteFacts {
        doc_id: doc_id.to_owned(),
        stored_chunks: records.stored_chunks(doc_id)?,
        pending_job: records.pending_job(doc_id)?,
    })
}

/// [`Records`] over plain maps, for the tests of this module and its
/// neighbours; it counts the reads, so a test can say which were made.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeMap;

    /// Indexed documents and the documents of unfinished jobs.
    #[derive(Default)]
    pub struct MemRecords {
        /// doc id → chunks on record.
        pub documents: BTreeMap<String, u32>,
        /// doc id → the unfinished job that stores it.
        pub job_docs: BTreeMap<String, String>,
        /// Every read fails with this.
        pub broken: Option<SqlError>,
        /// Reads made.
        pub reads: Cell<u32>,
    }

    impl MemRecords {
        fn read(&self) -> Result<(), SqlError> {
            self.reads.set(self.reads.get() + 1);
            self.broken.clone().map_or(Ok(()), Err)
        }
    }

    impl Records for MemRecords {
        fn stored_chunks(&self, doc_id: &str) -> Result<Option<u32>, SqlError> {
            self.read()?;
            Ok(self.documents.get(doc_id).copied())
        }

        fn stored_chunks_of(&self, doc_ids: &[&str]) -> Result<HashMap<String, u32>, SqlError> {
            self.read()?;
            Ok(doc_ids
                .iter()
                .filter_map(|id| Some(((*id).to_owned(), *self.documents.get(*id)?)))
                .collect())
        }

        fn indexed_chunks(&self) -> Result<u64, SqlError> {
            self.read()?;
            Ok(self.documents.values().map(|&n| u64::from(n)).sum())
        }

        fn pending_job(&self, doc_id: &str) -> Result<Option<String>, SqlError> {
            self.read()?;
            Ok(self.job_docs.get(doc_id).cloned())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::memory::MemRecords;
    use super::*;
    use crate::providers;
    use protocol::ingest::MetaValue;

    fn settings(vectorize: bool) -> Settings {
        providers::settings(|name| {
            (vectorize && name == providers::vars::VECTOR_BACKEND).then(|| "vectorize".to_owned())
        })
        .unwrap()
    }

    fn document(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
            metadata: Metadata::new(),
        }
    }

    fn item() -> WorkItem {
        WorkItem {
            job_id: "j1".into(),
            doc_index: 2,
        }
    }

    #[test]
    fn an_enqueue_is_measured_in_chunks_where_the_index_is_ours() {
        let mut records = MemRecords::default();
        records.documents.insert("a".into(), 7);
        records.documents.insert("z".into(), 5);
        // Three paragraphs of 900 characters: one chunk each at 1,000.
        let long = ["x".repeat(900), "y".repeat(900), "z".repeat(900)].join("\n\n");
        let docs = [document("a", &long), document("b", "short")];
        let facts = enqueue_facts("j1".into(), &docs, &settings(false), &records).unwrap();
        assert_eq!(facts.job_id, "j1");
        assert_eq!(facts.indexed_chunks, 12);
        assert_eq!(
            facts.docs,
            vec![
                NewDoc {
                    doc_id: "a".into(),
                    text_bytes: long.len() as u64,
                    chunks: 3,
                    replaces_chunks: 7,
                },
                NewDoc {
                    doc_id: "b".into(),
                    text_bytes: 5,
                    chunks: 1,
                    replaces_chunks: 0,
                },
            ]
        );
    }

    #[test]
    fn on_vectorize_an_enqueue_reads_nothing_and_counts_no_chunks() {
        let records = MemRecords {
            broken: Some(SqlError::Exec("must not be read".into())),
            ..MemRecords::default()
        };
        let docs = [document("a", "some text")];
        let facts = enqueue_facts("j1".into(), &docs, &settings(true), &records).unwrap();
        assert_eq!(records.reads.get(), 0);
        assert_eq!(facts.indexed_chunks, 0);
        assert_eq!(
            (facts.docs[0].chunks, facts.docs[0].replaces_chunks),
            (0, 0)
        );
        assert_eq!(facts.docs[0].text_bytes, 9);
    }

    #[test]
    fn a_storage_failure_while_measuring_is_an_error() {
        let broken = SqlError::Exec("disk".into());
        let records = MemRecords {
            broken: Some(broken.clone()),
            ..MemRecords::default()
        };
        let docs = [document("a", "text")];
        assert_eq!(
            enqueue_facts("j1".into(), &docs, &settings(false), &records),
            Err(broken.clone())
        );
        assert_eq!(delete_facts("a", &records), Err(broken));
        let doc = JobDoc {
            doc_id: "a".into(),
            text: "text".into(),
            metadata: Metadata::new(),
        };
        assert_eq!(
            doc_facts(&doc, &["text".to_owned()], &records),
            Err("storage: disk".into())
        );
    }

    #[test]
    fn a_documents_facts_count_its_chunks_and_the_version_on_record() {
        let mut records = MemRecords::default();
        let doc = JobDoc {
            doc_id: "a".into(),
            text: String::new(),
            metadata: Metadata::new(),
        };
        let chunks = vec!["one".to_owned(), "two".to_owned()];
        let facts = doc_facts(&doc, &chunks, &records).unwrap();
        assert_eq!((facts.chunks, facts.previous_chunks), (2, 0));
        records.documents.insert("a".into(), 9);
        let facts = doc_facts(&doc, &chunks, &records).unwrap();
        assert_eq!(
            facts,
            DocFacts {
                doc_id: "a".into(),
                chunks: 2,
                previous_chunks: 9,
            }
        );
    }

    #[test]
    fn a_deletes_facts_say_what_is_indexed_and_which_job_holds_it() {
        let mut records = MemRecords::default();
        records.documents.insert("a".into(), 3);
        records.job_docs.insert("b".into(), "j9".into());
        assert_eq!(
            delete_facts("a", &records).unwrap(),
            DeleteFacts {
                doc_id: "a".into(),
                stored_chunks: Some(3),
                pending_job: None,
            }
        );
        let b = delete_facts("b", &records).unwrap();
        assert_eq!((b.stored_chunks, b.pending_job), (None, Some("j9".into())));
    }

    #[test]
    fn a_job_document_row_is_decoded_or_explained() {
        let row = (
            "a".to_owned(),
            "text".to_owned(),
            r#"{"source":"a.md"}"#.to_owned(),
        );
        let doc = JobDoc::from_row(&item(), Ok(Some(row))).unwrap();
        assert_eq!(doc.doc_id, "a");
        assert_eq!(doc.text, "text");
        assert_eq!(doc.metadata["source"], MetaValue::Str("a.md".into()));
        assert_eq!(
            JobDoc::from_row(&item(), Ok(None)),
            Err("document 2 of j1 is missing from storage".into())
        );
        let bad = ("a".to_owned(), "text".to_owned(), "{".to_owned());
        assert!(JobDoc::from_row(&item(), Ok(Some(bad))).is_err());
        assert_eq!(
            JobDoc::from_row(&item(), Err(SqlError::Exec("disk".into()))),
            Err("storage: disk".into())
        );
    }
}
