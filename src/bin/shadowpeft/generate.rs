//! `shadowpeft generate`: one prompt, streamed or as one JSON object.

use anyhow::{bail, Context, Result};
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
    #[arg(long, conflicts_with_all = ["tokens", "prompt_file"], required_unless_present_any = ["tokens", "prompt_file"])]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, conflicts_with = "prompt_file")]
    tokens: Option<String>,
    /// A file of prompts, one per line (blank lines skipped): each is answered on its own,
    /// after one load, in one session that keeps only what the prompts have in common (so
    /// each answer is that of a fresh session, and a backbone session is opened once); with
    /// --json, one object per prompt, one per line.
    #[arg(long, value_name = "PATH")]
    prompt_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Wrap the prompt as a user message with the chat template of tokenizer_config.json.
    #[arg(long)]
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
    if a.chat && tokens.is_some() {
        bail!("--chat wraps prompt text: give --prompt or --prompt-file, not --tokens");
    }
    let texts: Vec<String> = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => {
            let body = std::fs::read_to_string(f)
                .with_context(|| format!("--prompt-file {}", f.display()))?;
            let lines: Vec<String> = body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                bail!("--prompt-file {}: no prompts (one per line)", f.display());
            }
            lines
        }
        (None, None) => Vec::new(),
    };
    let t_load = std::time::Instant::now();
    let l = load(&a.model).await?;
    let load_s = t_load.elapsed().as_secs_f64();
    let (gpu, model) = (&l.gpu, &l.model);
    let src = DirSource::open(&l.text_dir)?;
    let tokenizer = match &tokens {
        Some(_) => TextTokenizer::load(&src).await.ok(),
        None => Some(TextTokenizer::load(&src).await?),
    };
    let mut opts = a.sampling.options(tokenizer.as_ref(), a.chat)?;
    let prompts: Vec<Vec<u32>> = match (tokens, &tokenizer) {
        (Some(t), _) => vec![t],
        (None, Some(tok)) => texts
            .iter()
            .map(|p| encode(tok, p, a.chat, a.system.as_deref()))
            .collect::<Result<_>>()?,
        (None, None) => bail!("give --prompt TEXT, --prompt-file PATH or --tokens IDS"),
    };
    let mut sess = model.new_session(gpu);
    sess.set_fallback_detached(a.model.fallback == "detached");
    for prompt in &prompts {
        let dispatches = gpu.dispatch_count();
        let traffic0 = sess.remote_traffic();
        let mut dec = StreamDecoder::default();
        let mut printer = Printer::new(&a.sampling.stop, !a.json);
        let g = generate(gpu, model, &mut sess, prompt, &opts, |id| {
            if let Some(tok) = &tokenizer {
                let piece = dec.push(tok, id)?;
                printer
                    .feed(&piece)
                    .map_err(|e| shadowpeft::Error::InvalidRequest(format!("stdout: {e}")))?;
            }
            Ok(!printer.stopped)
        })
        .await?;
        // The next prompt's speculation starts from the costs measured on this link.
        opts.draft_costs = g.draft_length.clone();
        let fallback_error = sess.fallback_error().map(str::to_string);
        let traffic = sess
            .remote_traffic()
            .zip(traffic0)
            .map(|(b, a)| (b.0 - a.0, b.1 - a.1, b.2 - a.2));
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
                "dispatches": gpu.dispatch_count() - dispatches,
            });
            v["modes"] = serde_json::json!(g
                .modes
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect::<Vec<_>>());
            if let Some(e) = &fallback_error {
                v["fallback_error"] = serde_json::json!(e);
            }
            if g.speculation.is_some() {
                v["speculation"] = speculation_json(&g);
            }
            if let Some((trips, sent, received)) = traffic {
                v["remote"] = serde_json::json!({ "round_trips": trips, "bytes_sent": sent, "bytes_received": received });
            }
            println!("{v}");
        } else {
            println!();
            if let Some(e) = &fallback_error {
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
    }
    model.end_conversation(&mut sess).await;
    Ok(())
}

/// The ids of prompt text `p`: as a user message in the chat template with `chat` (after an
/// optional system message), else the text itself with the tokenizer's special tokens.
fn encode(tok: &TextTokenizer, p: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
    if !chat {
        return Ok(tok.encode(p, true)?);
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message {
            role: "system".into(),
            content: s.to_string(),
        });
    }
    msgs.push(Message {
        role: "user".into(),
        content: p.to_string(),
    });
    let text = tok.apply_chat_template(&msgs, true)?;
    Ok(tok.encode(&text, false)?)
}
