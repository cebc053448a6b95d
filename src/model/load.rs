//! Loading: a base with an adapter of either format, a detached export, and attaching an
//! export to a backbone server.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix};
use crate::ops::{self, Linear};
use crate::remote::client::{Connect, Protocol, RemoteBase};
use crate::remote::frame;

use super::adapter::{self, Adapter, AdapterFormat};
use super::base::BaseModel;
use super::config::{self, ArchConfig, PeftShadowConfig, ProjectedConfig, ShadowConfig};
use super::decoder::{load_linear, Decoder};
use super::packed;
use super::source::{self, read_json, read_json_opt, Source};
use super::weights::Weights;
use super::{Base, LoadOptions, Mode, RemoteAttach, ShadowModel};

fn head_or_tied(
    gpu: &Gpu,
    w: &Weights,
    name: &str,
    tied: &Matrix,
    tie: bool,
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    if w.has(&format!("{name}.weight")) {
        load_linear(gpu, w, name, rows, cols, false)
    } else if tie {
        Ok(Linear {
            w: tied.clone(),
            b: None,
        })
    } else {
        Err(Error::MissingTensor {
            file: w.describe(),
            name: format!("{name}.weight (tie_word_embeddings is false)"),
        })
    }
}

fn load_matrix(gpu: &Gpu, w: &Weights, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    w.matrix(gpu, name, rows, cols)
}

async fn eos_ids<S: Source>(src: &S, cfg_eos: &[u32]) -> Result<Vec<u32>> {
    let f = "generation_config.json";
    let mut ids = match read_json_opt(src, f).await? {
        Some(v) => config::token_ids(&v, &src.location(f), "eos_token_id")?,
        None => Vec::new(),
    };
    if ids.is_empty() {
        ids = cfg_eos.to_vec();
    }
    Ok(ids)
}

/// Hugging Face peft's adapter weights file and key prefixes (the adapter name is saved as
/// `default`).
const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
const PEFT_SHADOW: &str = "base_model.shadow_backbone.default.";
const PEFT_PROJECTION: &str = "base_model.shadow_projection.default.weight";
const PEFT_HEAD: &str = "base_model.model.lm_head";

/// What both adapter loaders take from the base: its weights, embeddings and head (tied or
/// not), and the session length the base and shadow allow.
struct BaseWeights {
    bw: Weights,
    embed: Matrix,
    head: Linear,
    max_seq: usize,
}

impl BaseWeights {
    /// Starts compiling the kernels (`adapter`: the adapter's shape, when attached) and
    /// reads the base's weights meanwhile.
    async fn load<B: Source>(
        gpu: &Gpu,
        base_src: &B,
        base_cfg: &ArchConfig,
        shadow_cfg: &ArchConfig,
        mode: Mode,
        adapter: ops::AdapterShape,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let (d, v) = (base_cfg.hidden, base_cfg.vocab);
        ops::precompile(
            gpu,
            &[base_cfg.dims(), shadow_cfg.dims()],
            (mode == Mode::Attached).then_some(adapter),
            opts.weights,
        );
        let max_seq = opts
            .max_seq
            .min(base_cfg.max_positions)
            .min(shadow_cfg.max_positions)
            .max(1);
        let mut bw = Weights::load_hf(base_src).await?;
        bw.set_format(opts.weights);
        let embed = load_matrix(gpu, &bw, "model.embed_tokens.weight", v, d)?;
        let head = head_or_tied(gpu, &bw, "lm_head", &embed, base_cfg.tie_embeddings, v, d)?;
        Ok(BaseWeights {
            bw,
            embed,
            head,
            max_seq,
        })
    }
}

/// A base model's parsed `config.json`.
struct BaseFiles {
    json: serde_json::Value,
    cfg: ArchConfig,
}

