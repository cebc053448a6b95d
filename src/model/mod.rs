//! Models: configuration, weights, the decoder stack, the shadow adapter, and [`ShadowModel`],
//! which runs a ShadowPEFT model attached (base + shadow) or detached (shadow alone).
//!
//! Attached forward of M new tokens at positions pos0..pos0+M (official shadow-peft math):
//! ```text
//! s0 = P(ShadowDecoder(E_s[ids]))                 # shadow state, [M, d]
//! h  = E[ids];  h = Layer_0(h);  s = s0
//! for l in 1..L:  h = inject_{l-1}(h, s);  h = Layer_l(h);  s = update_{l-1}(h, s)
//! logits = lm_head(norm(h));  shadow_logits = shadow_lm_head(s0)
//! ```
//! Detached runs only the first line and the shadow head. Both keep a KV cache per decoder,
//! so decoding one token costs one token's work.

pub mod adapter;
pub mod base;
pub mod config;
pub mod decoder;
pub mod source;
pub mod stream;
pub mod weights;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, Step, Tensor, WeightFormat};
use crate::ops::{self, Linear};

use crate::remote::client::{Connect, LocalAdapter, Protocol, RemoteBase, RemoteState};
use crate::remote::frame;
use adapter::{Adapter, AdapterFormat};
use base::{BaseModel, BaseState};
use config::{ArchConfig, PeftShadowConfig, ProjectedConfig, ShadowConfig};
use decoder::{load_linear, Decoder, KvCache, Scratch};
use source::{read_json, read_json_opt, Source};
use weights::Weights;

/// Which output a model produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Base model with shadow injection/update: logits are the base model's.
    Attached,
    /// Shadow alone: logits are the shadow head's.
    Detached,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attached" => Ok(Mode::Attached),
            "detached" => Ok(Mode::Detached),
            o => Err(Error::InvalidRequest(format!(
                "mode `{o}`: expected attached or detached"
            ))),
        }
    }
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Longest sequence (prompt + generated) a session can hold; capped by the config's
    /// `max_position_embeddings`.
    pub max_seq: usize,
    /// Storage of the decoder projections, embeddings and heads (matrices whose rows are not
    /// whole blocks of 32, and everything else, stay f32).
    pub weights: WeightFormat,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_seq: 2048,
            weights: WeightFormat::F32,
        }
    }
}

struct Base {
    model: BaseModel,
    head: Linear,
    adapter: Adapter,
}

/// The base on a backbone server: the client keeps the head, and in the stepped protocol
/// the injection/update weights.
struct RemoteAttach {
    client: RemoteBase,
    head: Linear,
    adapter: Option<Adapter>,
}

/// Client-side activations of the stepped protocol.
struct StepBuffers {
    rows: usize,
    x: Tensor,
    s: Tensor,
}

/// Runs the injection and update between the server's layers (stepped protocol).
struct Stepper<'a> {
    gpu: &'a Gpu,
    adapter: &'a Adapter,
    hidden: usize,
    buf: &'a mut Option<StepBuffers>,
}

impl Stepper<'_> {
    fn buffers(&mut self, m: usize) -> &StepBuffers {
        let (gpu, d) = (self.gpu, self.hidden);
        if self.buf.as_ref().is_none_or(|b| b.rows < m) {
            *self.buf = Some(StepBuffers {
                rows: m,
                x: gpu.zeros("stepped x", m * d),
                s: gpu.zeros("stepped s", m * d),
            });
        }
        // Just filled when absent.
        self.buf.as_ref().expect("stepped buffers")
    }
}

impl LocalAdapter for Stepper<'_> {
    async fn begin(&mut self, s0: &[f32], m: usize) -> Result<()> {
        let gpu = self.gpu;
        let b = self.buffers(m);
        gpu.write_f32(&b.s, s0);
        Ok(())
    }

    async fn between(&mut self, next: usize, h: &[f32], m: usize) -> Result<Vec<f32>> {
        let (gpu, adapter, d) = (self.gpu, self.adapter, self.hidden);
        if !adapter.acts_before(next) {
            return Ok(h.to_vec());
        }
        let b = self.buffers(m);
        gpu.write_f32(&b.x, h);
        let mut step = Step::new(gpu);
        adapter.between(&mut step, next, &b.x, &b.s, m);
        step.submit()?;
        gpu.read_f32(&b.x, 0, m * d).await
    }

    fn injects_first(&self) -> bool {
        self.adapter.injects(0)
    }
}

