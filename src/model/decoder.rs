//! The decoder stack shared by Qwen3, Qwen2 and Llama (they differ only in q/k norm and
//! biases), with a KV cache per session.
//!
//! One layer, for M new tokens at positions pos0..pos0+M:
//! ```text
//! xn = RMSNorm(x);  [q|k|v] = xn [Wq|Wk|Wv]^T (+b);  [Qwen3] q,k = RMSNorm_head(q,k)
//! q,k = RoPE(q,k);  cache[pos0..] = k,v;  x += Attention(q, cache) Wo^T
//! xn = RMSNorm(x);  x += (silu(xn Wg^T) * (xn Wu^T)) Wd^T
//! ```

use crate::error::Result;
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops::{self, Linear, RopeTable};

use super::config::ArchConfig;
use super::weights::Weights;

/// Loads `{name}.weight` `[out, inp]` and, when `bias`, `{name}.bias` `[out]`.
pub(crate) fn load_linear(
    gpu: &Gpu,
    w: &Weights,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    Ok(Linear {
        w: w.matrix(gpu, &format!("{name}.weight"), out, inp)?,
        b: if bias {
            Some(w.vector(gpu, &format!("{name}.bias"), out)?)
        } else {
            None
        },
    })
}

pub(crate) fn load_vec(gpu: &Gpu, w: &Weights, name: &str, n: usize) -> Result<Tensor> {
    w.vector(gpu, name, n)
}

/// The q, k and v projections: one matrix of their rows joined (one product writes
/// `[q | k | v]` per token), or the three apart where they cannot be joined (formats or
/// widths differ, or the joined rows exceed one storage binding).
enum Qkv {
    Joined(Linear),
    Split([Linear; 3]),
}

impl Qkv {
    fn new(gpu: &Gpu, label: &str, q: Linear, k: Linear, v: Linear) -> Result<Self> {
        let Some(w) = gpu.join_rows(label, &[&q.w, &k.w, &v.w])? else {
            return Ok(Qkv::Split([q, k, v]));
        };
        let b = match (&q.b, &k.b, &v.b) {
            (Some(a), Some(b), Some(c)) => Some(gpu.join(label, &[a, b, c])?),
            _ => None,
        };
        Ok(Qkv::Joined(Linear { w, b }))
    }

    /// Records `y[m, :] = [q | k | v]` of `x[m, :]` for `m < rows`.
    fn record(&self, step: &mut Step, x: &Tensor, rows: usize, y: &Tensor) {
        match self {
            Qkv::Joined(l) => ops::linear(step, x, 0, rows, l, y, 0, l.w.rows),
            Qkv::Split(parts) => {
                let ld = parts.iter().map(|l| l.w.rows).sum();
                let mut at = 0;
                for l in parts {
                    ops::linear(step, x, 0, rows, l, y, at, ld);
                    at += l.w.rows;
                }
            }
        }
    }
}

struct Layer {
    in_norm: Tensor,
    post_norm: Tensor,
    qkv: Qkv,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A decoder stack (layers + final norm) on the device.
pub struct Decoder {
    pub cfg: ArchConfig,
    layers: Vec<Layer>,
    norm: Tensor,
    rope: RopeTable,
}

/// Per-session key/value cache of one decoder: `[capacity, kv_heads * head_dim]` per layer.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    capacity: usize,
}

