//! Chat prompts: a message list rendered with the model's chat template, as Hugging Face's
//! `apply_chat_template(messages, add_generation_prompt=True)` renders it (assistant turns as
//! their text), then tokenised. Every turn renders the whole conversation again; the session
//! finds what it can reuse on the token ids ([`crate::Session::reuse`]), nothing is assumed.
//!
//! When the rendered prompt and the answer's `max_tokens` do not fit the model's positions,
//! [`render`] fails with [`Error::ContextLength`], or, with [`Truncation::Auto`], drops the
//! oldest turns (a user message and the replies after it, never a system message nor the last
//! user message) until they fit.

use crate::error::{Error, Result};
use crate::tokenizer::{Message, TextTokenizer};

/// What to do when a conversation does not fit the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Fail with [`Error::ContextLength`].
    #[default]
    Disabled,
    /// Drop the oldest non-system turns until the prompt and the answer fit.
    Auto,
}

impl std::str::FromStr for Truncation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disabled" | "off" => Ok(Truncation::Disabled),
            "auto" => Ok(Truncation::Auto),
            o => Err(Error::InvalidRequest(format!(
                "truncation `{o}`: expected auto or disabled"
            ))),
        }
    }
}

/// A conversation rendered for the next answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPrompt {
    /// The prompt's token ids (the rendered text, tokenised without added special tokens).
    pub ids: Vec<u32>,
    /// The messages rendered: the input, less what truncation dropped.
    pub messages: Vec<Message>,
    /// How many of the input's messages truncation dropped (0 unless [`Truncation::Auto`]).
    pub dropped_messages: usize,
}

/// Renders `messages` for the next assistant answer and checks that it and `max_tokens`
/// new tokens fit `max_seq` positions (see the module docs for `truncation`).
pub fn render(
    tok: &TextTokenizer,
    messages: &[Message],
    max_tokens: usize,
    max_seq: usize,
    truncation: Truncation,
) -> Result<ChatPrompt> {
    if !messages.iter().any(|m| m.role != "system") {
        return Err(Error::InvalidRequest(
            "messages: the conversation has no user message".into(),
        ));
    }
    let encode = |msgs: &[Message]| -> Result<Vec<u32>> {
        let text = tok.apply_chat_template(msgs, true)?;
        tok.encode(&text, false)
    };
    let mut kept = messages.to_vec();
    let mut dropped = 0;
    loop {
        let ids = encode(&kept)?;
        if ids.len() + max_tokens <= max_seq {
            return Ok(ChatPrompt {
                ids,
                messages: kept,
                dropped_messages: dropped,
            });
        }
        let turn = match truncation {
            Truncation::Auto => oldest_turn(&kept),
            Truncation::Disabled => None,
        };
        let Some(range) = turn else {
            return Err(Error::ContextLength {
                prompt: ids.len(),
                max_tokens,
                max_seq,
            });
        };
        dropped += range.len();
        kept.drain(range);
    }
}

/// The oldest turn that may be dropped: a non-system message and the non-user messages that
/// follow it, provided a user message remains after them.
fn oldest_turn(msgs: &[Message]) -> Option<std::ops::Range<usize>> {
    let start = msgs.iter().position(|m| m.role != "system")?;
    let end = (start + 1..msgs.len())
        .find(|&i| msgs[i].role == "user")
        .unwrap_or(msgs.len());
    msgs[end..]
        .iter()
        .any(|m| m.role == "user")
        .then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn oldest_turn_keeps_system_and_the_last_user_message() {
        let m = [
            msg("system", "s"),
            msg("user", "a"),
            msg("assistant", "A"),
            msg("user", "b"),
            msg("assistant", "B"),
            msg("user", "c"),
        ];
        assert_eq!(oldest_turn(&m), Some(1..3));
        assert_eq!(oldest_turn(&m[3..]), Some(0..2));
        assert_eq!(oldest_turn(&m[5..]), None);
        assert_eq!(oldest_turn(&[msg("system", "s"), msg("user", "c")]), None);
        // An assistant message first (no user before it) goes with the turn it opens.
        assert_eq!(
            oldest_turn(&[msg("assistant", "x"), msg("user", "c")]),
            Some(0..1)
        );
    }
}
