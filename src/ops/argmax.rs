//! Argmax over one row of logits, on the device, so greedy decoding reads back 4 bytes.
//! Ties resolve to the lowest index (as `torch.argmax`).
//!
//! # Shapes
//! x `[>= x_off + n]`; out `[1]` u32.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

const SRC: &str = include_str!("../../shaders/argmax.wgsl");
const ARGMAX_WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    x_off: u32,
    _p: [u32; 2],
}

/// The compiled kernel of this op.
pub(crate) fn spec(gpu: &crate::gpu::Gpu) -> KernelSpec {
    KernelSpec::new("argmax", SRC).with("WG", super::reduce_wg(gpu, ARGMAX_WG))
}

/// Records `out[0] = argmax(x[x_off .. x_off + n])`.
pub fn argmax(step: &mut Step, x: &Tensor, x_off: usize, n: usize, out: &Tensor) {
    let k = step.gpu().kernel(&spec(step.gpu()));
    let p = Params {
        n: n as u32,
        x_off: x_off as u32,
        _p: [0; 2],
    };
    step.dispatch(&k, &p, &[x, out], [1, 1, 1]);
}

/// CPU reference of [`argmax`]: first index of the maximum.
pub fn cpu_argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gpu, rand_vec};

    #[test]
    fn argmax_matches_cpu_with_ties() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000, 151936] {
            let mut x = rand_vec(n as u64, n + 3, 5.0);
            if n > 10 {
                x[3 + n / 2] = 100.0;
                x[3 + n - 1] = 100.0;
            }
            let (xt, ot) = (gpu.upload_f32("x", &x), gpu.zeros("o", 1));
            let mut s = Step::new(gpu);
            argmax(&mut s, &xt, 3, n, &ot);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_u32(&ot, 0, 1)).unwrap()[0];
            assert_eq!(got, cpu_argmax(&x[3..]), "argmax n={n}");
        }
    }
}
