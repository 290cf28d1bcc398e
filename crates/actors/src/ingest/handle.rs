//! The typed handle through which the gateway talks to a tenant's ingest queue.

use super::{BINDING, RESOURCE};
use crate::error::ActorError;
use crate::rpc::ActorStub;
use protocol::ingest::{
    DeleteDocument, DocumentDeleted, Enqueue, GetJob, IngestRequest, IngestResponse,
    IngestSnapshot, InjectFaults, Inspect, JobAccepted, JobView, Search, SearchResults,
};
use protocol::{RequestId, TenantId};
use worker::Env;

/// A tenant's ingest queue, reached by its name `${tenantId}:ingest`.
pub struct IngestHandle {
    actor: ActorStub,
}

macro_rules! expect_reply {
    ($reply:expr, $variant:ident) => {
        match $reply {
            IngestResponse::$variant(value) => Ok(value),
            other => Err(ActorError::UnexpectedReply {
                expected: stringify!($variant),
                got: variant_name(&other),
            }),
        }
    };
}

/// The name of `reply`'s variant, for an unexpected reply's error.
pub(crate) fn variant_name(reply: &IngestResponse) -> &'static str {
    match reply {
        IngestResponse::Accepted(_) => "Accepted",
        IngestResponse::Job(_) => "Job",
        IngestResponse::Deleted(_) => "Deleted",
        IngestResponse::Results(_) => "Results",
        IngestResponse::Snapshot(_) => "Snapshot",
        IngestResponse::FaultsInjected(_) => "FaultsInjected",
        IngestResponse::Embeddings(_) => "Embeddings",
        IngestResponse::Documents(_) => "Documents",
        IngestResponse::Replicated(_) => "Replicated",
        IngestResponse::Chunks(_) => "Chunks",
        IngestResponse::Replica(_) => "Replica",
    }
}

impl crate::rpc::NamedReply for IngestResponse {
    fn variant(&self) -> &'static str {
        variant_name(self)
    }
}

impl IngestHandle {
    /// A page of the tenant's indexed documents, in id order.
    pub async fn list_documents(
        &self,
        request_id: &RequestId,
        list: protocol::listing::ListDocuments,
    ) -> Result<protocol::listing::DocumentPage, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::ListDocuments(list))
                .await?,
            Documents
        )
    }

    /// The ingest queue of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, RESOURCE, tenant)?,
        })
    }

    async fn send(
        &self,
        request_id: &RequestId,
        message: IngestRequest,
    ) -> Result<IngestResponse, ActorError> {
        self.actor.send(request_id, message).await
    }

    /// Stores documents and queues them for indexing.
    pub async fn enqueue(
        &self,
        request_id: &RequestId,
        enqueue: Enqueue,
    ) -> Result<JobAccepted, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::Enqueue(enqueue))
                .await?,
            Accepted
        )
    }

    /// A job's progress.
    pub async fn job(&self, request_id: &RequestId, job_id: String) -> Result<JobView, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::GetJob(GetJob { job_id }))
                .await?,
            Job
        )
    }

    /// Removes a document and its chunks.
    pub async fn delete_document(
        &self,
        request_id: &RequestId,
        doc_id: String,
    ) -> Result<DocumentDeleted, ActorError> {
        let message = IngestRequest::DeleteDocument(DeleteDocument { doc_id });
        expect_reply!(self.send(request_id, message).await?, Deleted)
    }

    /// Searches the tenant's documents.
    pub async fn search(
        &self,
        request_id: &RequestId,
        search: Search,
    ) -> Result<SearchResults, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::Search(search)).await?,
            Results
        )
    }

    /// The queue's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<IngestSnapshot, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::Inspect(Inspect {}))
                .await?,
            Snapshot
        )
    }

    /// Arms injected embedder failures (refused unless the deployment allows it).
    pub async fn inject_faults(
        &self,
        request_id: &RequestId,
        embed_failures: u32,
    ) -> Result<InjectFaults, ActorError> {
        let message = IngestRequest::InjectFaults(InjectFaults { embed_failures });
        expect_reply!(self.send(request_id, message).await?, FaultsInjected)
    }

    /// A page of the tenant's index, for a search replica's copy.
    pub async fn export_chunks(
        &self,
        request_id: &RequestId,
        export: protocol::replica::ExportChunks,
    ) -> Result<protocol::replica::ChunkPage, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::ExportChunks(export))
                .await?,
            Chunks
        )
    }

    /// Embeds texts with the tenant's embedding model (nothing is stored).
    pub async fn embed(
        &self,
        request_id: &RequestId,
        embed: protocol::ingest::Embed,
    ) -> Result<protocol::ingest::Embeddings, ActorError> {
        expect_reply!(
            self.send(request_id, IngestRequest::Embed(embed)).await?,
            Embeddings
        )
    }
}
