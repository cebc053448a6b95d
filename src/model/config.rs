//! Model configurations: Hugging Face `config.json` of the supported decoder families, the
//! official `shadow_config.json`, Hugging Face peft's SHADOW `adapter_config.json`, and the
//! `causal_lm_with_hidden_projection` wrapper.
//!
//! Invariant: an [`ArchConfig`] is fully resolved (head_dim, kv heads, rope theta, biases);
//! nothing downstream looks at JSON again.

use serde_json::Value;

use crate::error::{Error, Result};

/// Decoder families we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen3: per-head q/k RMSNorm, optional attention bias.
    Qwen3,
    /// Qwen2: q/k/v biases.
    Qwen2,
    /// Llama: optional attention and MLP biases.
    Llama,
}

const SUPPORTED: &str = "qwen3, qwen2, llama";

impl Arch {
    fn parse(file: &str, s: &str) -> Result<Self> {
        match s {
            "qwen3" => Ok(Arch::Qwen3),
            "qwen2" => Ok(Arch::Qwen2),
            "llama" => Ok(Arch::Llama),
            other => Err(Error::UnsupportedArch {
                file: file.to_string(),
                found: other.to_string(),
                supported: SUPPORTED.to_string(),
            }),
        }
    }
}

/// A resolved decoder architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub max_positions: usize,
    pub qk_norm: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// `tie_word_embeddings` as configured (the family default when absent).
    pub tie_embeddings: bool,
    /// `eos_token_id` of config.json (int or list).
    pub eos: Vec<u32>,
}

pub(crate) fn field<'a>(v: &'a Value, file: &str, name: &str) -> Result<&'a Value> {
    v.get(name)
        .filter(|x| !x.is_null())
        .ok_or_else(|| Error::config(file, name, "missing"))
}

pub(crate) fn usize_field(v: &Value, file: &str, name: &str) -> Result<usize> {
    usize_value(field(v, file, name)?, file, name)
}

fn usize_value(x: &Value, file: &str, name: &str) -> Result<usize> {
    x.as_u64()
        .filter(|n| *n > 0 && *n < (1 << 31))
        .map(|n| n as usize)
        .ok_or_else(|| {
            Error::config(
                file,
                name,
                format!("expected a positive integer, found {x}"),
            )
        })
}

pub(crate) fn opt_usize(v: &Value, file: &str, name: &str) -> Result<Option<usize>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => usize_value(x, file, name).map(Some),
    }
}

fn opt_f64(v: &Value, file: &str, name: &str) -> Result<Option<f64>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .map(Some)
            .ok_or_else(|| {
                Error::config(file, name, format!("expected a positive number, found {x}"))
            }),
    }
}

fn opt_bool(v: &Value, file: &str, name: &str) -> Result<Option<bool>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(Error::config(
            file,
            name,
            format!("expected true or false, found {x}"),
        )),
    }
}

/// A list of strings, or `None` when absent or null.
fn opt_strings(v: &Value, file: &str, name: &str) -> Result<Option<Vec<String>>> {
    let bad = || Error::config(file, name, "expected a list of strings");
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| m.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// Parses `eos_token_id` (an integer or a list of integers).
pub(crate) fn token_ids(v: &Value, file: &str, name: &str) -> Result<Vec<u32>> {
    let bad = || Error::config(file, name, "expected a token id or a list of token ids");
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|n| *n <= u32::MAX as u64)
                    .map(|n| n as u32)
                    .ok_or_else(bad)
            })
            .collect(),
        Some(x) => x
            .as_u64()
            .filter(|n| *n <= u32::MAX as u64)
            .map(|n| vec![n as u32])
            .ok_or_else(bad),
    }
}

