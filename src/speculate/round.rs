//! One speculative round over a session, local or remote (fused or stepped): the last decided
//! token (or, for the first round, the prompt) and up to k drafts run through the shadow with
//! the base deferred ([`Session::defer_base`]); one base pass over those positions
//! ([`ShadowModel::escalate`]) gives the attached choice of the last k + 1 (argmax on the device when greedy, the rows of
//! logits when sampling); the acceptance rule keeps a prefix of the drafts and every cache
//! is rolled back past the first that did not stand ([`Session::truncate`]).

use super::accept::{accept_greedy, accept_sampled};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Mode, Readout, Session, ShadowModel};
use crate::ops::{Dist, Sampling};

/// What a round is asked to do.
pub struct RoundPlan<'a> {
    /// What the session does not hold yet: the last decided token, or the prompt (then the
    /// prompt's pass verifies the first drafts too).
    pub feed: &'a [u32],
    /// The most drafts to make.
    pub k: usize,
    /// Stop drafting when the chance that the next draft stands (the product of the
    /// shadow's top probabilities over the round) falls below this.
    pub p_min: Option<f32>,
    /// The sequence so far, `feed` included (the repetition penalty's history).
    pub history: &'a [u32],
    /// The logits processors of sampling; `None` is greedy (the argmax of the raw logits).
    pub sampling: Option<Sampling>,
    /// Ids that end generation: a draft stops before one (the verification decides it).
    pub eos: &'a dyn Fn(u32) -> bool,
}

/// What a round decided, and what it cost.
#[derive(Debug, Clone)]
pub struct Round {
    /// The drafts that stood, then the attached token after them; the session holds `feed`
    /// and all of these but the final one (which the next round feeds).
    pub tokens: Vec<u32>,
    /// The model behind `tokens`: attached, or detached when the backbone failed during the
    /// verification with fallback on (the drafts then stand as detached output).
    pub mode: Mode,
    pub drafted: usize,
    pub accepted: usize,
    /// Seconds drafting (all shadow forwards of the round), and verifying.
    pub draft_secs: f64,
    pub verify_secs: f64,
}

/// Runs one round after `plan.feed`; uniforms for sampling come from `draw`. On an error the
/// session is rolled back to where it was, so the round can be retried or given up.
pub async fn round(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    plan: RoundPlan<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Round> {
    let pos = sess.position();
    sess.defer_base(true);
    let r = draft_and_verify(gpu, model, sess, &plan, draw).await;
    sess.defer_base(false);
    match r {
        Ok(r) => {
            sess.truncate(pos + plan.feed.len() + r.tokens.len() - 1);
            Ok(r)
        }
        Err(e) => {
            sess.truncate(pos);
            Err(e)
        }
    }
}

async fn draft_and_verify(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    plan: &RoundPlan<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Round> {
    let t0 = web_time::Instant::now();
    let mut history = plan.history.to_vec();
    let (mut draft, mut q) = (Vec::with_capacity(plan.k), Vec::with_capacity(plan.k));
    let mut feed = plan.feed.to_vec();
    let mut chance = 1.0;
    // 1. Draft: `feed`, then each draft, through the shadow alone. The forward after the
    //    final draft only adds its shadow state for the verification.
    loop {
        let wants_draft = draft.len() < plan.k;
        let readout = match plan.sampling {
            Some(_) if wants_draft => Readout::LastLogits,
            _ => Readout::Argmax,
        };
        let o = model.forward(gpu, sess, &feed, readout, false).await?;
        if !wants_draft {
            break;
        }
        let (cand, conf, dist) = match plan.sampling {
            None => (
                o.token
                    .ok_or(Error::InvalidRequest("no draft token".into()))?,
                o.top_prob.unwrap_or(1.0) as f64,
                None,
            ),
            Some(s) => {
                let mut logits = o.logits;
                let d = s.distribution(&mut logits, &history);
                (d.sample(draw()), d.top_prob(), Some(d))
            }
        };
        chance *= conf;
        if plan.p_min.is_some_and(|p| chance < p as f64) || (plan.eos)(cand) {
            break;
        }
        draft.push(cand);
        q.extend(dist);
        history.push(cand);
        feed = vec![cand];
    }
    let t1 = web_time::Instant::now();
    // 2. Verify: the base over the new positions in one pass, the last n + 1 rows read.
    let n = draft.len();
    let o = match plan.sampling {
        None => {
            model
                .escalate(gpu, sess, Readout::ArgmaxRows(n + 1))
                .await?
        }
        Some(_) => model.escalate(gpu, sess, Readout::LogitRows(n + 1)).await?,
    };
    let mode = o.mode.unwrap_or(Mode::Attached);
    // 3. Accept.
    let verdict = match plan.sampling {
        None => accept_greedy(&draft, &o.tokens),
        Some(s) => {
            let v = model.vocab_size();
            let before = plan.history.len();
            let p: Vec<Dist> = o
                .logits
                .chunks_exact(v)
                .enumerate()
                .map(|(j, row)| s.distribution(&mut row.to_vec(), &history[..before + j]))
                .collect();
            accept_sampled(&draft, &q, &p, draw)
        }
    };
    let mut tokens = draft[..verdict.accepted].to_vec();
    tokens.push(verdict.next);
    Ok(Round {
        tokens,
        mode,
        drafted: n,
        accepted: verdict.accepted,
        draft_secs: (t1 - t0).as_secs_f64(),
        verify_secs: t1.elapsed().as_secs_f64(),
    })
}
