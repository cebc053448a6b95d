//! Difference: `y = a - b` (the injection's `h - s`).
//!
//! # Shapes
//! a, b, y `[n]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/sub.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p: [u32; 3],
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("sub", SRC).with("WG", WG)
}

/// Records `y[..n] = a[..n] - b[..n]`.
pub fn sub(step: &mut Step, a: &Tensor, b: &Tensor, y: &Tensor, n: usize) {
    let k = step.gpu().kernel(&spec());
    step.dispatch_linear(
        &k,
        &Params {
            n: n as u32,
            _p: [0; 3],
        },
        &[a, b, y],
        groups_for(n, WG),
    );
}

/// CPU reference of [`sub`].
pub fn cpu_sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gpu, rand_vec};

    #[test]
    fn sub_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000] {
            let a = rand_vec(n as u64, n, 2.0);
            let b = rand_vec(n as u64 + 9, n, 2.0);
            let (at, bt, yt) = (
                gpu.upload_f32("a", &a),
                gpu.upload_f32("b", &b),
                gpu.zeros("y", n),
            );
            let mut s = Step::new(gpu);
            sub(&mut s, &at, &bt, &yt, n);
            s.submit().unwrap();
            assert_eq!(
                pollster::block_on(gpu.read_f32(&yt, 0, n)).unwrap(),
                cpu_sub(&a, &b)
            );
        }
    }
}
