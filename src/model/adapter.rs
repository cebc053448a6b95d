//! The shadow injection and update around the base layers, in the two published forms.
//!
//! **Official shadow-peft (0.1.1)**, for base layers l = 1..L-1 with k = l - 1:
//! ```text
//! h = h + alpha * ((h - s) @ injection_downs[k]) @ injection_ups[k]      # before layer l
//! u = LayerNorm(h_out; hidden_norm)                                      # after layer l
//! t = update_transforms.k.3 @ silu(update_transforms.k.0 @ u)
//! g = sigmoid(update_gates.k.2 @ silu(update_gates.k.0 @ u))
//! s = s + g * (t - s)
//! ```
//! The stacked `injection_downs [L-1, d, r]` / `injection_ups [L-1, r, d]` are stored here
//! transposed, as `[out, in]` linear weights.
//!
//! **Hugging Face peft (`peft_type: "SHADOW"`, peft 0.21)**, for every wrapped block l (a
//! contiguous run, block 0 included when targeted):
//! ```text
//! h = h + alpha * shadow_up(shadow_down(h - s))                          # before block l
//! t = T(h_out);  g = sigmoid(G(h_out))                                   # after block l, no norm
//! s = (1 - g) * s + g * t                   with T, G = Linear(+bias) -> GELU(erf) -> Linear(+bias)
//! ```
//! Both are held as one slot per base layer (`None` where a layer runs plain), its weights packed
//! into one buffer; what runs between two base layers (the update after the first, the
//! injection before the second) is one dispatch. The update after the last slot is never read
//! (the shadow logits come from s0), so it is skipped.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step, Tensor, WeightFormat};
use crate::ops::{self, AdapterShape, Linear, PackedSlot, UpdateNets};

use super::config::{PeftAdapterSpec, ShadowConfig};
use super::decoder::{load_linear, load_vec};
use super::weights::Weights;

/// Which published algorithm an adapter follows (and which files hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterFormat {
    /// The official `shadow-peft` package: `shadow_config.json` + `shadow_adapter.safetensors`.
    ShadowPeft,
    /// Hugging Face `peft`'s SHADOW tuner: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
}

impl AdapterFormat {
    /// The name used in the remote protocol's adapter upload (`format` metadata).
    pub fn wire_name(self) -> &'static str {
        match self {
            AdapterFormat::ShadowPeft => "shadow-peft",
            AdapterFormat::Peft => "peft",
        }
    }
}

/// The single f32 buffer of an adapter matrix (adapter weights are never quantised and far
/// below one storage binding).
fn plain(l: &Linear, name: &str) -> Result<Tensor> {
    match (l.w.format, l.w.chunks.as_slice()) {
        (WeightFormat::F32, [(t, _, _)]) => Ok(t.clone()),
        _ => Err(Error::InvalidRequest(format!(
            "adapter matrix `{name}` must be one f32 buffer"
        ))),
    }
}

/// The update networks of one slot from their four linears (`{transform, gate} x {l0, l1}`);
/// the biases, when present, are joined T's then G's for the fused kernels.
fn update_nets(gpu: &Gpu, nets: [(&str, Linear); 4], width: usize) -> Result<UpdateNets> {
    let [(t0n, t0), (t1n, t1), (g0n, g0), (g1n, g1)] = nets;
    let join = |a: &Linear, b: &Linear| -> Result<Option<Tensor>> {
        match (&a.b, &b.b) {
            (Some(x), Some(y)) => Ok(Some(gpu.join("update biases", &[x, y])?)),
            _ => Ok(None),
        }
    };
    Ok(UpdateNets {
        hidden_bias: join(&t0, &g0)?,
        out_bias: join(&t1, &g1)?,
        t0: plain(&t0, t0n)?,
        g0: plain(&g0, g0n)?,
        t1: plain(&t1, t1n)?,
        g1: plain(&g1, g1n)?,
        width,
    })
}

/// Injection and update weights for every adapted base layer.
pub struct Adapter {
    format: AdapterFormat,
    alpha: f32,
    hidden: usize,
    shape: AdapterShape,
    /// One per base layer.
    slots: Vec<Option<PackedSlot>>,
}

