//! The handles callers use: [`ReplicaHandle`] reaches one replica,
//! [`SearchHandle`] the object that answers a tenant's searches (a replica
//! chosen by the question, or the tenant's `IngestQueue` where the
//! deployment runs none).

use super::core::replica_for;
use super::{resource, BINDING};
use crate::error::ActorError;
use crate::ingest::IngestHandle;
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

/// Where a tenant's searches go.
pub enum SearchHandle {
    /// A replica (the deployment runs `SEARCH_REPLICAS` > 0).
    Replica(ReplicaHandle),
    /// The tenant's writer itself.
    Writer(IngestHandle),
}

impl SearchHandle {
    /// The object that answers `query` for `tenant`: a replica chosen by
    /// the question ([`replica_for`]), so a question asked again finds its
    /// answer in that replica's memory.
    pub fn for_query(env: &Env, tenant: &TenantId, query: &str) -> Result<Self, ActorError> {
        match replica_for(query, replicas(env)?) {
            Some(k) => Ok(Self::Replica(ReplicaHandle::new(env, tenant, k)?)),
            None => Ok(Self::Writer(IngestHandle::new(env, tenant)?)),
        }
    }

    /// Searches the tenant's documents.
    pub async fn search(
        &self,
        request_id: &RequestId,
        search: Search,
    ) -> Result<SearchResults, ActorError> {
        match self {
            Self::Replica(replica) => reply_as!(
                replica
                    .send(request_id, IngestRequest::Search(search))
                    .await?,
                IngestResponse::Results
            ),
            Self::Writer(writer) => writer.search(request_id, search).await,
        }
    }

    /// Embeds texts with the tenant's embedding model (nothing is stored).
    pub async fn embed(
        &self,
        request_id: &RequestId,
        embed: Embed,
    ) -> Result<Embeddings, ActorError> {
        match self {
            Self::Replica(replica) => reply_as!(
                replica
                    .send(request_id, IngestRequest::Embed(embed))
                    .await?,
                IngestResponse::Embeddings
            ),
            Self::Writer(writer) => writer.embed(request_id, embed).await,
        }
    }
}

/// The deployment's number of search replicas per tenant.
pub fn replicas(env: &Env) -> Result<u32, ActorError> {
    crate::providers::from_env(env)
        .map(|settings| settings.search_replicas)
        .map_err(|e| {
            ActorError::Refused(protocol::ErrorReply::new(
                protocol::ErrorCode::Internal,
                format!("misconfigured: {e}"),
            ))
        })
}
