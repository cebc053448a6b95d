//! Sampling and the token loop: one batched prefill, then one token per step on the KV
//! caches. The token is chosen on the GPU (argmax, or the device sampler of
//! [`crate::ops::sample`] with a draw from the seeded host generator) and 4 bytes are read back
//! per step; only a confidence check for escalation, or a top-k beyond
//! [`crate::ops::TOP_K_MAX`], reads the last row of logits and samples on the host.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Mode, Readout, Session, ShadowModel};
pub use crate::ops::{Dist, Sampling};

/// Sampling and stopping settings. From JavaScript the fields are camelCase
/// (`maxNewTokens`, `topK`, ...) and every one is optional.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k filter.
    pub top_k: usize,
    /// 1 means no nucleus filter.
    pub top_p: f32,
    /// 1 means none (Hugging Face semantics: divide positive logits, multiply negative ones).
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Extra ids that end generation (the model's EOS ids are always used unless ignored).
    pub eos_ids: Vec<u32>,
    /// Start detached and escalate to the attached model on a marker or low confidence.
    pub escalate: Option<Escalate>,
}

/// Escalation: the generation starts detached (the shadow alone, the base deferred) and
/// switches to attached for good when the detached model emits `marker_ids`, or when its
/// top probability falls below `min_prob`. The base then catches up on every earlier
/// position in one pass, and the attached model produces the token in place of the marker
/// (the marker's tokens are dropped) or of the unsure token. Each token reports its mode.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Escalate {
    /// The marker as text (e.g. `[REMOTE]`); callers with a tokenizer resolve it into
    /// `marker_ids` (one id when the vocabulary has the marker as a token).
    pub marker: Option<String>,
    /// The marker's token ids.
    pub marker_ids: Vec<u32>,
    /// Escalate when the detached model's highest next-token probability is below this.
    pub min_prob: Option<f32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            ignore_eos: false,
            eos_ids: Vec::new(),
            escalate: None,
        }
    }
}

impl GenerateOptions {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidRequest(m.to_string()));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty must be a finite number > 0");
        }
        if let Some(e) = &self.escalate {
            if e.marker.is_some() && e.marker_ids.is_empty() {
                return bad("escalate.marker must be turned into marker_ids with the tokenizer");
            }
            if let Some(p) = e.min_prob {
                if !(p > 0.0 && p <= 1.0) {
                    return bad("escalate.min_prob must be in (0, 1]");
                }
            }
            if e.marker_ids.is_empty() && e.min_prob.is_none() {
                return bad("escalate needs a marker, a min_prob, or both");
            }
        }
        Ok(())
    }

    fn greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

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
            (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        };
        Sampling {
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            repetition_penalty: o.repetition_penalty,
            draw,
        }
    }

    /// Picks the next token from `logits` on the host (see [`Sampling::pick`]).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], o: &GenerateOptions) -> u32 {
        self.next(o).pick(logits, history)
    }
}

/// A generation in progress, advanced one token at a time by [`TokenStream::next`]: the
/// first call runs the part of the prompt the session does not hold yet (batched prefill),
/// later calls feed back the previous token. Driving the loop from outside lets callers
/// stream, abort between tokens, or interleave work.
pub struct TokenStream {
    opts: GenerateOptions,
    cached: usize,
    sampler: Sampler,
    eos: Vec<u32>,
    history: Vec<u32>,
    input: Vec<u32>,
    produced: usize,
    stop: Option<StopReason>,
    last_mode: Option<Mode>,
    /// Tokens decided and not yet handed out.
    ready: std::collections::VecDeque<(u32, Mode)>,
    /// Detached tokens that match the start of the escalation marker, held back.
    held: Vec<u32>,
    escalated: bool,
}

impl TokenStream {
    /// Starts a generation after `prompt`, the whole sequence so far (for a chat, the whole
    /// conversation rendered again). The session keeps the longest common prefix of what it
    /// holds and `prompt` (see [`Session::reuse`]), so only the rest is run; the result is
    /// that of a fresh session on `prompt`. Options are validated before the session is
    /// touched; nothing runs until `next`.
    pub fn new(
        model: &ShadowModel,
        sess: &mut Session,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if opts.escalate.is_some() && model.mode() != Mode::Attached {
            return Err(Error::InvalidRequest(
                "escalation needs an attached model (a local or remote base)".into(),
            ));
        }
        let mut eos: Vec<u32> = model.eos_ids().to_vec();
        eos.extend(&opts.eos_ids);
        // Escalation defers the base again at the first step; otherwise a deferred stretch
        // left by an earlier generation is caught up by the first forward.
        sess.defer_base(false);
        let cached = sess.reuse(prompt);
        Ok(TokenStream {
            opts: opts.clone(),
            cached,
            sampler: Sampler::new(opts.seed),
            eos,
            history: prompt.to_vec(),
            input: prompt[cached..].to_vec(),
            produced: 0,
            stop: None,
            last_mode: None,
            ready: Default::default(),
            held: Vec::new(),
            escalated: false,
        })
    }