/// One layer's slot packed from its injection (`down` `[rank, d]`, `up` `[d, rank]`) and
/// update networks, with the official update's LayerNorm `norm`.
fn slot(
    gpu: &Gpu,
    norm: Option<(&Tensor, &Tensor)>,
    down: Tensor,
    up: &Linear,
    nets: UpdateNets,
) -> Result<PackedSlot> {
    PackedSlot::new(gpu, norm, &nets, &down, &plain(up, "injection up")?)
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

/// Where Hugging Face peft saves block `l`'s shadow modules (the adapter name is always
/// written as `default`).
pub(crate) fn peft_block_prefix(l: usize) -> String {
    format!("base_model.model.model.layers.{l}.")
}

/// The tensors of a Hugging Face peft SHADOW adapter's block modules, with their shapes.
pub fn peft_tensors(spec: &PeftAdapterSpec, hidden: usize) -> Vec<(String, Vec<usize>)> {
    let (d, r, u) = (hidden, spec.rank, spec.update_hidden);
    let mut out = Vec::new();
    for &l in &spec.blocks {
        let p = peft_block_prefix(l);
        out.push((format!("{p}shadow_down.default.weight"), vec![r, d]));
        out.push((format!("{p}shadow_up.default.weight"), vec![d, r]));
        for net in ["transform", "gate"] {
            let q = format!("{p}shadow_update_{net}.default");
            out.push((format!("{q}.0.weight"), vec![u, d]));
            out.push((format!("{q}.0.bias"), vec![u]));
            out.push((format!("{q}.2.weight"), vec![d, u]));
            out.push((format!("{q}.2.bias"), vec![d]));
        }
    }
    out
}

/// Checks that `w` holds every block tensor of `spec` with its shape (before anything is
/// uploaded anywhere).
pub fn check_peft_tensors(w: &Weights, spec: &PeftAdapterSpec, hidden: usize) -> Result<()> {
    for (name, shape) in peft_tensors(spec, hidden) {
        match w.shape(&name) {
            None => {
                return Err(Error::MissingTensor {
                    file: w.describe(),
                    name,
                })
            }
            Some(found) if found != shape => {
                return Err(Error::Shape {
                    file: w.describe(),
                    name,
                    expected: shape,
                    found,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Adapter {
    /// Loads an official shadow-peft adapter for a base of `layers` layers and width `hidden`.
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
        let ln = (
            load_vec(gpu, w, "shadow_update_model.hidden_norm.weight", d)?,
            load_vec(gpu, w, "shadow_update_model.hidden_norm.bias", d)?,
        );
        let mut slots = vec![None];
        for k in 0..n {
            let p = "shadow_update_model";
            let lin = |name: String, out, inp| load_linear(gpu, w, &name, out, inp, false);
            let down = plain(&transposed(gpu, downs, &all_downs, k, d, r)?, downs)?;
            let up = transposed(gpu, ups, &all_ups, k, r, d)?;
            let names = [
                format!("{p}.update_transforms.{k}.0"),
                format!("{p}.update_transforms.{k}.3"),
                format!("{p}.update_gates.{k}.0"),
                format!("{p}.update_gates.{k}.2"),
            ];
            let nets = [
                (names[0].as_str(), lin(names[0].clone(), g, d)?),
                (names[1].as_str(), lin(names[1].clone(), d, g)?),
                (names[2].as_str(), lin(names[2].clone(), g, d)?),
                (names[3].as_str(), lin(names[3].clone(), d, g)?),
            ];
            let nets = update_nets(gpu, nets, g)?;
            slots.push(Some(slot(gpu, Some((&ln.0, &ln.1)), down, &up, nets)?));
        }
        Ok(Adapter {
            format: AdapterFormat::ShadowPeft,
            alpha: sc.alpha,
            hidden: d,
            shape: sc.shape(),
            slots,
        })
    }

    /// Loads a Hugging Face peft SHADOW adapter's block modules for a base of `layers` layers
    /// and width `hidden`; `spec.blocks` are the wrapped blocks.
    pub fn load_peft(
        gpu: &Gpu,
        w: &Weights,
        spec: &PeftAdapterSpec,
        layers: usize,
        hidden: usize,
    ) -> Result<Self> {
        let (d, r, u) = (hidden, spec.rank, spec.update_hidden);
        let mut slots: Vec<Option<PackedSlot>> = (0..layers).map(|_| None).collect();
        spec.check_layers(layers)?;
        for &l in &spec.blocks {
            let p = peft_block_prefix(l);
            let lin = |name: &str, out, inp, bias| {
                load_linear(gpu, w, &format!("{p}{name}"), out, inp, bias)
            };
            let down = plain(&lin("shadow_down.default", r, d, false)?, "shadow_down")?;
            let up = lin("shadow_up.default", d, r, false)?;
            let (t, g) = (
                "shadow_update_transform.default",
                "shadow_update_gate.default",
            );
            let nets = [
                (t, lin(&format!("{t}.0"), u, d, true)?),
                (t, lin(&format!("{t}.2"), d, u, true)?),
                (g, lin(&format!("{g}.0"), u, d, true)?),
                (g, lin(&format!("{g}.2"), d, u, true)?),
            ];
            slots[l] = Some(slot(gpu, None, down, &up, update_nets(gpu, nets, u)?)?);
        }
        Ok(Adapter {
            format: AdapterFormat::Peft,
            alpha: spec.alpha,
            hidden: d,
            shape: spec.shape(),
            slots,
        })
    }

    /// Which algorithm this adapter runs.
    pub fn format(&self) -> AdapterFormat {
        self.format
    }

    /// Whether the state is injected before base layer `l`.
    pub fn injects(&self, l: usize) -> bool {
        self.slots.get(l).is_some_and(Option::is_some)
    }

    /// Whether anything runs between base layers `next - 1` and `next` (an update or an
    /// injection); `next` 0 is before the first layer.
    pub fn acts_before(&self, next: usize) -> bool {
        self.injects(next) || (next >= 1 && self.injects(next - 1) && self.update_is_read(next - 1))
    }

    /// Whether the state updated after base layer `l` is read again (by a later injection).
    fn update_is_read(&self, l: usize) -> bool {
        self.slots.iter().skip(l + 1).any(Option::is_some)
    }

    /// The slots of what runs between base layers `next - 1` and `next`: the update after
    /// `next - 1` when a later injection reads it, and the injection before `next`.
    fn steps_before(&self, next: usize) -> (Option<&PackedSlot>, Option<&PackedSlot>) {
        let update = next
            .checked_sub(1)
            .filter(|&l| self.update_is_read(l))
            .and_then(|l| self.slots.get(l))
            .and_then(Option::as_ref);
        (update, self.slots.get(next).and_then(Option::as_ref))
    }

    /// Compiles the adapter-step kernels this adapter's passes run, for every row count, so
    /// that the first passes with it (a server's first requests after the upload) do not wait
    /// for compiles.
    pub fn precompile(&self, gpu: &Gpu) {
        let mut steps: Vec<(bool, bool)> = (0..self.slots.len())
            .map(|next| self.steps_before(next))
            .filter(|(u, i)| u.is_some() || i.is_some())
            .map(|(u, i)| (u.is_some(), i.is_some()))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        ops::precompile_steps(gpu, &self.shape, &steps, self.hidden);
    }

    /// Records what runs between base layers `next - 1` and `next` (`next` 0: before the
    /// first): the update after `next - 1` when a later injection reads it, then the
    /// injection before `next`, `h += alpha * up(down(h - s))`; the update is
    /// `s += sigmoid(G(u)) * (T(u) - s)`, `u = LN(h)` (official) or `u = h` (peft).
    pub(crate) fn between(&self, step: &mut Step, next: usize, h: &Tensor, s: &Tensor, m: usize) {
        self.between_rows(step, next, h, s, (0, m));
    }

    /// [`Adapter::between`] for rows `row0..row0 + m` of `h` and `s` (`rows` is `(row0, m)`).
    pub(crate) fn between_rows(
        &self,
        step: &mut Step,
        next: usize,
        h: &Tensor,
        s: &Tensor,
        rows: (usize, usize),
    ) {
        let (update, inject) = self.steps_before(next);
        ops::adapter_step(
            step,
            &self.shape,
            update,
            inject,
            self.alpha,
            h,
            s,
            rows,
            self.hidden,
        );
    }
}
