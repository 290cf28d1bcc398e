//! The `SearchReplica` Durable Object: the shell around [`ReplicaCore`].
//!
//! It decodes, asks the core what to do with each of the writer's changes,
//! applies them to its own copy of the index (the same tables as the
//! writer's) together with the change number in one synchronous step, takes
//! whole copies from the writer page by page, and answers searches and
//! embeddings through the shared [`Reader`].

use super::core::{CopyEnd, OnChange, ReplicaCore};
use crate::error::internal;
use crate::ingest::core::IndexVersion;
use crate::ingest::reader::{Reader, SearchScope};
use crate::ingest::replication::vector_records;
use crate::ingest::IngestHandle;
use crate::ports::{Clock, SystemClock, VectorIndex};
use crate::providers::{self, Settings};
use crate::rpc;
use crate::sql::{self, int, SqlError};
use protocol::ingest::{IngestRequest, IngestResponse};
use protocol::replica::{ExportChunks, ReplicaChange, ReplicaView, Replicated, MAX_PAGE_CHUNKS};
use protocol::{Envelope, ErrorCode, ErrorReply, RequestId, TenantId};
use std::cell::{Cell, RefCell};
use worker::{durable_object, Env, Request as HttpRequest, Response, State};

/// The replica's own table: the last change its copy holds (`NULL`: no
/// usable copy) and when it last changed.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replica (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER, changed_at INTEGER NOT NULL)";

/// Copies the alarm takes in a row before it gives up and lets the runtime
/// retry it later (changes kept meanwhile may be incomplete under heavy
/// writing).
const COPY_TRIES: u32 = 3;

struct Loaded {
    tenant: TenantId,
    core: ReplicaCore,
    changed_at: u64,
}

fn storage(e: SqlError) -> ErrorReply {
    internal(e.to_string())
}

fn unavailable(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, message)
}

/// A search this replica cannot answer now (no usable copy, or it left the
/// set): its caller asks the writer instead ([`super::SearchHandle`]).
fn not_ready(message: impl Into<String>) -> ErrorReply {
    unavailable(message).with_reason(super::NOT_READY)
}

/// A read copy of one tenant's index.
#[durable_object]
pub struct SearchReplica {
    state: State,
    env: Env,
    reader: Reader,
    loaded: RefCell<Option<Loaded>>,
    /// Changes applied since the object woke.
    applied: Cell<u64>,
    /// Whole copies taken since the object woke.
    copies: Cell<u64>,
    /// Bumped whenever the copy's tables are emptied or its number is
    /// dropped: a copy or a search begun under an older value was
    /// overtaken (a copy stops, a search is refused as not ready and the
    /// writer answers it).
    generation: Cell<u64>,
    /// When this isolate last started a copy.
    copy_started_at: Cell<Option<u64>>,
}

impl SearchReplica {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn settings(&self) -> Result<Settings, ErrorReply> {
        providers::from_env(&self.env).map_err(|e| internal(format!("misconfigured: {e}")))
    }

    /// Loads the replica (creating its tables on first use); the first
    /// tenant to reach it owns it.
    fn load(&self, claimed: Option<&TenantId>) -> Result<TenantId, ErrorReply> {
        if let Some(loaded) = self.loaded.borrow().as_ref() {
            return Ok(sql::check_owner(Some(&loaded.tenant), claimed)?);
        }
        let sql = self.sql();
        for statement in crate::embedded::sql_index::SCHEMA
            .iter()
            .chain(std::iter::once(&SCHEMA))
        {
            sql::exec(&sql, statement, vec![]).map_err(storage)?;
        }
        let tenant = sql::claim_owner(&sql, claimed)?;
        let row = sql::first::<(Option<u64>, u64)>(
            &sql,
            "SELECT seq, changed_at FROM replica WHERE id = 1",
            vec![],
        )
        .map_err(storage)?;
        let (seq, changed_at) = row.unwrap_or((None, 0));
        *self.loaded.borrow_mut() = Some(Loaded {
            tenant: tenant.clone(),
            core: ReplicaCore::restore(seq),
            changed_at,
        });
        Ok(tenant)
    }

    fn with_core<T>(&self, f: impl FnOnce(&mut ReplicaCore) -> T) -> Result<T, ErrorReply> {
        let mut loaded = self.loaded.borrow_mut();
        let loaded = loaded
            .as_mut()
            .ok_or_else(|| internal("replica not loaded"))?;
        Ok(f(&mut loaded.core))
    }

