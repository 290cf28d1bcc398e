//! The conversation's pure core: the turn state machine (user turn → model →
//! tool calls → tool results → model → … → answer), its bound on tool
//! iterations, the concurrency rule, and what history fits the model.

use crate::ports::{ChatMessage, Role, ToolCall};

/// Most rounds of tool calls in one turn; the next round is refused.
pub const MAX_TOOL_ITERATIONS: u32 = 4;
/// Characters of history sent to the model (about 6k tokens), system prompt aside.
pub const CONTEXT_BUDGET_CHARS: usize = 24_000;
/// The system prompt.
pub const SYSTEM_PROMPT: &str = "You answer questions about this tenant's documents. \
Use vector_search to find passages and cite them as [n] with their document ids. \
Use kv_get only for keys under config:. If the documents do not answer, say so.";

/// A second message while a turn is being answered is refused (409): two
/// answers are never interleaved, and nothing is queued behind a client's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What to do with what the model produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run these tools, store their results, and ask the model again.
    CallTools(Vec<ToolCall>),
    /// The answer is complete: store it and finish.
    Answer(String),
    /// The model keeps calling tools: stop with an error.
    LimitReached,
}

/// Decides the next step after generation round `iteration` (from 0).
pub fn next_step(text: String, calls: Vec<ToolCall>, iteration: u32) -> Step {
    if calls.is_empty() {
        Step::Answer(text)
    } else if iteration >= MAX_TOOL_ITERATIONS {
        Step::LimitReached
    } else {
        Step::CallTools(calls)
    }
}

/// The session's in-memory state.
#[derive(Debug, Default)]
pub struct SessionCore {
    in_flight: bool,
}

impl SessionCore {
    /// Starts a turn, unless one is being answered.
    pub fn begin(&mut self) -> Result<(), Busy> {
        if self.in_flight {
            return Err(Busy);
        }
        self.in_flight = true;
        Ok(())
    }

    /// Ends the current turn, however it ended.
    pub fn end(&mut self) {
        self.in_flight = false;
    }

    /// Whether a turn is being answered.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
}

fn size(m: &ChatMessage) -> usize {
    m.content.len()
        + m.tool_calls
            .iter()
            .map(|c| c.arguments.to_string().len() + c.name.len())
            .sum::<usize>()
}

/// The messages sent to the model: the system prompt, then the most recent
/// history that fits `budget` characters. The newest message is always kept,
/// and the context never starts with a tool result whose call was cut off.
pub fn context(system: &str, history: &[ChatMessage], budget: usize) -> Vec<ChatMessage> {
    let mut used = 0;
    let mut start = history.len();
    for (i, m) in history.iter().enumerate().rev() {
        if start < history.len() && used + size(m) > budget {
            break;
        }
        used += size(m);
        start = i;
    }
    while history.get(start).is_some_and(|m| m.role == Role::Tool) && start + 1 < history.len() {
        start += 1;
    }
    let mut out = vec![ChatMessage {
        role: Role::System,
        content: system.to_owned(),
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
    }];
    out.extend(history.iter().skip(start).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        }
    }

    fn call() -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "vector_search".into(),
            arguments: json!({}),
        }
    }

    #[test]
    fn the_tool_loop_is_bounded() {
        assert_eq!(next_step("hi".into(), vec![], 0), Step::Answer("hi".into()));
        assert_eq!(
            next_step(String::new(), vec![call()], 0),
            Step::CallTools(vec![call()])
        );
        assert_eq!(
            next_step(String::new(), vec![call()], MAX_TOOL_ITERATIONS - 1),
            Step::CallTools(vec![call()])
        );
        assert_eq!(
            next_step(String::new(), vec![call()], MAX_TOOL_ITERATIONS),
            Step::LimitReached
        );
        assert_eq!(
            next_step("done".into(), vec![], MAX_TOOL_ITERATIONS),
            Step::Answer("done".into())
        );
    }

    #[test]
    fn one_turn_at_a_time() {
        let mut core = SessionCore::default();
        assert_eq!(core.begin(), Ok(()));
        assert!(core.in_flight());
        assert_eq!(core.begin(), Err(Busy));
        core.end();
        assert_eq!(core.begin(), Ok(()));
    }

    #[test]
    fn history_is_trimmed_to_the_budget() {
        let history: Vec<ChatMessage> = (0..10)
            .map(|i| {
                msg(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    &format!("{i:0>10}"),
                )
            })
            .collect();
        let ctx = context("sys", &history, 35);
        assert_eq!(ctx[0].role, Role::System);
        let kept: Vec<&str> = ctx.iter().skip(1).map(|m| m.content.as_str()).collect();
        assert_eq!(kept, vec!["0000000007", "0000000008", "0000000009"]);
        // Everything fits a big budget.
        assert_eq!(context("sys", &history, 10_000).len(), 11);
        // The newest message is kept even when it alone is over the budget.
        let big = vec![msg(Role::User, &"x".repeat(100))];
        assert_eq!(context("sys", &big, 10).len(), 2);
    }

    #[test]
    fn context_never_starts_with_an_orphaned_tool_result() {
        let history = vec![
            msg(Role::User, "q1"),
            ChatMessage {
                tool_calls: vec![call()],
                ..msg(Role::Assistant, "")
            },
            msg(Role::Tool, &"r".repeat(50)),
            msg(Role::Assistant, "answer"),
            msg(Role::User, "q2"),
        ];
        let ctx = context("sys", &history, 60);
        assert!(ctx.iter().skip(1).all(|m| m.role != Role::Tool), "{ctx:?}");
        assert_eq!(ctx.last().map(|m| m.content.as_str()), Some("q2"));
    }
}