impl KvCache {
    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Activations for up to `rows` tokens.
pub(crate) struct Scratch {
    rows: usize,
    xn: Tensor,
    /// `[rows, q | k | v]` as projected.
    qkv: Tensor,
    /// q after its norm and rotation.
    q: Tensor,
    attn: Tensor,
    gu: Tensor,
    act: Tensor,
    /// Attention scores of up to [`ops::CPU_SCORE_ROWS`] query rows over the whole cache
    /// (`[rows, heads, max_seq]`), for the CPU attention kernel.
    scores: Tensor,
}

impl Decoder {
    /// Loads the layers under `prefix` (`model.` for a causal LM, `shadow_model.` for a shadow
    /// backbone) and the final norm; positions up to `max_seq` get rotary tables.
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        prefix: &str,
        cfg: &ArchConfig,
        max_seq: usize,
    ) -> Result<Self> {
        let c = cfg;
        let (h, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let p = format!("{prefix}layers.{l}");
            let a = format!("{p}.self_attn");
            let proj =
                |name: &str, out| load_linear(gpu, w, &format!("{a}.{name}"), out, h, c.qkv_bias);
            layers.push(Layer {
                in_norm: load_vec(gpu, w, &format!("{p}.input_layernorm.weight"), h)?,
                post_norm: load_vec(gpu, w, &format!("{p}.post_attention_layernorm.weight"), h)?,
                qkv: Qkv::new(
                    gpu,
                    &format!("{a}.qkv"),
                    proj("q_proj", qd)?,
                    proj("k_proj", kvd)?,
                    proj("v_proj", kvd)?,
                )?,
                o: load_linear(gpu, w, &format!("{p}.self_attn.o_proj"), h, qd, c.o_bias)?,
                q_norm: c
                    .qk_norm
                    .then(|| load_vec(gpu, w, &format!("{p}.self_attn.q_norm.weight"), c.head_dim))
                    .transpose()?,
                k_norm: c
                    .qk_norm
                    .then(|| load_vec(gpu, w, &format!("{p}.self_attn.k_norm.weight"), c.head_dim))
                    .transpose()?,
                gate: load_linear(
                    gpu,
                    w,
                    &format!("{p}.mlp.gate_proj"),
                    c.intermediate,
                    h,
                    c.mlp_bias,
                )?,
                up: load_linear(
                    gpu,
                    w,
                    &format!("{p}.mlp.up_proj"),
                    c.intermediate,
                    h,
                    c.mlp_bias,
                )?,
                down: load_linear(
                    gpu,
                    w,
                    &format!("{p}.mlp.down_proj"),
                    h,
                    c.intermediate,
                    c.mlp_bias,
                )?,
            });
        }
        Ok(Decoder {
            cfg: cfg.clone(),
            layers,
            norm: load_vec(gpu, w, &format!("{prefix}norm.weight"), h)?,
            rope: RopeTable::new(gpu, c.rope_theta, c.head_dim, max_seq),
        })
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions this decoder's rotary tables cover.
    pub fn max_seq(&self) -> usize {
        self.rope.positions
    }

    /// A KV cache for `max_seq` positions.
    pub fn new_cache(&self, gpu: &Gpu) -> KvCache {
        let n = self.rope.positions * self.cfg.kv_heads * self.cfg.head_dim;
        KvCache {
            k: (0..self.layers.len())
                .map(|_| gpu.zeros("k cache", n))
                .collect(),
            v: (0..self.layers.len())
                .map(|_| gpu.zeros("v cache", n))
                .collect(),
            capacity: self.rope.positions,
        }
    }

    pub(crate) fn new_scratch(&self, gpu: &Gpu, rows: usize) -> Scratch {
        let c = &self.cfg;
        let (qd, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let z = |n: &str, len: usize| gpu.zeros(n, rows * len);
        Scratch {
            rows,
            xn: z("xn", c.hidden),
            qkv: z("qkv", qd + 2 * kvd),
            q: z("q", qd),
            attn: z("attn", qd),
            gu: z("gate_up", 2 * c.intermediate),
            act: z("act", c.intermediate),
            // Only CPU devices run that kernel; elsewhere a minimal buffer.
            scores: gpu.zeros(
                "scores",
                if gpu.is_cpu() {
                    rows.min(ops::CPU_SCORE_ROWS) * c.heads * self.rope.positions
                } else {
                    1
                },
            ),
        }
    }

    /// Runs layer `l` on `x` `[m, hidden]` in place, for positions `pos0..pos0 + m` of the
    /// session whose cache is `cache`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer(
        &self,
        step: &mut Step,
        l: usize,
        x: &Tensor,
        m: usize,
        pos0: usize,
        cache: &KvCache,
        s: &Scratch,
    ) {
        let kv = ops::KvLayout::Seq { pos0 };
        self.layer_kv(step, l, x, m, &kv, (&cache.k[l], &cache.v[l]), s);
    }

    /// Runs layer `l` on `x` `[m, hidden]` in place, each row at the position `kv` gives and
    /// its keys and values in `cache` (layer `l`'s k and v), as `kv` lays them out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_kv(
        &self,
        step: &mut Step,
        l: usize,
        x: &Tensor,
        m: usize,
        kv: &ops::KvLayout,
        cache: (&Tensor, &Tensor),
        s: &Scratch,
    ) {
        debug_assert!(m <= s.rows);
        let c = &self.cfg;
        let ly = &self.layers[l];
        let (h, hd) = (c.hidden, c.head_dim);
        // 1. Attention input norm and q/k/v projections.
        ops::rms_norm(step, x, 0, &ly.in_norm, &s.xn, 0, m, h, c.rms_eps);
        ly.qkv.record(step, &s.xn, m, &s.qkv);
        // 2. Per-head q/k norm (Qwen3) and rotary embeddings; k and v go straight into the
        // cache.
        let io = ops::QkRope {
            qkv: &s.qkv,
            q_norm: ly.q_norm.as_ref(),
            k_norm: ly.k_norm.as_ref(),
            q: &s.q,
            k: cache.0,
            v: cache.1,
        };
        ops::qk_rope(step, &self.rope, &io, m, c.heads, c.kv_heads, kv, c.rms_eps);
        // 3. Causal attention over the cache, output projection, residual.
        ops::attention(
            step, &s.q, cache.0, cache.1, &s.attn, m, kv, c.heads, c.kv_heads, hd, &s.scores,
        );
        ops::linear_add(step, &s.attn, 0, m, &ly.o, x, 0, h, 1.0);
        // 4. MLP: SwiGLU of the gate and up projections, down projection, residual.
        ops::rms_norm(step, x, 0, &ly.post_norm, &s.xn, 0, m, h, c.rms_eps);
        ops::glu(
            step,
            &s.xn,
            m,
            &ly.gate,
            &ly.up,
            &s.gu,
            &s.act,
            c.intermediate,
        );
        ops::linear_add(step, &s.act, 0, m, &ly.down, x, 0, h, 1.0);
    }

    /// The final RMSNorm: `y = norm(x)` for `m` rows.
    pub(crate) fn final_norm(&self, step: &mut Step, x: &Tensor, y: &Tensor, m: usize) {
        self.final_norm_rows(step, (x, 0), (y, 0), m);
    }

    /// The final RMSNorm of `m` rows of `x` from row `x.1` into `y` from row `y.1`.
    pub(crate) fn final_norm_rows(
        &self,
        step: &mut Step,
        x: (&Tensor, usize),
        y: (&Tensor, usize),
        m: usize,
    ) {
        let h = self.cfg.hidden;
        ops::rms_norm(
            step,
            x.0,
            x.1 * h,
            &self.norm,
            y.0,
            y.1 * h,
            m,
            h,
            self.cfg.rms_eps,
        );
    }
}
