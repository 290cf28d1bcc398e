//! The I/O of a stateless completion ([`super::completion`]): the model chain,
//! the tenant's tools, the frames to the gateway, and the accounting at the
//! end (usage recorded, the reservation settled). Nothing of the
//! conversation is stored.

use super::completion::{model_messages, CompletionMachine, Effect};
use super::runtime::{FrameSender, Inner};
use super::tools;
use crate::generation::routing::generate_routed;
use crate::ports::{Clock, GenerationEvent, RuntimeSleep, SystemClock, ToolSpec};
use protocol::chat::{encode_frame_of, Usage};
use protocol::completion::{Complete, CompletionEvent, CompletionFrame};
use protocol::coordinator::TenantSettings;
use protocol::usage::caller_of;
use protocol::{RequestId, TenantId};
use serde_json::Value;
use std::collections::VecDeque;
use std::rc::Rc;

/// The specs the model is offered: the tenant's tools the request asked for,
/// then the client's functions (their schemas parsed; the gateway checked
/// that they parse).
fn offered_tools(complete: &Complete) -> Vec<ToolSpec> {
    let tenant = tools::specs()
        .into_iter()
        .filter(|t| complete.tenant_tools.contains(&t.name));
    let client = complete.tools.iter().map(|t| ToolSpec {
        name: t.name.clone(),
        description: t.description.clone(),
        parameters: serde_json::from_str(&t.parameters)
            .unwrap_or_else(|_| serde_json::json!({"type": "object"})),
    });
    tenant.chain(client).collect()
}

/// Sends the frames of one completion, numbered from 1.
struct Frames {
    tx: FrameSender,
    next: u64,
}

impl Frames {
    fn send(&mut self, event: CompletionEvent) {
        self.next += 1;
        let frame = CompletionFrame {
            id: self.next,
            event,
        };
        match encode_frame_of(&frame) {
            Ok(bytes) => {
                // A client that went away is no reason to stop: the
                // completion is accounted for all the same.
                let _ = self.tx.unbounded_send(Ok(bytes));
            }
            Err(e) => worker::console_error!("completion: a frame did not encode: {e}"),
        }
    }
}

impl Inner {
    /// Runs `complete` to its end, streaming its events to `tx`, then
    /// accounts for what it used.
    pub(super) async fn complete(
        self: Rc<Self>,
        tenant: TenantId,
        request_id: RequestId,
        complete: Complete,
        tx: FrameSender,
    ) {
        let mut frames = Frames { tx, next: 0 };
        let limits = match self.limits() {
            Ok(l) => l,
            Err(e) => {
                frames.send(CompletionEvent::Error {
                    code: "internal".into(),
                    message: e.message,
                });
                // Nothing was used: the reservation goes back.
                drop(frames);
                self.settle(
                    &tenant,
                    &request_id,
                    &complete,
                    None,
                    None,
                    &Default::default(),
                )
                .await;
                return;
            }
        };
        let give_up_at = SystemClock.now_ms().saturating_add(limits.turn_timeout_ms);
        let settings = self.tenant_settings(&tenant, &request_id).await;
        let chain = self.chain(
            &tenant,
            settings.as_ref(),
            complete.model.as_deref(),
            complete.access.key.clone(),
            None,
        );
        let prices = settings
            .as_ref()
            .map(TenantSettings::prices)
            .unwrap_or_default();
        let (mut machine, first) = CompletionMachine::start(
            model_messages(&complete.messages),
            offered_tools(&complete),
            complete.tenant_tools.clone(),
            complete.tool_choice.clone(),
            complete.options.clone(),
            complete.max_tokens,
            limits.max_tool_result_bytes,
        );
        let caller = caller_of(complete.access.key.as_deref(), true);
        let mut waiting: VecDeque<Effect> = first.into();
        while let Some(effect) = waiting.pop_front() {
            let more = match effect {
                Effect::Emit(event) => {
                    let event = match event {
                        // The machine knows tokens; the price is the tenant's.
                        CompletionEvent::Done {
                            finish_reason,
                            mut usage,
                            model,
                        } => {
                            usage.cost_micros = prices.price(&model).map(|p| {
                                p.cost_micros(protocol::limits::TokenUsage {
                                    input_tokens: usage.input_tokens,
                                    output_tokens: usage.output_tokens,
                                })
                            });
                            CompletionEvent::Done {
                                finish_reason,
                                usage,
                                model,
                            }
                        }
                        other => other,
                    };
                    frames.send(event);
                    vec![]
                }
                Effect::Generate(request) => match &chain {
                    Err(e) => machine.fail("model_unavailable", e.clone()),
                    Ok(chain) => {
                        let mut emitted = Vec::new();
                        let outcome = generate_routed(
                            chain,
                            &request,
                            &limits.route_policy(),
                            &RuntimeSleep,
                            &SystemClock,
                            give_up_at,
                            &mut |event| match event {
                                GenerationEvent::Text(piece) => {
                                    // Sent as they come: the client reads
                                    // the answer while it is written.
                                    for effect in machine.on_text(piece) {
                                        if let Effect::Emit(event) = effect {
                                            frames.send(event);
                                        } else {
                                            emitted.push(effect);
                                        }
                                    }
                                }
                                GenerationEvent::ToolCall(call) => machine.on_tool_call(call),
                                GenerationEvent::Usage {
                                    prompt_tokens,
                                    completion_tokens,
                                } => machine.on_usage(Usage {
                                    prompt_tokens,
                                    completion_tokens,
                                }),
                            },
                        )
                        .await;
                        emitted.extend(machine.on_routed(outcome));
                        emitted
                    }
                },
                Effect::RunTool(call) => {
                    let (result, is_error): (Value, bool) =
                        self.run_tool(&tenant, &request_id, &caller, &call).await;
                    machine.on_tool_result(&call.id, &result, is_error)
                }
            };
            waiting.extend(more);
        }
        if !machine.is_ended() {
            // Nothing left to do and no end: a bug, never a silent stream.
            frames.send(CompletionEvent::Error {
                code: "internal".into(),
                message: "the completion stopped without an answer".into(),
            });
        }
        drop(frames);
        let (model, used) = (machine.model().map(str::to_owned), machine.used());
        self.settle(&tenant, &request_id, &complete, model, used, &prices)
            .await;
    }

    /// Records what `complete` used and settles its reservation (nothing
    /// used: released).
    async fn settle(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        complete: &Complete,
        model: Option<String>,
        used: Option<protocol::limits::TokenUsage>,
        prices: &protocol::limits::PriceTable,
    ) {
        super::runtime::account(
            &self.env,
            tenant,
            request_id,
            complete.access.key.as_deref(),
            complete.reservation.as_ref(),
            model,
            used,
            prices,
        )
        .await;
    }
}
