//! `shadowpeft chat`: an interactive chat. One user message per line on stdin; each answer
//! streams to stdout (or is one JSON object per turn with `--json`). Every turn renders the
//! whole conversation with the chat template and the session reuses the KV positions it
//! already holds of it. `/reset` starts over, `/system TEXT` sets the system message, Ctrl-D
//! ends the chat and Ctrl-C ends the current answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use shadowpeft::{
    chat, generate, DirSource, Error, Message, Mode, StopReason, StreamDecoder, TextTokenizer,
    Truncation,
};
use tokio::io::AsyncBufReadExt;

use crate::model::{load, ModelArgs};
use crate::printer::Printer;
use crate::report::{speculation_json, speculation_line};
use crate::sampling::SamplingArgs;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The system message (`/system TEXT` changes it during the chat).
    #[arg(long)]
    system: Option<String>,
    /// When the conversation and --max-new-tokens outgrow the KV cache: `disabled` (the turn
    /// fails with a context-length error and the chat goes on) or `auto` (the oldest turns
    /// are dropped until it fits).
    #[arg(long, default_value = "disabled", value_parser = ["disabled", "auto"])]
    truncate: String,
    /// Print one JSON object per turn instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Prefill the whole conversation at every turn instead of reusing the KV positions the
    /// session holds (the plain path, for comparison).
    #[arg(long)]
    no_reuse: bool,
}

/// Sets a flag on every Ctrl-C (SIGINT) instead of ending the program.
fn interrupts() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            f.store(true, Ordering::SeqCst);
        }
    });
    flag
}

fn set_system(messages: &mut Vec<Message>, text: Option<String>) {
    messages.retain(|m| m.role != "system");
    if let Some(content) = text {
        messages.insert(
            0,
            Message {
                role: "system".into(),
                content,
            },
        );
    }
}

/// Traffic of one turn: the difference of two readings of the session's counters.
fn traffic_delta(
    before: Option<(u64, u64, u64)>,
    after: Option<(u64, u64, u64)>,
) -> serde_json::Value {
    match after {
        None => serde_json::Value::Null,
        Some((t, s, r)) => {
            let (t0, s0, r0) = before.unwrap_or_default();
            serde_json::json!({ "round_trips": t - t0, "bytes_sent": s - s0, "bytes_received": r - r0 })
        }
    }
}