/// Which ShadowPEFT format the adapter in `src` is: Hugging Face peft's when it has an
/// `adapter_config.json` (its `peft_type` must be SHADOW), else the official package's
/// (`shadow_config.json`). Other peft adapter types are refused with what we support.
pub async fn detect_format<S: Source>(src: &S) -> Result<AdapterFormat> {
    let file = "adapter_config.json";
    if let Some(pc) = read_json_opt(src, file).await? {
        return match pc.get("peft_type").and_then(|v| v.as_str()) {
            Some("SHADOW") => Ok(AdapterFormat::Peft),
            other => Err(Error::config(
                &src.location(file),
                "peft_type",
                format!(
                    "`{}` adapters are not supported; expected a ShadowPEFT adapter: Hugging Face peft's SHADOW (adapter_config.json with peft_type \"SHADOW\" + adapter_model.safetensors) or the official shadow-peft package's (shadow_config.json + shadow_adapter.safetensors)",
                    other.unwrap_or("(missing)")
                ),
            )),
        };
    }
    Ok(AdapterFormat::ShadowPeft)
}

/// The tensors of a safetensors file (already validated into `w`) that `keep` selects, as
/// they travel in an adapter upload.
fn upload_tensors(
    w: &Weights,
    bytes: &[u8],
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<frame::UploadTensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        file: w.describe(),
        msg: e.to_string(),
    })?;
    Ok(st
        .tensors()
        .into_iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect())
}

/// An explicit shadow's architecture from its directory's `config.json` (a plain model, or a
/// `causal_lm_with_hidden_projection` wrapper: then `true`).
async fn explicit_shadow_config<S: Source>(s: &S) -> Result<(ArchConfig, bool)> {
    let loc = s.location("config.json");
    let v = read_json(s, "config.json", "explicit shadow config").await?;
    Ok(
        if config::model_type(&loc, &v)? == "causal_lm_with_hidden_projection" {
            (ProjectedConfig::from_json(&loc, &v)?.inner, true)
        } else {
            (ArchConfig::from_hf(&loc, &v)?, false)
        },
    )
}

impl ShadowModel {
    /// Loads a base model and a ShadowPEFT adapter, of either format (see [`detect_format`]):
    /// the official shadow-peft one (`shadow_config.json`, `shadow_adapter.safetensors`,
    /// optional `shadow_modules.safetensors`) or Hugging Face peft's SHADOW tuner
    /// (`adapter_config.json`, `adapter_model.safetensors`). `shadow` is the explicit shadow's
    /// model directory (its config gives the architecture); without it the shadow is implicit
    /// (official) or a "mirror" (peft): the base config with the adapter's overrides.
    /// Detached mode loads no base layers.
    pub async fn load_adapter<B: Source, A: Source, X: Source>(
        gpu: &Gpu,
        base_src: &B,
        adapter_src: &A,
        shadow_src: Option<&X>,
        mode: Mode,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let base_json = read_json(base_src, "config.json", "base model config").await?;
        let loc = base_src.location("config.json");
        let base_cfg = ArchConfig::from_hf(&loc, &base_json)?;
        // A packed base decides the storage of the whole model.
        let opts = &LoadOptions {
            weights: packed::effective(&loc, opts.weights, packed::declared(&loc, &base_json)?)?,
            ..opts.clone()
        };
        let base = BaseFiles {
            json: base_json,
            cfg: base_cfg,
        };
        match detect_format(adapter_src).await? {
            AdapterFormat::ShadowPeft => {
                Self::load_official(gpu, base_src, base, adapter_src, shadow_src, mode, opts).await
            }
            AdapterFormat::Peft => {
                Self::load_peft(gpu, base_src, base, adapter_src, shadow_src, mode, opts).await
            }
        }
    }