impl ArchConfig {
    /// The shapes that decide which kernels this decoder compiles.
    pub fn dims(&self) -> crate::ops::Dims {
        crate::ops::Dims {
            hidden: self.hidden,
            intermediate: self.intermediate,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Resolves a Hugging Face `config.json` of a supported family.
    pub fn from_hf(file: &str, v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::config(file, "(root)", "expected a JSON object"));
        }
        let mt = field(v, file, "model_type")?
            .as_str()
            .ok_or_else(|| Error::config(file, "model_type", "expected a string"))?;
        let arch = Arch::parse(file, mt)?;
        let hidden = usize_field(v, file, "hidden_size")?;
        let heads = usize_field(v, file, "num_attention_heads")?;
        let kv_heads = opt_usize(v, file, "num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match opt_usize(v, file, "head_dim")? {
            Some(d) => d,
            None if arch == Arch::Qwen3 => 128,
            None => hidden / heads,
        };
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::config(
                file,
                "hidden_act",
                format!("`{act}` is not supported (expected silu)"),
            ));
        }
        if opt_bool(v, file, "use_sliding_window")? == Some(true) {
            return Err(Error::config(
                file,
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let rope = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|r| !r.is_null());
        let mut rope_theta = opt_f64(v, file, "rope_theta")?;
        if let Some(r) = rope {
            let kind = r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(Error::config(
                    file,
                    "rope_parameters.rope_type",
                    format!("`{kind}` is not supported (expected default)"),
                ));
            }
            if let Some(t) = opt_f64(r, file, "rope_theta")? {
                rope_theta = Some(t);
            }
        }
        let attention_bias = opt_bool(v, file, "attention_bias")?.unwrap_or(false);
        let cfg = ArchConfig {
            arch,
            hidden,
            layers: usize_field(v, file, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            intermediate: usize_field(v, file, "intermediate_size")?,
            vocab: usize_field(v, file, "vocab_size")?,
            rms_eps: opt_f64(v, file, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: rope_theta.unwrap_or(10000.0),
            max_positions: opt_usize(v, file, "max_position_embeddings")?.unwrap_or(32768),
            qk_norm: arch == Arch::Qwen3,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            mlp_bias: arch == Arch::Llama && opt_bool(v, file, "mlp_bias")?.unwrap_or(false),
            tie_embeddings: opt_bool(v, file, "tie_word_embeddings")?.unwrap_or(false),
            eos: token_ids(v, file, "eos_token_id")?,
        };
        cfg.check(file)?;
        Ok(cfg)
    }

    fn check(&self, file: &str) -> Result<()> {
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::config(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads, self.heads
                ),
            ));
        }
        if self.head_dim > 1024 {
            return Err(Error::config(
                file,
                "head_dim",
                format!(
                    "{} is larger than the supported maximum of 1024",
                    self.head_dim
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                file,
                "head_dim",
                format!(
                    "{} is odd; rotary embeddings need an even head_dim",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// The implicit shadow architecture of the official package: the base config with
    /// `num_hidden_layers = num_shadow_layers` and the `shadow_*` overrides applied.
    pub fn implicit_shadow(
        &self,
        base_json: &Value,
        sc: &ShadowConfig,
        file: &str,
    ) -> Result<Self> {
        let mut s = self.clone();
        s.layers = sc.num_shadow_layers;
        if let Some(i) = sc.intermediate {
            s.intermediate = i;
        }
        if let Some(h) = sc.heads {
            s.heads = h;
            // Qwen2 configs carry no head_dim attribute: the attention derives it from the
            // (overridden) head count. Qwen3 and Llama configs keep the resolved value.
            if self.arch == Arch::Qwen2 && base_json.get("head_dim").is_none_or(Value::is_null) {
                s.head_dim = s.hidden / h;
            }
        }
        if let Some(k) = sc.kv_heads {
            s.kv_heads = k;
        }
        if let Some(d) = sc.head_dim {
            s.head_dim = d;
        }
        s.check(file)?;
        Ok(s)
    }
}

impl ArchConfig {
    /// Hugging Face peft's "mirror" shadow backbone: the base config with
    /// `num_hidden_layers = shadow_num_hidden_layers or 1` and the `shadow_*` overrides. A
    /// `head_dim` written in the base config stays; without one it follows the new width.
    pub fn peft_mirror(
        &self,
        base_json: &Value,
        pc: &PeftShadowConfig,
        file: &str,
    ) -> Result<Self> {
        let mut s = self.clone();
        s.layers = pc.shadow_layers.unwrap_or(1);
        if let Some(h) = pc.shadow_hidden {
            s.hidden = h;
        }
        if let Some(i) = pc.shadow_intermediate {
            s.intermediate = i;
        }
        if let Some(h) = pc.shadow_heads {
            s.heads = h;
        }
        if base_json.get("head_dim").is_none_or(Value::is_null) {
            s.head_dim = s.hidden / s.heads;
        }
        s.check(file)?;
        Ok(s)
    }
}

/// The official `shadow_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    pub num_shadow_layers: usize,
    pub injection_hidden_size: usize,
    pub gate_hidden_size: usize,
    pub alpha: f32,
    pub intermediate: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub modules_to_save: Vec<String>,
}

impl ShadowConfig {
    /// Parses `shadow_config.json` (defaults as in shadow-peft 0.1.1 for absent fields).
    pub fn from_json(file: &str, v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::config(file, "(root)", "expected a JSON object"));
        }
        let alpha = match v.get("alpha") {
            None | Some(Value::Null) => 0.1,
            Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                Error::config(file, "alpha", format!("expected a number, found {x}"))
            })?,
        } as f32;
        let modules_to_save = opt_strings(v, file, "modules_to_save")?.unwrap_or_default();
        Ok(ShadowConfig {
            num_shadow_layers: opt_usize(v, file, "num_shadow_layers")?.unwrap_or(1),
            injection_hidden_size: opt_usize(v, file, "injection_hidden_size")?.unwrap_or(16),
            gate_hidden_size: opt_usize(v, file, "gate_hidden_size")?.unwrap_or(10),
            alpha,
            intermediate: opt_usize(v, file, "shadow_intermediate_size")?,
            heads: opt_usize(v, file, "shadow_num_attention_heads")?,
            kv_heads: opt_usize(v, file, "shadow_num_key_value_heads")?,
            head_dim: opt_usize(v, file, "shadow_head_dim")?,
            modules_to_save,
        })
    }

    /// The shape of the official adapter's update and injection (LayerNorm, SiLU, no biases).
    pub fn shape(&self) -> crate::ops::AdapterShape {
        crate::ops::AdapterShape {
            act: crate::ops::Act::Silu,
            norm: true,
            bias: false,
            width: self.gate_hidden_size,
            rank: self.injection_hidden_size,
        }
    }
}

