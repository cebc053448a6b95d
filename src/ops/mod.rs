//! Operations: one file per kernel, each with its `Params` (mirroring the WGSL uniform field
//! for field), the function that records its dispatch, its CPU reference and its tests.
//!
//! Shapes are given in elements; every tensor is row-major f32 unless said otherwise.

mod adapter_step;
mod add;
mod argmax;
mod attention;
mod embedding;
mod glu;
mod kv;
mod linear;
mod rms_norm;
mod rope;
mod sample;
mod silu_mul;

#[cfg(test)]
pub(crate) mod testing;

pub use adapter_step::{
    adapter_step, cpu_inject, cpu_shadow_update, precompile_steps, Act, AdapterShape, CpuNets,
    PackedSlot, UpdateNets,
};
pub use add::{add, cpu_add};
pub use argmax::{argmax, argmax_rows, cpu_argmax};
pub use attention::{attention, cpu_attention, CPU_SCORE_ROWS};
pub use embedding::{cpu_embedding, embedding};
pub use glu::glu;
pub use kv::{KvLayout, KvStore};
/// The server warms up every multi-row tile.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use linear::CMATMUL_ROWS;
pub use linear::{cpu_linear, linear, linear_add, Linear};
pub use rms_norm::{cpu_rms_norm, rms_norm};
pub use rope::{cpu_rope, qk_rope, QkRope, RopeTable};
pub use sample::{
    on_device as sample_on_device, sample, Dist, SampleBuffers, Sampling, TOP_K_MAX, UNDECIDED,
};
pub use silu_mul::{cpu_silu_mul, silu_mul};

/// The shapes of a decoder that decide which kernels it compiles.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Compiles every kernel models of these shapes use, so that (in the browser) compilation
/// overlaps the weight upload instead of delaying the first token. `adapter` is the shape of
/// the shadow adapter when it runs here; `weights` the storage of the projections,
/// embeddings and heads.
pub fn precompile(
    gpu: &crate::gpu::Gpu,
    dims: &[Dims],
    adapter: Option<AdapterShape>,
    weights: crate::gpu::WeightFormat,
) {
    const SEQ: KvLayout = KvLayout::Seq { pos0: 0 };
    let mut specs = vec![
        linear::matvec_for(gpu).0,
        linear::matvec_any_spec(),
        if gpu.is_cpu() {
            linear::matmul_cpu_spec()
        } else {
            linear::matmul_spec()
        },
        rope::spec(gpu, true, true, &SEQ),
        rope::spec(gpu, false, false, &SEQ),
        embedding::spec(),
        silu_mul::spec(),
        argmax::spec(gpu, false),
        argmax::spec(gpu, true),
    ];
    // The fused gate/up decode kernels; CPU devices decode with cmatvec wherever the
    // width allows (K % 32 == 0), and compile these on first use only (a 2-token prompt).
    if !gpu.is_cpu() || dims.iter().any(|d| !d.hidden.is_multiple_of(32)) {
        specs.push(glu::spec(gpu).0);
        specs.extend(glu::qspec(weights));
    }
    specs.extend(dims.iter().map(|d| attention::spec(d.head_dim, &SEQ)));
    // The layer norms (rows from offset 0).
    specs.extend(dims.iter().map(|d| rms_norm::spec(gpu, d.hidden, 0, 0).0));
    specs.extend(linear::qlinear_spec(weights, 1));
    specs.extend(linear::qlinear_spec(weights, 4));
    specs.extend(embedding::qspec(weights));
    if gpu.is_cpu() {
        // The decode kernels are specialised by input width: hidden (q, k, v, gate, up, LM
        // head), intermediate (down), heads x head_dim (o).
        let mut mv: Vec<usize> = Vec::new();
        for d in dims {
            mv.extend([d.hidden, d.intermediate, d.heads * d.head_dim]);
            specs.push(glu::cpu_spec(weights, d.hidden));
            specs.push(attention::cpu_spec(d.heads, d.kv_heads, d.head_dim, &SEQ));
        }
        mv.retain(|w| w % 32 == 0);
        mv.sort_unstable();
        mv.dedup();
        specs.extend(mv.iter().map(|&w| linear::cmatvec_spec(weights, w)));
    }
    if let Some(shape) = adapter {
        for d in dims {
            specs.extend([
                adapter_step::spec(gpu, &shape, true, true, 1, d.hidden),
                adapter_step::spec(gpu, &shape, false, true, 1, d.hidden),
            ]);
        }
    }
    for s in &specs {
        gpu.kernel(s);
    }
}

