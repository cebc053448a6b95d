//! shadowpeft: ShadowPEFT language models on WebGPU (browser) and wgpu (native), attached
//! (frozen base + shadow injection/update) or detached (the shadow alone), with our own WGSL
//! kernels and KV-cached decoding.
//!
//! ```no_run
//! # async fn demo() -> shadowpeft::Result<()> {
//! use shadowpeft::{generate, DirSource, GenerateOptions, Gpu, GpuOptions, LoadOptions, ShadowModel};
//! let gpu = Gpu::new(GpuOptions::default()).await?;
//! let model = ShadowModel::load_export(&gpu, &DirSource::open("models/tiny/export")?, &LoadOptions::default()).await?;
//! let mut sess = model.new_session(&gpu);
//! let g = generate(&gpu, &model, &mut sess, &[1, 2, 3], &GenerateOptions::default(), |_| Ok(true)).await?;
//! println!("{:?}", g.tokens);
//! # Ok(()) }
//! ```

pub mod chat;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod remote;
pub mod speculate;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use chat::{ChatPrompt, Truncation};
pub use error::{Error, Result};
pub use generate::{
    generate, GenerateOptions, Generation, Sampler, Sampling, Speculate, SpeculationStats,
    StopReason, TokenStream,
};
pub use gpu::{Gpu, GpuOptions, Subgroups, WeightFormat};
#[cfg(not(target_arch = "wasm32"))]
pub use model::source::DirSource;
pub use model::source::{MemSource, Source};
pub use model::{ForwardOutput, LoadOptions, Mode, Readout, Session, ShadowModel};
pub use tokenizer::{Message, StreamDecoder, TextTokenizer};
