//! The token loop: one batched prefill, then tokens on the KV caches, produced by one of
//! three strategies that [`TokenStream`] drives with the stopping rules they share:
//!
//! - plain ([`plain`]): one forward per token, attached or detached. The token is chosen on
//!   the GPU (argmax, or the device sampler of [`crate::ops::sample`] with a draw from the
//!   seeded host generator) and 8 bytes are read back; a top-k beyond
//!   [`crate::ops::TOP_K_MAX`] reads the row of logits and samples on the host.
//! - escalation ([`escalation`]): detached until a marker or low confidence, then attached.
//! - speculative ([`speculative`]): the shadow drafts, the base verifies several tokens per
//!   pass ([`crate::speculate`]).
//!
//! A backbone failure with fallback on is not a strategy: the model answers detached, and
//! every strategy carries on with the tokens marked detached.

mod cursor;
mod escalation;
mod options;
mod plain;
mod speculative;
mod stream;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::{Mode, Session, ShadowModel};
pub use crate::ops::{Dist, Sampling};
pub use options::{Escalate, GenerateOptions, Speculate, MAX_DRAFT};
pub use speculative::SpeculationStats;
pub use stream::TokenStream;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token was produced (it is included in the tokens).
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// The callback asked to stop (e.g. a stop string matched).
    Callback,
}

/// Result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Which model produced each token: attached, or detached (a detached model, the stretch
    /// before an escalation, or after a backbone failure with fallback).
    pub modes: Vec<Mode>,
    pub stop: StopReason,
    /// Prompt positions kept from the session's KV caches (the common prefix with what the
    /// session held); the prefill ran the other `prefill_tokens`.
    pub cached_tokens: usize,
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// How speculation went, when it was asked for (see [`GenerateOptions::speculate`]).
    pub speculation: Option<SpeculationStats>,
    /// Round trips to the backbone server during this generation (remote mode).
    pub round_trips: Option<u64>,
    /// What `auto` speculation measured, for the next generation over the same link
    /// ([`GenerateOptions::draft_costs`]).
    pub draft_length: Option<crate::speculate::DraftLength>,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// Generated tokens per second after the first (which the prefill produces).
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 {
            0.0
        } else {
            n as f64 / self.decode_secs.max(1e-9)
        }
    }
}

/// The highest probability of a softmax over `logits`.
pub fn top_prob(logits: &[f32]) -> f32 {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - mx) as f64).exp()).sum();
    (1.0 / sum) as f32
}

/// Seeded draws for [`Sampling`] (same seed, same choices).
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next decision's settings from `o`, with a fresh draw (none at temperature 0).
    pub fn next(&mut self, o: &GenerateOptions) -> Sampling {
        let draw = if o.temperature == 0.0 {
            0.0
        } else {
            self.draw()
        };
        o.sampling(draw)
    }

    /// A uniform draw in [0, 1).
    pub fn draw(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` on the host (see [`Sampling::pick`]).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], o: &GenerateOptions) -> u32 {
        self.next(o).pick(logits, history)
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new id as
/// soon as it exists; `on_token` returns `false` to stop. `prompt` is the whole sequence:
/// the session reuses what it already holds of it (see [`TokenStream::new`]), so a chat
/// passes the whole conversation at every turn.
pub async fn generate(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    prompt: &[u32],
    o: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    let mut stream = TokenStream::new(model, sess, prompt, o)?;
    let mut out = Generation {
        tokens: Vec::new(),
        modes: Vec::new(),
        stop: StopReason::Length,
        cached_tokens: stream.cached_tokens(),
        prefill_tokens: prompt.len() - stream.cached_tokens(),
        prefill_secs: 0.0,
        decode_secs: 0.0,
        speculation: None,
        round_trips: None,
        draft_length: None,
    };
    let trips0 = sess.remote_traffic().map(|t| t.0);
    let t0 = web_time::Instant::now();
    let mut t_decode = t0;
    while let Some(tok) = stream.next(gpu, model, sess).await? {
        if out.tokens.is_empty() {
            out.prefill_secs = t0.elapsed().as_secs_f64();
            t_decode = web_time::Instant::now();
        }
        out.tokens.push(tok);
        out.modes.push(stream.last_mode().unwrap_or(model.mode()));
        if !on_token(tok)? {
            stream.cancel();
        }
    }
    out.decode_secs = t_decode.elapsed().as_secs_f64();
    out.stop = stream.stop_reason().unwrap_or(StopReason::Length);
    out.speculation = stream.speculation();
    out.draft_length = stream.draft_length();
    out.round_trips = trips0.zip(sess.remote_traffic()).map(|(a, b)| b.0 - a);
    Ok(out)
}
