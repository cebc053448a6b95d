//! The speculative strategy: attached tokens come from speculative rounds
//! ([`crate::speculate::round`]), several per base pass, with the draft length fixed or
//! chosen by [`DraftLength`]. The prompt's pass is a round too: the shadow drafts right after
//! the prompt, and one base pass runs the prompt and verifies the drafts. A draft length of
//! 0, the last token of the budget, and every step after a backbone failure with fallback on
//! are plain steps. Against a backbone server each round drafts ahead while its
//! verification is in flight; a round that guessed right hands that work to the next.

use super::cursor::Cursor;
use super::{plain, Speculate};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::{Mode, Session, ShadowModel};
use crate::speculate::{round, Ahead, DraftLength, RoundPlan};

/// How the rounds of a speculative generation went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpeculationStats {
    /// Verification passes of the base (one round trip each against a backbone).
    pub rounds: usize,
    /// Draft tokens proposed, and how many of them stood.
    pub drafted: usize,
    pub accepted: usize,
    /// Tokens decided by plain steps (those `auto` chose not to draft, the budget's last).
    pub plain_steps: usize,
    /// Rounds that started from drafts made while the previous round's verification was in
    /// flight (against a backbone server), so that their verification went out at once.
    pub pipelined: usize,
}

impl SpeculationStats {
    /// The share of drafts that stood (0 when none was made).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

pub(super) struct Speculative {
    length: DraftLength,
    pub stats: SpeculationStats,
    /// Work the last round made ahead and its verification confirmed (in the session after
    /// the decided tokens).
    ahead: Option<Ahead>,
}

impl Speculative {
    /// Speculation with draft lengths `s`; `auto` starts from the costs an earlier
    /// generation measured, when given.
    pub fn new(s: Speculate, costs: Option<&DraftLength>) -> Self {
        Speculative {
            length: match (s, costs) {
                (Speculate::Draft(k), _) => DraftLength::fixed(k),
                (Speculate::Auto, Some(c)) if c.is_auto() => c.carried(),
                (Speculate::Auto, _) => DraftLength::auto(),
            },
            stats: SpeculationStats::default(),
            ahead: None,
        }
    }

    /// Forgets the work made ahead: the session holds only what was decided.
    pub fn drop_ahead(&mut self, sess: &mut Session) {
        if let Some(a) = self.ahead.take() {
            sess.truncate(sess.position() - a.len());
        }
    }

    /// The draft length's measurements, for a later generation.
    pub fn draft_length(&self) -> &DraftLength {
        &self.length
    }

    /// One round, or one plain step.
    pub async fn step(
        &mut self,
        cx: &mut Cursor,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<()> {
        // Drafts beyond what may still be decided (the round adds a token of its own), or
        // beyond the session's room, are never kept, so they are not made.
        let held = self.ahead.as_ref().map_or(0, Ahead::len);
        let room = cx.left().saturating_sub(1).min(
            model
                .max_seq()
                .saturating_sub(sess.position() - held + cx.input.len()),
        );
        let prompt = cx.input.len() > 1;
        if sess.fallback_error().is_some() || room == 0 {
            self.drop_ahead(sess);
            self.stats.plain_steps += 1;
            return plain::step(cx, gpu, model, sess).await;
        }
        let k = self.length.choose().min(room);
        if k == 0 {
            self.drop_ahead(sess);
            let t0 = web_time::Instant::now();
            plain::step(cx, gpu, model, sess).await?;
            if !prompt && cx.ready.back().is_some_and(|&(_, m)| m == Mode::Attached) {
                self.length.record_plain(t0.elapsed().as_secs_f64());
            }
            self.stats.plain_steps += 1;
            return Ok(());
        }
        let sampling = (!cx.opts.greedy()).then(|| cx.opts.sampling(0.0));
        let (eos, ignore_eos) = (&cx.eos, cx.opts.ignore_eos);
        self.stats.pipelined += self.ahead.is_some() as usize;
        let plan = RoundPlan {
            feed: &cx.input,
            k,
            p_min: self.length.p_min(),
            history: &cx.history,
            sampling,
            eos: &|t| !ignore_eos && eos.contains(&t),
            ahead: self.ahead.take(),
            pipeline: self.length.ahead(k),
            left: cx.left(),
        };
        let sampler = &mut cx.sampler;
        let r = round(gpu, model, sess, plan, &mut || sampler.draw()).await?;
        if prompt {
            // The prompt's rows weigh on its costs: only the acceptance counts.
            self.length.record_acceptance(r.drafted, r.accepted);
        } else {
            self.length.record_round(
                r.drafted,
                r.accepted,
                r.forwards,
                r.draft_secs,
                r.verify_secs,
            );
        }
        self.ahead = r.ahead;
        self.stats.rounds += 1;
        self.stats.drafted += r.drafted;
        self.stats.accepted += r.accepted;
        for t in r.tokens {
            cx.emit(t, r.mode);
        }
        if cx.stop.is_some() || cx.left() == 0 {
            self.drop_ahead(sess);
        }
        Ok(())
    }
}
