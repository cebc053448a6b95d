//! The JavaScript facade (wasm-bindgen). The npm package in `www/` wraps these classes; they
//! are not meant to be used directly.
//!
//! - [`Engine`]: the WebGPU device, created once per worker or page.
//! - [`Files`]: a model directory filled chunk by chunk as the files stream in: each
//!   safetensors tensor is uploaded to the GPU as soon as its bytes are in and then dropped, so
//!   neither JavaScript nor wasm memory ever holds a whole weight file.
//! - [`Model`]: a loaded detached model with its tokenizer and one conversation; JavaScript
//!   drives generation one token at a time (`start`, then `next` until it returns null), so an
//!   abort takes effect between tokens.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::generate::{GenerateOptions, TokenStream};
use crate::gpu::{Gpu, GpuOptions, WeightFormat};
use crate::model::pack::INDEX;
use crate::model::shards::{ShardDigest, ShardInfo};
use crate::model::source::{parse_json, MemSource, Source};
use crate::model::stream::SafetensorsStream;
use crate::model::{LoadOptions, Session, ShadowModel};
use crate::tokenizer::{Message, StreamDecoder, TextTokenizer};

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The WebGPU device.
#[wasm_bindgen]
pub struct Engine {
    gpu: Rc<Gpu>,
}

#[wasm_bindgen]
impl Engine {
    /// Opens a WebGPU device. `max_binding` caps one storage binding in bytes (bigger tensors
    /// are split), mainly for tests.
    pub async fn create(max_binding: Option<f64>) -> Result<Engine, JsValue> {
        let gpu = Gpu::new(GpuOptions {
            max_storage_binding: max_binding.map(|b| b as u64),
            ..Default::default()
        })
        .await
        .map_err(js_err)?;
        Ok(Engine { gpu: Rc::new(gpu) })
    }

    /// Adapter name and limits, for display and diagnostics.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Info<'a> {
            adapter: &'a str,
            backend: &'a str,
            shader_f16: bool,
            max_binding: f64,
        }
        serde_wasm_bindgen::to_value(&Info {
            adapter: self.gpu.adapter_name(),
            backend: self.gpu.backend(),
            shader_f16: self.gpu.has_f16(),
            max_binding: self.gpu.max_binding() as f64,
        })
        .map_err(js_err)
    }

    /// Why the device was lost, or undefined while it is healthy.
    #[wasm_bindgen(js_name = lostReason)]
    pub fn lost_reason(&self) -> Option<String> {
        self.gpu.lost_reason()
    }

    /// Destroys the device, as a driver reset would; for testing device-loss handling.
    #[wasm_bindgen(js_name = debugLoseDevice)]
    pub fn debug_lose_device(&self) {
        self.gpu.destroy();
    }

    /// An empty model directory bound to this device, called `name` in error messages, whose
    /// projections, embeddings and heads are stored as `weights` (`f32`, the default, `f16`,
    /// `q8` or `q4`).
    pub fn files(&self, name: String, weights: Option<String>) -> Result<Files, JsValue> {
        let format = match weights {
            Some(w) => w.parse().map_err(js_err)?,
            None => WeightFormat::F32,
        };
        Ok(self.new_files(name, false, format))
    }

    /// An empty adapter directory (kept as bytes: its tensors are uploaded to a backbone
    /// server or loaded for the stepped protocol by `Model.attach`).
    #[wasm_bindgen(js_name = adapterFiles)]
    pub fn adapter_files(&self, name: String) -> Files {
        self.new_files(name, true, WeightFormat::F32)
    }

    /// Loads a detached model (a Hugging Face causal LM or a causal_lm_with_hidden_projection
    /// export) from `files`, which are consumed. Resolves to a [`Model`].
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(&self, files: Files, max_seq: Option<u32>) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(f) = files.streams.keys().next() {
                return Err(js_err(format!("{}: not finished", files.src.location(f))));
            }
            let src = files.src;
            let opts = LoadOptions {
                max_seq: max_seq.map_or(LoadOptions::default().max_seq, |m| m as usize),
                weights: files.format,
            };
            let model = ShadowModel::load_export(&gpu, &src, &opts)
                .await
                .map_err(js_err)?;
            let tokenizer = match TextTokenizer::load(&src).await {
                Ok(t) => Some(t),
                Err(crate::Error::Io { .. }) => None,
                Err(e) => return Err(js_err(e)),
            };
            drop(src);
            let session = model.new_session(&gpu);
            Ok(Model {
                inner: Rc::new(RefCell::new(Inner {
                    gpu,
                    model,
                    tokenizer,
                    session,
                    stream: None,
                    text: StreamDecoder::default(),
                })),
            }
            .into())
        })
    }
}

