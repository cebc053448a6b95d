//! Models: configuration, weights, the decoder stack, the shadow adapter, and [`ShadowModel`],
//! which runs a ShadowPEFT model attached (base + shadow) or detached (shadow alone).
//!
//! Attached forward of M new tokens at positions pos0..pos0+M (official shadow-peft math):
//! ```text
//! s0 = P(ShadowDecoder(E_s[ids]))                 # shadow state, [M, d]
//! h  = E[ids];  h = Layer_0(h);  s = s0
//! for l in 1..L:  h = inject_{l-1}(h, s);  h = Layer_l(h);  s = update_{l-1}(h, s)
//! logits = lm_head(norm(h));  shadow_logits = shadow_lm_head(s0)
//! ```
//! Detached runs only the first line and the shadow head. Both keep a KV cache per decoder,
//! so decoding one token costs one token's work.

pub mod adapter;
pub mod base;
// The backbone server's batched passes and KV pool.
#[cfg(not(target_arch = "wasm32"))]
pub mod batch;
pub mod config;
pub mod decoder;
mod forward;
mod inflight;
#[cfg(not(target_arch = "wasm32"))]
pub mod kv_pool;
mod load;
pub mod pack;
pub mod packed;
mod session;
pub mod shards;
pub mod source;
pub mod stream;
pub mod weights;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, WeightFormat};
use crate::ops::Linear;

use crate::remote::client::RemoteBase;
use adapter::Adapter;
use base::BaseModel;
use decoder::Decoder;

pub use forward::{ForwardOutput, Readout};
pub use inflight::InFlight;
pub use load::detect_format;
pub use session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Base model with shadow injection/update: logits are the base model's.
    Attached,
    /// Shadow alone: logits are the shadow head's.
    Detached,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attached" => Ok(Mode::Attached),
            "detached" => Ok(Mode::Detached),
            o => Err(Error::InvalidRequest(format!(
                "mode `{o}`: expected attached or detached"
            ))),
        }
    }
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Longest sequence (prompt + generated) a session can hold; capped by the config's
    /// `max_position_embeddings`.
    pub max_seq: usize,
    /// Storage of the decoder projections, embeddings and heads (matrices whose rows are not
    /// whole blocks of 32, and everything else, stay f32).
    pub weights: WeightFormat,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_seq: 2048,
            weights: WeightFormat::F32,
        }
    }
}

struct Base {
    model: BaseModel,
    head: Linear,
    adapter: Adapter,
}

/// The base on a backbone server: the client keeps the head, and in the stepped protocol
/// the injection/update weights.
struct RemoteAttach {
    client: RemoteBase,
    head: Linear,
    adapter: Option<Adapter>,
}

/// A loaded ShadowPEFT model, attached (base local or remote) or detached.
pub struct ShadowModel {
    mode: Mode,
    base: Option<Base>,
    remote: Option<RemoteAttach>,
    shadow: Decoder,
    shadow_embed: Matrix,
    proj: Option<Linear>,
    shadow_head: Linear,
    vocab: usize,
    hidden: usize,
    eos: Vec<u32>,
    /// Storage requested at load time (also used for heads loaded by `attach_remote`).
    weights: WeightFormat,
}

impl ShadowModel {
    /// The base layer count of a remote backbone (`None` without one).
    pub fn remote_layers(&self) -> Option<usize> {
        self.remote.as_ref().map(|r| r.client.layers)
    }

    /// Attached or detached.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The weight storage requested at load time.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// Vocabulary size of the logits.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// End-of-sequence ids from generation_config.json (or config.json).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Longest sequence a session holds.
    pub fn max_seq(&self) -> usize {
        match (&self.base, &self.remote) {
            (Some(b), _) => b.model.decoder.max_seq().min(self.shadow.max_seq()),
            (None, Some(r)) => r.client.max_seq.min(self.shadow.max_seq()),
            _ => self.shadow.max_seq(),
        }
    }

    /// Most positions whose logits one [`Readout::AllLogits`] forward can return (the logits
    /// buffer must fit one storage binding).
    pub fn max_logit_rows(&self, gpu: &Gpu) -> usize {
        ((gpu.max_binding() / (self.vocab as u64 * 4)) as usize).max(1)
    }
}
