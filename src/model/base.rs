//! The frozen base model run with the shadow adapter: embeddings, the decoder layers with
//! injection before and update after every adapted layer (l >= 1 for the official adapter,
//! the wrapped blocks for Hugging Face peft's), and the final norm. Used in-process for local
//! attached mode and by the backbone server for remote sessions.
//!
//! ```text
//! h = E[ids];  s = s0
//! for l in 0..L:  s = update_{l-1}(h, s);  h = inject_l(h, s);  h = Layer_l(h)   # where adapted
//! out = norm(h)
//! ```

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, Step, Tensor};
use crate::ops;

use super::adapter::Adapter;
use super::config::ArchConfig;
use super::decoder::{Decoder, KvCache, Scratch};
use super::weights::Weights;

/// The frozen base: token embeddings and the decoder stack (no head).
pub struct BaseModel {
    pub decoder: Decoder,
    pub embed: Matrix,
}

/// One conversation on the base: its KV cache and activations for up to `rows` tokens.
pub struct BaseState {
    pub(crate) cache: KvCache,
    pub(crate) rows: usize,
    pub(crate) x: Tensor,
    pub(crate) s: Tensor,
    /// The final normed hidden state `[rows, hidden]` of the last run.
    pub(crate) xn: Tensor,
    scratch: Scratch,
    /// Whether this state runs the adapter (false for a stepped session: its client does).
    adapted: bool,
}

impl BaseModel {
    /// Loads `model.embed_tokens` and `model.layers.*` / `model.norm` of a Hugging Face model.
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        cfg: &ArchConfig,
        max_seq: usize,
        embed: Option<Matrix>,
    ) -> Result<Self> {
        let embed = match embed {
            Some(e) => e,
            None => w.matrix(gpu, "model.embed_tokens.weight", cfg.vocab, cfg.hidden)?,
        };
        Ok(BaseModel {
            decoder: Decoder::load(gpu, w, "model.", cfg, max_seq)?,
            embed,
        })
    }

    /// Architecture.
    pub fn cfg(&self) -> &ArchConfig {
        &self.decoder.cfg
    }

    /// A fresh conversation state sized for `rows` tokens per call.
    pub fn new_state(&self, gpu: &Gpu, adapter: Option<&Adapter>, rows: usize) -> BaseState {
        let d = self.decoder.cfg.hidden;
        BaseState {
            cache: self.decoder.new_cache(gpu),
            rows,
            x: gpu.zeros("x", rows * d),
            s: gpu.zeros("s", rows * d),
            xn: gpu.zeros("xn", rows * d),
            scratch: self.decoder.new_scratch(gpu, rows),
            adapted: adapter.is_some(),
        }
    }

    /// Grows the activations of `st` to hold `rows` tokens (the KV cache is kept).
    pub fn grow(&self, gpu: &Gpu, adapter: Option<&Adapter>, st: &mut BaseState, rows: usize) {
        if rows <= st.rows {
            return;
        }
        let d = self.decoder.cfg.hidden;
        st.rows = rows;
        st.x = gpu.zeros("x", rows * d);
        st.s = gpu.zeros("s", rows * d);
        st.xn = gpu.zeros("xn", rows * d);
        st.scratch = self.decoder.new_scratch(gpu, rows);
        st.adapted = adapter.is_some();
    }

    /// Records the base over `m` tokens `ids` at positions `pos0..pos0 + m` with shadow state
    /// `s0` `[m, hidden]`; the normed output lands in `st.xn`.
    pub fn record(
        &self,
        step: &mut Step,
        adapter: &Adapter,
        st: &BaseState,
        ids: &Tensor,
        s0: &Tensor,
        m: usize,
        pos0: usize,
    ) -> Result<()> {
        if !st.adapted {
            return Err(Error::InvalidRequest(
                "this base state was made for a stepped session (its client runs the adapter)"
                    .into(),
            ));
        }
        let d = self.decoder.cfg.hidden;
        ops::embedding(step, ids, &self.embed, &st.x, m);
        step.copy(s0, 0, &st.s, 0, m * d);
        let n = self.decoder.num_layers();
        for l in 0..n {
            adapter.between(step, l, &st.x, &st.s, m);
            self.decoder
                .layer(step, l, &st.x, m, pos0, &st.cache, &st.scratch);
        }
        self.decoder.final_norm(step, &st.x, &st.xn, m);
        Ok(())
    }

    /// Records the embeddings of `m` tokens `ids` into `st.x` (the stepped protocol's pass
    /// start when the client injects before layer 0).
    pub fn record_embedding(&self, step: &mut Step, st: &BaseState, ids: &Tensor, m: usize) {
        ops::embedding(step, ids, &self.embed, &st.x, m);
    }

    /// Records base layer `l` alone over `m` rows at positions `pos0..pos0 + m`, for the
    /// stepped protocol: from the embeddings of `ids` when `embed`, else from `st.x` (the
    /// client's injected input, written there by the caller). The output stays in `st.x`;
    /// after the last layer its normed form is in `st.xn`.
    #[allow(clippy::too_many_arguments)]
    pub fn record_layer(
        &self,
        step: &mut Step,
        st: &BaseState,
        l: usize,
        ids: &Tensor,
        embed: bool,
        m: usize,
        pos0: usize,
    ) {
        if embed {
            self.record_embedding(step, st, ids, m);
        }
        self.decoder
            .layer(step, l, &st.x, m, pos0, &st.cache, &st.scratch);
        if l + 1 == self.decoder.num_layers() {
            self.decoder.final_norm(step, &st.x, &st.xn, m);
        }
    }
}
