//! What a generation is asked to do: [`GenerateOptions`] (sampling, stopping), and the two
//! strategies that change how attached tokens are produced, [`Escalate`] and [`Speculate`].

use crate::error::{Error, Result};
use crate::ops::Sampling;
use crate::speculate::DraftLength;

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
    /// Attached tokens come from speculative rounds: the shadow drafts, the base verifies.
    pub speculate: Option<Speculate>,
    /// What an earlier `auto` generation over the same link measured
    /// ([`super::Generation::draft_length`]): this one starts from those costs instead of
    /// from nothing. Callers that keep a session pass it on; JavaScript cannot set it (the npm
    /// model carries it between its generations).
    #[serde(skip)]
    pub draft_costs: Option<DraftLength>,
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

/// Speculative attached decoding (see [`crate::speculate`]): the draft length per round.
/// From JavaScript, `'auto'` or `{ draft: K }`; on the command line, `auto` or `K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "SpeculateJs")]
pub enum Speculate {
    /// Up to K drafts a round (0: plain attached decoding).
    Draft(usize),
    /// The length that the measured costs and acceptance say is fastest, 0 included.
    Auto,
}

/// The most drafts a round takes.
pub const MAX_DRAFT: usize = 16;

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SpeculateJs {
    Name(String),
    Draft { draft: usize },
}

impl TryFrom<SpeculateJs> for Speculate {
    type Error = String;
    fn try_from(v: SpeculateJs) -> std::result::Result<Self, String> {
        match v {
            SpeculateJs::Name(s) => s.parse(),
            SpeculateJs::Draft { draft } => Ok(Speculate::Draft(draft)),
        }
    }
}

impl std::str::FromStr for Speculate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Speculate::Auto),
            _ => s.parse().map(Speculate::Draft).map_err(|_| {
                format!("speculate: `{s}`, expected auto or a draft length (0 to {MAX_DRAFT})")
            }),
        }
    }
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
            speculate: None,
            draft_costs: None,
        }
    }
}

impl GenerateOptions {
    pub(super) fn validate(&self) -> Result<()> {
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
        if let Some(Speculate::Draft(k)) = self.speculate {
            if k > MAX_DRAFT {
                return Err(Error::InvalidRequest(format!(
                    "speculate: a draft of {k} tokens, expected at most {MAX_DRAFT}"
                )));
            }
        }
        Ok(())
    }

    /// Greedy decoding: the argmax of the raw logits (on the device).
    pub(super) fn greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }

    /// The logits processors of one decision, with `draw`.
    pub(super) fn sampling(&self, draw: f64) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            draw,
        }
    }
}