pub async fn run_chat(a: ChatArgs) -> Result<()> {
    let l = load(&a.model).await?;
    let (gpu, model) = (&l.gpu, &l.model);
    let tok = TextTokenizer::load(&DirSource::open(&l.text_dir)?).await?;
    if !tok.has_chat_template() {
        bail!(
            "{}: chat needs a chat template (tokenizer_config.json `chat_template`)",
            l.text_dir.display()
        );
    }
    let truncation: Truncation = a.truncate.parse()?;
    let mut opts = a.sampling.options(Some(&tok), true)?;
    let mut sess = model.new_session(gpu);
    sess.set_fallback_detached(a.model.fallback == "detached");
    let mut messages = Vec::new();
    set_system(&mut messages, a.system.clone());
    let interrupted = interrupts();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut turn = 0usize;
    {
        eprintln!(
            "[chat with {} ({:?}) on {}: one message per line; /reset, /system TEXT; Ctrl-C ends an answer, Ctrl-D the chat]",
            l.text_dir.display(),
            model.mode(),
            gpu.adapter_name()
        );
    }
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() == "/reset" {
            messages.retain(|m| m.role == "system");
            sess.reset();
            eprintln!("[conversation reset]");
            continue;
        }
        if let Some(text) = line.strip_prefix("/system") {
            if text.is_empty() || text.starts_with(' ') {
                let text = text.trim();
                set_system(&mut messages, (!text.is_empty()).then(|| text.to_string()));
                eprintln!(
                    "[system message {}]",
                    if text.is_empty() { "removed" } else { "set" }
                );
                continue;
            }
        }
        messages.push(Message {
            role: "user".into(),
            content: line.to_string(),
        });
        let prompt = match chat::render(
            &tok,
            &messages,
            opts.max_new_tokens,
            model.max_seq(),
            truncation,
        ) {
            Ok(p) => p,
            Err(e) => {
                messages.pop();
                report_error(a.json, &e);
                continue;
            }
        };
        if prompt.dropped_messages > 0 {
            messages = prompt.messages.clone();
            eprintln!(
                "[dropped the {} oldest message(s) to fit {} positions]",
                prompt.dropped_messages,
                model.max_seq()
            );
        }
        turn += 1;
        if a.no_reuse {
            sess.reset();
        }
        interrupted.store(false, Ordering::SeqCst);
        let traffic0 = sess.remote_traffic();
        let mut dec = StreamDecoder::default();
        let mut printer = Printer::new(&a.sampling.stop, !a.json);
        let g = generate(gpu, model, &mut sess, &prompt.ids, &opts, |id| {
            let piece = dec.push(&tok, id)?;
            printer
                .feed(&piece)
                .map_err(|e| Error::InvalidRequest(format!("stdout: {e}")))?;
            Ok(!printer.stopped && !interrupted.load(Ordering::SeqCst))
        })
        .await;
        let g = match g {
            Ok(g) => {
                // The next turn's speculation starts from the costs measured on this link.
                opts.draft_costs = g.draft_length.clone();
                g
            }
            Err(e) => {
                messages.pop();
                report_error(a.json, &e);
                continue;
            }
        };
        printer.flush()?;
        let stop_reason = match g.stop {
            StopReason::Callback if printer.stopped => "stop",
            StopReason::Callback => "interrupted",
            StopReason::Eos => "eos",
            StopReason::Length => "length",
        };
        messages.push(Message {
            role: "assistant".into(),
            content: printer.text.clone(),
        });
        let traffic = traffic_delta(traffic0, sess.remote_traffic());
        if shadowpeft::gpu::profile::enabled() {
            eprint!(
                "[profile of turn {turn}]\n{}",
                shadowpeft::gpu::profile::report()
            );
        }
        if a.json {
            let mut v = serde_json::json!({
                "turn": turn,
                "tokens": g.tokens,
                "text": printer.text,
                "prompt_tokens": prompt.ids.len(),
                "cached_tokens": g.cached_tokens,
                "dropped_messages": prompt.dropped_messages,
                "time_to_first_token_s": g.prefill_secs,
                "prefill_tok_s": g.prefill_tok_s(),
                "decode_tok_s": g.decode_tok_s(),
                "stop_reason": stop_reason,
                "modes": g.modes.iter().map(|m| format!("{m:?}").to_lowercase()).collect::<Vec<_>>(),
                "remote": traffic,
            });
            if let Some(e) = sess.fallback_error() {
                v["fallback_error"] = serde_json::json!(e);
            }
            if g.speculation.is_some() {
                v["speculation"] = speculation_json(&g);
            }
            println!("{v}");
        } else {
            println!();
            let detached = g.modes.iter().filter(|m| **m == Mode::Detached).count();
            let mut stats = format!(
                "[turn {turn}: {} prompt tokens, {} cached; {} new ({detached} detached), {stop_reason}; first token {:.0} ms, decode {:.1} tok/s",
                prompt.ids.len(),
                g.cached_tokens,
                g.tokens.len(),
                g.prefill_secs * 1e3,
                g.decode_tok_s(),
            );
            if let Some(t) = traffic.as_object() {
                stats.push_str(&format!(
                    "; backbone {} round trips, {} B up, {} B down",
                    t["round_trips"], t["bytes_sent"], t["bytes_received"]
                ));
            }
            if let Some(e) = sess.fallback_error() {
                stats.push_str(&format!("; backbone failed: {e}"));
            }
            if let Some(line) = speculation_line(&g) {
                stats.push_str(&format!("; {line}"));
            }
            eprintln!("{stats}]");
        }
    }
    Ok(())
}

/// A turn that failed: the chat goes on without it.
fn report_error(json: bool, e: &Error) {
    if json {
        let code = match e {
            Error::ContextLength { .. } => "context-length",
            Error::Remote { .. } => "backbone",
            _ => "error",
        };
        println!(
            "{}",
            serde_json::json!({ "error": e.to_string(), "code": code })
        );
    } else {
        eprintln!("[error: {e}; the message was not added]");
    }
}