impl Engine {
    /// An empty file set bound to this device: weight files streamed to the GPU in `format`,
    /// or (`raw`) kept as bytes.
    fn new_files(&self, name: String, raw: bool, format: WeightFormat) -> Files {
        Files {
            gpu: self.gpu.clone(),
            src: MemSource::new(name),
            streams: std::collections::HashMap::new(),
            raw,
            format,
            shards: std::collections::HashMap::new(),
            digests: std::collections::HashMap::new(),
        }
    }
}

/// A model directory assembled from streamed chunks (create it with `Engine.files`).
#[wasm_bindgen]
pub struct Files {
    gpu: Rc<Gpu>,
    src: MemSource,
    streams: std::collections::HashMap<String, SafetensorsStream>,
    /// Keep weight files as bytes instead of streaming them to the GPU.
    raw: bool,
    /// Storage of the projections, embeddings and heads streamed to the GPU.
    format: WeightFormat,
    /// Sizes and hashes of the shards the index lists (`metadata.shards`), and the digests of
    /// those arriving.
    shards: std::collections::HashMap<String, ShardInfo>,
    digests: std::collections::HashMap<String, ShardDigest>,
}

fn is_weights(file: &str) -> bool {
    file.ends_with(".safetensors")
}

#[wasm_bindgen]
impl Files {
    /// Reserves room for a (non-weight) file of `bytes` bytes.
    pub fn reserve(&mut self, file: &str, bytes: f64) {
        if self.raw || !is_weights(file) {
            self.src.reserve(file, bytes as usize);
        }
    }

    /// Appends the next chunk of `file`; weight tensors it completes go to the GPU now.
    pub fn append(&mut self, file: &str, chunk: &[u8]) -> Result<(), JsValue> {
        if self.shards.contains_key(file) {
            self.digests
                .entry(file.to_string())
                .or_default()
                .update(chunk);
        }
        if self.raw || !is_weights(file) {
            self.src.append(file, chunk);
            return Ok(());
        }
        let location = self.src.location(file);
        let stream = self
            .streams
            .entry(file.to_string())
            .or_insert_with(|| SafetensorsStream::new(location).with_format(self.format));
        stream.push(&self.gpu, chunk).map_err(js_err)
    }

    /// Marks `file` complete (fails for a truncated or inconsistent weight file). A
    /// `config.json` that declares packed weights sets the storage of the weights streamed
    /// after it (they are uploaded as they are stored).
    pub fn finish(&mut self, file: &str) -> Result<(), JsValue> {
        if file == "config.json" && !self.raw {
            if let Some(bytes) = self.src.bytes(file) {
                let loc = self.src.location(file);
                let cfg = parse_json(&loc, &bytes).map_err(js_err)?;
                let declared = crate::model::packed::declared(&loc, &cfg).map_err(js_err)?;
                self.format =
                    crate::model::packed::effective(&loc, self.format, declared).map_err(js_err)?;
            }
        }
        if file == INDEX {
            if let Some(bytes) = self.src.bytes(file) {
                let loc = self.src.location(file);
                let idx = parse_json(&loc, &bytes).map_err(js_err)?;
                self.shards = crate::model::shards::listed(&loc, &idx).map_err(js_err)?;
            }
        }
        if let Some(want) = self.shards.get(file) {
            // Size and sha256 against the index, before the file's tensors are used.
            let digest = self.digests.remove(file).unwrap_or_default();
            digest
                .check(&self.src.location(file), want)
                .map_err(js_err)?;
        }
        if let Some(s) = self.streams.remove(file) {
            let up = s.finish().map_err(js_err)?;
            self.src.insert_uploaded(file, up);
        }
        Ok(())
    }
}

