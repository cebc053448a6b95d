//! The shadow adapter between two base layers in one dispatch ([`adapter_step`]): the state
//! update after the first, then the injection before the second, either alone where only one
//! applies.
//!
//! ```text
//! update:  u = LayerNorm(h) (official, eps 1e-5) or h (peft)
//!          s <- s + sigmoid(G1 act(G0 u + bg0) + bg1) * (T1 act(T0 u + bt0) + bt1 - s)
//! inject:  h <- h + alpha * ((h - s) Wd^T) Wu^T
//! ```
//! Each adapted layer's weights are packed into one f32 buffer at load ([`PackedSlot`]), so the
//! kernel binds two slots, h and s whatever the form.
//!
//! # Shapes
//! h, s `[rows, dim]`; LayerNorm weight and bias `[dim]`; t0, g0 `[width, dim]`; t1, g1
//! `[dim, width]`; hidden biases `[2 width]` (T's then G's); output biases `[2 dim]`; Wd
//! `[rank, dim]`; Wu `[dim, rank]`.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::WG;

const COMMON: &str = include_str!("../../shaders/adapter_common.wgsl");
const SRC: &str = include_str!("../../shaders/adapter_step.wgsl");
const SRC4: &str = include_str!("../../shaders/adapter_step4.wgsl");

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

/// The shape of an adapter's update and injection, which selects its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterShape {
    pub act: Act,
    /// The update reads `LayerNorm(h)` (official form).
    pub norm: bool,
    /// The update networks have biases (peft).
    pub bias: bool,
    /// Hidden width of the update networks.
    pub width: usize,
    /// Injection rank.
    pub rank: usize,
}

/// Where each part of a [`PackedSlot`] starts (in f32 elements); parts a form lacks are empty.
/// Also the offsets half of the kernel's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct Offsets {
    ln: u32,
    hidden: u32,
    hidden_bias: u32,
    t1: u32,
    g1: u32,
    out_bias: u32,
    down: u32,
    up: u32,
}

/// One adapted layer's weights in one buffer: LayerNorm weight and bias (official), t0 then
/// g0, the hidden biases (peft), t1, g1, the output biases (peft), Wd, Wu.
pub struct PackedSlot {
    buf: Tensor,
    off: Offsets,
}