    /// [`ShadowModel::load_adapter`] for an official shadow-peft adapter.
    async fn load_official<B: Source, A: Source, X: Source>(
        gpu: &Gpu,
        base_src: &B,
        base: BaseFiles,
        adapter_src: &A,
        shadow_src: Option<&X>,
        mode: Mode,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let BaseFiles {
            json: base_json,
            cfg: base_cfg,
        } = base;
        let sc_file = adapter_src.location("shadow_config.json");
        let sc = ShadowConfig::from_json(
            &sc_file,
            &read_json(
                adapter_src,
                "shadow_config.json",
                "ShadowPEFT adapter config (or adapter_config.json of a Hugging Face peft adapter)",
            )
            .await?,
        )?;
        if base_cfg.layers < 2 {
            return Err(Error::config(
                &base_src.location("config.json"),
                "num_hidden_layers",
                "ShadowPEFT needs at least 2 base layers",
            ));
        }
        let mut aw = Weights::default();
        aw.set_format(opts.weights);
        aw.add_from(
            adapter_src,
            "shadow_adapter.safetensors",
            "shadow adapter weights",
        )
        .await?;
        let mut mw = Weights::default();
        mw.set_format(opts.weights);
        mw.add_optional(adapter_src, "shadow_modules.safetensors")
            .await?;

        // Shadow architecture: explicit (from its directory) or implicit (derived).
        let mut shadow_dir_weights = None;
        let shadow_cfg = match shadow_src {
            Some(s) => {
                let (cfg, _) = explicit_shadow_config(s).await?;
                if !aw.has("shadow_hidden_projection.weight") && cfg.hidden != base_cfg.hidden {
                    let mut sw = Weights::load_hf(s).await?;
                    sw.set_format(opts.weights);
                    shadow_dir_weights = Some(sw);
                }
                cfg
            }
            None => base_cfg.implicit_shadow(&base_json, &sc, &sc_file)?,
        };
        let (d, ds, v) = (base_cfg.hidden, shadow_cfg.hidden, base_cfg.vocab);
        let BaseWeights {
            bw,
            mut embed,
            mut head,
            max_seq,
        } = BaseWeights::load(
            gpu,
            base_src,
            &base_cfg,
            &shadow_cfg,
            mode,
            sc.shape(),
            opts,
        )
        .await?;
        // shadow_modules.safetensors: trained heads replace the base ones (only those listed
        // in modules_to_save when the list is non-empty, as the official loader does).
        let wanted =
            |m: &str| sc.modules_to_save.is_empty() || sc.modules_to_save.iter().any(|x| x == m);
        let mut shadow_head = head.clone();
        if wanted("lm_head") && mw.has("lm_head.weight") {
            let tied = matches!((&head.w.chunks.first(), &embed.chunks.first()), (Some(a), Some(b)) if a.0.buf == b.0.buf);
            head = load_linear(gpu, &mw, "lm_head", v, d, false)?;
            if tied {
                // The official loader copies into the shared parameter: the embedding changes too.
                embed = head.w.clone();
            }
            shadow_head = head.clone();
        }
        if wanted("shadow_lm_head") && mw.has("shadow_lm_head.weight") {
            shadow_head = load_linear(gpu, &mw, "shadow_lm_head", v, d, false)?;
        }

        let shadow = Decoder::load(gpu, &aw, "shadow_model.", &shadow_cfg, max_seq)?;
        let shadow_embed = if aw.has("shadow_model.embed_tokens.weight") {
            load_matrix(
                gpu,
                &aw,
                "shadow_model.embed_tokens.weight",
                shadow_cfg.vocab,
                ds,
            )?
        } else if ds == d {
            embed.clone()
        } else {
            return Err(Error::MissingTensor {
                file: aw.describe(),
                name: format!("shadow_model.embed_tokens.weight (the shadow width {ds} differs from the base width {d}, so base embeddings cannot be shared)"),
            });
        };
        let proj = if ds != d {
            let pw = if aw.has("shadow_hidden_projection.weight") {
                &aw
            } else {
                shadow_dir_weights.as_ref().unwrap_or(&aw)
            };
            Some(load_linear(
                gpu,
                pw,
                "shadow_hidden_projection",
                d,
                ds,
                false,
            )?)
        } else {
            None
        };
        let base = match mode {
            Mode::Attached => Some(Base {
                model: BaseModel::load(gpu, &bw, &base_cfg, max_seq, Some(embed))?,
                head,
                adapter: Adapter::load(gpu, &aw, &sc, base_cfg.layers, d)?,
            }),
            Mode::Detached => None,
        };
        Ok(ShadowModel {
            mode,
            base,
            remote: None,
            shadow,
            shadow_embed,
            proj,
            shadow_head,
            vocab: v,
            hidden: d,
            eos: eos_ids(base_src, &base_cfg.eos).await?,
            weights: opts.weights,
        })
    }

