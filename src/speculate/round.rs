//! One speculative round over a session, local or remote (fused or stepped): the last decided
//! token (or, for the first round, the prompt) and up to k drafts run through the shadow with
//! the base deferred ([`Session::defer_base`]); one base pass over those positions
//! ([`ShadowModel::escalate`]) gives the attached choice of the last k + 1 (argmax on the
//! device when greedy, the rows of logits when sampling); the acceptance rule keeps a prefix
//! of the drafts and every cache is rolled back past the first that did not stand
//! ([`Session::truncate`]).
//!
//! Against a backbone server the round pipelines: while the verification is in flight
//! ([`ShadowModel::send_pending`]), the shadow drafts on as if every draft stood and the
//! verification picked the shadow's own next token. When it did, the round returns that work
//! as [`Ahead`]: the next round's token is already in the session, with drafts after it, and
//! that round can send its verification at once.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::accept::{accept_greedy, accept_sampled};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{ForwardOutput, Mode, Readout, Session, ShadowModel};
use crate::ops::{Dist, Sampling};

/// What a round is asked to do.
pub struct RoundPlan<'a> {
    /// What the session does not hold yet: the last decided token, or the prompt (then the
    /// prompt's pass verifies the first drafts too). With [`RoundPlan::ahead`], the session
    /// holds it already.
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
    /// The previous round's work ahead, when it guessed right: `feed` and drafts after it,
    /// already in the session.
    pub ahead: Option<Ahead>,
    /// The most tokens to draft ahead while the verification is in flight (the next round's
    /// token included); 0 does not pipeline. Only a backbone server's verification flies.
    pub pipeline: usize,
    /// Tokens that may still be decided, this round's included (what is drafted ahead must
    /// fit the next round).
    pub left: usize,
}

/// A draft, or a candidate for one: the shadow's token and how sure it was.
#[derive(Debug, Clone)]
struct Guess {
    token: u32,
    /// The shadow's top probability at that position.
    conf: f64,
    /// The shadow's distribution there (sampling only).
    q: Option<Dist>,
}

/// Shadow work a round made ahead, on the guess that every draft stands and the verification
/// picks the shadow's next token. The session holds these tokens after the round's; the
/// first is the next round's token, the others its drafts.
#[derive(Debug, Clone)]
pub struct Ahead {
    made: Vec<Guess>,
    /// The shadow's candidate after the last of them.
    next: Option<Guess>,
}

impl Ahead {
    /// Positions the session holds for it.
    pub fn len(&self) -> usize {
        self.made.len()
    }

    /// Whether it holds nothing (never returned so).
    pub fn is_empty(&self) -> bool {
        self.made.is_empty()
    }
}

/// What a round decided, and what it cost.
#[derive(Debug, Clone)]
pub struct Round {
    /// The drafts that stood, then the attached token after them; the session holds `feed`
    /// and all of these but the final one (which the next round feeds), and, with
    /// [`Round::ahead`], the final one and the drafts made after it.
    pub tokens: Vec<u32>,
    /// The model behind `tokens`: attached, or detached when the backbone failed during the
    /// verification with fallback on (the drafts then stand as detached output).
    pub mode: Mode,
    pub drafted: usize,
    pub accepted: usize,
    /// Shadow forwards the round ran (drafting, and drafting ahead while its verification
    /// flew; not the work the previous round made ahead), and their seconds: what a draft
    /// costs.
    pub forwards: usize,
    pub draft_secs: f64,
    /// Seconds from sending the verification to its answer.
    pub verify_secs: f64,
    /// Work ahead that the verification confirmed: the next round starts from it.
    pub ahead: Option<Ahead>,
}