/// A loaded ShadowPEFT model, attached (base local or remote) or detached.
pub struct ShadowModel {
    mode: Mode,
    base: Option<Base>,
    remote: Option<RemoteAttach>,
    shadow: Decoder,
    shadow_embed: Matrix,
    proj: Option<Linear>,
    shadow_head: Linear,
    vocab: usize,
    hidden: usize,
    eos: Vec<u32>,
    /// Storage requested at load time (also used for heads loaded by `attach_remote`).
    weights: WeightFormat,
}

/// Where a forward's final normed base rows are.
#[derive(Clone, Copy)]
enum Main {
    /// In the local base state, from this element offset.
    Local(usize),
    /// In the session's copy of the server's answer.
    Remote,
}

/// What a forward pass reads back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readout {
    /// Logits of every new position.
    AllLogits,
    /// Logits of the last position only.
    LastLogits,
    /// Only the argmax of the last position's logits (4 bytes read back).
    Argmax,
    /// Only a token sampled from the last position's logits on the device (4 bytes read
    /// back; the repetition penalty covers the ids of [`Session::set_penalized`]). Settings
    /// with a top-k beyond [`crate::ops::TOP_K_MAX`] sample on the host after reading the row.
    Sample(crate::generate::Sampling),
}

/// The result of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// Main logits (`[rows, vocab]`): base logits attached, shadow logits detached.
    pub logits: Vec<f32>,
    /// Shadow-head logits (`[rows, vocab]`), when asked for.
    pub shadow_logits: Vec<f32>,
    /// The token chosen for the last position, for [`Readout::Argmax`] and
    /// [`Readout::Sample`].
    pub token: Option<u32>,
    /// Which model produced `logits`: attached, or detached (a detached model, or an
    /// attached one that fell back after its backbone failed).
    pub mode: Option<Mode>,
}

/// Per-conversation state: KV caches, position, and activation buffers.
pub struct Session {
    pos: usize,
    rows: usize,
    ids: Tensor,
    shadow_cache: KvCache,
    shadow_x: Tensor,
    shadow_h: Tensor,
    shadow_scratch: Scratch,
    s0: Tensor,
    base: Option<BaseState>,
    logits: Tensor,
    shadow_logits: Tensor,
    logit_rows: usize,
    sampling: ops::SampleBuffers,
    remote: Option<RemoteState>,
    remote_xn: Tensor,
    stepped: Option<StepBuffers>,
    fallback: bool,
    fallback_error: Option<String>,
    /// Deferred base: run detached and keep what the base needs to catch up.
    deferred: bool,
    pending_ids: Vec<u32>,
    pending_s0: Vec<f32>,
}