    /// [`ShadowModel::load_adapter`] for a Hugging Face peft SHADOW adapter.
    async fn load_peft<B: Source, A: Source, X: Source>(
        gpu: &Gpu,
        base_src: &B,
        base: BaseFiles,
        adapter_src: &A,
        shadow_src: Option<&X>,
        mode: Mode,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let BaseFiles {
            json: base_json,
            cfg: base_cfg,
        } = base;
        let file = adapter_src.location("adapter_config.json");
        let pc = PeftShadowConfig::from_json(
            &file,
            &read_json(adapter_src, "adapter_config.json", "peft adapter config").await?,
            base_cfg.layers,
        )?;
        let mut aw = Weights::default();
        aw.set_format(opts.weights);
        aw.add_from(adapter_src, PEFT_WEIGHTS, "peft adapter weights")
            .await?;
        let (d, v) = (base_cfg.hidden, base_cfg.vocab);

        // Shadow architecture: peft's mirror of the base, or an explicit backbone whose
        // directory gives the architecture (its weights are in the adapter; the directory
        // supplies what the adapter lacks).
        let mut dir_weights = None;
        let (shadow_cfg, dir_prefix) = if pc.is_mirror() {
            (base_cfg.peft_mirror(&base_json, &pc, &file)?, "model.")
        } else {
            let s = shadow_src.ok_or_else(|| {
                Error::config(
                    &file,
                    "shadow_model",
                    format!(
                        "`{}` is an explicit shadow backbone: pass its model directory (config.json) as the shadow",
                        pc.shadow_model
                    ),
                )
            })?;
            let (cfg, projected) = explicit_shadow_config(s).await?;
            let needs_dir = !aw.has(&format!("{PEFT_SHADOW}embed_tokens.weight"))
                || (cfg.hidden != d && !aw.has(PEFT_PROJECTION));
            if needs_dir {
                let mut sw = Weights::load_hf(s).await?;
                sw.set_format(opts.weights);
                dir_weights = Some(sw);
            }
            (cfg, if projected { "shadow_model." } else { "model." })
        };
        let ds = shadow_cfg.hidden;
        let BaseWeights {
            bw,
            embed,
            mut head,
            max_seq,
        } = BaseWeights::load(
            gpu,
            base_src,
            &base_cfg,
            &shadow_cfg,
            mode,
            pc.spec.shape(),
            opts,
        )
        .await?;
        // modules_to_save: ["lm_head"] trains a copy of the head, used by both outputs (peft
        // wraps the module itself; the embeddings stay as they were even when tied).
        if pc.trained_head {
            head = load_linear(gpu, &aw, PEFT_HEAD, v, d, false)?;
        }
        let shadow = Decoder::load(gpu, &aw, PEFT_SHADOW, &shadow_cfg, max_seq)?;
        let own_embed = format!("{PEFT_SHADOW}embed_tokens.weight");
        let shadow_embed = if aw.has(&own_embed) {
            load_matrix(gpu, &aw, &own_embed, shadow_cfg.vocab, ds)?
        } else if pc.is_mirror() && pc.share_embeddings && ds == d {
            embed.clone()
        } else if let Some(dw) = &dir_weights {
            load_matrix(
                gpu,
                dw,
                &format!("{dir_prefix}embed_tokens.weight"),
                shadow_cfg.vocab,
                ds,
            )?
        } else {
            return Err(Error::MissingTensor {
                file: aw.describe(),
                name: format!("{own_embed} (the shadow does not share the base embeddings)"),
            });
        };
        let proj = if aw.has(PEFT_PROJECTION) {
            Some(Linear {
                w: load_matrix(gpu, &aw, PEFT_PROJECTION, d, ds)?,
                b: None,
            })
        } else if ds == d {
            None
        } else if let Some(dw) = &dir_weights {
            Some(load_linear(
                gpu,
                dw,
                "shadow_hidden_projection",
                d,
                ds,
                false,
            )?)
        } else {
            return Err(Error::MissingTensor {
                file: aw.describe(),
                name: format!(
                    "{PEFT_PROJECTION} (the shadow width {ds} differs from the base width {d})"
                ),
            });
        };
        let base = match mode {
            Mode::Attached => Some(Base {
                model: BaseModel::load(gpu, &bw, &base_cfg, max_seq, Some(embed))?,
                head: head.clone(),
                adapter: Adapter::load_peft(gpu, &aw, &pc.spec, base_cfg.layers, d)?,
            }),
            Mode::Detached => None,
        };
        Ok(ShadowModel {
            mode,
            base,
            remote: None,
            shadow,
            shadow_embed,
            proj,
            shadow_head: head,
            vocab: v,
            hidden: d,
            eos: eos_ids(base_src, &base_cfg.eos).await?,
            weights: opts.weights,
        })
    }