/// Runs one round after `plan.feed`; uniforms for sampling come from `draw`. On an error the
/// session is rolled back to where it was before `feed`, so the round can be retried or
/// given up.
pub async fn round(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    plan: RoundPlan<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Round> {
    let held = plan.ahead.as_ref().map_or(0, Ahead::len);
    let pos = sess.position() - held;
    sess.defer_base(true);
    let r = draft_and_verify(gpu, model, sess, &plan, draw).await;
    sess.defer_base(false);
    match r {
        Ok(r) => {
            let keep = pos + plan.feed.len() + r.tokens.len() - 1;
            sess.truncate(keep + r.ahead.as_ref().map_or(0, Ahead::len));
            Ok(r)
        }
        Err(e) => {
            sess.truncate(pos);
            Err(e)
        }
    }
}

/// The shadow's side of a round: the sequence it drafts after, and its candidate.
struct Drafter<'p, 'a> {
    plan: &'p RoundPlan<'a>,
    history: Vec<u32>,
    /// The product of the drafts' confidences so far.
    chance: f64,
    /// The shadow's candidate after the last position the session holds.
    next: Option<Guess>,
    /// Forwards run, and their seconds.
    forwards: usize,
    secs: f64,
}

impl Drafter<'_, '_> {
    /// Runs `feed` through the shadow and takes its candidate after it. Sampling reads the
    /// row of logits for a candidate only when `want` (a draft, or work ahead follows).
    async fn forward(
        &mut self,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
        feed: &[u32],
        want: bool,
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<()> {
        let t0 = web_time::Instant::now();
        let sampled = self.plan.sampling.filter(|_| want);
        let readout = match sampled {
            Some(_) => Readout::LastLogits,
            None => Readout::ArgmaxProb,
        };
        let o = model.forward(gpu, sess, feed, readout, false).await?;
        self.next = match (self.plan.sampling, sampled) {
            (None, _) => Some(Guess {
                token: o
                    .token
                    .ok_or(Error::InvalidRequest("no draft token".into()))?,
                conf: o.top_prob.unwrap_or(1.0) as f64,
                q: None,
            }),
            (Some(_), None) => None,
            (Some(s), Some(_)) => {
                let mut logits = o.logits;
                let d = s.distribution(&mut logits, &self.history);
                Some(Guess {
                    token: d.sample(draw()),
                    conf: d.top_prob(),
                    q: Some(d),
                })
            }
        };
        self.forwards += 1;
        self.secs += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Takes the candidate as a draft, unless the chance that it stands falls below p-min
    /// or it would end generation (the verification decides those).
    fn take(&mut self) -> Option<Guess> {
        let g = self.next.as_ref()?;
        let chance = self.chance * g.conf;
        if self.plan.p_min.is_some_and(|p| chance < p as f64) || (self.plan.eos)(g.token) {
            return None;
        }
        self.chance = chance;
        let g = self.next.take()?;
        self.history.push(g.token);
        Some(g)
    }
}

async fn draft_and_verify(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    plan: &RoundPlan<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Round> {
    let mut dr = Drafter {
        plan,
        history: plan.history.to_vec(),
        chance: 1.0,
        next: None,
        forwards: 0,
        secs: 0.0,
    };
    let mut draft: Vec<Guess> = Vec::with_capacity(plan.k);
    // Pipelining needs a candidate after the last draft, and a verification that flies.
    let pipeline = if model.base_is_remote(sess) {
        plan.pipeline
    } else {
        0
    };
    // 1. Draft: `feed`, then each draft, through the shadow alone. The forward after the
    //    final draft only adds its shadow state for the verification (and, pipelining, the
    //    candidate to go on from).
    match &plan.ahead {
        Some(a) => {
            // The session holds `feed` (the first token made ahead) and the drafts after it.
            for g in &a.made[1..] {
                dr.history.push(g.token);
            }
            draft.extend(a.made[1..].iter().cloned());
            dr.next = a.next.clone();
            if draft.len() > plan.k {
                // More than this round wants: the rest goes.
                let cut = draft.len() - plan.k;
                dr.next = Some(draft[plan.k].clone());
                draft.truncate(plan.k);
                dr.history.truncate(dr.history.len() - cut);
                sess.truncate(sess.position() - cut);
            }
            for g in &draft {
                dr.chance *= g.conf;
            }
        }
        None => {
            let want = plan.k > 0 || pipeline > 0;
            dr.forward(gpu, model, sess, plan.feed, want, draw).await?;
        }
    }
    while draft.len() < plan.k {
        let Some(g) = dr.take() else { break };
        let token = g.token;
        draft.push(g);
        let want = draft.len() < plan.k || pipeline > 0;
        dr.forward(gpu, model, sess, &[token], want, draw).await?;
    }
    let n = draft.len();
    // 2. Verify: the base over the new positions in one pass, the last n + 1 rows read.
    let readout = match plan.sampling {
        None => Readout::ArgmaxRows(n + 1),
        Some(_) => Readout::LogitRows(n + 1),
    };
    let t1 = web_time::Instant::now();
    // Room after this round for work ahead, should every draft stand: tokens that may
    // still be decided and positions the session may still hold.
    let room = plan
        .left
        .saturating_sub(n + 1)
        .min(model.max_seq().saturating_sub(sess.position()));
    let depth = pipeline.min(room);
    let (o, made) = if depth > 0 && dr.next.is_some() {
        let mut f = model.send_pending(gpu, sess, readout)?;
        let landed = Cell::new(false);
        let fly = async {
            let h = model.fly(gpu, &mut f).await;
            landed.set(true);
            h
        };
        let ahead = draft_ahead(gpu, model, sess, &mut dr, depth, &landed, draw);
        let (h, made) = futures_util::future::join(fly, ahead).await;
        let o = model.land(gpu, sess, f, h).await?;
        (o, made?)
    } else {
        (model.escalate(gpu, sess, readout).await?, Vec::new())
    };
    let verify_secs = t1.elapsed().as_secs_f64();
    let (forwards, draft_secs) = (dr.forwards, dr.secs);
    let mode = o.mode.unwrap_or(Mode::Attached);
    // 3. Accept.
    let verdict = accept(plan, &draft, &dr.history, o, model.vocab_size(), draw);
    let mut tokens: Vec<u32> = draft[..verdict.accepted].iter().map(|g| g.token).collect();
    tokens.push(verdict.next);
    let guessed = verdict.accepted == n
        && mode == Mode::Attached
        && made.first().is_some_and(|g| g.token == verdict.next);
    Ok(Round {
        tokens,
        mode,
        drafted: n,
        accepted: verdict.accepted,
        forwards,
        draft_secs,
        verify_secs,
        ahead: guessed.then(|| Ahead {
            made,
            next: dr.next.take(),
        }),
    })
}

/// While the verification flies: the shadow's candidate after the last draft (the token the
/// verification picks when every draft stands and the shadow guessed right), then drafts
/// after it, until the verification lands or `depth` tokens are made. The candidate after
/// the last is left in `dr.next`.
async fn draft_ahead(
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
    dr: &mut Drafter<'_, '_>,
    depth: usize,
    landed: &Cell<bool>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Vec<Guess>> {
    // The next round's token is not a draft: its chance is not counted, but it must not end
    // generation.
    let Some(first) = dr.next.take().filter(|g| !(dr.plan.eos)(g.token)) else {
        return Ok(Vec::new());
    };
    let chance = dr.chance;
    dr.chance = 1.0;
    dr.history.push(first.token);
    let mut pushed = 1;
    let mut made = Vec::new();
    let mut guess = first;
    loop {
        // Let the verification's future run (and land) between forwards.
        YieldNow(false).await;
        // Sampling stays repeatable: its draws must not depend on when the answer lands.
        if landed.get() && dr.plan.sampling.is_none() {
            // `guess` is not in the session: it stays the candidate after the last made.
            dr.next = Some(guess);
            break;
        }
        dr.forward(gpu, model, sess, &[guess.token], true, draw)
            .await?;
        made.push(guess);
        if made.len() >= depth {
            break;
        }
        match dr.take() {
            Some(g) => {
                pushed += 1;
                guess = g;
            }
            None => break,
        }
    }
    // The next round starts its own chance from the drafts it keeps.
    dr.history.truncate(dr.history.len() - pushed);
    dr.chance = chance;
    Ok(made)
}

/// The acceptance rule over the verification's output `o`.
fn accept(
    plan: &RoundPlan<'_>,
    draft: &[Guess],
    history: &[u32],
    o: ForwardOutput,
    vocab: usize,
    draw: &mut dyn FnMut() -> f64,
) -> super::Verdict {
    let tokens: Vec<u32> = draft.iter().map(|g| g.token).collect();
    match plan.sampling {
        None => accept_greedy(&tokens, &o.tokens),
        Some(s) => {
            let before = plan.history.len();
            let p: Vec<Dist> = o
                .logits
                .chunks_exact(vocab)
                .enumerate()
                .map(|(j, row)| s.distribution(&mut row.to_vec(), &history[..before + j]))
                .collect();
            let q: Vec<Dist> = draft.iter().filter_map(|g| g.q.clone()).collect();
            accept_sampled(&tokens, &q, &p, draw)
        }
    }
}

/// Returns pending once, waking at once: lets the other futures of a join run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
