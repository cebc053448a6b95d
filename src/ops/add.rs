//! Scaled add in place: `y = y + alpha * x` (residual adds; the shadow injection).
//!
//! # Shapes
//! x, y `[n]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/add.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    _p: [u32; 2],
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("add", SRC).with("WG", WG)
}

/// Records `y[..n] += alpha * x[..n]`.
pub fn add(step: &mut Step, x: &Tensor, y: &Tensor, n: usize, alpha: f32) {
    let k = step.gpu().kernel(&spec());
    let p = Params {
        n: n as u32,
        alpha,
        _p: [0; 2],
    };
    step.dispatch_linear(&k, &p, &[x, y], groups_for(n, WG));
}

/// CPU reference of [`add`].
pub fn cpu_add(x: &[f32], y: &[f32], alpha: f32) -> Vec<f32> {
    x.iter()
        .zip(y)
        .map(|(x, y)| alpha.mul_add(*x, *y))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn add_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000, 70000] {
            let x = rand_vec(n as u64, n, 2.0);
            let y = rand_vec(n as u64 + 1, n, 2.0);
            let (xt, yt) = (gpu.upload_f32("x", &x), gpu.upload_f32("y", &y));
            let mut s = Step::new(gpu);
            add(&mut s, &xt, &yt, n, 0.37);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&yt, 0, n)).unwrap();
            assert_close("add", &got, &cpu_add(&x, &y, 0.37), 1e-6, 1e-6);
        }
    }
}