/// A matrix-vector decode kernel in its two forms, `(name, source)` each: the subgroup form
/// where this device's kernels use subgroups (one subgroup per output, `WG / largest subgroup`
/// outputs per workgroup, passed as `RPW`), else the plain one (one output per invocation).
/// Returns the spec and its outputs per workgroup.
pub(crate) fn decode_spec(
    gpu: &crate::gpu::Gpu,
    plain: (&'static str, &'static str),
    subgroup: (&'static str, &'static str),
) -> (crate::gpu::KernelSpec, u32) {
    match gpu.subgroup_max() {
        Some(sg) => {
            let rpw = (WG / sg).max(1);
            let s = crate::gpu::KernelSpec::new(subgroup.0, subgroup.1)
                .with("WG", WG)
                .with("RPW", rpw);
            (s, rpw)
        }
        None => (
            crate::gpu::KernelSpec::new(plain.0, plain.1).with("WG", WG),
            WG,
        ),
    }
}

/// `spec` with the decoder of weight `format` prepended, or `None` for f32 (which the plain
/// kernels read directly).
pub(crate) fn with_format(
    spec: crate::gpu::KernelSpec,
    format: crate::gpu::WeightFormat,
) -> Option<crate::gpu::KernelSpec> {
    use crate::gpu::WeightFormat;
    let prelude = match format {
        WeightFormat::F32 => return None,
        WeightFormat::F16 => ("format_f16", include_str!("../../shaders/format_f16.wgsl")),
        WeightFormat::Q8 => ("format_q8", include_str!("../../shaders/format_q8.wgsl")),
        WeightFormat::Q4 => ("format_q4", include_str!("../../shaders/format_q4.wgsl")),
    };
    Some(spec.prelude(prelude.0, prelude.1))
}

/// `spec` with the CPU decode kernels' decoder of `format` and their shared functions.
pub(crate) fn with_cpu_format(
    spec: crate::gpu::KernelSpec,
    format: crate::gpu::WeightFormat,
) -> crate::gpu::KernelSpec {
    use crate::gpu::WeightFormat;
    let prelude = match format {
        WeightFormat::F32 => (
            "cformat_f32",
            include_str!("../../shaders/cformat_f32.wgsl"),
        ),
        WeightFormat::F16 => (
            "cformat_f16",
            include_str!("../../shaders/cformat_f16.wgsl"),
        ),
        WeightFormat::Q8 => ("cformat_q8", include_str!("../../shaders/cformat_q8.wgsl")),
        WeightFormat::Q4 => ("cformat_q4", include_str!("../../shaders/cformat_q4.wgsl")),
    };
    spec.prelude(prelude.0, prelude.1).prelude(
        "cmatvec_common",
        include_str!("../../shaders/cmatvec_common.wgsl"),
    )
}

/// Default workgroup size of the element-wise and row kernels.
pub(crate) const WG: u32 = 64;

/// Workgroup size of the kernels that reduce across a workgroup with barriers (row norms, the
/// per-head q/k norms, the adapter step, argmax): `default` on GPUs; 8 on CPU devices, where a
/// workgroup runs as SIMD groups of 8 lanes on one thread and every barrier switches between
/// those groups (one group: no switching).
pub(crate) fn reduce_wg(gpu: &crate::gpu::Gpu, default: u32) -> u32 {
    if gpu.is_cpu() {
        8
    } else {
        default
    }
}

/// Workgroups needed to cover `n` items with `per` items per workgroup.
pub(crate) fn groups_for(n: usize, per: u32) -> u32 {
    (n as u64).div_ceil(per as u64).min(u32::MAX as u64) as u32
}