/// What the injection/update of a Hugging Face peft SHADOW adapter needs: everything the
/// backbone server is told with a fused upload.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapterSpec {
    /// `shadow_alpha`.
    pub alpha: f32,
    /// `r`: the injection bottleneck.
    pub rank: usize,
    /// `update_hidden_size` (or `r`): the hidden width of the update networks.
    pub update_hidden: usize,
    /// The wrapped decoder blocks, ascending and contiguous.
    pub blocks: Vec<usize>,
}

impl PeftAdapterSpec {
    /// The shape of peft's update and injection (no norm, GELU, biases).
    pub fn shape(&self) -> crate::ops::AdapterShape {
        crate::ops::AdapterShape {
            act: crate::ops::Act::Gelu,
            norm: false,
            bias: true,
            width: self.update_hidden,
            rank: self.rank,
        }
    }

    /// Checks that every wrapped block exists in a base of `layers` layers.
    pub fn check_layers(&self, layers: usize) -> Result<()> {
        match self.blocks.iter().find(|&&l| l >= layers) {
            Some(l) => Err(Error::InvalidRequest(format!(
                "the adapter wraps block {l}, but the base has {layers} layers"
            ))),
            None => Ok(()),
        }
    }
}

/// Hugging Face peft's `adapter_config.json` for `peft_type: "SHADOW"` (peft 0.21), resolved
/// against a base of known depth.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftShadowConfig {
    pub spec: PeftAdapterSpec,
    /// `"mirror"`, or the id/path of an explicit shadow backbone.
    pub shadow_model: String,
    pub shadow_layers: Option<usize>,
    pub shadow_hidden: Option<usize>,
    pub shadow_heads: Option<usize>,
    pub shadow_intermediate: Option<usize>,
    pub share_embeddings: bool,
    /// `modules_to_save` contains `lm_head`: the adapter carries a trained head.
    pub trained_head: bool,
}