    /// Loads a detached export: a plain Hugging Face causal LM (same width as the base), or a
    /// `causal_lm_with_hidden_projection` model (shadow backbone + projection + head).
    pub async fn load_export<S: Source>(gpu: &Gpu, src: &S, opts: &LoadOptions) -> Result<Self> {
        let loc = src.location("config.json");
        let v = read_json(src, "config.json", "model config").await?;
        let opts = &LoadOptions {
            weights: packed::effective(&loc, opts.weights, packed::declared(&loc, &v)?)?,
            ..opts.clone()
        };
        let (cfg, prefix, proj_cfg) =
            if config::model_type(&loc, &v)? == "causal_lm_with_hidden_projection" {
                let pc = ProjectedConfig::from_json(&loc, &v)?;
                (pc.inner.clone(), "shadow_model.", Some(pc))
            } else {
                (ArchConfig::from_hf(&loc, &v)?, "model.", None)
            };
        // Compile while the weights are read.
        ops::precompile(gpu, &[cfg.dims()], None, opts.weights);
        let mut w = Weights::load_hf(src).await?;
        w.set_format(opts.weights);
        // Hugging Face peft's `unload_shadow()` (`DetachedShadowModel`): the backbone under
        // `backbone.`, an optional `shadow_hidden_projection`, and `head`.
        let peft_detached = proj_cfg.is_none()
            && !w.has("model.embed_tokens.weight")
            && w.has("backbone.embed_tokens.weight")
            && w.names().any(|n| n.starts_with("head."));
        let prefix = if peft_detached { "backbone." } else { prefix };
        let max_seq = opts.max_seq.min(cfg.max_positions).max(1);
        let shadow = Decoder::load(gpu, &w, prefix, &cfg, max_seq)?;
        let embed = load_matrix(
            gpu,
            &w,
            &format!("{prefix}embed_tokens.weight"),
            cfg.vocab,
            cfg.hidden,
        )?;
        let (proj, head, vocab, hidden) = match &proj_cfg {
            None if peft_detached => {
                let d = match w.shape("shadow_hidden_projection.weight").as_deref() {
                    Some(&[d, ds]) if ds == cfg.hidden => d,
                    Some(s) => {
                        return Err(Error::Shape {
                            file: w.describe(),
                            name: "shadow_hidden_projection.weight".into(),
                            expected: vec![s.first().copied().unwrap_or(0), cfg.hidden],
                            found: s.to_vec(),
                        })
                    }
                    None => cfg.hidden,
                };
                let proj = if w.has("shadow_hidden_projection.weight") {
                    Some(load_linear(
                        gpu,
                        &w,
                        "shadow_hidden_projection",
                        d,
                        cfg.hidden,
                        false,
                    )?)
                } else {
                    None
                };
                // A head trained through modules_to_save is saved inside peft's wrapper
                // (`head.modules_to_save.<adapter>.weight` beside `head.original_module`).
                let trained = w
                    .names()
                    .find(|n| n.starts_with("head.modules_to_save.") && n.ends_with(".weight"))
                    .map(|n| n.trim_end_matches(".weight").to_string());
                let head = trained.as_deref().unwrap_or("head");
                (
                    proj,
                    load_linear(gpu, &w, head, cfg.vocab, d, false)?,
                    cfg.vocab,
                    d,
                )
            }
            Some(pc) => (
                Some(load_linear(
                    gpu,
                    &w,
                    "shadow_hidden_projection",
                    pc.base_hidden,
                    cfg.hidden,
                    false,
                )?),
                load_linear(gpu, &w, "lm_head", pc.vocab, pc.base_hidden, false)?,
                pc.vocab,
                pc.base_hidden,
            ),
            None => (
                None,
                head_or_tied(
                    gpu,
                    &w,
                    "lm_head",
                    &embed,
                    cfg.tie_embeddings,
                    cfg.vocab,
                    cfg.hidden,
                )?,
                cfg.vocab,
                cfg.hidden,
            ),
        };
        Ok(ShadowModel {
            mode: Mode::Detached,
            base: None,
            remote: None,
            shadow,
            shadow_embed: embed,
            proj,
            shadow_head: head,
            vocab,
            hidden,
            eos: eos_ids(src, &cfg.eos).await?,
            weights: opts.weights,
        })
    }