    /// Stores the core's change number. After a failed write memory is
    /// ahead of storage: the core is dropped and reloaded from what storage
    /// holds on the next message.
    fn save(&self) -> Result<(), ErrorReply> {
        let now = SystemClock.now_ms();
        let seq = self.with_core(|c| c.seq())?;
        let written = sql::exec(
            &self.sql(),
            "INSERT INTO replica (id, seq, changed_at) VALUES (1, ?, ?)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, changed_at = excluded.changed_at",
            vec![
                seq.map(int).unwrap_or(worker::SqlStorageValue::Null),
                int(now),
            ],
        );
        match written {
            Ok(()) => {
                if let Some(loaded) = self.loaded.borrow_mut().as_mut() {
                    loaded.changed_at = now;
                }
                Ok(())
            }
            Err(e) => {
                *self.loaded.borrow_mut() = None;
                Err(storage(e))
            }
        }
    }

    /// Writes `change` (`changes` of the writer's, run together) to the
    /// copy. The replica's index has no awaits on I/O, so this and
    /// [`Self::save`] after it commit together.
    async fn apply(
        &self,
        settings: &Settings,
        change: ReplicaChange,
        changes: u64,
    ) -> Result<(), ErrorReply> {
        if changes == 0 {
            return Ok(());
        }
        let index = self.reader.follower_index(self.sql(), settings);
        let written = match change {
            ReplicaChange::Upsert(chunks) => index.upsert(&vector_records(chunks)).await,
            ReplicaChange::Delete(ids) => index.delete(&ids).await,
        };
        if let Err(e) = written {
            *self.loaded.borrow_mut() = None;
            return Err(e.into());
        }
        self.applied.set(self.applied.get() + changes);
        Ok(())
    }

    /// Takes the writer's changes in order. The applied ones and their
    /// number are written with no await on I/O between them, so they
    /// commit together.
    async fn replicate(
        &self,
        settings: &Settings,
        batch: protocol::replica::ReplicateBatch,
    ) -> Result<IngestResponse, ErrorReply> {
        if batch.forget {
            self.generation.set(self.generation.get() + 1);
            self.with_core(ReplicaCore::forget)?;
            self.save()?;
            return Ok(IngestResponse::Replicated(Replicated { seq: None }));
        }
        let mut save = false;
        let mut copy = false;
        // Upserts in a row are written as one (a statement per 33 chunks,
        // not per document); anything else writes them first.
        let (mut upserts, mut changes) = (Vec::new(), 0);
        for change in batch.changes {
            let next = self.with_core(|c| c.on_change(change))?;
            if !matches!(next, OnChange::Apply(ReplicaChange::Upsert(_))) {
                let run = ReplicaChange::Upsert(std::mem::take(&mut upserts));
                self.apply(settings, run, std::mem::take(&mut changes))
                    .await?;
            }
            match next {
                OnChange::Apply(ReplicaChange::Upsert(chunks)) => {
                    upserts.extend(chunks);
                    changes += 1;
                    save = true;
                }
                OnChange::Apply(change) => {
                    self.apply(settings, change, 1).await?;
                    save = true;
                }
                OnChange::Lost => {
                    save = true;
                    copy = true;
                }
                OnChange::NoCopy => copy = true,
                OnChange::Ignore | OnChange::Kept => {}
            }
        }
        self.apply(settings, ReplicaChange::Upsert(upserts), changes)
            .await?;
        if save {
            self.save()?;
        }
        if copy {
            self.copy_soon().await;
        }
        let seq = self.with_core(|c| c.usable().then(|| c.seq()).flatten())?;
        Ok(IngestResponse::Replicated(Replicated { seq }))
    }

    /// Has the alarm take a copy, outside the request that asks: now, or
    /// [`super::COPY_RETRY_MS`] after the last copy this isolate started.
    async fn copy_soon(&self) {
        if self.with_core(|c| c.copying()).unwrap_or(true) {
            return;
        }
        // An offset from now (an i64 is one to the runtime).
        let due = self
            .copy_started_at
            .get()
            .map_or(0, |t| t.saturating_add(super::COPY_RETRY_MS));
        let wait = due.saturating_sub(SystemClock.now_ms());
        let wait = i64::try_from(wait).unwrap_or(i64::MAX);
        if let Err(e) = self.state.storage().set_alarm(wait).await {
            worker::console_error!("search replica: could not set the alarm: {e}");
        }
    }