/// One `target_modules` / `exclude_modules` value: names (a module matches a name equal to it
/// or ending in `.name`) or a regex the whole module name must match, as peft does.
enum ModuleMatcher {
    Names(Vec<String>),
    Regex(regex::Regex),
}

impl ModuleMatcher {
    fn parse(v: &Value, file: &str, name: &str) -> Result<Option<Self>> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(p)) => regex::Regex::new(&format!("^(?:{p})$"))
                .map(|r| Some(ModuleMatcher::Regex(r)))
                .map_err(|e| {
                    Error::config(file, name, format!("`{p}` is not a regex we can run: {e}"))
                }),
            Some(_) => opt_strings(v, file, name).map(|l| l.map(ModuleMatcher::Names)),
        }
    }

    fn matches(&self, module: &str) -> bool {
        match self {
            ModuleMatcher::Names(n) => n
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            ModuleMatcher::Regex(r) => r.is_match(module),
        }
    }
}

impl PeftShadowConfig {
    /// Parses `adapter_config.json` (peft_type SHADOW; defaults as in peft 0.21 for absent
    /// fields) and selects the wrapped blocks of a base with `layers` decoder blocks
    /// (`model.layers.{i}`).
    pub fn from_json(file: &str, v: &Value, layers: usize) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::config(file, "(root)", "expected a JSON object"));
        }
        match v.get("task_type").and_then(Value::as_str) {
            None | Some("CAUSAL_LM") => {}
            Some(t) => {
                return Err(Error::config(
                    file,
                    "task_type",
                    format!("`{t}` is not supported; expected CAUSAL_LM"),
                ))
            }
        }
        let alpha = match v.get("shadow_alpha") {
            None | Some(Value::Null) => 0.1,
            Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                Error::config(
                    file,
                    "shadow_alpha",
                    format!("expected a number, found {x}"),
                )
            })?,
        } as f32;
        let rank = opt_usize(v, file, "r")?.unwrap_or(8);
        let update_hidden = opt_usize(v, file, "update_hidden_size")?.unwrap_or(rank);
        let modules = opt_strings(v, file, "modules_to_save")?.unwrap_or_default();
        if let Some(m) = modules.iter().find(|m| m.as_str() != "lm_head") {
            return Err(Error::config(
                file,
                "modules_to_save",
                format!("`{m}` is not supported; only lm_head can be trained alongside the shadow"),
            ));
        }
        let shadow_model = match v.get("shadow_model") {
            None | Some(Value::Null) => "mirror".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(x) => {
                return Err(Error::config(
                    file,
                    "shadow_model",
                    format!("expected \"mirror\" or a model path, found {x}"),
                ))
            }
        };
        Ok(PeftShadowConfig {
            spec: PeftAdapterSpec {
                alpha,
                rank,
                update_hidden,
                blocks: select_blocks(v, file, layers)?,
            },
            shadow_model,
            shadow_layers: opt_usize(v, file, "shadow_num_hidden_layers")?,
            shadow_hidden: opt_usize(v, file, "shadow_hidden_size")?,
            shadow_heads: opt_usize(v, file, "shadow_num_attention_heads")?,
            shadow_intermediate: opt_usize(v, file, "shadow_intermediate_size")?,
            share_embeddings: opt_bool(v, file, "share_embeddings")?.unwrap_or(true),
            trained_head: !modules.is_empty(),
        })
    }

    /// Whether the shadow backbone is peft's auto-built "mirror" of the base architecture.
    pub fn is_mirror(&self) -> bool {
        self.shadow_model == "mirror"
    }
}

