//! SwiGLU of a fused gate|up projection: `y[m, i] = silu(gu[m, i]) * gu[m, I + i]`.
//!
//! # Shapes
//! gu `[M, 2I]` (gate columns first, then up); y `[M, I]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/silu_mul.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    inter: u32,
    _p: [u32; 2],
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("silu_mul", SRC).with("WG", WG)
}

/// Records SwiGLU over `m` rows of intermediate width `inter`.
pub fn silu_mul(step: &mut Step, gu: &Tensor, y: &Tensor, m: usize, inter: usize) {
    let k = step.gpu().kernel(&spec());
    let p = Params {
        m: m as u32,
        inter: inter as u32,
        _p: [0; 2],
    };
    step.dispatch_linear(&k, &p, &[gu, y], groups_for(m * inter, WG));
}

/// CPU reference of [`silu_mul`].
pub fn cpu_silu_mul(gu: &[f32], inter: usize) -> Vec<f32> {
    gu.chunks(2 * inter)
        .flat_map(|r| {
            (0..inter).map(move |i| crate::ops::adapter_step::silu_f32(r[i]) * r[inter + i])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn silu_mul_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(m, i) in &[(1, 1), (7, 13), (3, 1000)] {
            let gu = rand_vec(m as u64, m * 2 * i, 6.0);
            let (gt, yt) = (gpu.upload_f32("gu", &gu), gpu.zeros("y", m * i));
            let mut s = Step::new(gpu);
            silu_mul(&mut s, &gt, &yt, m, i);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&yt, 0, m * i)).unwrap();
            assert_close("silu_mul", &got, &cpu_silu_mul(&gu, i), 1e-6, 1e-5);
        }
    }
}
