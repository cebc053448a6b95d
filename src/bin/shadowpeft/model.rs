//! The model flags every command shares, and loading what they name.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use shadowpeft::{DirSource, Gpu, GpuOptions, LoadOptions, Mode, ShadowModel};

#[derive(Args)]
pub struct ModelArgs {
    /// A detached export: a Hugging Face causal LM dir, a causal_lm_with_hidden_projection
    /// dir, or a Hugging Face peft `unload_shadow()` dir (with --adapter and --backbone: the
    /// client side of remote attached mode).
    #[arg(long, conflicts_with_all = ["base", "shadow", "mode"])]
    model: Option<PathBuf>,
    /// The base model dir (Hugging Face layout).
    #[arg(long, requires = "adapter")]
    base: Option<PathBuf>,
    /// The adapter dir: official shadow-peft (shadow_config.json + shadow_adapter.safetensors)
    /// or Hugging Face peft SHADOW (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// URL of a backbone server (`shadowpeft serve`): run attached with the base remote.
    #[arg(long, requires_all = ["model", "adapter"])]
    backbone: Option<String>,
    /// Bearer token for the backbone server.
    #[arg(long, requires = "backbone")]
    token: Option<String>,
    /// How the work is shared with the backbone: `fused` (one round trip per token; the
    /// injection/update weights are uploaded once) or `stepped` (one round trip per layer;
    /// the adapter never leaves this machine).
    #[arg(long, default_value = "fused", value_parser = ["fused", "stepped"], requires = "backbone")]
    protocol: String,
    /// Tensor encoding on the wire to the backbone: f16 or f32.
    #[arg(long, default_value = "f32", requires = "backbone")]
    wire: String,
    /// Seconds to wait for the backbone server before giving up on a request.
    #[arg(long, default_value_t = 120.0, requires = "backbone")]
    backbone_timeout: f64,
    /// What to do when the backbone fails mid-generation: `error` (stop with the error) or
    /// `detached` (continue with the shadow alone; the output says from which token on).
    #[arg(long, default_value = "error", value_parser = ["error", "detached"], requires = "backbone")]
    pub fallback: String,
    /// The explicit shadow model dir (its config gives the shadow architecture; for a peft
    /// adapter, the model its `shadow_model` names).
    #[arg(long, requires = "adapter")]
    shadow: Option<PathBuf>,
    /// attached (base logits) or detached (the shadow alone).
    #[arg(long, default_value = "attached")]
    mode: Option<String>,
    /// Longest sequence (prompt + new tokens) to allocate KV caches for.
    #[arg(long, default_value_t = 2048)]
    max_seq: usize,
    /// Storage of the decoder projections, embeddings and heads: f32, f16, or q8 / q4
    /// (int8 / int4 in blocks of 32 with f16 scales). Adapter networks, norms and
    /// matrices whose rows are not whole blocks of 32 stay f32. A packed model
    /// (`shadowpeft pack`) loads in its own format (the default f32 means "as packed").
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8", "q4"])]
    weights: String,
    /// Cap one storage binding at this many bytes (bigger tensors are split).
    #[arg(long, hide = true)]
    max_binding: Option<u64>,
}

pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("--tokens: `{t}` is not a token id (expected non-negative integers separated by commas)")))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

pub struct Loaded {
    pub gpu: Gpu,
    pub model: ShadowModel,
    /// Where tokenizer.json lives.
    pub text_dir: PathBuf,
}

pub async fn load(a: &ModelArgs) -> Result<Loaded> {
    let gpu = Gpu::new(GpuOptions {
        max_storage_binding: a.max_binding,
        ..Default::default()
    })
    .await?;
    let opts = LoadOptions {
        max_seq: a.max_seq,
        weights: a.weights.parse()?,
    };
    let (model, text_dir) = match (&a.model, &a.base, &a.adapter) {
        (Some(dir), _, Some(adapter)) => {
            let Some(url) = &a.backbone else {
                bail!("--model with --adapter needs --backbone URL (or give --base DIR --adapter DIR)");
            };
            let wire = a.wire.parse()?;
            let timeout = std::time::Duration::try_from_secs_f64(a.backbone_timeout).context("--backbone-timeout: expected a positive number of seconds")?;
            let remote = shadowpeft::remote::client::Connect { url: url.clone(), token: a.token.clone(), wire, timeout, protocol: a.protocol.parse()? };
            let m = ShadowModel::load_remote(&gpu, &DirSource::open(dir)?, &DirSource::open(adapter)?, &remote, &opts).await?;
            (m, dir.clone())
        }
        (Some(dir), _, None) => (ShadowModel::load_export(&gpu, &DirSource::open(dir)?, &opts).await?, dir.clone()),
        (None, Some(base), Some(adapter)) => {
            let mode: Mode = a.mode.as_deref().unwrap_or("attached").parse()?;
            let shadow = a.shadow.as_ref().map(DirSource::open).transpose()?;
            let m = ShadowModel::load_adapter(&gpu, &DirSource::open(base)?, &DirSource::open(adapter)?, shadow.as_ref(), mode, &opts).await?;
            (m, base.clone())
        }
        _ => bail!("give the model as --model EXPORT_DIR, or as --base DIR --adapter DIR [--shadow DIR] [--mode attached|detached]"),
    };
    Ok(Loaded {
        gpu,
        model,
        text_dir,
    })
}
