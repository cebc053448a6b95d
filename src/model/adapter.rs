//! The official ShadowPEFT injection and update (shadow-peft 0.1.1), for base layers
//! l = 1..L-1 with k = l - 1:
//! ```text
//! h = h + alpha * ((h - s) @ injection_downs[k]) @ injection_ups[k]      # before layer l
//! u = LayerNorm(h_out; hidden_norm)                                      # after layer l
//! t = update_transforms.k.3 @ silu(update_transforms.k.0 @ u)
//! g = sigmoid(update_gates.k.2 @ silu(update_gates.k.0 @ u))
//! s = s + g * (t - s)
//! ```
//! The stacked `injection_downs [L-1, d, r]` / `injection_ups [L-1, r, d]` are stored here
//! transposed, as `[out, in]` linear weights.

use crate::error::Result;
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops::{self, Linear};

use super::config::ShadowConfig;
use super::decoder::{load_linear, load_vec};
use super::weights::Weights;

struct Slot {
    down: Linear,
    up: Linear,
    gate0: Linear,
    gate2: Linear,
    tr0: Linear,
    tr3: Linear,
}

/// Injection and update weights for every adapted base layer.
pub struct Adapter {
    alpha: f32,
    hidden: usize,
    rank: usize,
    gate: usize,
    norm_w: Tensor,
    norm_b: Tensor,
    slots: Vec<Slot>,
}

/// Activations of the adapter for up to `rows` tokens.
pub(crate) struct AdapterScratch {
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    u: Tensor,
    gh: Tensor,
    th: Tensor,
    t: Tensor,
    g: Tensor,
}

/// Slice `k` of a stacked `[L-1, rows, cols]` tensor, transposed to a `[cols, rows]` linear.
fn transposed(
    gpu: &Gpu,
    name: &str,
    all: &[f32],
    k: usize,
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let m = &all[k * rows * cols..(k + 1) * rows * cols];
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    Ok(Linear {
        w: gpu.upload_matrix(name, &t, cols, rows)?,
        b: None,
    })
}

impl Adapter {
    /// Loads the adapter for a base of `layers` layers and width `hidden`.
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        sc: &ShadowConfig,
        layers: usize,
        hidden: usize,
    ) -> Result<Self> {
        let n = layers.saturating_sub(1);
        let (d, r, g) = (hidden, sc.injection_hidden_size, sc.gate_hidden_size);
        let downs = "shadow_injection_model.injection_downs";
        let ups = "shadow_injection_model.injection_ups";
        let all_downs = w.get(downs, &[n, d, r])?;
        let all_ups = w.get(ups, &[n, r, d])?;
        let mut slots = Vec::with_capacity(n);
        for k in 0..n {
            let p = "shadow_update_model";
            slots.push(Slot {
                down: transposed(gpu, downs, &all_downs, k, d, r)?,
                up: transposed(gpu, ups, &all_ups, k, r, d)?,
                gate0: load_linear(gpu, w, &format!("{p}.update_gates.{k}.0"), g, d, false)?,
                gate2: load_linear(gpu, w, &format!("{p}.update_gates.{k}.2"), d, g, false)?,
                tr0: load_linear(gpu, w, &format!("{p}.update_transforms.{k}.0"), g, d, false)?,
                tr3: load_linear(gpu, w, &format!("{p}.update_transforms.{k}.3"), d, g, false)?,
            });
        }
        Ok(Adapter {
            alpha: sc.alpha,
            hidden: d,
            rank: r,
            gate: g,
            norm_w: load_vec(gpu, w, "shadow_update_model.hidden_norm.weight", d)?,
            norm_b: load_vec(gpu, w, "shadow_update_model.hidden_norm.bias", d)?,
            slots,
        })
    }

    pub(crate) fn new_scratch(&self, gpu: &Gpu, rows: usize) -> AdapterScratch {
        let z = |n: &str, w: usize| gpu.zeros(n, rows * w);
        let d = self.hidden;
        AdapterScratch {
            delta: z("delta", d),
            a: z("inject a", self.rank),
            b: z("inject b", d),
            u: z("update u", d),
            gh: z("gate hidden", self.gate),
            th: z("transform hidden", self.gate),
            t: z("transform", d),
            g: z("gate", d),
        }
    }

    /// Injection before base layer `k + 1`: `h += alpha * ((h - s) Wd) Wu`.
    pub(crate) fn inject(
        &self,
        step: &mut Step,
        k: usize,
        h: &Tensor,
        s: &Tensor,
        m: usize,
        sc: &AdapterScratch,
    ) {
        let (d, sl) = (self.hidden, &self.slots[k]);
        ops::sub(step, h, s, &sc.delta, m * d);
        ops::linear(step, &sc.delta, 0, m, &sl.down, &sc.a, 0, self.rank);
        ops::linear(step, &sc.a, 0, m, &sl.up, &sc.b, 0, d);
        ops::add(step, &sc.b, h, m * d, self.alpha);
    }

    /// Update after base layer `k + 1`: `s += sigmoid(G(u)) * (T(u) - s)`, `u = LN(h)`.
    pub(crate) fn update(
        &self,
        step: &mut Step,
        k: usize,
        h: &Tensor,
        s: &Tensor,
        m: usize,
        sc: &AdapterScratch,
    ) {
        let (d, g, sl) = (self.hidden, self.gate, &self.slots[k]);
        ops::layer_norm(step, h, &self.norm_w, &self.norm_b, &sc.u, m, d, 1e-5);
        ops::linear(step, &sc.u, 0, m, &sl.tr0, &sc.th, 0, g);
        ops::silu(step, &sc.th, m * g);
        ops::linear(step, &sc.th, 0, m, &sl.tr3, &sc.t, 0, d);
        ops::linear(step, &sc.u, 0, m, &sl.gate0, &sc.gh, 0, g);
        ops::silu(step, &sc.gh, m * g);
        ops::linear(step, &sc.gh, 0, m, &sl.gate2, &sc.g, 0, d);
        ops::shadow_update(step, &sc.t, &sc.g, s, m * d);
    }
}
