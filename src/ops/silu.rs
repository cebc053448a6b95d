//! SiLU in place: `x = x * sigmoid(x)`.
//!
//! # Shapes
//! x `[n]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/silu.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("silu", SRC).with("WG", WG)
}

/// Records SiLU over the first `n` elements of `x`.
pub fn silu(step: &mut Step, x: &Tensor, n: usize) {
    let k = step.gpu().kernel(&spec());
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

/// CPU reference of [`silu`].
pub fn cpu_silu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| silu_f32(*v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn silu_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000] {
            let x = rand_vec(n as u64, n, 8.0);
            let xt = gpu.upload_f32("x", &x);
            let mut s = Step::new(gpu);
            silu(&mut s, &xt, n);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&xt, 0, n)).unwrap();
            assert_close("silu", &got, &cpu_silu(&x), 1e-6, 1e-5);
        }
    }
}
