//! `shadowpeft`: run ShadowPEFT models from the command line (native wgpu).
//!
//! ```text
//! shadowpeft generate --model models/tiny/export --prompt "Hello"
//! shadowpeft generate --base B --adapter A [--shadow S] [--mode attached|detached] --tokens 1,2,3 --json
//! shadowpeft logits   --base B --adapter A --tokens 5,17,42 --out logits.safetensors
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::ExitCode;

    use anyhow::{bail, Context, Result};
    use clap::{Args, Parser, Subcommand};
    use shadowpeft::{
        generate, DirSource, GenerateOptions, Gpu, GpuOptions, LoadOptions, Message, Mode, Readout,
        ShadowModel, StreamDecoder, TextTokenizer,
    };

    #[derive(Parser)]
    #[command(
        name = "shadowpeft",
        version,
        about = "Run ShadowPEFT models (attached or detached) on wgpu"
    )]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Generate text or tokens.
        Generate(GenerateArgs),
        /// Write the logits of a token sequence to a safetensors file.
        Logits(LogitsArgs),
        /// Serve a frozen base model to remote shadow clients (attached mode over HTTP).
        Serve(ServeArgs),
    }

    #[derive(Args)]
    struct ServeArgs {
        /// The base model dir (Hugging Face layout).
        #[arg(long)]
        base: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Require `Authorization: Bearer SECRET` on every request.
        #[arg(long)]
        token: Option<String>,
        /// Most sessions alive at once.
        #[arg(long, default_value_t = 64)]
        max_sessions: usize,
        /// Seconds an idle session is kept.
        #[arg(long, default_value_t = 600)]
        session_ttl: u64,
        /// Longest sequence per session (KV cache length).
        #[arg(long, default_value_t = 2048)]
        max_seq: usize,
        /// Storage of the base's projections, embeddings and head: f32, f16, or q8 / q4
        /// (int8 / int4 in blocks of 32 with f32 scales).
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8", "q4"])]
        weights: String,
        /// Largest request body in MiB (adapter uploads included).
        #[arg(long, default_value_t = 256)]
        max_body_mib: usize,
    }

    #[derive(Args)]
    struct ModelArgs {
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
        fallback: String,
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
        /// (int8 / int4 in blocks of 32 with f32 scales). Adapter networks, norms and
        /// matrices whose rows are not whole blocks of 32 stay f32.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8", "q4"])]
        weights: String,
        /// Cap one storage binding at this many bytes (bigger tensors are split).
        #[arg(long, hide = true)]
        max_binding: Option<u64>,
    }

    #[derive(Args)]
    struct GenerateArgs {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt text (tokenized with the model's tokenizer.json).
        #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
        prompt: Option<String>,
        /// Prompt token ids, comma-separated.
        #[arg(long)]
        tokens: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0 = off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Do not stop at end-of-sequence tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Stop when the text contains this string (repeatable); the string is not printed.
        #[arg(long = "stop")]
        stop: Vec<String>,
        /// Wrap the prompt as a user message with the chat template of tokenizer_config.json.
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// System message for --chat.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Print one JSON object (tokens, text, speeds) instead of streaming text.
        #[arg(long)]
        json: bool,
        /// Start detached and switch to attached when the detached model emits this text
        /// (e.g. `[REMOTE]`); the marker is dropped and the attached model answers instead.
        #[arg(long)]
        escalate_marker: Option<String>,
        /// Start detached and switch to attached when the detached model's top
        /// probability falls below this (0..1).
        #[arg(long)]
        escalate_below: Option<f32>,
    }

    #[derive(Args)]
    struct LogitsArgs {
        #[command(flatten)]
        model: ModelArgs,
        /// Token ids, comma-separated.
        #[arg(long)]
        tokens: String,
        /// Output file: F32 tensors `logits` [T, V] and `shadow_logits` [T, V].
        #[arg(long)]
        out: PathBuf,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let r = rt.block_on(async {
            match cli.cmd {
                Cmd::Generate(a) => run_generate(a).await,
                Cmd::Logits(a) => run_logits(a).await,
                Cmd::Serve(a) => run_serve(a).await,
            }
        });
        if shadowpeft::gpu::profile::enabled() {
            eprint!("{}", shadowpeft::gpu::profile::report());
        }
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn parse_ids(s: &str) -> Result<Vec<u32>> {
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

    struct Loaded {
        gpu: Gpu,
        model: ShadowModel,
        /// Where tokenizer.json lives.
        text_dir: PathBuf,
    }

    async fn load(a: &ModelArgs) -> Result<Loaded> {
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

    async fn run_logits(a: LogitsArgs) -> Result<()> {
        let ids = parse_ids(&a.tokens)?;
        let l = load(&a.model).await?;
        let (gpu, model) = (&l.gpu, &l.model);
        let mut sess = model.new_session(gpu);
        let attached = model.mode() == Mode::Attached;
        let (mut logits, mut shadow) = (Vec::new(), Vec::new());
        for chunk in ids.chunks(model.max_logit_rows(gpu)) {
            let o = model
                .forward(gpu, &mut sess, chunk, Readout::AllLogits, attached)
                .await?;
            if attached {
                shadow.extend(o.shadow_logits);
            } else {
                shadow.extend(&o.logits);
            }
            logits.extend(o.logits);
        }
        let shape = vec![ids.len(), model.vocab_size()];
        let bytes_l: Vec<u8> = bytemuck::cast_slice(&logits).to_vec();
        let bytes_s: Vec<u8> = bytemuck::cast_slice(&shadow).to_vec();
        let views = [
            (
                "logits",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    &bytes_l,
                )?,
            ),
            (
                "shadow_logits",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes_s)?,
            ),
        ];
        safetensors::serialize_to_file(views, None, &a.out)
            .with_context(|| format!("writing {}", a.out.display()))?;
        eprintln!(
            "wrote {} ({} tokens x {} logits, {:?})",
            a.out.display(),
            ids.len(),
            model.vocab_size(),
            model.mode()
        );
        Ok(())
    }

    async fn run_serve(a: ServeArgs) -> Result<()> {
        use std::sync::Arc;
        let gpu = Arc::new(Gpu::new(GpuOptions::default()).await?);
        let base = shadowpeft::remote::server::load_base(
            &gpu,
            &DirSource::open(&a.base)?,
            a.max_seq,
            a.weights.parse()?,
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("--listen {}", a.listen))?;
        let cfg = shadowpeft::remote::server::ServerConfig {
            token: a.token.clone(),
            max_sessions: a.max_sessions.max(1),
            session_ttl: std::time::Duration::from_secs(a.session_ttl.max(1)),
            max_body: a.max_body_mib.max(1) << 20,
            ..Default::default()
        };
        eprintln!(
            "serving {} ({} layers, hidden {}) on http://{} with {}",
            a.base.display(),
            base.cfg().layers,
            base.cfg().hidden,
            listener.local_addr()?,
            gpu.adapter_name()
        );
        tokio::select! {
            r = shadowpeft::remote::server::serve(listener, gpu.clone(), Arc::new(base), cfg) => r?,
            _ = tokio::signal::ctrl_c() => eprintln!("shutting down"),
        }
        Ok(())
    }

    /// Prints streamed text, holding back any tail that could be the start of a stop string.
    struct Printer {
        text: String,
        printed: usize,
        stops: Vec<String>,
        live: bool,
        stopped: bool,
    }

    impl Printer {
        fn feed(&mut self, piece: &str) -> Result<()> {
            self.text.push_str(piece);
            if let Some(i) = self
                .stops
                .iter()
                .filter_map(|s| self.text.find(s.as_str()))
                .min()
            {
                self.text.truncate(i);
                self.stopped = true;
            }
            let hold = if self.stopped {
                0
            } else {
                self.stops
                    .iter()
                    .map(|s| s.len().saturating_sub(1))
                    .max()
                    .unwrap_or(0)
            };
            let mut upto = self.text.len().saturating_sub(hold).max(self.printed);
            while !self.text.is_char_boundary(upto) {
                upto -= 1;
            }
            if self.live && upto > self.printed {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.text.as_bytes()[self.printed..upto])?;
                out.flush()?;
            }
            self.printed = upto.max(self.printed);
            Ok(())
        }
    }

    async fn run_generate(a: GenerateArgs) -> Result<()> {
        let tokens = a.tokens.as_deref().map(parse_ids).transpose()?;
        let t_load = std::time::Instant::now();
        let l = load(&a.model).await?;
        let load_s = t_load.elapsed().as_secs_f64();
        let (gpu, model) = (&l.gpu, &l.model);
        let dispatches_at_load = gpu.dispatch_count();
        let src = DirSource::open(&l.text_dir)?;
        let tokenizer = match (&tokens, &a.prompt) {
            (Some(_), _) => TextTokenizer::load(&src).await.ok(),
            (None, _) => Some(TextTokenizer::load(&src).await?),
        };
        let prompt = match (tokens, &a.prompt, &tokenizer) {
            (Some(t), _, _) => t,
            (None, Some(p), Some(tok)) => {
                if a.chat {
                    let mut msgs = Vec::new();
                    if let Some(s) = &a.system {
                        msgs.push(Message {
                            role: "system".into(),
                            content: s.clone(),
                        });
                    }
                    msgs.push(Message {
                        role: "user".into(),
                        content: p.clone(),
                    });
                    let text = tok.apply_chat_template(&msgs, true)?;
                    tok.encode(&text, false)?
                } else {
                    tok.encode(p, true)?
                }
            }
            _ => bail!("give --prompt TEXT or --tokens IDS"),
        };
        let mut eos_ids = Vec::new();
        if a.chat {
            if let Some(id) = tokenizer.as_ref().and_then(|t| t.token_id("<|im_end|>")) {
                eos_ids.push(id);
            }
        }
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
            ignore_eos: a.ignore_eos,
            eos_ids,
            escalate: None,
        };
        let mut opts = opts;
        if a.escalate_marker.is_some() || a.escalate_below.is_some() {
            let marker_ids = match (&a.escalate_marker, &tokenizer) {
                (Some(m), Some(tok)) => match tok.token_id(m) {
                    Some(id) => vec![id],
                    None => tok.encode(m, false)?,
                },
                (Some(_), None) => bail!("--escalate-marker needs the model's tokenizer.json"),
                (None, _) => Vec::new(),
            };
            opts.escalate = Some(shadowpeft::generate::Escalate {
                marker: a.escalate_marker.clone(),
                marker_ids,
                min_prob: a.escalate_below,
            });
        }
        let mut sess = model.new_session(gpu);
        sess.set_fallback_detached(a.model.fallback == "detached");
        let mut dec = StreamDecoder::default();
        let mut printer = Printer {
            text: String::new(),
            printed: 0,
            stops: a.stop.clone(),
            live: !a.json,
            stopped: false,
        };
        let g = generate(gpu, model, &mut sess, &prompt, &opts, |id| {
            if let Some(tok) = &tokenizer {
                let piece = dec.push(tok, id)?;
                printer
                    .feed(&piece)
                    .map_err(|e| shadowpeft::Error::InvalidRequest(format!("stdout: {e}")))?;
            }
            Ok(!printer.stopped)
        })
        .await?;
        printer.stops.clear();
        printer.feed("")?;
        if a.json {
            let mut v = serde_json::json!({
                "tokens": g.tokens,
                "text": printer.text,
                "prompt_tokens": prompt.len(),
                "stop_reason": g.stop,
                "mode": format!("{:?}", model.mode()).to_lowercase(),
                "prefill_tok_s": g.prefill_tok_s(),
                "decode_tok_s": g.decode_tok_s(),
                "time_to_first_token_s": g.prefill_secs,
                "generate_s": g.prefill_secs + g.decode_secs,
                "load_s": load_s,
                "adapter": gpu.adapter_name(),
                "dispatches": gpu.dispatch_count() - dispatches_at_load,
            });
            v["modes"] = serde_json::json!(g
                .modes
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect::<Vec<_>>());
            if let Some(e) = sess.fallback_error() {
                v["fallback_error"] = serde_json::json!(e);
            }
            if let Some((trips, sent, received)) = sess.remote_traffic() {
                v["remote"] = serde_json::json!({ "round_trips": trips, "bytes_sent": sent, "bytes_received": received });
            }
            println!("{v}");
        } else {
            println!();
            if let Some(e) = sess.fallback_error() {
                let k = g
                    .modes
                    .iter()
                    .position(|m| *m == Mode::Detached)
                    .unwrap_or(0);
                eprintln!("[the backbone failed ({e}); tokens from #{k} on are detached]");
            } else if opts.escalate.is_some() {
                match g.modes.iter().position(|m| *m == Mode::Attached) {
                    Some(k) => eprintln!("[escalated: {k} detached token(s), then attached]"),
                    None => eprintln!("[not escalated: every token detached]"),
                }
            }
            eprintln!(
                "[{} prompt tokens, {} new; prefill {:.1} tok/s, decode {:.1} tok/s on {}]",
                prompt.len(),
                g.tokens.len(),
                g.prefill_tok_s(),
                g.decode_tok_s(),
                gpu.adapter_name()
            );
        }
        Ok(())
    }
}
