//! Argmax over rows of logits, on the device, so greedy decoding reads back 4 bytes a row:
//! the index, and where asked, its softmax probability (for confidence checks such as a
//! draft's p-min; a second pass over the row). Ties resolve to the lowest index (as
//! `torch.argmax`).
//!
//! # Shapes
//! x `[>= x_off + rows * n]`; out `[2 * rows]` u32: the indices, then the probabilities' bits.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

const SRC: &str = include_str!("../../shaders/argmax.wgsl");
const ARGMAX_WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    x_off: u32,
    rows: u32,
    _p: u32,
}

/// The compiled kernel of this op; `prob` also writes the probabilities.
pub(crate) fn spec(gpu: &crate::gpu::Gpu, prob: bool) -> KernelSpec {
    KernelSpec::new("argmax", SRC)
        .with("WG", super::reduce_wg(gpu, ARGMAX_WG))
        .with("PROB", prob as u32)
}

/// Records `out[0] = argmax(x[x_off .. x_off + n])`, and with `prob`, `out[1]` = the bits
/// of its softmax probability.
pub fn argmax(step: &mut Step, x: &Tensor, x_off: usize, n: usize, out: &Tensor, prob: bool) {
    argmax_rows(step, x, x_off, n, 1, out, prob);
}

/// Records, for each of `rows` rows of `n` values from `x_off`, `out[r]` = its argmax, and
/// with `prob`, `out[rows + r]` = the bits of that value's softmax probability over the row.
pub fn argmax_rows(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    n: usize,
    rows: usize,
    out: &Tensor,
    prob: bool,
) {
    let k = step.gpu().kernel(&spec(step.gpu(), prob));
    let p = Params {
        n: n as u32,
        x_off: x_off as u32,
        rows: rows as u32,
        _p: 0,
    };
    step.dispatch(&k, &p, &[x, out], [rows as u32, 1, 1]);
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
    fn argmax_rows_with_probabilities() {
        let Some(gpu) = gpu() else { return };
        let (n, rows) = (3000, 5);
        let mut x = rand_vec(7, 2 + n * rows, 4.0);
        x[2 + 3 * n + 17] = 30.0;
        let (xt, ot) = (gpu.upload_f32("x", &x), gpu.zeros("o", 2 * rows));
        let mut s = Step::new(gpu);
        argmax_rows(&mut s, &xt, 2, n, rows, &ot, true);
        s.submit().unwrap();
        let got = pollster::block_on(gpu.read_u32(&ot, 0, 2 * rows)).unwrap();
        for r in 0..rows {
            let row = &x[2 + r * n..2 + (r + 1) * n];
            let want = cpu_argmax(row);
            assert_eq!(got[r], want, "row {r}");
            let mx = row[want as usize] as f64;
            let p = 1.0 / row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>();
            let p_gpu = f32::from_bits(got[rows + r]) as f64;
            assert!(
                (p_gpu - p).abs() < 1e-5,
                "row {r}: probability {p_gpu} against {p}"
            );
        }
        assert!(
            f32::from_bits(got[rows + 3]) > 0.999,
            "a dominant logit is nearly certain"
        );
    }

    #[test]
    fn argmax_matches_cpu_with_ties() {
        let Some(gpu) = gpu() else { return };
        for n in [1, 7, 1000, 151936] {
            let mut x = rand_vec(n as u64, n + 3, 5.0);
            if n > 10 {
                x[3 + n / 2] = 100.0;
                x[3 + n - 1] = 100.0;
            }
            let (xt, ot) = (gpu.upload_f32("x", &x), gpu.zeros("o", 2));
            let mut s = Step::new(gpu);
            argmax(&mut s, &xt, 3, n, &ot, false);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_u32(&ot, 0, 1)).unwrap()[0];
            assert_eq!(got, cpu_argmax(&x[3..]), "argmax n={n}");
            let mut s = Step::new(gpu);
            argmax(&mut s, &xt, 3, n, &ot, true);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_u32(&ot, 0, 1)).unwrap()[0];
            assert_eq!(
                got,
                cpu_argmax(&x[3..]),
                "argmax with its probability n={n}"
            );
        }
    }
}