struct Inner {
    gpu: Rc<Gpu>,
    model: ShadowModel,
    tokenizer: Option<TextTokenizer>,
    session: Session,
    stream: Option<TokenStream>,
    text: StreamDecoder,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Cached bind groups would keep this model's buffers alive after it is freed.
        self.gpu.release_bindings();
    }
}

/// A loaded model and its conversation state.
#[wasm_bindgen]
pub struct Model {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Serialize)]
struct Step {
    token: u32,
    text: String,
    /// "attached" or "detached": which model produced the token.
    mode: &'static str,
}

/// `Model.attach` options (camelCase from JavaScript).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttachOptions {
    backbone: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    protocol: Option<crate::remote::client::Protocol>,
    #[serde(default)]
    wire: Option<crate::remote::frame::Wire>,
    /// "error" (default) or "detached".
    #[serde(default)]
    fallback: Option<String>,
    /// Longest wait for one request to the server, in milliseconds (default 120000).
    #[serde(default)]
    timeout_ms: Option<f64>,
}

impl Model {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, JsValue>) -> Result<T, JsValue> {
        let mut i = self
            .inner
            .try_borrow_mut()
            .map_err(|_| js_err("the model is busy with another call"))?;
        f(&mut i)
    }

    fn tokenizer(i: &Inner) -> Result<&TextTokenizer, JsValue> {
        i.tokenizer
            .as_ref()
            .ok_or_else(|| js_err("this model has no tokenizer.json; pass token ids"))
    }
}

