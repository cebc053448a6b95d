//! The gated shadow state update: `s = s + sigmoid(g) * (t - s)`, with `g` the gate network's
//! output before its sigmoid and `t` the transform network's output.
//!
//! # Shapes
//! t, g, s `[n]` (n = tokens * hidden).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/shadow_update.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("shadow_update", SRC).with("WG", WG)
}

/// Records the update of `s[..n]` in place.
pub fn shadow_update(step: &mut Step, t: &Tensor, g: &Tensor, s: &Tensor, n: usize) {
    let k = step.gpu().kernel(&spec());
    step.dispatch_linear(
        &k,
        &Params {
            n: n as u32,
            _p: [0; 3],
        },
        &[t, g, s],
        groups_for(n, WG),
    );
}

/// CPU reference of [`shadow_update`].
pub fn cpu_shadow_update(t: &[f32], g: &[f32], s: &[f32]) -> Vec<f32> {
    t.iter()
        .zip(g.iter().zip(s))
        .map(|(t, (g, s))| {
            let gate = 1.0 / (1.0 + (-*g as f64).exp());
            (*s as f64 + gate * (*t as f64 - *s as f64)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn shadow_update_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000] {
            let (t, g, s) = (
                rand_vec(1, n, 2.0),
                rand_vec(2, n, 6.0),
                rand_vec(3, n, 2.0),
            );
            let (tt, gt, st) = (
                gpu.upload_f32("t", &t),
                gpu.upload_f32("g", &g),
                gpu.upload_f32("s", &s),
            );
            let mut step = Step::new(gpu);
            shadow_update(&mut step, &tt, &gt, &st, n);
            step.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&st, 0, n)).unwrap();
            assert_close(
                "shadow_update",
                &got,
                &cpu_shadow_update(&t, &g, &s),
                1e-6,
                1e-5,
            );
        }
    }
}
