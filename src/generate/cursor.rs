//! [`Cursor`]: where a generation stands, shared by every strategy: the sequence so far, what
//! the next forward runs, the tokens decided and not yet handed out, the seeded draws.

use std::collections::VecDeque;

use super::{GenerateOptions, Sampler, StopReason};
use crate::gpu::Gpu;
use crate::model::{Mode, Readout, Session};

pub(super) struct Cursor {
    pub opts: GenerateOptions,
    pub sampler: Sampler,
    pub eos: Vec<u32>,
    /// The prompt and every token decided (held ones included).
    pub history: Vec<u32>,
    /// The ids the next forward runs: the rest of the prompt, then the last token.
    pub input: Vec<u32>,
    /// Tokens decided (counted against `max_new_tokens`).
    pub produced: usize,
    /// Tokens decided and not yet handed out, with the model that produced each.
    pub ready: VecDeque<(u32, Mode)>,
    pub stop: Option<StopReason>,
}

impl Cursor {
    pub fn new(opts: &GenerateOptions, eos: Vec<u32>, prompt: &[u32], cached: usize) -> Self {
        Cursor {
            opts: opts.clone(),
            sampler: Sampler::new(opts.seed),
            eos,
            history: prompt.to_vec(),
            input: prompt[cached..].to_vec(),
            produced: 0,
            ready: VecDeque::new(),
            stop: None,
        }
    }

    /// Whether `t` ends the generation.
    pub fn is_eos(&self, t: u32) -> bool {
        !self.opts.ignore_eos && self.eos.contains(&t)
    }

    /// Tokens that may still be decided.
    pub fn left(&self) -> usize {
        self.opts.max_new_tokens.saturating_sub(self.produced)
    }

    /// Decides `t`: it is handed out, fed to the next forward, and ends the stream if EOS.
    pub fn emit(&mut self, t: u32, mode: Mode) {
        self.ready.push_back((t, mode));
        self.advance(t);
        if self.is_eos(t) {
            self.stop = Some(StopReason::Eos);
        }
    }

    /// Decides `t` without handing it out yet (a strategy holds it back).
    pub fn advance(&mut self, t: u32) {
        self.produced += 1;
        self.history.push(t);
        self.input = vec![t];
    }

    /// What a one-token forward reads back: the token chosen on the device (greedy, or
    /// sampled with a fresh draw), or the last row of logits when the host needs them (a
    /// confidence check, or a top-k beyond [`crate::ops::TOP_K_MAX`]).
    pub fn readout(&mut self, gpu: &Gpu, sess: &mut Session, host_logits: bool) -> Readout {
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

    /// The token of a forward made with [`Cursor::readout`]: the device's choice, or a host
    /// sample from the logits.
    pub fn pick(&mut self, token: Option<u32>, mut logits: Vec<f32>) -> u32 {
        match token {
            Some(t) => t,
            None => self.sampler.sample(&mut logits, &self.history, &self.opts),
        }
    }
}