#[wasm_bindgen]
impl Model {
    /// `{ vocabSize, eosIds, maxSeq, weights, hasTokenizer, hasChatTemplate }`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Info {
            vocab_size: usize,
            eos_ids: Vec<u32>,
            max_seq: usize,
            weights: &'static str,
            has_tokenizer: bool,
            has_chat_template: bool,
        }
        self.with(|i| {
            serde_wasm_bindgen::to_value(&Info {
                vocab_size: i.model.vocab_size(),
                eos_ids: i.model.eos_ids().to_vec(),
                max_seq: i.model.max_seq(),
                weights: i.model.weight_format().name(),
                has_tokenizer: i.tokenizer.is_some(),
                has_chat_template: i.tokenizer.as_ref().is_some_and(|t| t.has_chat_template()),
            })
            .map_err(js_err)
        })
    }

    /// Text to token ids (`add_special` as Hugging Face's `tokenizer(text)`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, JsValue> {
        self.with(|i| {
            Self::tokenizer(i)?
                .encode(text, add_special)
                .map_err(js_err)
        })
    }

    /// Token ids to text (special tokens skipped).
    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.with(|i| Self::tokenizer(i)?.decode(&ids).map_err(js_err))
    }

    /// Renders the chat template for `[{ role, content }, ...]`.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        messages: JsValue,
        add_generation_prompt: bool,
    ) -> Result<String, JsValue> {
        let msgs: Vec<Message> = serde_wasm_bindgen::from_value(messages)
            .map_err(|e| js_err(format!("messages: {e}")))?;
        self.with(|i| {
            Self::tokenizer(i)?
                .apply_chat_template(&msgs, add_generation_prompt)
                .map_err(js_err)
        })
    }

    /// Renders `[{ role, content }, ...]` for the next assistant answer and tokenises it, as
    /// `chat.completions.create` does at every turn: `{ ids, droppedMessages }`. Fails with a
    /// context-length error when the prompt and `max_tokens` exceed the model's positions,
    /// unless `truncation` is "auto" (the oldest turns are dropped until they fit).
    #[wasm_bindgen(js_name = renderChat)]
    pub fn render_chat(
        &self,
        messages: JsValue,
        max_tokens: u32,
        truncation: Option<String>,
    ) -> Result<JsValue, JsValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Rendered {
            ids: Vec<u32>,
            dropped_messages: usize,
        }
        let msgs: Vec<Message> = serde_wasm_bindgen::from_value(messages)
            .map_err(|e| js_err(format!("messages: {e}")))?;
        let truncation: crate::chat::Truncation = truncation
            .as_deref()
            .unwrap_or("disabled")
            .parse()
            .map_err(js_err)?;
        self.with(|i| {
            let p = crate::chat::render(
                Self::tokenizer(i)?,
                &msgs,
                max_tokens as usize,
                i.model.max_seq(),
                truncation,
            )
            .map_err(js_err)?;
            serde_wasm_bindgen::to_value(&Rendered {
                ids: p.ids,
                dropped_messages: p.dropped_messages,
            })
            .map_err(js_err)
        })
    }

    /// The id of a token string (e.g. `<|im_end|>`), if it exists.
    #[wasm_bindgen(js_name = tokenId)]
    pub fn token_id(&self, token: &str) -> Result<Option<u32>, JsValue> {
        self.with(|i| Ok(Self::tokenizer(i)?.token_id(token)))
    }

    /// Attaches this (detached) model to a backbone server with the adapter in `files`: Hugging
    /// Face peft SHADOW (`adapter_config.json`, `adapter_model.safetensors`) or official
    /// shadow-peft (`shadow_config.json`, `shadow_adapter.safetensors`, optional
    /// `shadow_modules.safetensors`). `options`: `{ backbone, token?, protocol?: "fused" |
    /// "stepped", wire?: "f32" | "f16", fallback?: "error" | "detached", timeoutMs? }`. On failure the
    /// model stays as it was.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn attach(&self, files: Files, options: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let o: AttachOptions = serde_wasm_bindgen::from_value(options)
                .map_err(|e| js_err(format!("attach options: {e}")))?;
            let fallback = match o.fallback.as_deref() {
                None | Some("error") => false,
                Some("detached") => true,
                Some(f) => {
                    return Err(js_err(format!(
                        "attach options: fallback `{f}`, expected error or detached"
                    )))
                }
            };
            let connect = crate::remote::client::Connect {
                token: o.token,
                wire: o.wire.unwrap_or(crate::remote::frame::Wire::F32),
                protocol: o.protocol.unwrap_or(crate::remote::client::Protocol::Fused),
                ..crate::remote::client::Connect::new(o.backbone)
            };
            let connect = match o.timeout_ms {
                Some(ms) if ms.is_finite() && ms > 0.0 => crate::remote::client::Connect {
                    timeout: std::time::Duration::from_secs_f64(ms / 1000.0),
                    ..connect
                },
                Some(ms) => {
                    return Err(js_err(format!(
                        "attach options: timeoutMs must be a positive number, not {ms}"
                    )))
                }
                None => connect,
            };
            let mut guard = inner
                .try_borrow_mut()
                .map_err(|_| js_err("the model is busy with another call"))?;
            let i = &mut *guard;
            i.model
                .attach_remote(&i.gpu, &files.src, &connect)
                .await
                .map_err(js_err)?;
            i.session = i.model.new_session(&i.gpu);
            i.session.set_fallback_detached(fallback);
            i.stream = None;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Back to detached (the shadow alone); forgets the backbone server.
    pub fn detach(&self) -> Result<(), JsValue> {
        self.with(|i| {
            i.model.detach_remote();
            i.session = i.model.new_session(&i.gpu);
            i.stream = None;
            Ok(())
        })
    }

    /// "attached" or "detached".
    pub fn mode(&self) -> Result<String, JsValue> {
        self.with(|i| Ok(format!("{:?}", i.model.mode()).to_lowercase()))
    }

    /// Backbone traffic so far and the failure that switched to detached, if any:
    /// `{ roundTrips, bytesSent, bytesReceived, fallbackError }` (undefined when detached).
    pub fn traffic(&self) -> Result<JsValue, JsValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Traffic<'a> {
            round_trips: f64,
            bytes_sent: f64,
            bytes_received: f64,
            fallback_error: Option<&'a str>,
        }
        self.with(|i| match i.session.remote_traffic() {
            None => Ok(JsValue::UNDEFINED),
            Some((t, s, r)) => serde_wasm_bindgen::to_value(&Traffic {
                round_trips: t as f64,
                bytes_sent: s as f64,
                bytes_received: r as f64,
                fallback_error: i.session.fallback_error(),
            })
            .map_err(js_err),
        })
    }

    /// Starts a new generation after `prompt`, the whole sequence: the session keeps what it
    /// holds of it (the longest common prefix) and runs the rest. `options`
    /// are the sampling settings (`maxNewTokens`, `temperature`, `topK`, `topP`,
    /// `repetitionPenalty`, `seed`, `ignoreEos`, `eosIds`, `escalate: { marker, minProb }`,
    /// `speculate: 'auto' | { draft }`).
    /// Returns the number of prompt positions reused from the caches.
    pub fn start(&self, prompt: Vec<u32>, options: JsValue) -> Result<u32, JsValue> {
        let mut opts: GenerateOptions = if options.is_undefined() || options.is_null() {
            GenerateOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options)
                .map_err(|e| js_err(format!("generation options: {e}")))?
        };
        self.with(|i| {
            if let Some(e) = &mut opts.escalate {
                if let (Some(m), true) = (&e.marker, e.marker_ids.is_empty()) {
                    let tok = Self::tokenizer(i)?;
                    e.marker_ids = match tok.token_id(m) {
                        Some(id) => vec![id],
                        None => tok.encode(m, false).map_err(js_err)?,
                    };
                }
            }
            // Speculation starts from the costs the previous generation measured.
            opts.draft_costs = i.stream.as_ref().and_then(|s| s.draft_length());
            let stream =
                TokenStream::new(&i.model, &mut i.session, &prompt, &opts).map_err(js_err)?;
            let cached = stream.cached_tokens() as u32;
            i.stream = Some(stream);
            i.text = StreamDecoder::default();
            Ok(cached)
        })
    }

    /// Runs one step; resolves to `{ token, text }` (the new id and the text it completes) or
    /// `null` when the generation has ended.
    // The borrow is held across the GPU await on purpose: a concurrent call gets a "busy"
    // error from `try_borrow_mut` instead of interleaving with this step.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn next(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner
                .try_borrow_mut()
                .map_err(|_| js_err("the model is busy with another call"))?;
            let i = &mut *guard;
            let stream = i
                .stream
                .as_mut()
                .ok_or_else(|| js_err("call start() before next()"))?;
            let tok = stream
                .next(&i.gpu, &i.model, &mut i.session)
                .await
                .map_err(js_err)?;
            match tok {
                None => Ok(JsValue::NULL),
                Some(token) => {
                    let text = match &i.tokenizer {
                        Some(t) => i.text.push(t, token).map_err(js_err)?,
                        None => String::new(),
                    };
                    let mode = match stream.last_mode() {
                        Some(crate::model::Mode::Detached) => "detached",
                        _ if i.model.mode() == crate::model::Mode::Detached => "detached",
                        _ => "attached",
                    };
                    serde_wasm_bindgen::to_value(&Step { token, text, mode }).map_err(js_err)
                }
            }
        })
    }

    /// How speculation went in the current generation: `{ rounds, drafted, accepted,
    /// plainSteps, pipelined, acceptanceRate }`, or undefined without speculation.
    pub fn speculation(&self) -> Result<JsValue, JsValue> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Stats {
            rounds: usize,
            drafted: usize,
            accepted: usize,
            plain_steps: usize,
            pipelined: usize,
            acceptance_rate: f64,
        }
        self.with(|i| {
            let Some(s) = i.stream.as_ref().and_then(|s| s.speculation()) else {
                return Ok(JsValue::UNDEFINED);
            };
            serde_wasm_bindgen::to_value(&Stats {
                rounds: s.rounds,
                drafted: s.drafted,
                accepted: s.accepted,
                plain_steps: s.plain_steps,
                pipelined: s.pipelined,
                acceptance_rate: s.acceptance_rate(),
            })
            .map_err(js_err)
        })
    }

    /// Why the last generation ended: "eos", "length", "callback", or undefined if running.
    #[wasm_bindgen(js_name = stopReason)]
    pub fn stop_reason(&self) -> Result<Option<String>, JsValue> {
        self.with(|i| {
            Ok(i.stream.as_ref().and_then(|s| s.stop_reason()).map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }))
        })
    }

    /// Ends the current generation early (an abort).
    pub fn cancel(&self) -> Result<(), JsValue> {
        self.with(|i| {
            if let Some(s) = i.stream.as_mut() {
                s.cancel();
            }
            Ok(())
        })
    }
}
