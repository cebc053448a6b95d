//! Greedy speculative rounds over a session, local or remote (fused or stepped): each round
//! feeds the last decided token and k drafts through the shadow with the base deferred
//! ([`Session::defer_base`]), brings the base up to date over the k + 1 rows in one pass
//! ([`ShadowModel::escalate`], all rows read back), keeps the drafts that equal the attached
//! argmax and rolls every cache back past the first that does not ([`Session::truncate`]).

use super::accept::accept_greedy;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Readout, Session, ShadowModel};
use crate::ops::cpu_argmax;

/// What a speculative generation produced, and how the rounds went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Speculation {
    /// The new tokens (an EOS, when one ended it, included).
    pub tokens: Vec<u32>,
    /// Verification passes of the base (after the prompt's).
    pub rounds: usize,
    /// Draft tokens proposed, and how many of them stood.
    pub drafted: usize,
    pub accepted: usize,
}

/// Greedy attached generation of up to `max_new` tokens after `prompt` (the whole sequence:
/// the session reuses what it holds of it), drafting up to `k` tokens per round. The tokens
/// are those of plain greedy attached decoding; generation ends after an EOS of `eos`.
pub async fn speculate_greedy(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    prompt: &[u32],
    max_new: usize,
    k: usize,
    eos: &[u32],
) -> Result<Speculation> {
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("empty prompt".into()));
    }
    let mut out = Speculation::default();
    if max_new == 0 {
        return Ok(out);
    }
    sess.defer_base(false);
    let kept = sess.reuse(prompt);
    let first = model
        .forward(gpu, sess, &prompt[kept..], Readout::Argmax, false)
        .await?;
    let mut last = first
        .token
        .ok_or_else(|| Error::InvalidRequest("no token".into()))?;
    out.tokens.push(last);
    let v = model.vocab_size();
    while out.tokens.len() < max_new && !eos.contains(&last) {
        // Drafts beyond what may still be emitted (the round adds one token of its own) are
        // never kept, so they are not made.
        let k = k.min(max_new - out.tokens.len() - 1);
        let pos = sess.position();
        // 1. Draft: the last token and k drafts through the shadow alone, the base deferred.
        sess.defer_base(true);
        let mut feed = last;
        let mut draft = Vec::with_capacity(k);
        for i in 0..=k {
            let o = model
                .forward(gpu, sess, &[feed], Readout::Argmax, false)
                .await;
            let o = match o {
                Ok(o) => o,
                Err(e) => {
                    sess.defer_base(false);
                    sess.truncate(pos);
                    return Err(e);
                }
            };
            if i < k {
                feed = o
                    .token
                    .ok_or_else(|| Error::InvalidRequest("no token".into()))?;
                draft.push(feed);
            }
        }
        // 2. Verify: the base over the k + 1 rows in one pass, every row's logits.
        let o = model.escalate(gpu, sess, Readout::AllLogits).await;
        sess.defer_base(false);
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                sess.truncate(pos);
                return Err(e);
            }
        };
        let target: Vec<u32> = o.logits.chunks_exact(v).map(cpu_argmax).collect();
        // 3. Accept, and roll back past the first rejected draft.
        let verdict = accept_greedy(&draft, &target);
        sess.truncate(pos + 1 + verdict.accepted);
        out.rounds += 1;
        out.drafted += k;
        out.accepted += verdict.accepted;
        for &t in draft[..verdict.accepted].iter().chain([&verdict.next]) {
            out.tokens.push(t);
            last = t;
            if eos.contains(&t) {
                break;
            }
        }
    }
    Ok(out)
}
