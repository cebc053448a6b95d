//! The sampling, stopping and escalation flags of `generate` and `chat`.

use anyhow::{bail, Result};
use clap::Args;
use shadowpeft::generate::Escalate;
use shadowpeft::{GenerateOptions, Speculate, TextTokenizer};

#[derive(Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Start detached and switch to attached when the detached model emits this text
    /// (e.g. `[REMOTE]`); the marker is dropped and the attached model answers instead.
    #[arg(long)]
    pub escalate_marker: Option<String>,
    /// Start detached and switch to attached when the detached model's top
    /// probability falls below this (0..1).
    #[arg(long)]
    pub escalate_below: Option<f32>,
    /// Speculative attached decoding: the shadow drafts up to K tokens (0 to 16) and the
    /// base checks them in one pass; `auto` picks K from the measured round-trip time,
    /// costs and acceptance. Greedy output is that of plain attached decoding.
    #[arg(long, value_name = "K|auto")]
    pub speculate: Option<Speculate>,
}

impl SamplingArgs {
    /// The generation options these flags give; `chat` adds the end-of-turn token to the
    /// stop ids.
    pub fn options(
        &self,
        tokenizer: Option<&TextTokenizer>,
        chat: bool,
    ) -> Result<GenerateOptions> {
        let mut eos_ids = Vec::new();
        if chat {
            if let Some(id) = tokenizer.and_then(|t| t.token_id("<|im_end|>")) {
                eos_ids.push(id);
            }
        }
        let mut opts = GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ignore_eos: self.ignore_eos,
            eos_ids,
            escalate: None,
            speculate: self.speculate,
            draft_costs: None,
        };
        if self.escalate_marker.is_some() || self.escalate_below.is_some() {
            let marker_ids = match (&self.escalate_marker, tokenizer) {
                (Some(m), Some(tok)) => match tok.token_id(m) {
                    Some(id) => vec![id],
                    None => tok.encode(m, false)?,
                },
                (Some(_), None) => bail!("--escalate-marker needs the model's tokenizer.json"),
                (None, _) => Vec::new(),
            };
            opts.escalate = Some(Escalate {
                marker: self.escalate_marker.clone(),
                marker_ids,
                min_prob: self.escalate_below,
            });
        }
        Ok(opts)
    }
}
