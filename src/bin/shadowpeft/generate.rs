//! `shadowpeft generate`: one prompt, streamed or as one JSON object.

use anyhow::{bail, Result};
use clap::Args;
use shadowpeft::{generate, DirSource, Message, Mode, StreamDecoder, TextTokenizer};

use crate::model::{load, parse_ids, ModelArgs};
use crate::printer::Printer;
use crate::report::{speculation_json, speculation_line};
use crate::sampling::SamplingArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the model's tokenizer.json).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long)]
    tokens: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Wrap the prompt as a user message with the chat template of tokenizer_config.json.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print one JSON object (tokens, text, speeds) instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub async fn run_generate(a: GenerateArgs) -> Result<()> {
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
    let opts = a.sampling.options(tokenizer.as_ref(), a.chat)?;
    let mut sess = model.new_session(gpu);
    sess.set_fallback_detached(a.model.fallback == "detached");
    let mut dec = StreamDecoder::default();
    let mut printer = Printer::new(&a.sampling.stop, !a.json);
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
    printer.flush()?;
    if a.json {
        let mut v = serde_json::json!({
            "tokens": g.tokens,
            "text": printer.text,
            "prompt_tokens": prompt.len(),
            "cached_tokens": g.cached_tokens,
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
        if g.speculation.is_some() {
            v["speculation"] = speculation_json(&g);
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
        if let Some(line) = speculation_line(&g) {
            eprintln!("[{line}]");
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
