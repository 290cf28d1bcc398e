//! The transport between the gateway and the actors: one `POST` per message,
//! a MessagePack [`protocol::Envelope`] in, a [`protocol::ReplyEnvelope`] out.
//!
//! Both sides live here so that the request shape is built in one place, as
//! does the one check every typed handle makes on a reply ([`expect_reply`],
//! [`reply_as!`](crate::rpc::reply_as)).

use crate::error::ActorError;
use protocol::{Envelope, ErrorCode, ErrorReply, ReplyEnvelope, RequestId, TenantId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Stub};

/// Content type of every actor message.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// The URL actors are called at; the host is never resolved, only the path is read.
const RPC_URL: &str = "https://actor.internal/rpc";

/// One tenant's object of one actor class, reached by its tenant-scoped name
/// (`${tenantId}:${resource}`); what every typed handle is built on.
pub struct ActorStub {
    stub: Stub,
    tenant: TenantId,
}

impl ActorStub {
    /// The object `${tenant}:${resource}` of the namespace bound as `binding`.
    pub fn new(
        env: &Env,
        binding: &str,
        resource: &str,
        tenant: &TenantId,
    ) -> Result<Self, ActorError> {
        let stub = env
            .durable_object(binding)?
            .get_by_name(&tenant.object_name(resource))?;
        Ok(Self {
            stub,
            tenant: tenant.clone(),
        })
    }

    /// The object's stub, for calls that are not one envelope and one reply.
    pub fn stub(&self) -> &Stub {
        &self.stub
    }

    /// The tenant the object belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Sends `message` in an envelope for this tenant and decodes the reply.
    pub async fn send<M: Serialize, R: DeserializeOwned>(
        &self,
        request_id: &RequestId,
        message: M,
    ) -> Result<R, ActorError> {
        let envelope = Envelope::new(request_id.clone(), self.tenant.clone(), message);
        call(&self.stub, &envelope).await
    }
}

/// Sends `envelope` to the object behind `stub` and decodes its reply.
pub async fn call<M: Serialize, R: DeserializeOwned>(
    stub: &Stub,
    envelope: &Envelope<M>,
) -> Result<R, ActorError> {
    call_encoded(stub, &protocol::encode(envelope)?).await
}

/// Sends an envelope already encoded (`body`, from [`protocol::encode`]) to
/// the object behind `stub` and decodes its reply: one message sent to
/// several objects is encoded once.
pub async fn call_encoded<R: DeserializeOwned>(stub: &Stub, body: &[u8]) -> Result<R, ActorError> {
    let mut response = post_encoded(stub, body).await?;
    let bytes = response.bytes().await?;
    let reply: ReplyEnvelope<R> = protocol::decode_reply(&bytes)?;
    reply.reply.map_err(ActorError::Refused)
}

/// Posts `envelope` to the object behind `stub`; the raw response (for
/// replies that stream).
pub async fn post<M: Serialize>(
    stub: &Stub,
    envelope: &Envelope<M>,
) -> Result<Response, ActorError> {
    post_encoded(stub, &protocol::encode(envelope)?).await
}

async fn post_encoded(stub: &Stub, body: &[u8]) -> Result<Response, ActorError> {
    let headers = Headers::new();
    headers.set("content-type", CONTENT_TYPE)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(worker::js_sys::Uint8Array::from(body).into()));
    let request = Request::new_with_init(RPC_URL, &init)?;
    Ok(stub.fetch_with_request(request).await?)
}

/// Reads an incoming actor request. On failure, returns the response to send
/// back instead (a typed `Protocol` refusal), so a shell never panics on input.
pub async fn read_request<M: DeserializeOwned, R: Serialize>(
    mut req: Request,
) -> Result<Envelope<M>, Response> {
    if req.method() != Method::Post || req.path() != "/rpc" {
        return Err(reply_response::<R>(
            None,
            Err(ErrorReply::new(
                ErrorCode::Protocol,
                "actors answer POST /rpc only",
            )),
        ));
    }
    let bytes = match req.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Err(reply_response::<R>(
                None,
                Err(ErrorReply::new(ErrorCode::Protocol, e.to_string())),
            ))
        }
    };
    protocol::decode(&bytes).map_err(|e| {
        reply_response::<R>(
            None,
            Err(ErrorReply::new(ErrorCode::Protocol, e.to_string())),
        )
    })
}