impl Session {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the conversation (the caches are overwritten from position 0; a remote
    /// session is rewound on the server by the next forward).
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Forgets the tokens from position `pos` on (no-op when `pos` is not before the current
    /// position): the next forward continues from `pos`.
    pub fn truncate(&mut self, pos: usize) {
        if pos >= self.pos {
            return;
        }
        let start = self.pos - self.pending_ids.len();
        let keep = pos.saturating_sub(start);
        let width = self.pending_width();
        self.pending_ids.truncate(keep);
        self.pending_s0.truncate(keep * width);
        self.pos = pos;
    }

    fn pending_width(&self) -> usize {
        if self.pending_ids.is_empty() {
            0
        } else {
            self.pending_s0.len() / self.pending_ids.len()
        }
    }

    /// Defers the base: forwards run detached (shadow logits) and keep each position's ids
    /// and shadow state, so that [`ShadowModel::escalate`] can later bring the base up to
    /// date in one pass and continue attached. Used to start detached and escalate on a
    /// marker or low confidence.
    pub fn defer_base(&mut self, on: bool) {
        self.deferred = on;
        if !on {
            self.pending_ids.clear();
            self.pending_s0.clear();
        }
    }

    /// Whether the base is deferred (see [`Session::defer_base`]).
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// With a remote backbone: when the server fails (unreachable, killed, too slow, garbage),
    /// carry on detached (shadow logits) instead of returning the error. Each forward says
    /// which mode produced its logits.
    pub fn set_fallback_detached(&mut self, on: bool) {
        self.fallback = on;
    }

    /// The backbone failure that switched this session to detached, if any.
    pub fn fallback_error(&self) -> Option<&str> {
        self.fallback_error.as_deref()
    }

    /// Sets the ids the repetition penalty of [`Readout::Sample`] applies to: each distinct
    /// id of `history` once (Hugging Face semantics).
    pub fn set_penalized(&mut self, gpu: &Gpu, history: &[u32]) {
        self.sampling.set_penalized(gpu, history);
    }

    /// Round trips and bytes exchanged with the backbone server so far (remote mode).
    pub fn remote_traffic(&self) -> Option<(u64, u64, u64)> {
        self.remote
            .as_ref()
            .map(|r| (r.round_trips, r.bytes_sent, r.bytes_received))
    }
}

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
        let base_cfg = ArchConfig::from_hf(&base_src.location("config.json"), &base_json)?;
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
                let d = match w.shape("shadow_hidden_projection.weight") {
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

    /// The base layer count of a remote backbone (`None` without one).
    pub fn remote_layers(&self) -> Option<usize> {
        self.remote.as_ref().map(|r| r.client.layers)
    }

    /// Attached or detached.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The weight storage requested at load time.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// Vocabulary size of the logits.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// End-of-sequence ids from generation_config.json (or config.json).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Longest sequence a session holds.
    pub fn max_seq(&self) -> usize {
        match (&self.base, &self.remote) {
            (Some(b), _) => b.model.decoder.max_seq().min(self.shadow.max_seq()),
            (None, Some(r)) => r.client.max_seq.min(self.shadow.max_seq()),
            _ => self.shadow.max_seq(),
        }
    }

    /// Most positions whose logits one [`Readout::AllLogits`] forward can return (the logits
    /// buffer must fit one storage binding).
    pub fn max_logit_rows(&self, gpu: &Gpu) -> usize {
        ((gpu.max_binding() / (self.vocab as u64 * 4)) as usize).max(1)
    }

    /// A new session (KV caches for [`ShadowModel::max_seq`] positions).
    pub fn new_session(&self, gpu: &Gpu) -> Session {
        let rows = 1;
        Session {
            pos: 0,
            rows,
            ids: gpu.zeros("ids", rows),
            shadow_cache: self.shadow.new_cache(gpu),
            shadow_x: gpu.zeros("shadow x", rows * self.shadow.cfg.hidden),
            shadow_h: gpu.zeros("shadow h", rows * self.shadow.cfg.hidden),
            shadow_scratch: self.shadow.new_scratch(gpu, rows),
            s0: gpu.zeros("s0", rows * self.hidden),
            base: self
                .base
                .as_ref()
                .map(|b| b.model.new_state(gpu, Some(&b.adapter), rows)),
            logits: gpu.zeros("logits", self.vocab),
            shadow_logits: gpu.zeros("shadow logits", self.vocab),
            logit_rows: 1,
            sampling: ops::SampleBuffers::new(gpu, self.vocab),
            remote: self.remote.as_ref().map(|_| RemoteState::default()),
            remote_xn: gpu.zeros("remote hidden", self.hidden),
            stepped: None,
            fallback: false,
            fallback_error: None,
            deferred: false,
            pending_ids: Vec::new(),
            pending_s0: Vec::new(),
        }
    }

    fn grow(&self, gpu: &Gpu, s: &mut Session, rows: usize) {
        if rows <= s.rows {
            return;
        }
        let (ds, d) = (self.shadow.cfg.hidden, self.hidden);
        s.rows = rows;
        s.ids = gpu.zeros("ids", rows);
        s.shadow_x = gpu.zeros("shadow x", rows * ds);
        s.shadow_h = gpu.zeros("shadow h", rows * ds);
        s.shadow_scratch = self.shadow.new_scratch(gpu, rows);
        s.s0 = gpu.zeros("s0", rows * d);
        if let (Some(b), Some(st)) = (&self.base, &mut s.base) {
            b.model.grow(gpu, Some(&b.adapter), st, rows);
        }
    }

    /// Runs `ids` (new tokens, appended after the session's position) and reads back what
    /// `readout` asks for; `shadow_logits` also computes the shadow head's logits.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        ids: &[u32],
        readout: Readout,
        shadow_logits: bool,
    ) -> Result<ForwardOutput> {
        let m = ids.len();
        if m == 0 {
            return Err(Error::InvalidRequest("no tokens to run".into()));
        }
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= self.vocab {
                return Err(Error::TokenOutOfRange {
                    id,
                    position: i,
                    vocab_size: self.vocab,
                });
            }
        }
        if sess.pos + m > self.max_seq() {
            return Err(Error::InvalidRequest(format!(
                "sequence of {} tokens exceeds the session's maximum of {} (raise max_seq)",
                sess.pos + m,
                self.max_seq()
            )));
        }
        let rows = if readout == Readout::AllLogits { m } else { 1 };
        let v = self.vocab;
        if rows > self.max_logit_rows(gpu) {
            return Err(Error::InvalidRequest(format!(
                "{rows} rows of {v} logits exceed one storage binding; run at most {} tokens per call",
                self.max_logit_rows(gpu)
            )));
        }
        self.grow(gpu, sess, m);
        gpu.write_u32(&sess.ids, ids);
        let pos0 = sess.pos;
        let d = self.hidden;
        let mut step = Step::new(gpu);

        // 1. Shadow backbone -> s0 (projected to the base width when they differ).
        ops::embedding(&mut step, &sess.ids, &self.shadow_embed, &sess.shadow_x, m);
        for l in 0..self.shadow.num_layers() {
            self.shadow.layer(
                &mut step,
                l,
                &sess.shadow_x,
                m,
                pos0,
                &sess.shadow_cache,
                &sess.shadow_scratch,
            );
        }
        match &self.proj {
            Some(p) => {
                self.shadow
                    .final_norm(&mut step, &sess.shadow_x, &sess.shadow_h, m);
                ops::linear(&mut step, &sess.shadow_h, 0, m, p, &sess.s0, 0, d);
            }
            None => {
                self.shadow
                    .final_norm(&mut step, &sess.shadow_x, &sess.s0, m);
            }
        }
        let has_base = self.base.is_some() || self.remote.is_some();
        if sess.deferred && has_base {
            // Detached for now; keep what the base needs to catch up.
            step.submit()?;
            let s0 = gpu.read_f32(&sess.s0, 0, m * d).await?;
            sess.pending_ids.extend_from_slice(ids);
            sess.pending_s0.extend_from_slice(&s0);
            step = Step::new(gpu);
            sess.pos += m;
            return self
                .heads(gpu, sess, step, None, m, rows, readout, shadow_logits)
                .await;
        }
        let main = self
            .run_base(gpu, sess, &mut step, ids, None, pos0, rows)
            .await?;
        sess.pos += m;
        self.heads(gpu, sess, step, main, m, rows, readout, shadow_logits)
            .await
    }