    /// Prompt positions reused from the session's caches.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Why the stream ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Which model produced the last token.
    pub fn last_mode(&self) -> Option<Mode> {
        self.last_mode
    }

    /// Marks the stream as stopped by the caller (e.g. a stop string or an abort).
    pub fn cancel(&mut self) {
        self.stop.get_or_insert(StopReason::Callback);
    }

    /// Produces the next token, or `None` when the stream has ended (EOS, length, cancel).
    pub async fn next(
        &mut self,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<Option<u32>> {
        loop {
            if let Some((t, m)) = self.ready.pop_front() {
                self.last_mode = Some(m);
                return Ok(Some(t));
            }
            if self.stop.is_some() {
                return Ok(None);
            }
            if self.produced >= self.opts.max_new_tokens {
                if self.held.is_empty() {
                    self.stop = Some(StopReason::Length);
                } else {
                    // Out of room: a partial marker is ordinary output.
                    self.ready
                        .extend(self.held.drain(..).map(|t| (t, Mode::Detached)));
                }
                continue;
            }
            self.step(gpu, model, sess).await?;
        }
    }

    /// The forward for the next position: detached while escalation is pending.
    async fn step(&mut self, gpu: &Gpu, model: &ShadowModel, sess: &mut Session) -> Result<()> {
        let esc = self.opts.escalate.clone().filter(|_| !self.escalated);
        if esc.is_some() && !sess.is_deferred() {
            sess.defer_base(true);
        }
        let min_prob = esc.as_ref().and_then(|e| e.min_prob);
        let readout = self.readout(gpu, sess, min_prob.is_some());
        let mut f = model
            .forward(gpu, sess, &self.input, readout, false)
            .await?;
        if let Some(p) = min_prob {
            if f.mode == Some(Mode::Detached) && top_prob(&f.logits) < p {
                f = self.escalate(gpu, model, sess).await?;
            }
        }
        let mut tok = self.pick(f.token, f.logits);
        let mut mode = f.mode.unwrap_or(model.mode());
        let marker = match &esc {
            Some(e) if !self.escalated && mode == Mode::Detached => e.marker_ids.as_slice(),
            _ => &[],
        };
        if !marker.is_empty() {
            self.held.push(tok);
            if self.held == marker {
                // Drop the marker and rewind past the marker tokens already fed; the
                // attached model answers at the marker's first position.
                let n = self.held.len();
                sess.truncate(sess.position() - (n - 1));
                self.history.truncate(self.history.len() - (n - 1));
                self.produced -= n - 1;
                self.held.clear();
                let f = self.escalate(gpu, model, sess).await?;
                tok = self.pick(f.token, f.logits);
                mode = f.mode.unwrap_or(model.mode());
            } else if marker.starts_with(&self.held) {
                self.advance(tok);
                return Ok(());
            } else {
                // Hand out everything that can no longer start the marker.
                let cut = (1..=self.held.len())
                    .find(|&i| marker.starts_with(&self.held[i..]))
                    .unwrap_or(self.held.len());
                self.ready
                    .extend(self.held.drain(..cut).map(|t| (t, Mode::Detached)));
                self.advance(tok);
                if self.held.is_empty() && !self.opts.ignore_eos && self.eos.contains(&tok) {
                    self.stop = Some(StopReason::Eos);
                }
                return Ok(());
            }
        }
        self.ready.push_back((tok, mode));
        self.advance(tok);
        if !self.opts.ignore_eos && self.eos.contains(&tok) {
            self.stop = Some(StopReason::Eos);
        }
        Ok(())
    }

    /// Ends the deferred stretch: the base catches up and gives the logits in place of the
    /// detached ones for the same position.
    async fn escalate(
        &mut self,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<crate::model::ForwardOutput> {
        self.escalated = true;
        let readout = self.readout(gpu, sess, false);
        model.escalate(gpu, sess, readout).await
    }

    /// What the next forward reads back: the token chosen on the device (greedy, or sampled
    /// with a fresh draw), or the last row of logits when the host needs them (a confidence
    /// check, or a top-k beyond the device sampler's).
    fn readout(&mut self, gpu: &Gpu, sess: &mut Session, host_logits: bool) -> Readout {
        if host_logits || self.opts.top_k > crate::ops::TOP_K_MAX {
            return Readout::LastLogits;
        }
        if self.opts.greedy() {
            return Readout::Argmax;
        }
        if self.opts.repetition_penalty != 1.0 {
            sess.set_penalized(gpu, &self.history);
        }
        Readout::Sample(self.sampler.next(&self.opts))
    }

    fn pick(&mut self, token: Option<u32>, mut logits: Vec<f32>) -> u32 {
        match token {
            Some(t) => t,
            None => self.sampler.sample(&mut logits, &self.history, &self.opts),
        }
    }

    fn advance(&mut self, tok: u32) {
        self.produced += 1;
        self.history.push(tok);
        self.input = vec![tok];
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
    };
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
    Ok(out)
}