    /// Takes a whole copy of the writer's index. Ok(false) when another
    /// copy is already under way, or this one came out incomplete.
    async fn copy(&self, tenant: &TenantId, settings: &Settings) -> Result<bool, ErrorReply> {
        if !self.with_core(|c| c.begin_copy())? {
            return Ok(false);
        }
        self.copy_started_at.set(Some(SystemClock.now_ms()));
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let copied = self.copy_pages(tenant, settings, generation).await;
        if self.generation.get() != generation {
            // Overtaken (forgotten, or the core reloaded and copying
            // again): the newer state is not this copy's to change.
            return Ok(false);
        }
        if let Err(e) = copied {
            self.with_core(|c| c.abandon_copy())?;
            self.save()?;
            return Err(e);
        }
        match self.with_core(|c| c.finish_copy())? {
            CopyEnd::Usable { changes, .. } => {
                for change in changes {
                    self.apply(settings, change, 1).await?;
                }
                self.reader.forget();
                self.save()?;
                self.copies.set(self.copies.get() + 1);
                Ok(true)
            }
            CopyEnd::Incomplete => {
                self.save()?;
                Ok(false)
            }
        }
    }

    /// Empties the tables and writes the writer's index into them, page by
    /// page, while `generation` is current.
    async fn copy_pages(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        generation: u64,
    ) -> Result<(), ErrorReply> {
        let sql = self.sql();
        for statement in ["DELETE FROM chunk_text", "DELETE FROM vectors"] {
            sql::exec(&sql, statement, vec![]).map_err(storage)?;
        }
        self.reader.forget();
        self.save()?;
        let writer = IngestHandle::new(&self.env, tenant)
            .map_err(|e| unavailable(format!("the tenant's index: {e}")))?;
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let mut after = 0;
        loop {
            let export = ExportChunks {
                after,
                limit: MAX_PAGE_CHUNKS,
            };
            let page = writer
                .export_chunks(&request_id, export)
                .await
                .map_err(|e| unavailable(format!("copying the tenant's index: {e}")))?;
            if self.generation.get() != generation {
                return Ok(());
            }
            self.with_core(|c| c.page(page.seq))?;
            if !page.records.is_empty() {
                self.reader
                    .follower_index(self.sql(), settings)
                    .upsert(&vector_records(page.records))
                    .await?;
            }
            match page.next {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
    }

    /// The last change of the copy when it can answer now. Without a usable
    /// copy the search is not held until one is taken (tens of seconds on a
    /// large index): the alarm starts one, unless one is under way, and the
    /// search is refused as [`not_ready`], which its caller answers from the
    /// writer meanwhile.
    async fn ready(&self) -> Result<u64, ErrorReply> {
        let (usable, seq) = self.with_core(|c| (c.usable(), c.seq().unwrap_or(0)))?;
        if usable {
            return Ok(seq);
        }
        self.copy_soon().await;
        Err(not_ready(
            "the search replica has no usable copy of the index yet; it is taking one",
        ))
    }

    /// Answers `search` from the copy. A copy begun while it ran (its
    /// tables emptied under it) makes the answer, or the error, [`not_ready`].
    async fn search(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        search: protocol::ingest::Search,
    ) -> Result<IngestResponse, ErrorReply> {
        let seq = self.ready().await?;
        let generation = self.generation.get();
        let changed_at_ms = self.loaded.borrow().as_ref().map_or(0, |l| l.changed_at);
        let version = IndexVersion {
            version: seq,
            changed_at_ms,
        };
        let index = self.reader.index(self.sql(), tenant, settings)?;
        let current = || self.generation.get() == generation;
        let scope = SearchScope {
            state: &self.state,
            index: &index,
            tenant,
            settings,
            version,
            current: &current,
        };
        let answer = self.reader.search(&scope, search).await;
        // Whatever came out (an answer or an error) was computed over a copy
        // that changed under it: the writer answers instead, and the reader
        // charged nothing for it.
        if current() {
            answer
        } else {
            Err(not_ready(
                "the search replica's copy of the index changed while it searched",
            ))
        }
    }

    /// Takes a copy unless one is usable or under way (the alarm's work).
    /// Incomplete copies are taken again, [`COPY_TRIES`] in all; an error
    /// when none came out usable, so the runtime retries the alarm later.
    async fn copy_in_background(
        &self,
        tenant: &TenantId,
        settings: &Settings,
    ) -> Result<(), ErrorReply> {
        for _ in 0..COPY_TRIES {
            if self.with_core(|c| c.usable() || c.copying())? {
                return Ok(());
            }
            self.copy(tenant, settings).await?;
        }
        if self.with_core(|c| c.usable() || c.copying())? {
            return Ok(());
        }
        Err(unavailable(format!(
            "the search replica's copy came out incomplete {COPY_TRIES} times (heavy writing); retried later"
        )))
    }

    fn view(&self) -> Result<ReplicaView, ErrorReply> {
        let chunks = sql::scalar::<u64>(&self.sql(), "SELECT COUNT(*) FROM vectors", vec![])
            .map_err(storage)?;
        Ok(ReplicaView {
            seq: self.with_core(|c| c.usable().then(|| c.seq()).flatten())?,
            chunks,
            searches: self.reader.searches(),
            copies: self.copies.get(),
            applied: self.applied.get(),
        })
    }

    /// Whether this replica is outside the deployment's set (its number is
    /// not below `SEARCH_REPLICAS`: the var was lowered, and a late caller
    /// or an old alarm reached it). It then forgets its copy, so it cannot
    /// answer from it should the var be raised again, and takes none.
    fn left_out(&self, settings: &Settings) -> Result<bool, ErrorReply> {
        let number = self
            .state
            .id()
            .name()
            .and_then(|name| super::core::number_in_name(&name));
        if number.is_none_or(|k| k < settings.search_replicas) {
            return Ok(false);
        }
        if self.with_core(|c| c.seq().is_some() || c.copying())? {
            self.generation.set(self.generation.get() + 1);
            self.with_core(ReplicaCore::forget)?;
            self.save()?;
        }
        Ok(true)
    }

    async fn handle(
        &self,
        envelope: Envelope<IngestRequest>,
    ) -> Result<IngestResponse, ErrorReply> {
        let settings = self.settings()?;
        let tenant = self.load(Some(&envelope.tenant_id))?;
        if self.left_out(&settings)? {
            match envelope.message {
                // It has forgotten its copy already; it takes no change.
                IngestRequest::Replicate(_) => {
                    return Ok(IngestResponse::Replicated(Replicated { seq: None }))
                }
                IngestRequest::Search(_) => {
                    return Err(not_ready(format!(
                        "this search replica is not in use (SEARCH_REPLICAS is {})",
                        settings.search_replicas
                    )))
                }
                _ => {}
            }
        }
        match envelope.message {
            IngestRequest::Replicate(batch) => self.replicate(&settings, batch).await,
            IngestRequest::Search(search) => self.search(&tenant, &settings, search).await,
            IngestRequest::Embed(embed) => {
                self.reader
                    .embed(&self.state, &tenant, &settings, embed)
                    .await
            }
            IngestRequest::Inspect(_) => Ok(IngestResponse::Replica(self.view()?)),
            _ => Err(ErrorReply::new(
                ErrorCode::InvalidRequest,
                "a search replica answers searches, embeddings and its writer's changes only",
            )),
        }
    }
}

impl worker::DurableObject for SearchReplica {
    rpc::no_websockets!("SearchReplica");

    fn new(state: State, env: Env) -> Self {
        Self {
            reader: Reader::new(env.clone()),
            state,
            env,
            loaded: RefCell::new(None),
            applied: Cell::new(0),
            copies: Cell::new(0),
            generation: Cell::new(0),
            copy_started_at: Cell::new(None),
        }
    }

    async fn fetch(&self, req: HttpRequest) -> worker::Result<Response> {
        let envelope = match rpc::read_request::<IngestRequest, IngestResponse>(req).await {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let request_id = envelope.request_id.clone();
        let reply = self.handle(envelope).await;
        Ok(rpc::reply_response(Some(request_id), reply))
    }

    /// Takes the copy a change or a search asked for, outside their
    /// requests. An error makes the runtime retry the alarm later.
    async fn alarm(&self) -> worker::Result<Response> {
        let result = match self.settings() {
            Ok(settings) => match self.load(None) {
                Ok(tenant) => {
                    // Left out of the set: forgets, and copies nothing.
                    if self.left_out(&settings).unwrap_or(true) {
                        Ok(())
                    } else {
                        self.copy_in_background(&tenant, &settings).await
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Response::ok("done"),
            Err(e) => Err(worker::Error::RustError(format!(
                "search replica alarm: {}",
                e.message
            ))),
        }
    }
}
