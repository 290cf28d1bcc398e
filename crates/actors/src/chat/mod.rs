//! `ChatSession`: one per conversation (`${tenantId}:${sessionId}`), owner of
//! its history, its turns (over SSE or hibernating WebSockets) and the tool
//! calls the model makes.

pub mod completion;
pub mod core;
pub mod events;
mod handle;
mod object;
mod runtime;
pub mod socket;
mod stateless;
mod store;
pub mod tools;
pub mod turn;

pub use handle::{ChatHandle, CompletionStream, Resumed, TurnStream};
pub use object::ChatSession;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "CHAT_SESSIONS";

/// Content type of a streamed turn (frames of `protocol::chat`).
pub const FRAMES_CONTENT_TYPE: &str = "application/x-chat-frames";
