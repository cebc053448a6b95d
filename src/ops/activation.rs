//! Element-wise activation in place: SiLU (`x * sigmoid(x)`, the official shadow-peft update
//! networks) or exact GELU (`0.5 x (1 + erf(x / sqrt 2))`, Hugging Face peft's).
//!
//! # Shapes
//! x `[n]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/activation.wgsl");

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x * sigmoid(x)`.
    Silu,
    /// `0.5 x (1 + erf(x / sqrt 2))` (torch's default, non-tanh GELU).
    Gelu,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
}

/// The compiled kernel of this op.
pub(crate) fn spec(act: Act) -> KernelSpec {
    KernelSpec::new("activation", SRC)
        .with("WG", WG)
        .with("ACT", act as u32)
}

/// Records `act` over the first `n` elements of `x`.
pub fn activation(step: &mut Step, x: &Tensor, n: usize, act: Act) {
    let k = step.gpu().kernel(&spec(act));
    step.dispatch_linear(
        &k,
        &Params {
            n: n as u32,
            _p: [0; 3],
        },
        &[x],
        groups_for(n, WG),
    );
}

pub(crate) fn silu_f32(v: f32) -> f32 {
    (v as f64 / (1.0 + (-v as f64).exp())) as f32
}

/// CPU reference of [`activation`] (`erf` is the caller's, f64).
pub fn cpu_activation(x: &[f32], act: Act, erf: impl Fn(f64) -> f64) -> Vec<f32> {
    x.iter()
        .map(|&v| match act {
            Act::Silu => silu_f32(v),
            Act::Gelu => (0.5 * v as f64 * (1.0 + erf(v as f64 / std::f64::consts::SQRT_2))) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn activations_match_cpu() {
        let Some(gpu) = gpu() else { return };
        for act in [Act::Silu, Act::Gelu] {
            for n in [1, 7, 1000] {
                let mut x = rand_vec(n as u64, n, 8.0);
                // Around zero, where GELU's erf is least forgiving, and far out.
                x.extend([0.0, 1e-4, -1e-4, 0.3, -0.3, 6.0, -6.0, 12.0, -12.0]);
                let xt = gpu.upload_f32("x", &x);
                let mut s = Step::new(gpu);
                activation(&mut s, &xt, x.len(), act);
                s.submit().unwrap();
                let got = pollster::block_on(gpu.read_f32(&xt, 0, x.len())).unwrap();
                let want = cpu_activation(&x, act, libm::erf);
                assert_close(&format!("{act:?}"), &got, &want, 1e-6, 1e-5);
            }
        }
    }
}
