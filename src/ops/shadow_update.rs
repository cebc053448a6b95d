//! The shadow state update after a base layer, in two dispatches:
//! [`update_hidden`] (the LayerNorm of the official form, then the hidden layers of the
//! transform network T and the gate network G with their activation) and [`shadow_update`]
//! (both output layers and the gated update `s = s + sigmoid(G(u)) * (T(u) - s)`).
//!
//! # Shapes
//! h, s `[rows, dim]`; LayerNorm weight and bias `[dim]`; t0, g0 `[width, dim]`; t1, g1
//! `[dim, width]`; hidden biases `[2 width]` (T's then G's); output biases `[2 dim]`; the
//! hidden activations `[rows, 2 width]` (T's then G's per row).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const HIDDEN: &str = include_str!("../../shaders/update_hidden.wgsl");
const OUT: &str = include_str!("../../shaders/update_out.wgsl");

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x * sigmoid(x)` (the official shadow-peft update networks).
    Silu,
    /// `0.5 x (1 + erf(x / sqrt 2))` (torch's default, non-tanh GELU; Hugging Face peft's).
    Gelu,
}

/// The two update networks of one adapted layer, as plain f32 buffers.
pub struct UpdateNets {
    pub t0: Tensor,
    pub g0: Tensor,
    pub t1: Tensor,
    pub g1: Tensor,
    /// T's then G's hidden-layer biases (peft); none in the official form.
    pub hidden_bias: Option<Tensor>,
    /// T's then G's output biases (peft).
    pub out_bias: Option<Tensor>,
    /// Hidden width.
    pub width: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    g: u32,
    eps: f32,
}

/// The compiled hidden-layer kernel.
pub(crate) fn hidden_spec(act: Act, norm: bool, bias: bool) -> KernelSpec {
    KernelSpec::new("update_hidden", HIDDEN)
        .with("WG", WG)
        .with("ACT", act as u32)
        .with("NORM", norm as u32)
        .with("BIAS", bias as u32)
}

/// The compiled output kernel.
pub(crate) fn out_spec(bias: bool) -> KernelSpec {
    KernelSpec::new("update_out", OUT)
        .with("WG", WG)
        .with("BIAS", bias as u32)
}

/// Records `hid[r] = [act(t0 u + bt0), act(g0 u + bg0)]` for `r < rows`, with `u` the
/// LayerNorm (weight, bias, eps 1e-5) of `h[r]` when `norm` is given, else `h[r]`.
#[allow(clippy::too_many_arguments)]
pub fn update_hidden(
    step: &mut Step,
    h: &Tensor,
    norm: Option<(&Tensor, &Tensor)>,
    nets: &UpdateNets,
    hid: &Tensor,
    rows: usize,
    dim: usize,
    act: Act,
) {
    let bias = nets.hidden_bias.as_ref();
    let k = step
        .gpu()
        .kernel(&hidden_spec(act, norm.is_some(), bias.is_some()));
    let (nw, nb) = norm.unwrap_or((h, h));
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        g: nets.width as u32,
        eps: 1e-5,
    };
    step.dispatch_linear(
        &k,
        &p,
        &[h, nw, nb, &nets.t0, &nets.g0, bias.unwrap_or(h), hid],
        rows as u32,
    );
}

/// Records `s[r] += sigmoid(g1 gh + bg1) * (t1 th + bt1 - s[r])` for `r < rows`, with `th`,
/// `gh` the halves of `hid[r]` from [`update_hidden`].
pub fn shadow_update(
    step: &mut Step,
    hid: &Tensor,
    nets: &UpdateNets,
    s: &Tensor,
    rows: usize,
    dim: usize,
) {
    let bias = nets.out_bias.as_ref();
    let k = step.gpu().kernel(&out_spec(bias.is_some()));
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        g: nets.width as u32,
        eps: 0.0,
    };
    step.dispatch_linear(
        &k,
        &p,
        &[hid, &nets.t1, &nets.g1, bias.unwrap_or(hid), s],
        groups_for(rows * dim, WG),
    );
}

pub(crate) fn silu_f32(v: f32) -> f32 {
    (v as f64 / (1.0 + (-v as f64).exp())) as f32
}

/// Host copies of [`UpdateNets`] for [`cpu_shadow_update`].
pub struct CpuNets<'a> {
    pub t0: &'a [f32],
    pub g0: &'a [f32],
    pub t1: &'a [f32],
    pub g1: &'a [f32],
    pub hidden_bias: Option<&'a [f32]>,
    pub out_bias: Option<&'a [f32]>,
    pub width: usize,
}

/// CPU reference of [`update_hidden`] then [`shadow_update`] (f64; `erf` is the caller's):
/// the new state.
pub fn cpu_shadow_update(
    h: &[f32],
    s: &[f32],
    norm: Option<(&[f32], &[f32])>,
    n: &CpuNets,
    dim: usize,
    act: Act,
    erf: impl Fn(f64) -> f64,
) -> Vec<f32> {
    let g = n.width;
    let act = |v: f64| match act {
        Act::Silu => v / (1.0 + (-v).exp()),
        Act::Gelu => 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)),
    };
    let dot = |w: &[f32], x: &[f64]| -> f64 { w.iter().zip(x).map(|(a, b)| *a as f64 * b).sum() };
    let mut out = Vec::with_capacity(s.len());
    for (hr, sr) in h.chunks(dim).zip(s.chunks(dim)) {
        let u: Vec<f64> = match norm {
            Some((w, b)) => {
                let mean = hr.iter().map(|v| *v as f64).sum::<f64>() / dim as f64;
                let var = hr.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (var + 1e-5).sqrt();
                (0..dim)
                    .map(|i| (hr[i] as f64 - mean) * inv * w[i] as f64 + b[i] as f64)
                    .collect()
            }
            None => hr.iter().map(|v| *v as f64).collect(),
        };
        let hb = |j: usize| n.hidden_bias.map_or(0.0, |b| b[j] as f64);
        let th: Vec<f64> = (0..g)
            .map(|j| act(dot(&n.t0[j * dim..(j + 1) * dim], &u) + hb(j)))
            .collect();
        let gh: Vec<f64> = (0..g)
            .map(|j| act(dot(&n.g0[j * dim..(j + 1) * dim], &u) + hb(g + j)))
            .collect();
        for (i, &sv) in sr.iter().enumerate() {
            let ob = |j: usize| n.out_bias.map_or(0.0, |b| b[j] as f64);
            let t = dot(&n.t1[i * g..(i + 1) * g], &th) + ob(i);
            let z = dot(&n.g1[i * g..(i + 1) * g], &gh) + ob(dim + i);
            let sv = sv as f64;
            out.push((sv + (t - sv) / (1.0 + (-z).exp())) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    /// Both forms (LayerNorm + SiLU without biases; GELU with biases, no norm) over row
    /// counts and widths that leave partial workgroups; inputs large enough to reach the
    /// activations' tails and small ones around zero, where GELU's erf is least forgiving.
    #[test]
    fn shadow_update_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for (form, act, norm, bias) in [
            ("official", Act::Silu, true, false),
            ("peft", Act::Gelu, false, true),
        ] {
            for &(rows, dim, g) in &[(1, 64, 10), (3, 200, 16), (2, 13, 3), (5, 1000, 64)] {
                let mut h = rand_vec(rows as u64, rows * dim, 4.0);
                h[0] = 1e-4;
                let s = rand_vec(2, rows * dim, 2.0);
                let (nw, nb) = (rand_vec(3, dim, 2.0), rand_vec(4, dim, 1.0));
                let sc = 3.0 / (dim as f32).sqrt();
                let (t0, g0) = (rand_vec(5, g * dim, sc), rand_vec(6, g * dim, sc));
                let (t1, g1) = (rand_vec(7, dim * g, 1.0), rand_vec(8, dim * g, 1.0));
                let (hb, ob) = (rand_vec(9, 2 * g, 1.0), rand_vec(10, 2 * dim, 1.0));
                let up = |n: &str, v: &[f32]| gpu.upload_f32(n, v);
                let nets = UpdateNets {
                    t0: up("t0", &t0),
                    g0: up("g0", &g0),
                    t1: up("t1", &t1),
                    g1: up("g1", &g1),
                    hidden_bias: bias.then(|| up("hb", &hb)),
                    out_bias: bias.then(|| up("ob", &ob)),
                    width: g,
                };
                let (ht, st, nwt, nbt) = (up("h", &h), up("s", &s), up("nw", &nw), up("nb", &nb));
                let hid = gpu.zeros("hid", rows * 2 * g);
                let mut step = Step::new(gpu);
                let nt = norm.then_some((&nwt, &nbt));
                update_hidden(&mut step, &ht, nt, &nets, &hid, rows, dim, act);
                shadow_update(&mut step, &hid, &nets, &st, rows, dim);
                step.submit().unwrap();
                let got = pollster::block_on(gpu.read_f32(&st, 0, rows * dim)).unwrap();
                let cpu = CpuNets {
                    t0: &t0,
                    g0: &g0,
                    t1: &t1,
                    g1: &g1,
                    hidden_bias: bias.then_some(&hb[..]),
                    out_bias: bias.then_some(&ob[..]),
                    width: g,
                };
                let nc = norm.then_some((&nw[..], &nb[..]));
                let want = cpu_shadow_update(&h, &s, nc, &cpu, dim, act, libm::erf);
                // The state moves by t - s, where t sums up to 64 products of magnitude up to
                // about 20: f32 accumulation leaves up to about 1e-4 absolute.
                assert_close(
                    &format!("{form} shadow update rows={rows} dim={dim} width={g}"),
                    &got,
                    &want,
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}