    /// Ends a deferred stretch (see [`Session::defer_base`]): runs the base over every
    /// deferred position in one pass and returns its logits for the last one, so the next
    /// token comes from the attached model. Later forwards run attached.
    pub async fn escalate(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        readout: Readout,
    ) -> Result<ForwardOutput> {
        if self.base.is_none() && self.remote.is_none() {
            return Err(Error::InvalidRequest(
                "escalation needs an attached model (a local or remote base)".into(),
            ));
        }
        let ids = std::mem::take(&mut sess.pending_ids);
        let s0 = std::mem::take(&mut sess.pending_s0);
        sess.deferred = false;
        let m = ids.len();
        if m == 0 {
            return Err(Error::InvalidRequest(
                "nothing to escalate: no deferred positions".into(),
            ));
        }
        let rows = if readout == Readout::AllLogits { m } else { 1 };
        if rows > self.max_logit_rows(gpu) {
            return Err(Error::InvalidRequest(format!(
                "{rows} rows of logits exceed one storage binding"
            )));
        }
        self.grow(gpu, sess, m);
        gpu.write_u32(&sess.ids, &ids);
        gpu.write_f32(&sess.s0, &s0);
        let pos0 = sess.pos - m;
        let mut step = Step::new(gpu);
        let main = self
            .run_base(gpu, sess, &mut step, &ids, Some(s0), pos0, rows)
            .await?;
        self.heads(gpu, sess, step, main, m, rows, readout, false)
            .await
    }

