//! GPU plumbing: the device context, the pipeline cache, buffers and readback, and the
//! per-step command recorder. This is the one place that knows about wasm vs native.

mod buffers;
mod context;
mod pipelines;
pub mod quant;
mod step;

pub use buffers::{Matrix, Tensor};
pub use context::{Gpu, GpuOptions, Subgroups};
pub use pipelines::{Kernel, KernelSpec};
pub use quant::WeightFormat;
#[cfg(not(target_arch = "wasm32"))]
pub use step::profile;
pub use step::Step;
