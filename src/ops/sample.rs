//! Sampling on the device: the repetition penalty, temperature, top-k and top-p of the host
//! sampler ([`Sampling::pick`]) run as kernels over the last row of logits, so a sampled
//! decode step reads back one token id (4 bytes) instead of the whole row.
//!
//! The top-k runs in passes: every workgroup sorts a chunk of [`CHUNK`] entries and keeps its
//! [`TOP_K_MAX`] best (the same order as the host sampler: larger logit first, ties to the
//! lower index, IEEE total order), until one chunk is left. The pick then draws among them.
//! Without a top-k filter the softmax normaliser still covers the whole row (each chunk's
//! partial sum, from the first pass); when the nucleus or the draw reaches past the
//! [`TOP_K_MAX`] largest logits, the pick answers [`UNDECIDED`] and the caller samples that
//! row on the host with the same draw, so the choice is the host sampler's in every case.
//! The device computes the probabilities in f32 (the host in f64): the two can only differ
//! when a draw falls within float rounding of the boundary between two tokens.
//!
//! # Shapes
//! x `[>= x_off + n]`; ids `[count]` u32, distinct; out `[1]` u32.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

const COMMON: &str = include_str!("../../shaders/sample_common.wgsl");
const PENALIZE: &str = include_str!("../../shaders/sample_penalize.wgsl");
const TOPK: &str = include_str!("../../shaders/sample_topk.wgsl");
const PICK: &str = include_str!("../../shaders/sample_pick.wgsl");

/// Threads of a top-k workgroup; each sorts 4 entries.
const TOPK_WG: u32 = 256;
/// Entries one top-k workgroup sorts.
const CHUNK: usize = 4 * TOPK_WG as usize;
/// Largest top-k the device sampler takes (larger ones sample on the host); also the number
/// of candidates each chunk keeps.
pub const TOP_K_MAX: usize = 64;
/// The pick's answer when the token lies beyond the candidates.
pub const UNDECIDED: u32 = u32::MAX;

/// The settings of one sampling decision and its uniform draw. This is the host reference of
/// the device sampler: the logits processors in Hugging Face's order, then the draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k filter.
    pub top_k: usize,
    /// 1 means no nucleus filter.
    pub top_p: f32,
    /// 1 means none.
    pub repetition_penalty: f32,
    /// Uniform in [0, 1); unused at temperature 0.
    pub draw: f64,
}

/// The distribution a [`Sampling`] draws from: the candidates that survive the filters, most
/// likely first, with their weights (f64, not normalised: [`Dist::prob`] divides by the
/// total). At temperature 0 it is the argmax alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    ids: Vec<u32>,
    weights: Vec<f64>,
    total: f64,
}

impl Dist {
    /// All the mass on `id`.
    pub fn one_hot(id: u32) -> Self {
        Dist {
            ids: vec![id],
            weights: vec![1.0],
            total: 1.0,
        }
    }

    /// The candidates and their weights, most likely first.
    pub fn entries(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.ids.iter().copied().zip(self.weights.iter().copied())
    }

    /// The probability of `id` (0 outside the candidates).
    pub fn prob(&self, id: u32) -> f64 {
        self.ids
            .iter()
            .position(|&i| i == id)
            .map_or(0.0, |k| self.weights[k] / self.total)
    }

    /// The probability of the most likely candidate.
    pub fn top_prob(&self) -> f64 {
        self.weights.first().map_or(0.0, |w| w / self.total)
    }

    /// The token a uniform `draw` in [0, 1) picks: the first candidate whose cumulative
    /// weight passes `draw * total`.
    pub fn sample(&self, draw: f64) -> u32 {
        let r = draw * self.total;
        let mut cum = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            cum += w;
            if r < cum {
                return self.ids[i];
            }
        }
        self.ids[self.ids.len() - 1]
    }

    /// The normalised positive part of `self - other` (speculative sampling's residual: what
    /// `self` puts on a token beyond what `other` already did), or `None` where `other`
    /// covers `self` everywhere.
    pub fn residual(&self, other: &Dist) -> Option<Dist> {
        // One lookup per candidate: a whole-vocabulary distribution has ~10^5 of them.
        let q: std::collections::HashMap<u32, f64> = other
            .entries()
            .map(|(id, w)| (id, w / other.total))
            .collect();
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for (id, w) in self.entries() {
            let d = w / self.total - q.get(&id).copied().unwrap_or(0.0);
            if d > 0.0 {
                ids.push(id);
                weights.push(d);
            }
        }
        let total: f64 = weights.iter().sum();
        (total > 0.0).then_some(Dist {
            ids,
            weights,
            total,
        })
    }
}

