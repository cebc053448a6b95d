//! The escalation strategy: detached tokens (the base deferred) until the detached model
//! emits the marker or is unsure, then one base pass over every deferred position gives the
//! attached token in place of the marker or the unsure token, and the attached strategy
//! takes over (see [`super::Escalate`]).

use super::cursor::Cursor;
use super::{top_prob, Escalate};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::{ForwardOutput, Mode, Session, ShadowModel};

pub(super) struct Escalation {
    esc: Escalate,
    /// Detached tokens that match the start of the marker, held back.
    held: Vec<u32>,
}

impl Escalation {
    pub fn new(esc: Escalate) -> Self {
        Escalation {
            esc,
            held: Vec::new(),
        }
    }

    /// One detached token; returns `true` once escalated (the attached token decided).
    pub async fn step(
        &mut self,
        cx: &mut Cursor,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<bool> {
        if !sess.is_deferred() {
            sess.defer_base(true);
        }
        let min_prob = self.esc.min_prob;
        let readout = cx.readout(gpu, sess, min_prob.is_some());
        let f = model.forward(gpu, sess, &cx.input, readout, false).await?;
        let unsure = min_prob.is_some_and(|p| top_prob(&f.logits) < p);
        if f.mode == Some(Mode::Detached) && unsure {
            // Whatever was held is ordinary detached output before the attached token.
            self.flush(cx);
            self.escalate(cx, gpu, model, sess).await?;
            return Ok(true);
        }
        let tok = cx.pick(f.token, f.logits);
        let marker = self.esc.marker_ids.as_slice();
        if marker.is_empty() || f.mode != Some(Mode::Detached) {
            cx.emit(tok, f.mode.unwrap_or(model.mode()));
            return Ok(false);
        }
        self.held.push(tok);
        if self.held == marker {
            // Drop the marker and rewind past the marker tokens already fed; the attached
            // model answers at the marker's first position.
            let n = self.held.len();
            sess.truncate(sess.position() - (n - 1));
            cx.history.truncate(cx.history.len() - (n - 1));
            cx.produced -= n - 1;
            self.held.clear();
            self.escalate(cx, gpu, model, sess).await?;
            return Ok(true);
        }
        cx.advance(tok);
        if !marker.starts_with(&self.held) {
            // Hand out everything that can no longer start the marker.
            let cut = (1..=self.held.len())
                .find(|&i| marker.starts_with(&self.held[i..]))
                .unwrap_or(self.held.len());
            cx.ready
                .extend(self.held.drain(..cut).map(|t| (t, Mode::Detached)));
            if self.held.is_empty() && cx.is_eos(tok) {
                cx.stop = Some(super::StopReason::Eos);
            }
        }
        Ok(false)
    }

    /// Whether detached tokens are held back (a partial marker).
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Out of room: a partial marker is ordinary output.
    pub fn flush(&mut self, cx: &mut Cursor) {
        cx.ready
            .extend(self.held.drain(..).map(|t| (t, Mode::Detached)));
    }

    /// Ends the deferred stretch: the base catches up and gives the token in place of the
    /// detached one for the same position.
    async fn escalate(
        &mut self,
        cx: &mut Cursor,
        gpu: &Gpu,
        model: &ShadowModel,
        sess: &mut Session,
    ) -> Result<()> {
        let readout = cx.readout(gpu, sess, false);
        let f: ForwardOutput = model.escalate(gpu, sess, readout).await?;
        let tok = cx.pick(f.token, f.logits);
        cx.emit(tok, f.mode.unwrap_or(model.mode()));
        Ok(())
    }
}