    /// Step 2 of a forward: the base with injection before and update after every layer
    /// l >= 1, here or on the backbone server (s0 goes out, the final normed hidden rows
    /// come back). `sess.ids` / `sess.s0` hold the `m` rows; `s0_host` is their host copy
    /// when the caller has one. Returns where the normed rows are (`None`: detached,
    /// including after a backbone failure with fallback on).
    #[allow(clippy::too_many_arguments)]
    async fn run_base<'g>(
        &self,
        gpu: &'g Gpu,
        sess: &mut Session,
        step: &mut Step<'g>,
        ids: &[u32],
        s0_host: Option<Vec<f32>>,
        pos0: usize,
        rows: usize,
    ) -> Result<Option<Main>> {
        let (m, d) = (ids.len(), self.hidden);
        if let (Some(b), Some(st)) = (&self.base, &sess.base) {
            b.model
                .record(step, &b.adapter, st, &sess.ids, &sess.s0, m, pos0)?;
            return Ok(Some(Main::Local((m - rows) * d)));
        }
        let (Some(r), Some(_)) = (&self.remote, &sess.remote) else {
            return Ok(None);
        };
        if sess.fallback_error.is_some() {
            return Ok(None);
        }
        let s0_host = match s0_host {
            Some(v) => v,
            None => {
                std::mem::replace(step, Step::new(gpu)).submit()?;
                gpu.read_f32(&sess.s0, 0, m * d).await?
            }
        };
        let rs = sess.remote.as_mut().expect("checked above");
        let res = match &r.adapter {
            Some(a) => {
                let mut st = Stepper {
                    gpu,
                    adapter: a,
                    hidden: d,
                    buf: &mut sess.stepped,
                };
                r.client
                    .forward(rs, pos0, ids, &s0_host, rows > 1, &mut st)
                    .await
            }
            None => {
                r.client
                    .forward(rs, pos0, ids, &s0_host, rows > 1, &mut ())
                    .await
            }
        };
        match res {
            Ok(h) => {
                if sess.remote_xn.len() < rows * d {
                    sess.remote_xn = gpu.zeros("remote hidden", rows * d);
                }
                gpu.write_f32(&sess.remote_xn, &h);
                Ok(Some(Main::Remote))
            }
            Err(e @ Error::Remote { .. }) if sess.fallback => {
                log::warn!("{e}; continuing detached");
                sess.fallback_error = Some(e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Step 3: heads and readout.
    #[allow(clippy::too_many_arguments)]
    async fn heads(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        mut step: Step<'_>,
        main: Option<Main>,
        m: usize,
        rows: usize,
        readout: Readout,
        shadow_logits: bool,
    ) -> Result<ForwardOutput> {
        let (v, d) = (self.vocab, self.hidden);
        let first = m - rows;
        if rows > sess.logit_rows {
            sess.logits = gpu.zeros("logits", rows * v);
            sess.shadow_logits = gpu.zeros("shadow logits", rows * v);
            sess.logit_rows = rows;
        }
        if shadow_logits || main.is_none() {
            ops::linear(
                &mut step,
                &sess.s0,
                first * d,
                rows,
                &self.shadow_head,
                &sess.shadow_logits,
                0,
                v,
            );
        }
        let base_rows = match main {
            Some(Main::Local(off)) => match (&self.base, &sess.base) {
                (Some(b), Some(st)) => Some((&st.xn, off, &b.head)),
                _ => None,
            },
            Some(Main::Remote) => self.remote.as_ref().map(|r| (&sess.remote_xn, 0, &r.head)),
            None => None,
        };
        if let Some((h, off, head)) = base_rows {
            ops::linear(&mut step, h, off, rows, head, &sess.logits, 0, v);
        }
        let out_logits = if main.is_some() {
            &sess.logits
        } else {
            &sess.shadow_logits
        };
        let last = (rows - 1) * v;
        match readout {
            Readout::Argmax => ops::argmax(&mut step, out_logits, last, v, &sess.sampling.out),
            Readout::Sample(s) if ops::sample_on_device(&s) => {
                ops::sample(&mut step, out_logits, last, v, &s, &sess.sampling)
            }
            _ => {}
        }
        step.submit()?;
        let mut out = ForwardOutput {
            mode: Some(if main.is_some() {
                Mode::Attached
            } else {
                Mode::Detached
            }),
            ..Default::default()
        };
        match readout {
            Readout::Argmax => out.token = Some(gpu.read_u32(&sess.sampling.out, 0, 1).await?[0]),
            Readout::Sample(s) if ops::sample_on_device(&s) => {
                let t = gpu.read_u32(&sess.sampling.out, 0, 1).await?[0];
                out.token = Some(if t == ops::UNDECIDED {
                    // Beyond the device candidates: the host finishes with the same draw on
                    // the row (already penalised on the device).
                    let mut row = gpu.read_f32(out_logits, last, v).await?;
                    let s = crate::generate::Sampling {
                        repetition_penalty: 1.0,
                        ..s
                    };
                    s.pick(&mut row, &[])
                } else {
                    t
                });
            }
            Readout::Sample(s) => {
                let mut row = gpu.read_f32(out_logits, last, v).await?;
                out.token = Some(s.pick(&mut row, sess.sampling.penalized()));
            }
            _ => out.logits = gpu.read_f32(out_logits, 0, rows * v).await?,
        }
        if shadow_logits {
            out.shadow_logits = gpu.read_f32(&sess.shadow_logits, 0, rows * v).await?;
        }
        Ok(out)
    }
}