impl Sampling {
    /// The distribution of the next token given `logits` (the reference the device sampler
    /// follows): the repetition penalty once for each distinct id of `history` (applied to
    /// `logits` in place), then temperature, top-k, top-p (the order of Hugging Face's logits
    /// processors).
    pub fn distribution(&self, logits: &mut [f32], history: &[u32]) -> Dist {
        if self.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::with_capacity(history.len());
            for &t in history {
                if !seen.insert(t) {
                    continue;
                }
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 {
                        *l * self.repetition_penalty
                    } else {
                        *l / self.repetition_penalty
                    };
                }
            }
        }
        if self.temperature == 0.0 {
            return Dist::one_hot(super::cpu_argmax(logits));
        }
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let order = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if self.top_k > 0 && self.top_k < idx.len() {
            idx.select_nth_unstable_by(self.top_k - 1, order);
            idx.truncate(self.top_k);
        }
        idx.sort_unstable_by(order);
        let mx = logits[idx[0] as usize] as f64;
        let t = self.temperature as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - mx) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        Dist {
            ids: idx,
            weights: probs,
            total,
        }
    }

    /// Picks a token from `logits` with this decision's draw (see [`Sampling::distribution`]).
    pub fn pick(&self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.distribution(logits, history).sample(self.draw)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    x_off: u32,
    top_k: u32,
    aux: u32,
    temperature: f32,
    top_p: f32,
    draw: f32,
    penalty: f32,
}

fn common(name: &'static str, src: &'static str) -> KernelSpec {
    KernelSpec::new(name, src).prelude("sample_common", COMMON)
}

pub(crate) fn penalize_spec() -> KernelSpec {
    common("sample_penalize", PENALIZE).with("WG", 64)
}

pub(crate) fn topk_spec() -> KernelSpec {
    common("sample_topk", TOPK)
        .with("WG", TOPK_WG)
        .with("KC", TOP_K_MAX as u32)
}

pub(crate) fn pick_spec() -> KernelSpec {
    common("sample_pick", PICK)
}

/// Device buffers of the sampler for rows of `vocab` logits: two candidate buffers the top-k
/// passes alternate between, the chunk partials, the penalised ids and the answer.
pub struct SampleBuffers {
    cand: [Tensor; 2],
    part: Tensor,
    ids: Tensor,
    /// Distinct ids the penalty applies to (host copy, for the host fallback).
    penalized: Vec<u32>,
    /// The chosen token id.
    pub out: Tensor,
}

impl SampleBuffers {
    /// Buffers for rows of `vocab` logits.
    pub fn new(gpu: &Gpu, vocab: usize) -> Self {
        let pairs = vocab.div_ceil(CHUNK) * TOP_K_MAX * 2;
        SampleBuffers {
            cand: [
                gpu.zeros("sample candidates", pairs),
                gpu.zeros("sample candidates", pairs),
            ],
            part: gpu.zeros("sample partials", vocab.div_ceil(CHUNK) * 2),
            ids: gpu.zeros("penalized ids", 1),
            penalized: Vec::new(),
            out: gpu.zeros("token", 2),
        }
    }

    /// Sets the ids the repetition penalty applies to (each distinct id once, as Hugging
    /// Face's processor does, however often it occurs in `history`).
    pub fn set_penalized(&mut self, gpu: &Gpu, history: &[u32]) {
        let mut seen = std::collections::HashSet::with_capacity(history.len());
        self.penalized.clear();
        self.penalized
            .extend(history.iter().copied().filter(|&t| seen.insert(t)));
        if self.penalized.len() > self.ids.len() {
            self.ids = gpu.zeros("penalized ids", self.penalized.len().next_power_of_two());
        }
        gpu.write_u32(&self.ids, &self.penalized);
    }

    /// The distinct ids last given to [`SampleBuffers::set_penalized`].
    pub fn penalized(&self) -> &[u32] {
        &self.penalized
    }
}

/// Whether [`sample`] takes these settings (else the caller samples on the host).
pub fn on_device(s: &Sampling) -> bool {
    s.top_k <= TOP_K_MAX
}

