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
/// messages. A replica that has no usable copy yet is stood in for by the
/// writer, which holds every change ([`asks_writer`]).
pub struct SearchHandle {
    actor: ActorStub,
    /// Where the writer is asked instead, when `actor` is a replica.
    writer: Option<(Env, TenantId)>,
}

impl SearchHandle {
    /// The object that answers `query` for `tenant`: a replica chosen by
    /// the question ([`replica_for`]), so a question asked again finds its
    /// answer in that replica's memory; embeddings are placed by their
    /// first text the same way.
    pub fn for_query(env: &Env, tenant: &TenantId, query: &str) -> Result<Self, ActorError> {
        Ok(match replica_for(query, replicas(env)?) {
            Some(k) => Self {
                actor: ActorStub::new(env, BINDING, &resource(k), tenant)?,
                writer: Some((env.clone(), tenant.clone())),
            },
            None => Self {
                actor: ActorStub::new(env, ingest::BINDING, ingest::RESOURCE, tenant)?,
                writer: None,
            },
        })
    }

    /// Searches the tenant's documents: at the chosen object, and at the
    /// writer when a replica has no usable copy yet.
    pub async fn search(
        &self,
        request_id: &RequestId,
        search: Search,
    ) -> Result<SearchResults, ActorError> {
        let message = IngestRequest::Search(search);
        let reply = match &self.writer {
            None => self.actor.send(request_id, message).await?,
            Some((env, tenant)) => match self.actor.send(request_id, message.clone()).await {
                Err(e) if asks_writer(&e) => {
                    ActorStub::new(env, ingest::BINDING, ingest::RESOURCE, tenant)?
                        .send(request_id, message)
                        .await?
                }
                answer => answer?,
            },
        };
        reply_as!(reply, IngestResponse::Results)
    }

    /// Embeds texts with the tenant's embedding model (nothing is stored;
    /// a replica needs no copy of the index for it).
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

/// Whether a replica's failure is one the writer answers instead: the
/// replica said it has no usable copy now ([`super::NOT_READY`]). Not a
/// failure to reach it: an overloaded or failing replica's searches would
/// then all land on the one object that also ingests (and a request that
/// broke the replica would be tried on the writer); they are answered 503
/// as before. Any other refusal (a bad request, a failed model) would be
/// the writer's too; the replica turns one into [`super::NOT_READY`] only
/// when a copy began while the search ran.
pub fn asks_writer(error: &ActorError) -> bool {
    matches!(error, ActorError::Refused(reply) if reply.reason.as_deref() == Some(super::NOT_READY))
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ErrorCode, ErrorReply};

    #[test]
    fn the_writer_stands_in_only_for_a_replica_that_cannot_answer() {
        let not_ready = ErrorReply::new(ErrorCode::Unavailable, "copying")
            .with_reason(crate::replica::NOT_READY);
        assert!(asks_writer(&ActorError::Refused(not_ready)));
        // Not an overloaded or unreachable replica: its load would move to
        // the writer.
        assert!(!asks_writer(&ActorError::Runtime(
            "Durable Object is overloaded".into()
        )));
        // The same refusal the writer would give: a bad request, a model
        // that failed, an unavailable service without the replica's reason.
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::QuotaExceeded,
        ] {
            let refused = ActorError::Refused(ErrorReply::new(code, "no"));
            assert!(!asks_writer(&refused), "{code:?}");
        }
        let other_reason = ErrorReply::new(ErrorCode::Unavailable, "no").with_reason("index_full");
        assert!(!asks_writer(&ActorError::Refused(other_reason)));
        let garbled = protocol::decode::<u8>(&[0xc1]).unwrap_err();
        assert!(!asks_writer(&ActorError::Protocol(garbled)));
        assert!(!asks_writer(&ActorError::UnexpectedReply {
            expected: "Results",
            got: "Job",
        }));
    }
}