/// Encodes a reply as the HTTP response of an actor.
pub fn reply_response<R: Serialize>(
    request_id: Option<RequestId>,
    reply: Result<R, ErrorReply>,
) -> Response {
    let envelope = ReplyEnvelope::new(request_id, reply);
    let bytes = match protocol::encode_reply(&envelope) {
        Ok(bytes) => bytes,
        // Encoding our own reply cannot fail for the types we use; if it ever
        // does, answer with an encodable refusal instead of panicking.
        Err(e) => protocol::encode_reply(&ReplyEnvelope::<()>::new(
            envelope.request_id,
            Err(ErrorReply::new(ErrorCode::Internal, e.to_string())),
        ))
        .unwrap_or_default(),
    };
    let headers = Headers::new();
    // Setting a constant, valid header cannot fail.
    let _ = headers.set("content-type", CONTENT_TYPE);
    Response::builder().with_headers(headers).fixed(bytes)
}

/// An actor's response enum: names the variant it holds, so that a reply of
/// the wrong kind can be reported as [`ActorError::UnexpectedReply`].
pub trait NamedReply {
    /// The variant's name (`"Tenant"` for `CoordinatorResponse::Tenant(_)`).
    fn variant(&self) -> &'static str;
}

/// The payload of the variant a request expects, taken out of `reply` by
/// `pick`; any other variant becomes [`ActorError::UnexpectedReply`] naming
/// `expected` and what came instead.
///
/// Typed handles call it through [`reply_as!`](crate::rpc::reply_as), which
/// writes `pick` and `expected` from the variant's path.
pub fn expect_reply<R: NamedReply, T>(
    reply: R,
    expected: &'static str,
    pick: impl FnOnce(R) -> Option<T>,
) -> Result<T, ActorError> {
    let got = reply.variant();
    pick(reply).ok_or(ActorError::UnexpectedReply { expected, got })
}

/// `reply_as!(reply, CoordinatorResponse::Tenant)`: the payload of
/// `CoordinatorResponse::Tenant(payload)` as `Result<_, ActorError>`, or
/// [`ActorError::UnexpectedReply`] (`expected: "Tenant"`) for any other
/// variant. The enum must implement [`NamedReply`]; every variant the macro
/// names must hold exactly one value.
///
/// ```ignore
/// let record = reply_as!(self.send(request_id, message).await?, CoordinatorResponse::Tenant)?;
/// ```
macro_rules! reply_as {
    ($reply:expr, $response:ident :: $variant:ident) => {
        $crate::rpc::expect_reply($reply, stringify!($variant), |reply| match reply {
            $response::$variant(payload) => Some(payload),
            // An enum of one variant makes this arm unreachable; still correct.
            #[allow(unreachable_patterns)]
            _ => None,
        })
    };
}
pub(crate) use reply_as;

/// `worker`'s default Durable Object handlers panic, and a panic resets the
/// Wasm instance and every request in flight in the isolate, other tenants'
/// included. `refuse_connect!("name")`, inside an `impl DurableObject`,
/// implements `connect` (a TCP socket from `Stub::connect`, which no caller
/// of ours opens) as a refusal.
macro_rules! refuse_connect {
    ($actor:literal) => {
        async fn connect(&self, mut socket: worker::Socket) -> worker::Result<()> {
            let _ = socket.close().await;
            Err(worker::Error::RustError(
                concat!($actor, " takes no socket connections").into(),
            ))
        }
    };
}
pub(crate) use refuse_connect;

/// `no_websockets!("name")`, inside the `impl DurableObject` of an actor that
/// never accepts WebSockets: the WebSocket handlers, which would otherwise
/// panic if a socket ever reached the object, close it instead.
macro_rules! no_websockets {
    ($actor:literal) => {
        async fn websocket_message(
            &self,
            ws: worker::WebSocket,
            _message: worker::WebSocketIncomingMessage,
        ) -> worker::Result<()> {
            let _ = ws.close(Some(1011), Some(concat!($actor, " takes no WebSockets")));
            Ok(())
        }

        async fn websocket_close(
            &self,
            _ws: worker::WebSocket,
            _code: usize,
            _reason: String,
            _was_clean: bool,
        ) -> worker::Result<()> {
            Ok(())
        }

        async fn websocket_error(
            &self,
            _ws: worker::WebSocket,
            _error: worker::Error,
        ) -> worker::Result<()> {
            Ok(())
        }

        $crate::rpc::refuse_connect!($actor);
    };
}
pub(crate) use no_websockets;