/// Records the choice of the next token from `x[x_off .. x_off + n]` into `b.out`: the
/// penalty over the ids of [`SampleBuffers::set_penalized`] (applied in place to that row),
/// then the argmax at temperature 0, else the device top-k and pick (`b.out` may then hold
/// [`UNDECIDED`]). Settings must pass [`on_device`].
pub fn sample(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    n: usize,
    s: &Sampling,
    b: &SampleBuffers,
) {
    let gpu = step.gpu();
    // The largest f32 below 1: a draw that rounds up to 1 would pick past every token.
    let draw = (s.draw as f32).min(1.0 - f32::EPSILON / 2.0);
    let mut p = Params {
        n: b.penalized.len() as u32,
        x_off: x_off as u32,
        top_k: s.top_k as u32,
        aux: 0,
        temperature: s.temperature,
        top_p: s.top_p,
        draw,
        penalty: s.repetition_penalty,
    };
    if s.repetition_penalty != 1.0 && !b.penalized.is_empty() {
        let k = gpu.kernel(&penalize_spec());
        step.dispatch(&k, &p, &[x, &b.ids], [p.n.div_ceil(64), 1, 1]);
    }
    if s.temperature == 0.0 {
        super::argmax(step, x, x_off, n, &b.out, false);
        return;
    }
    let k = gpu.kernel(&topk_spec());
    let chunks = n.div_ceil(CHUNK);
    let (mut len, mut src) = (n, 0);
    loop {
        let groups = len.div_ceil(CHUNK);
        p.n = len as u32;
        let (cin, cout) = (&b.cand[src], &b.cand[1 - src]);
        step.dispatch(&k, &p, &[x, cin, cout, &b.part], [groups as u32, 1, 1]);
        p.aux = 1;
        len = groups * TOP_K_MAX;
        src = 1 - src;
        if groups == 1 {
            break;
        }
    }
    let p = Params {
        n: n.min(TOP_K_MAX) as u32,
        aux: chunks as u32,
        ..p
    };
    let k = gpu.kernel(&pick_spec());
    step.dispatch(&k, &p, &[&b.cand[src], &b.part, &b.out], [1, 1, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gpu, rand_vec};

    /// The device's choice (finished on the host when undecided, as the model does) and
    /// whether the device left it undecided.
    fn device_pick(gpu: &Gpu, x: &[f32], s: &Sampling, history: &[u32]) -> (u32, bool) {
        let n = x.len();
        let mut padded = vec![7.0; 3];
        padded.extend_from_slice(x);
        let xt = gpu.upload_f32("x", &padded);
        let mut b = SampleBuffers::new(gpu, n);
        b.set_penalized(gpu, history);
        let mut st = Step::new(gpu);
        sample(&mut st, &xt, 3, n, s, &b);
        st.submit().unwrap();
        let t = pollster::block_on(gpu.read_u32(&b.out, 0, 1)).unwrap()[0];
        if t != UNDECIDED {
            return (t, false);
        }
        let mut row = pollster::block_on(gpu.read_f32(&xt, 3, n)).unwrap();
        let host = Sampling {
            repetition_penalty: 1.0,
            ..*s
        };
        (host.pick(&mut row, &[]), true)
    }

    fn host_pick(x: &[f32], s: &Sampling, history: &[u32]) -> u32 {
        s.pick(&mut x.to_vec(), history)
    }

    #[test]
    fn device_sampling_matches_the_host_sampler() {
        let Some(gpu) = gpu() else { return };
        let settings = [
            (0.0, 0, 1.0, 1.3),
            (0.7, 1, 1.0, 1.0),
            (1.0, 5, 1.0, 1.0),
            (0.8, 50, 0.9, 1.2),
            (1.5, 64, 0.5, 1.0),
            (0.2, 0, 0.9, 1.0),
            (0.3, 0, 1.0, 1.1),
            (2.0, 0, 1.0, 1.0),
            (1.0, 0, 0.95, 1.0),
        ];
        let (mut decided, mut undecided, mut boundary, mut total) = (0, 0, 0, 0);
        for (vi, n) in [50usize, 1000, 5000, 70_000].into_iter().enumerate() {
            let mut x = rand_vec(11 + vi as u64, n, 4.0);
            // Ties: a band of values rounded to a coarse grid, and a repeated maximum.
            for v in x.iter_mut().step_by(3) {
                *v = (*v * 2.0).round() / 2.0;
            }
            x[n / 3] = 9.0;
            x[n / 2] = 9.0;
            let history: Vec<u32> = (0..40).map(|i| ((i * 37) % n.min(97)) as u32).collect();
            for (si, &(temperature, top_k, top_p, repetition_penalty)) in
                settings.iter().enumerate()
            {
                for d in 0..6 {
                    let draw = ((si * 6 + d) as f64 * 0.618_033_988_7).fract();
                    let s = Sampling {
                        temperature,
                        top_k,
                        top_p,
                        repetition_penalty,
                        draw,
                    };
                    let (got, left) = device_pick(gpu, &x, &s, &history);
                    let want = host_pick(&x, &s, &history);
                    total += 1;
                    if left {
                        undecided += 1;
                    } else {
                        decided += 1;
                    }
                    if got != want {
                        // Only a draw within float rounding of a boundary may differ.
                        let near = [draw - 1e-5, draw + 1e-5].map(|d| {
                            host_pick(
                                &x,
                                &Sampling {
                                    draw: d.clamp(0.0, 0.999_999),
                                    ..s
                                },
                                &history,
                            )
                        });
                        assert!(
                            near.contains(&got),
                            "n={n} {s:?}: device picked {got}, host {want}"
                        );
                        boundary += 1;
                    }
                }
            }
        }
        assert!(
            decided > total / 2,
            "{decided} of {total} decided on the device"
        );
        assert!(undecided > 0, "the host fallback was never taken");
        assert!(
            boundary <= 2,
            "{boundary} of {total} choices differ from the host's"
        );
    }
}