/// The decoder blocks peft wraps, decided for each block name `model.layers.{i}` as peft 0.21's
/// `check_target_module_exists` does: not excluded by `exclude_modules`; then matched by a
/// `target_modules` regex (the whole name), or named exactly in the list, or by a list entry
/// the name ends with (`.entry`), which `layers_to_transform` then filters by the index of a
/// `layers.{i}.` segment. A block's own name has no such segment, so a saved config (which
/// names every matched block) wraps exactly the blocks it names. They must be contiguous.
fn select_blocks(v: &Value, file: &str, layers: usize) -> Result<Vec<usize>> {
    let target = ModuleMatcher::parse(v, file, "target_modules")?;
    let exclude = ModuleMatcher::parse(v, file, "exclude_modules")?;
    let by_index = match v.get("layers_to_transform") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => {
            for x in a {
                usize_or_zero(x, file, "layers_to_transform")?;
            }
            !a.is_empty()
        }
        Some(x) => {
            usize_or_zero(x, file, "layers_to_transform")?;
            true
        }
    };
    let blocks: Vec<usize> = (0..layers)
        .filter(|&i| {
            let key = format!("model.layers.{i}");
            if exclude.as_ref().is_some_and(|x| x.matches(&key)) {
                return false;
            }
            match &target {
                None => true,
                Some(ModuleMatcher::Regex(r)) => r.is_match(&key),
                Some(ModuleMatcher::Names(n)) if n.contains(&key) => true,
                // The index filter looks for `<pattern>.<i>.` inside the name: never in a
                // block's own name.
                Some(m) => m.matches(&key) && !by_index,
            }
        })
        .collect();
    let (Some(&first), Some(&last)) = (blocks.first(), blocks.last()) else {
        return Err(Error::config(
            file,
            "target_modules",
            format!("selects none of the base's decoder blocks (model.layers.0 to model.layers.{}); a SHADOW adapter wraps whole blocks", layers.saturating_sub(1)),
        ));
    };
    if last - first + 1 != blocks.len() {
        return Err(Error::config(
            file,
            "target_modules",
            format!("selects blocks {blocks:?}, which are not contiguous (the shadow state rides from the first wrapped block to the last)"),
        ));
    }
    Ok(blocks)
}

fn usize_or_zero(x: &Value, file: &str, name: &str) -> Result<usize> {
    x.as_u64()
        .filter(|n| *n < (1 << 31))
        .map(|n| n as usize)
        .ok_or_else(|| Error::config(file, name, format!("expected block indices, found {x}")))
}

/// `model_type: causal_lm_with_hidden_projection`: the inner shadow architecture and the
/// projection's output width.
#[derive(Debug, Clone)]
pub struct ProjectedConfig {
    pub inner: ArchConfig,
    pub base_hidden: usize,
    pub vocab: usize,
}

impl ProjectedConfig {
    /// Parses the wrapper config (the inner config sits under `shadow_model_config`).
    pub fn from_json(file: &str, v: &Value) -> Result<Self> {
        let inner = field(v, file, "shadow_model_config")?;
        let inner = ArchConfig::from_hf(&format!("{file} (shadow_model_config)"), inner)?;
        let base_hidden = usize_field(v, file, "base_hidden_size")?;
        let vocab = opt_usize(v, file, "vocab_size")?.unwrap_or(inner.vocab);
        Ok(ProjectedConfig {
            inner,
            base_hidden,
            vocab,
        })
    }
}

/// What kind of model directory a `config.json` describes.
pub fn model_type(file: &str, v: &Value) -> Result<String> {
    Ok(field(v, file, "model_type")?
        .as_str()
        .ok_or_else(|| Error::config(file, "model_type", "expected a string"))?
        .to_string())
}