impl PackedSlot {
    /// Packs (on the device) the LayerNorm `norm` (official form), the update networks and
    /// the injection's `down` `[rank, dim]` and `up` `[dim, rank]` of one layer.
    pub fn new(
        gpu: &Gpu,
        norm: Option<(&Tensor, &Tensor)>,
        nets: &UpdateNets,
        down: &Tensor,
        up: &Tensor,
    ) -> Result<Self> {
        let (nw, nb) = norm.unzip();
        let groups: [&[Option<&Tensor>]; 8] = [
            &[nw, nb],
            &[Some(&nets.t0), Some(&nets.g0)],
            &[nets.hidden_bias.as_ref()],
            &[Some(&nets.t1)],
            &[Some(&nets.g1)],
            &[nets.out_bias.as_ref()],
            &[Some(down)],
            &[Some(up)],
        ];
        // Each part's group starts at a multiple of 4 values (adapter_step4 reads them as
        // vec4); a group's parts follow each other.
        let mut parts: Vec<(&Tensor, usize)> = Vec::new();
        let mut starts = [0u32; 8];
        let mut at = 0usize;
        for (start, group) in starts.iter_mut().zip(groups) {
            at = at.next_multiple_of(4);
            *start = at as u32;
            for t in group.iter().flatten() {
                parts.push((t, at));
                at += t.len;
            }
        }
        let [ln, hidden, hidden_bias, t1, g1, out_bias, down, up] = starts;
        let off = Offsets {
            ln,
            hidden,
            hidden_bias,
            t1,
            g1,
            out_bias,
            down,
            up,
        };
        Ok(PackedSlot {
            buf: gpu.join_placed("adapter slot", &parts)?,
            off,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    g: u32,
    rank: u32,
    eps: f32,
    alpha: f32,
    /// The update's parts from its slot, the injection's (`down`, `up`) from its own.
    off: Offsets,
    row0: u32,
    _p: u32,
}

/// Most rows per workgroup on CPU devices, where each weight an invocation loads (lane by
/// lane) then serves that many rows.
const CPU_ROWS: usize = 8;

/// Rows per workgroup for a dispatch of `rows` rows: 1 on GPUs; on CPU devices the largest
/// power of two up to [`CPU_ROWS`] that `rows` fills. A row's result is the same whatever
/// this is.
pub(crate) fn rows_per_group(gpu: &Gpu, rows: usize) -> usize {
    if gpu.is_cpu() {
        1 << rows.clamp(1, CPU_ROWS).ilog2()
    } else {
        1
    }
}

/// Compiles the kernels of an adapter of `shape` on a base of width `dim` for what runs
/// between two base layers of its (`steps`: update, inject), at every rows-per-workgroup a
/// dispatch can take here, so that no pass waits for a compile.
pub fn precompile_steps(gpu: &Gpu, shape: &AdapterShape, steps: &[(bool, bool)], dim: usize) {
    // Every dispatch of more than CPU_ROWS rows takes what CPU_ROWS rows take.
    let mut rbs: Vec<usize> = (1..=CPU_ROWS).map(|n| rows_per_group(gpu, n)).collect();
    rbs.dedup();
    for &(update, inject) in steps {
        for &rb in &rbs {
            gpu.kernel(&spec(gpu, shape, update, inject, rb, dim));
        }
    }
}

/// Whether the step on a base of width `dim` runs `adapter_step4` (h, s and the products over
/// dim as vec4): for every width that is a multiple of 4, whatever the row count, so that a
/// row's result does not depend on the rows beside it.
fn vec4_form(dim: usize) -> bool {
    dim.is_multiple_of(4)
}

/// The kernel for an adapter of `shape` on a base of width `dim`, running the update and/or
/// the injection, `rb` rows per workgroup.
pub(crate) fn spec(
    gpu: &Gpu,
    shape: &AdapterShape,
    update: bool,
    inject: bool,
    rb: usize,
    dim: usize,
) -> KernelSpec {
    let s = if vec4_form(dim) {
        KernelSpec::new("adapter_step4", SRC4)
    } else {
        KernelSpec::new("adapter_step", SRC)
    };
    s.prelude("adapter_common", COMMON)
        .with("WG", super::reduce_wg(gpu, WG))
        .with("RB", rb as u32)
        .with("UPDATE", update as u32)
        .with("INJECT", inject as u32)
        .with("NORM", shape.norm as u32)
        .with("BIAS", shape.bias as u32)
        .with("ACT", shape.act as u32)
        .with("G2", (2 * shape.width).max(1) as u32)
        .with("R", shape.rank.max(1) as u32)
}

/// Records, for rows `row0..row0 + rows` of `h` and `s` `[.., dim]`, the state update with
/// slot `update`'s weights, then the injection (scaled by `alpha`) with slot `inject`'s;
/// nothing when both are `None`.
#[allow(clippy::too_many_arguments)]
pub fn adapter_step(
    step: &mut Step,
    shape: &AdapterShape,
    update: Option<&PackedSlot>,
    inject: Option<&PackedSlot>,
    alpha: f32,
    h: &Tensor,
    s: &Tensor,
    (row0, rows): (usize, usize),
    dim: usize,
) {
    let Some(any) = update.or(inject) else {
        return;
    };
    let rb = rows_per_group(step.gpu(), rows);
    let k = step.gpu().kernel(&spec(
        step.gpu(),
        shape,
        update.is_some(),
        inject.is_some(),
        rb,
        dim,
    ));
    let (u, i) = (update.unwrap_or(any), inject.unwrap_or(any));
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        g: shape.width as u32,
        rank: shape.rank as u32,
        eps: 1e-5,
        alpha,
        off: Offsets {
            down: i.off.down,
            up: i.off.up,
            ..u.off
        },
        row0: row0 as u32,
        _p: 0,
    };
    let groups = rows.div_ceil(rb) as u32;
    if vec4_form(dim) {
        // The slots again, as vec4.
        step.dispatch_linear(&k, &p, &[&u.buf, &i.buf, h, s, &u.buf, &i.buf], groups);
    } else {
        step.dispatch_linear(&k, &p, &[&u.buf, &i.buf, h, s], groups);
    }
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

/// CPU reference of the state update of [`adapter_step`] (f64; `erf` is the caller's): the new
/// state.
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

/// CPU reference of the injection: `h + alpha * ((h - s) Wd^T) Wu^T` (f64).
pub fn cpu_inject(
    h: &[f32],
    s: &[f32],
    down: &[f32],
    up: &[f32],
    alpha: f32,
    dim: usize,
    rank: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(h.len());
    for (hr, sr) in h.chunks(dim).zip(s.chunks(dim)) {
        let a: Vec<f64> = (0..rank)
            .map(|j| {
                (0..dim)
                    .map(|i| (hr[i] - sr[i]) as f64 * down[j * dim + i] as f64)
                    .sum()
            })
            .collect();
        for i in 0..dim {
            let v: f64 = (0..rank).map(|j| up[i * rank + j] as f64 * a[j]).sum();
            out.push((hr[i] as f64 + alpha as f64 * v) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    /// Both forms (LayerNorm + SiLU without biases; GELU with biases, no norm), each of update
    /// alone, injection alone and both (with different slots), over row counts and widths
    /// that leave partial workgroups (9 rows: a full group of 8 on CPU devices, then one row);
    /// inputs large enough to reach the activations' tails and small ones around zero, where
    /// GELU's erf is least forgiving.
    #[test]
    fn adapter_step_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for (form, act, norm, bias) in [
            ("official", Act::Silu, true, false),
            ("peft", Act::Gelu, false, true),
        ] {
            for &(rows, dim, g, rank) in &[
                (1, 64, 10, 16),
                (3, 200, 16, 5),
                (2, 13, 3, 1),
                (5, 1000, 64, 70),
                (9, 64, 10, 16),
            ] {
                let mut h = rand_vec(rows as u64, rows * dim, 4.0);
                h[0] = 1e-4;
                let s = rand_vec(2, rows * dim, 2.0);
                let (nw, nb) = (rand_vec(3, dim, 2.0), rand_vec(4, dim, 1.0));
                let sc = 3.0 / (dim as f32).sqrt();
                let (t0, g0) = (rand_vec(5, g * dim, sc), rand_vec(6, g * dim, sc));
                let (t1, g1) = (rand_vec(7, dim * g, 1.0), rand_vec(8, dim * g, 1.0));
                let (hb, ob) = (rand_vec(9, 2 * g, 1.0), rand_vec(10, 2 * dim, 1.0));
                let su = 1.0 / (rank as f32).sqrt();
                let (wd, wu) = (rand_vec(11, rank * dim, sc), rand_vec(12, dim * rank, su));
                // The injecting slot has other weights than the updating one.
                let (wd2, wu2) = (rand_vec(13, rank * dim, sc), rand_vec(14, dim * rank, su));
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
                let (nwt, nbt) = (up("nw", &nw), up("nb", &nb));
                let nt = norm.then_some((&nwt, &nbt));
                let slot_u = PackedSlot::new(gpu, nt, &nets, &up("wd", &wd), &up("wu", &wu));
                let slot_i = PackedSlot::new(gpu, nt, &nets, &up("wd2", &wd2), &up("wu2", &wu2));
                let (slot_u, slot_i) = (slot_u.unwrap(), slot_i.unwrap());
                let shape = AdapterShape {
                    act,
                    norm,
                    bias,
                    width: g,
                    rank,
                };
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
                for (do_update, do_inject) in [(true, false), (false, true), (true, true)] {
                    // The kernel over fresh copies of h and s, one dispatch per (row0, rows)
                    // range; the rows' (h, s) after it.
                    let run = |ranges: &[(usize, usize)]| {
                        let (ht, st) = (up("h", &h), up("s", &s));
                        let mut step = Step::new(gpu);
                        for &range in ranges {
                            adapter_step(
                                &mut step,
                                &shape,
                                do_update.then_some(&slot_u),
                                do_inject.then_some(&slot_i),
                                0.3,
                                &ht,
                                &st,
                                range,
                                dim,
                            );
                        }
                        step.submit().unwrap();
                        (
                            pollster::block_on(gpu.read_f32(&ht, 0, rows * dim)).unwrap(),
                            pollster::block_on(gpu.read_f32(&st, 0, rows * dim)).unwrap(),
                        )
                    };
                    let (got_h, got_s) = run(&[(0, rows)]);
                    let want_s = if do_update {
                        cpu_shadow_update(&h, &s, nc, &cpu, dim, act, libm::erf)
                    } else {
                        s.clone()
                    };
                    // The injection reads the state the kernel updated (checked just above), so
                    // that the state's own rounding is not amplified into the check of h.
                    let want_h = if do_inject {
                        cpu_inject(&h, &got_s, &wd2, &wu2, 0.3, dim, rank)
                    } else {
                        h.clone()
                    };
                    let what = format!(
                        "{form} update={do_update} inject={do_inject} rows={rows} dim={dim} width={g} rank={rank}"
                    );
                    // The state moves by t - s, where t sums up to 64 products of magnitude up
                    // to about 20: f32 accumulation leaves up to about 1e-4 absolute; the
                    // injection adds sums of up to 1000 and 70 products (weights scaled so
                    // that both sums stay of order 1 to 10, as trained adapters' are).
                    assert_close(&format!("{what} s"), &got_s, &want_s, 1e-4, 1e-4);
                    assert_close(&format!("{what} h"), &got_h, &want_h, 1e-4, 1e-4);
                    // Each row alone (one row a workgroup) gives the rows' result bit for bit
                    // (CPU devices put up to 4 rows in a workgroup).
                    let singles: Vec<_> = (0..rows).map(|r| (r, 1)).collect();
                    let (one_h, one_s) = run(&singles);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got_s), bits(&one_s), "{what}: s of rows alone");
                    assert_eq!(bits(&got_h), bits(&one_h), "{what}: h of rows alone");
                }
            }
        }
    }
}
