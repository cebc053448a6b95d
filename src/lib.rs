//! shadowpeft: ShadowPEFT language models on WebGPU (browser) and wgpu (native).

pub mod error;
pub mod gpu;
pub mod ops;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
