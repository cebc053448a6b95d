//! Embedding gather: `y[m, :] = table[ids[m], :]`, over a row-chunked table.
//!
//! # Shapes
//! ids `[M]` u32 (validated against the vocabulary on the host); table `[V, D]`; y `[M, D]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Matrix, Step, Tensor, WeightFormat};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/embedding.wgsl");
const QSRC: &str = include_str!("../../shaders/qembedding.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    dim: u32,
    row0: u32,
    rows: u32,
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("embedding", SRC).with("WG", WG)
}

/// The gather kernel of f16 and quantised tables (decoding a block of 32 per invocation).
pub(crate) fn qspec(format: WeightFormat) -> Option<KernelSpec> {
    super::with_format(KernelSpec::new("qembedding", QSRC).with("WG", WG), format)
}

/// Records the gather of `m` rows.
pub fn embedding(step: &mut Step, ids: &Tensor, table: &Matrix, y: &Tensor, m: usize) {
    let (k, per_item) = match qspec(table.format) {
        Some(s) => (step.gpu().kernel(&s), crate::gpu::quant::BLOCK),
        None => (step.gpu().kernel(&spec()), 1),
    };
    for (chunk, row0, rows) in &table.chunks {
        let p = Params {
            m: m as u32,
            dim: table.cols as u32,
            row0: *row0 as u32,
            rows: *rows as u32,
        };
        let groups = groups_for(m * table.cols / per_item, WG);
        step.dispatch_linear(&k, &p, &[ids, chunk, y], groups);
    }
}

/// CPU reference of [`embedding`].
pub fn cpu_embedding(ids: &[u32], table: &[f32], dim: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&i| {
            table[i as usize * dim..(i as usize + 1) * dim]
                .iter()
                .copied()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuOptions};
    use crate::ops::testing::{gpu, rand_vec};

    #[test]
    fn embedding_gathers_rows_across_chunks() {
        if gpu().is_none() {
            return;
        }
        let g = pollster::block_on(Gpu::new(GpuOptions {
            max_storage_binding: Some(2048),
            ..Default::default()
        }))
        .unwrap();
        let (v, d) = (1000, 7);
        let table = rand_vec(4, v * d, 1.0);
        let mat = g.upload_matrix("table", &table, v, d).unwrap();
        assert!(mat.chunks.len() > 1);
        let ids = [0u32, 999, 73, 73, 500, 1];
        let it = g.upload_u32("ids", &ids);
        let yt = g.zeros("y", ids.len() * d);
        let mut s = Step::new(&g);
        embedding(&mut s, &it, &mat, &yt, ids.len());
        s.submit().unwrap();
        let got = pollster::block_on(g.read_f32(&yt, 0, ids.len() * d)).unwrap();
        assert_eq!(got, cpu_embedding(&ids, &table, d));
    }

    /// f16 and quantised tables decode exactly what the host decoder gives, across chunks.
    #[test]
    fn embedding_decodes_every_weight_format() {
        if gpu().is_none() {
            return;
        }
        let g = pollster::block_on(Gpu::new(GpuOptions {
            max_storage_binding: Some(4096),
            ..Default::default()
        }))
        .unwrap();
        let (v, d) = (300, 64);
        let table = rand_vec(5, v * d, 1.0);
        let ids = [0u32, 299, 73, 73, 150, 1, 64];
        for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
            let mat = g.upload_matrix_as("table", &table, v, d, format).unwrap();
            assert!(mat.chunks.len() > 1, "{format}");
            let it = g.upload_u32("ids", &ids);
            let yt = g.zeros("y", ids.len() * d);
            let mut s = Step::new(&g);
            embedding(&mut s, &it, &mat, &yt, ids.len());
            s.submit().unwrap();
            let got = pollster::block_on(g.read_f32(&yt, 0, ids.len() * d)).unwrap();
            let stored = format.decode(&format.encode(&table, v, d), v, d);
            assert_eq!(got, cpu_embedding(&ids, &stored, d), "{format}");
        }
    }
}
