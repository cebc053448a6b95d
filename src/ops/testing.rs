//! Test helpers: one shared GPU (or a clear skip), seeded inputs and a rel+abs comparison.

use std::sync::OnceLock;

use crate::gpu::{Gpu, GpuOptions};

/// The shared test device, or `None` (with a message) when no adapter exists. With
/// `SHADOWPEFT_REQUIRE_GPU=1` (set by the test script and CI) a missing adapter fails the test.
pub(crate) fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    let g = GPU.get_or_init(
        || match pollster::block_on(Gpu::new(GpuOptions::default())) {
            Ok(g) => Some(g),
            Err(e) => {
                if std::env::var("SHADOWPEFT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("SHADOWPEFT_REQUIRE_GPU=1 but {e}");
                }
                eprintln!("skipping GPU test: {e} (install mesa-vulkan-drivers for lavapipe)");
                None
            }
        },
    );
    g.as_ref()
}

/// The shared test device and, on CPU devices, a second one that runs the GPU kernels
/// (`cpu_kernels: Some(false)`), so that a test covers both kernel families of an op.
pub(crate) fn gpus() -> Vec<&'static Gpu> {
    static GPU_KERNELS: OnceLock<Option<Gpu>> = OnceLock::new();
    let Some(g) = gpu() else { return Vec::new() };
    let mut out = vec![g];
    if g.is_cpu() {
        let other = GPU_KERNELS.get_or_init(|| {
            pollster::block_on(Gpu::new(GpuOptions {
                cpu_kernels: Some(false),
                ..Default::default()
            }))
            .ok()
        });
        out.extend(other.as_ref());
    }
    out
}

/// Deterministic pseudo-random values in [-scale, scale).
pub(crate) fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise, naming the first failing index.
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!(
            (g - w).abs() <= tol || (g.is_nan() && w.is_nan()),
            "{what}: index {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}
