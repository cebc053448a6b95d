//! [`TokenStream`]: a generation advanced one token at a time, by one of the strategies
//! (plain, escalation, speculative), with the stopping rules they share.

use super::cursor::Cursor;
use super::escalation::Escalation;
use super::speculative::{SpeculationStats, Speculative};
use super::{plain, GenerateOptions, StopReason};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Mode, Session, ShadowModel};
use crate::speculate::DraftLength;

/// How the next tokens are produced.
enum Strategy {
    /// One forward per token.
    Plain,
    /// Detached until the marker or low confidence, then the attached strategy.
    Escalation(Escalation),
    /// Speculative rounds.
    Speculative(Speculative),
}

impl Strategy {
    /// The strategy for attached tokens.
    fn attached(opts: &GenerateOptions) -> Self {
        match opts.speculate {
            Some(s) => Strategy::Speculative(Speculative::new(s, opts.draft_costs.as_ref())),
            None => Strategy::Plain,
        }
    }
}

/// A generation in progress, advanced one token at a time by [`TokenStream::next`]: the
/// first call runs the part of the prompt the session does not hold yet (batched prefill),
/// later calls feed back the previous token. Driving the loop from outside lets callers
/// stream, abort between tokens, or interleave work.
pub struct TokenStream {
    cx: Cursor,
    cached: usize,
    strategy: Strategy,
    last_mode: Option<Mode>,
}

impl TokenStream {
    /// Starts a generation after `prompt`, the whole sequence so far (for a chat, the whole
    /// conversation rendered again). The session keeps the longest common prefix of what it
    /// holds and `prompt` (see [`Session::reuse`]), so only the rest is run; the result is
    /// that of a fresh session on `prompt`. Options are validated before the session is
    /// touched; nothing runs until `next`.
    pub fn new(
        model: &ShadowModel,
        sess: &mut Session,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        let attached = model.mode() == Mode::Attached;
        if opts.escalate.is_some() && !attached {
            return Err(Error::InvalidRequest(
                "escalation needs an attached model (a local or remote base)".into(),
            ));
        }
        if opts.speculate.is_some() && !attached {
            return Err(Error::InvalidRequest(
                "speculation needs an attached model (a local or remote base) to verify the drafts"
                    .into(),
            ));
        }
        let mut eos: Vec<u32> = model.eos_ids().to_vec();
        eos.extend(&opts.eos_ids);
        // Escalation and speculation defer the base while they draft; otherwise a deferred
        // stretch left by an earlier generation is caught up by the first forward.
        sess.defer_base(false);
        let cached = sess.reuse(prompt);
        let strategy = match &opts.escalate {
            Some(e) => Strategy::Escalation(Escalation::new(e.clone())),
            None => Strategy::attached(opts),
        };
        Ok(TokenStream {
            cx: Cursor::new(opts, eos, prompt, cached),
            cached,
            strategy,
            last_mode: None,
        })
    }

    /// Prompt positions reused from the session's caches.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Why the stream ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.cx.stop
    }

    /// Which model produced the last token.
    pub fn last_mode(&self) -> Option<Mode> {
        self.last_mode
    }

    /// How speculation went so far (`None` without speculation, or before an escalation
    /// hands over to it).
    pub fn speculation(&self) -> Option<SpeculationStats> {
        match &self.strategy {
            Strategy::Speculative(s) => Some(s.stats),
            _ => None,
        }
    }

    /// What `auto` measured so far (costs of drafts and verifications), for the next
    /// generation over the same link ([`GenerateOptions::draft_costs`]).
    pub fn draft_length(&self) -> Option<DraftLength> {
        match &self.strategy {
            Strategy::Speculative(s) if s.draft_length().is_auto() => {
                Some(s.draft_length().carried())
            }
            _ => None,
        }
    }

    /// Marks the stream as stopped by the caller (e.g. a stop string or an abort). Tokens
    /// decided and not handed out yet (the rest of a speculative round) are dropped, and the
    /// session forgets them at the next call to [`TokenStream::next`].
    pub fn cancel(&mut self) {
        // An EOS decided in the same round but not handed out yet is cancelled too.
        if self.cx.stop.is_none() || !self.cx.ready.is_empty() {
            self.cx.stop = Some(StopReason::Callback);
        }
    }

    /// Produces the next token, or `None` when the stream has ended (EOS, length, cancel).
    pub async fn next(
        &mut self,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<Option<u32>> {
        loop {
            if self.cx.stop.is_some() {
                if let Strategy::Speculative(s) = &mut self.strategy {
                    // A stop inside work made ahead: the session keeps what was decided.
                    s.drop_ahead(sess);
                }
            }
            if self.cx.stop == Some(StopReason::Callback) && !self.cx.ready.is_empty() {
                let n = self.cx.history.len() - self.cx.ready.len();
                self.cx.history.truncate(n);
                self.cx.ready.clear();
                sess.truncate(n - 1);
            }
            if let Some((t, m)) = self.cx.ready.pop_front() {
                self.last_mode = Some(m);
                return Ok(Some(t));
            }
            if self.cx.stop.is_some() {
                return Ok(None);
            }
            if self.cx.left() == 0 {
                match &mut self.strategy {
                    Strategy::Escalation(e) if e.holds() => e.flush(&mut self.cx),
                    _ => self.cx.stop = Some(StopReason::Length),
                }
                continue;
            }
            let cx = &mut self.cx;
            match &mut self.strategy {
                Strategy::Plain => plain::step(cx, gpu, model, sess).await?,
                Strategy::Speculative(s) => s.step(cx, gpu, model, sess).await?,
                Strategy::Escalation(e) => {
                    if e.step(cx, gpu, model, sess).await? {
                        self.strategy = Strategy::attached(&self.cx.opts);
                        if let Strategy::Speculative(s) = &mut self.strategy {
                            // The escalation's token counts as the attached strategy's first.
                            s.stats.plain_steps += 1;
                        }
                    }
                }
            }
        }
    }
}
