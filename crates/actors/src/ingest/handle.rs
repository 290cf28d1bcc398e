//! The typed handle through which the gateway talks to a tenant's ingest queue.

use super::{BINDING, RESOURCE};
use crate::error::ActorError;
use crate::rpc::{reply_as, ActorStub};
use protocol::ingest::{
    DeleteDocument, DocumentDeleted, Enqueue, GetJob, IngestRequest, IngestResponse,
    IngestSnapshot, InjectFaults, Inspect, JobAccepted, JobView,
};
use protocol::{RequestId, TenantId};
use worker::Env;

/// A tenant's ingest queue, reached by its name `${tenantId}:ingest`.
pub struct IngestHandle {
    actor: ActorStub,
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
        reply_as!(
            self.send(request_id, IngestRequest::ListDocuments(list))
                .await?,
            IngestResponse::Documents
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
        reply_as!(
            self.send(request_id, IngestRequest::Enqueue(enqueue))
                .await?,
            IngestResponse::Accepted
        )
    }

    /// A job's progress.
    pub async fn job(&self, request_id: &RequestId, job_id: String) -> Result<JobView, ActorError> {
        reply_as!(
            self.send(request_id, IngestRequest::GetJob(GetJob { job_id }))
                .await?,
            IngestResponse::Job
        )
    }

    /// Removes a document and its chunks.
    pub async fn delete_document(
        &self,
        request_id: &RequestId,
        doc_id: String,
    ) -> Result<DocumentDeleted, ActorError> {
        let message = IngestRequest::DeleteDocument(DeleteDocument { doc_id });
        reply_as!(
            self.send(request_id, message).await?,
            IngestResponse::Deleted
        )
    }

    /// The queue's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<IngestSnapshot, ActorError> {
        reply_as!(
            self.send(request_id, IngestRequest::Inspect(Inspect {}))
                .await?,
            IngestResponse::Snapshot
        )
    }

    /// Arms injected embedder failures (refused unless the deployment allows it).
    pub async fn inject_faults(
        &self,
        request_id: &RequestId,
        embed_failures: u32,
    ) -> Result<InjectFaults, ActorError> {
        let message = IngestRequest::InjectFaults(InjectFaults { embed_failures });
        reply_as!(
            self.send(request_id, message).await?,
            IngestResponse::FaultsInjected
        )
    }

    /// A page of the tenant's index, for a search replica's copy.
    pub async fn export_chunks(
        &self,
        request_id: &RequestId,
        export: protocol::replica::ExportChunks,
    ) -> Result<protocol::replica::ChunkPage, ActorError> {
        reply_as!(
            self.send(request_id, IngestRequest::ExportChunks(export))
                .await?,
            IngestResponse::Chunks
        )
    }
}
