//! The speculation part of `generate` and `chat` reports.

use shadowpeft::Generation;

/// `{ rounds, drafted, accepted, acceptance_rate, plain_steps, pipelined, tokens_per_pass,
/// tokens_per_round_trip }` when speculation ran, else null. A pass is one base pass after
/// the prompt's (a verification, or a plain step); round trips are the backbone's, the
/// prompt's included.
pub fn speculation_json(g: &Generation) -> serde_json::Value {
    let Some(s) = g.speculation else {
        return serde_json::Value::Null;
    };
    let n = g.tokens.len() as f64;
    let mut v = serde_json::json!({
        "rounds": s.rounds,
        "drafted": s.drafted,
        "accepted": s.accepted,
        "acceptance_rate": s.acceptance_rate(),
        "plain_steps": s.plain_steps,
        "pipelined": s.pipelined,
        "tokens_per_pass": n / (s.rounds + s.plain_steps).max(1) as f64,
    });
    if let Some(t) = g.round_trips {
        v["tokens_per_round_trip"] = serde_json::json!(n / t.max(1) as f64);
    }
    v
}

/// One line for people: `speculation: R rounds, A/D drafts stood, T tokens per pass`.
pub fn speculation_line(g: &Generation) -> Option<String> {
    let s = g.speculation?;
    let v = speculation_json(g);
    let mut line = format!(
        "speculation: {} rounds, {}/{} drafts stood, {:.2} tokens per pass",
        s.rounds,
        s.accepted,
        s.drafted,
        v["tokens_per_pass"].as_f64().unwrap_or(0.0)
    );
    if let Some(t) = v["tokens_per_round_trip"].as_f64() {
        line.push_str(&format!(", {t:.2} per round trip"));
    }
    Some(line)
}
