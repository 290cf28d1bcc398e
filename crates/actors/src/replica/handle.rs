//! The handles callers use: [`ReplicaHandle`] reaches one replica,
//! [`SearchHandle`] the object that answers a tenant's searches (a replica
//! chosen by the question, or the tenant's `IngestQueue` where the
//! deployment runs none).

use super::core::replica_for;
use super::{resource, BINDING};
use crate::error::ActorError;
use crate::ingest;
use crate::rpc::{reply_as, ActorStub};
use protocol::ingest::{Embed, Embeddings, IngestRequest, IngestResponse, Search, SearchResults};
use protocol::replica::{ReplicaView, ReplicateBatch, Replicated};
use protocol::{RequestId, TenantId};
use worker::Env;

/// One of a tenant's search replicas, `${tenantId}:search-<k>`.
pub struct ReplicaHandle {
    actor: ActorStub,
}

impl ReplicaHandle {
    /// Replica `k` of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId, k: u32) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, &resource(k), tenant)?,
        })
    }

    async fn send(
        &self,
        request_id: &RequestId,
        message: IngestRequest,
    ) -> Result<IngestResponse, ActorError> {
        self.actor.send(request_id, message).await
    }

    /// Sends the writer's changes.
    pub async fn replicate(
        &self,
        request_id: &RequestId,
        batch: ReplicateBatch,
    ) -> Result<Replicated, ActorError> {
        reply_as!(
            self.send(request_id, IngestRequest::Replicate(batch))
                .await?,
            IngestResponse::Replicated
        )
    }

    /// Sends the writer's changes, already encoded as an envelope of
    /// [`IngestRequest::Replicate`] ([`encode_batch`]).
    pub async fn replicate_encoded(&self, body: &[u8]) -> Result<Replicated, ActorError> {
        let reply: IngestResponse = crate::rpc::call_encoded(self.actor.stub(), body).await?;
        reply_as!(reply, IngestResponse::Replicated)
    }

    /// The replica's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<ReplicaView, ActorError> {
        let message = IngestRequest::Inspect(protocol::ingest::Inspect {});
        reply_as!(
            self.send(request_id, message).await?,
            IngestResponse::Replica
        )
    }
}

/// `batch` as the envelope every replica of `tenant` receives.
pub fn encode_batch(
    request_id: &RequestId,
    tenant: &TenantId,
    batch: ReplicateBatch,
) -> Result<Vec<u8>, ActorError> {
    let envelope = protocol::Envelope::new(
        request_id.clone(),
        tenant.clone(),
        IngestRequest::Replicate(batch),
    );
    Ok(protocol::encode(&envelope)?)
}

/// The object that answers a tenant's searches: a replica, or the tenant's
/// `IngestQueue` where the deployment runs none. Both take the same
/// messages.
pub struct SearchHandle {
    actor: ActorStub,
}

impl SearchHandle {
    /// The object that answers `query` for `tenant`: a replica chosen by
    /// the question ([`replica_for`]), so a question asked again finds its
    /// answer in that replica's memory; embeddings are placed by their
    /// first text the same way.
    pub fn for_query(env: &Env, tenant: &TenantId, query: &str) -> Result<Self, ActorError> {
        let actor = match replica_for(query, replicas(env)?) {
            Some(k) => ActorStub::new(env, BINDING, &resource(k), tenant)?,
            None => ActorStub::new(env, ingest::BINDING, ingest::RESOURCE, tenant)?,
        };
        Ok(Self { actor })
    }

    /// Searches the tenant's documents.
    pub async fn search(
        &self,
        request_id: &RequestId,
        search: Search,
    ) -> Result<SearchResults, ActorError> {
        let reply: IngestResponse = self
            .actor
            .send(request_id, IngestRequest::Search(search))
            .await?;
        reply_as!(reply, IngestResponse::Results)
    }

    /// Embeds texts with the tenant's embedding model (nothing is stored).
    pub async fn embed(
        &self,
        request_id: &RequestId,
        embed: Embed,
    ) -> Result<Embeddings, ActorError> {
        let reply: IngestResponse = self
            .actor
            .send(request_id, IngestRequest::Embed(embed))
            .await?;
        reply_as!(reply, IngestResponse::Embeddings)
    }
}

/// The deployment's number of search replicas per tenant (`SEARCH_REPLICAS`
/// alone: this is read on every search).
pub fn replicas(env: &Env) -> Result<u32, ActorError> {
    let value = env
        .var(crate::providers::vars::SEARCH_REPLICAS)
        .ok()
        .map(|v| v.to_string());
    crate::providers::search_replicas(value.as_deref()).map_err(|e| {
        ActorError::Refused(protocol::ErrorReply::new(
            protocol::ErrorCode::Internal,
            format!("misconfigured: {e}"),
        ))
    })
}