    /// Attached mode with the base on a backbone server: loads the detached export (shadow,
    /// projection, head) and the adapter's injection/update weights, never base layers, and
    /// connects to `url`. The adapter weights are uploaded once per server (content-addressed).
    pub async fn load_remote<S: Source, A: Source>(
        gpu: &Gpu,
        export_src: &S,
        adapter_src: &A,
        remote: &Connect,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let mut model = Self::load_export(gpu, export_src, opts).await?;
        model.attach_remote(gpu, adapter_src, remote).await?;
        Ok(model)
    }

    /// Back to detached: forgets the backbone server (new sessions run the shadow alone).
    pub fn detach_remote(&mut self) {
        if self.remote.take().is_some() {
            self.mode = Mode::Detached;
        }
    }

    /// Attaches a loaded detached export to a backbone server with the adapter in
    /// `adapter_src` (see [`ShadowModel::load_remote`]). On failure the model is unchanged.
    /// Sessions made before the call stay detached.
    pub async fn attach_remote<A: Source>(
        &mut self,
        gpu: &Gpu,
        adapter_src: &A,
        remote: &Connect,
    ) -> Result<()> {
        if self.base.is_some() {
            return Err(Error::InvalidRequest(
                "this model already runs its base locally".into(),
            ));
        }
        let url = remote.url.as_str();
        let model = self;
        // Read and check the adapter before any traffic: file errors come first.
        let format = detect_format(adapter_src).await?;
        let (cfg_name, wname) = match format {
            AdapterFormat::ShadowPeft => ("shadow_config.json", "shadow_adapter.safetensors"),
            AdapterFormat::Peft => ("adapter_config.json", PEFT_WEIGHTS),
        };
        let cfg_file = adapter_src.location(cfg_name);
        let cfg_json = read_json(adapter_src, cfg_name, "adapter config").await?;
        let sc = match format {
            AdapterFormat::ShadowPeft => Some(ShadowConfig::from_json(&cfg_file, &cfg_json)?),
            AdapterFormat::Peft => None,
        };
        let bytes = source::read_required(adapter_src, wname, "adapter weights").await?;
        let mut w = Weights::default();
        w.set_format(model.weights);
        w.add_file(adapter_src.location(wname), bytes.clone())?;

        let mut client = RemoteBase::connect(remote).await?;
        let mismatch = |what: &str, ours: usize, theirs: usize| {
            Err(Error::Remote {
                url: url.to_string(),
                status: None,
                msg: format!("serves a base with {what} {theirs}, but this model needs {ours}"),
            })
        };
        if client.hidden != model.hidden {
            return mismatch("hidden size", model.hidden, client.hidden);
        }
        if client.vocab != model.vocab {
            return mismatch("vocabulary size", model.vocab, client.vocab);
        }
        let (v, d, layers) = (model.vocab, model.hidden, client.layers);
        let fused = remote.protocol == Protocol::Fused;
        let mut head = model.shadow_head.clone();
        let mut shadow_head = None;
        let (upload, adapter) = match sc {
            Some(sc) => {
                let stacked = w
                    .shape("shadow_injection_model.injection_downs")
                    .and_then(|s| s.first().copied());
                let need_layers = stacked.map_or(0, |n| n + 1);
                if layers != need_layers {
                    return mismatch("layer count", need_layers, layers);
                }
                // Trained heads in shadow_modules.safetensors replace the exported (base) head.
                let mut mw = Weights::default();
                mw.set_format(model.weights);
                mw.add_optional(adapter_src, "shadow_modules.safetensors")
                    .await?;
                let wanted = |m: &str| {
                    sc.modules_to_save.is_empty() || sc.modules_to_save.iter().any(|x| x == m)
                };
                if wanted("lm_head") && mw.has("lm_head.weight") {
                    head = load_linear(gpu, &mw, "lm_head", v, d, false)?;
                    shadow_head = Some(head.clone());
                }
                if wanted("shadow_lm_head") && mw.has("shadow_lm_head.weight") {
                    shadow_head = Some(load_linear(gpu, &mw, "shadow_lm_head", v, d, false)?);
                }
                if fused {
                    let meta = std::collections::HashMap::from([
                        ("alpha".to_string(), sc.alpha.to_string()),
                        (
                            "injection_hidden_size".to_string(),
                            sc.injection_hidden_size.to_string(),
                        ),
                        (
                            "gate_hidden_size".to_string(),
                            sc.gate_hidden_size.to_string(),
                        ),
                    ]);
                    let tensors = upload_tensors(&w, &bytes, crate::remote::is_adapter_tensor)?;
                    (Some(frame::adapter_upload(tensors, meta)), None)
                } else {
                    (None, Some(Adapter::load(gpu, &w, &sc, layers, d)?))
                }
            }
            None => {
                let pc = PeftShadowConfig::from_json(&cfg_file, &cfg_json, layers)?;
                adapter::check_peft_tensors(&w, &pc.spec, d)?;
                if pc.trained_head {
                    head = load_linear(gpu, &w, PEFT_HEAD, v, d, false)?;
                    shadow_head = Some(head.clone());
                }
                if fused {
                    let spec = &pc.spec;
                    let blocks: Vec<String> = spec.blocks.iter().map(usize::to_string).collect();
                    let meta = std::collections::HashMap::from([
                        (
                            "format".to_string(),
                            AdapterFormat::Peft.wire_name().to_string(),
                        ),
                        ("alpha".to_string(), spec.alpha.to_string()),
                        ("rank".to_string(), spec.rank.to_string()),
                        (
                            "update_hidden_size".to_string(),
                            spec.update_hidden.to_string(),
                        ),
                        ("blocks".to_string(), blocks.join(",")),
                    ]);
                    let wanted: std::collections::HashSet<String> = adapter::peft_tensors(spec, d)
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect();
                    let tensors = upload_tensors(&w, &bytes, |n| wanted.contains(n))?;
                    (Some(frame::adapter_upload(tensors, meta)), None)
                } else {
                    (
                        None,
                        Some(Adapter::load_peft(gpu, &w, &pc.spec, layers, d)?),
                    )
                }
            }
        };
        if let Some(up) = upload {
            client.set_adapter_upload(up);
        }
        model.mode = Mode::Attached;
        model.remote = Some(RemoteAttach {
            client,
            head,
            adapter,
        });
        if let Some(h) = shadow_head {
            model.shadow_head = h;
        }
        Ok(())
    }
}
