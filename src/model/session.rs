//! [`Session`]: one conversation's state (KV caches, the token ids they hold, activation
//! buffers, the remote session and the deferred base).

use crate::gpu::{Gpu, Tensor};
use crate::ops;
use crate::remote::client::RemoteState;

use super::base::BaseState;
use super::decoder::{KvCache, Scratch};
use super::forward::StepBuffers;
use super::ShadowModel;

/// Per-conversation state: KV caches, the token ids they hold, and activation buffers.
///
/// Invariants: the shadow cache holds exactly `tokens` (position = `tokens.len()`). The base
/// (local, or the server's session) holds the first `tokens.len() - deferred rows` of them,
/// except after a backbone failure with fallback on, where the server holds only what it
/// acknowledged ([`RemoteState::held`]). A cache truncated to position p is exactly the
/// cache of the first p tokens, which is what makes reuse and rollback exact.
pub struct Session {
    pub(super) tokens: Vec<u32>,
    pub(super) rows: usize,
    pub(super) ids: Tensor,
    pub(super) shadow_cache: KvCache,
    pub(super) shadow_x: Tensor,
    pub(super) shadow_h: Tensor,
    pub(super) shadow_scratch: Scratch,
    pub(super) s0: Tensor,
    pub(super) base: Option<BaseState>,
    pub(super) logits: Tensor,
    pub(super) shadow_logits: Tensor,
    pub(super) logit_rows: usize,
    pub(super) sampling: ops::SampleBuffers,
    pub(super) remote: Option<RemoteState>,
    pub(super) remote_xn: Tensor,
    pub(super) stepped: Option<StepBuffers>,
    pub(super) fallback: bool,
    pub(super) fallback_error: Option<String>,
    /// Whether forwards run detached and leave the base behind (see [`Session::defer_base`]).
    pub(super) deferred: bool,
    /// The shadow states `[k, hidden]` of the last k positions, which the base has not run
    /// yet (their ids are the last k of `tokens`).
    pub(super) pending_s0: Vec<f32>,
    /// The base width (of `s0` rows).
    pub(super) hidden: usize,
    /// Whether the model has a base (local or remote).
    pub(super) has_base: bool,
}

impl Session {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    /// The token ids the KV caches hold, one per position.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the conversation (the caches are overwritten from position 0; a remote
    /// session is rewound on the server by the next forward).
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Forgets the tokens from position `pos` on (no-op when `pos` is not before the current
    /// position): the next forward continues from `pos`. A remote session is rewound by the
    /// next request, which names the position.
    pub fn truncate(&mut self, pos: usize) {
        if pos >= self.tokens.len() {
            return;
        }
        let start = self.tokens.len() - self.pending_rows();
        let keep = pos.saturating_sub(start);
        self.pending_s0.truncate(keep * self.hidden);
        self.tokens.truncate(pos);
        if let Some(r) = &mut self.remote {
            r.rewind(pos);
        }
    }

    /// Prepares a generation over `prompt`, the whole sequence (a conversation rendered
    /// again at every turn): keeps the longest common prefix of the ids the caches hold and
    /// `prompt`, as far as the base can follow it ([`Session::base_reach`]), and forgets the
    /// rest. The prompt's last token is always left to run, since its logits give the next
    /// token. Returns the number of positions kept, so `prompt[kept..]` is what remains to
    /// run. A backbone that failed in an earlier generation (fallback on) is tried again.
    pub fn reuse(&mut self, prompt: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let kept = common
            .min(prompt.len().saturating_sub(1))
            .min(self.base_reach());
        self.truncate(kept);
        self.fallback_error = None;
        kept
    }

    /// How far the base can follow this session without recomputing the shadow: every
    /// position it holds, plus the deferred ones it can catch up on (their shadow states are
    /// kept). Less than the position only after a backbone failure with fallback on: the
    /// positions run detached since then kept no shadow state for the base.
    pub fn base_reach(&self) -> usize {
        let pos = self.tokens.len();
        let Some(r) = &self.remote else {
            return pos;
        };
        let held = r.held().min(pos);
        if held >= pos - self.pending_rows() {
            pos
        } else {
            held
        }
    }

    /// Positions run detached that the base has not run yet (see [`Session::defer_base`]).
    pub fn pending_rows(&self) -> usize {
        self.pending_s0.len() / self.hidden.max(1)
    }

    /// Defers the base: forwards run detached (shadow logits) and keep each position's
    /// shadow state, so that [`ShadowModel::escalate`] can later bring the base up to date in
    /// one pass and continue attached. Used to start detached and escalate on a marker or
    /// low confidence. Turned off with positions pending, the next forward runs the base over
    /// them first, so an attached generation can continue a deferred one.
    pub fn defer_base(&mut self, on: bool) {
        self.deferred = on && self.has_base;
    }

    /// Whether the base is deferred (see [`Session::defer_base`]).
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// With a remote backbone: when the server fails (unreachable, killed, too slow, garbage),
    /// carry on detached (shadow logits) instead of returning the error. Each forward says
    /// which mode produced its logits.
    pub fn set_fallback_detached(&mut self, on: bool) {
        self.fallback = on;
    }

    /// The backbone failure that switched this session to detached, if any.
    pub fn fallback_error(&self) -> Option<&str> {
        self.fallback_error.as_deref()
    }

    /// Sets the ids the repetition penalty of [`super::Readout::Sample`] applies to: each
    /// distinct id of `history` once (Hugging Face semantics).
    pub fn set_penalized(&mut self, gpu: &Gpu, history: &[u32]) {
        self.sampling.set_penalized(gpu, history);
    }

    /// Round trips and bytes exchanged with the backbone server so far (remote mode).
    pub fn remote_traffic(&self) -> Option<(u64, u64, u64)> {
        self.remote
            .as_ref()
            .map(|r| (r.round_trips, r.bytes_sent, r.bytes_received))
    }
}

impl ShadowModel {
    /// A new session (KV caches for [`ShadowModel::max_seq`] positions).
    pub fn new_session(&self, gpu: &Gpu) -> Session {
        let rows = 1;
        Session {
            tokens: Vec::new(),
            rows,
            ids: gpu.zeros("ids", rows),
            shadow_cache: self.shadow.new_cache(gpu),
            shadow_x: gpu.zeros("shadow x", rows * self.shadow.cfg.hidden),
            shadow_h: gpu.zeros("shadow h", rows * self.shadow.cfg.hidden),
            shadow_scratch: self.shadow.new_scratch(gpu, rows),
            s0: gpu.zeros("s0", rows * self.hidden),
            base: self
                .base
                .as_ref()
                .map(|b| b.model.new_state(gpu, Some(&b.adapter), rows)),
            logits: gpu.zeros("logits", self.vocab),
            shadow_logits: gpu.zeros("shadow logits", self.vocab),
            logit_rows: 1,
            sampling: ops::SampleBuffers::new(gpu, self.vocab),
            remote: self.remote.as_ref().map(|_| RemoteState::default()),
            remote_xn: gpu.zeros("remote hidden", self.hidden),
            stepped: None,
            fallback: false,
            fallback_error: None,
            deferred: false,
            pending_s0: Vec::new(),
            hidden: self.hidden,
            has_base: self.base.is_some() || self.remote.is_some(),
        }
    }

    /// Ends the conversation: forgets it ([`Session::reset`]) and ends its session on the
    /// backbone server, if it has one, so the server frees that KV cache now rather than at
    /// its expiry (best effort: a server that is gone is not an error). The session can
    /// start a new conversation; its next forward opens a new remote session.
    pub async fn end_conversation(&self, s: &mut Session) {
        s.reset();
        if let (Some(r), Some(st)) = (&self.remote, &mut s.remote) {
            r.client.close(st).await;
        }
    }

    pub(super) fn grow(&self, gpu: &Gpu, s: &mut Session, rows: usize) {
        if rows <= s.rows {
            return;
        }
        let (ds, d) = (self.shadow.cfg.hidden, self.hidden);
        s.rows = rows;
        s.ids = gpu.zeros("ids", rows);
        s.shadow_x = gpu.zeros("shadow x", rows * ds);
        s.shadow_h = gpu.zeros("shadow h", rows * ds);
        s.shadow_scratch = self.shadow.new_scratch(gpu, rows);
        s.s0 = gpu.zeros("s0", rows * d);
        if let (Some(b), Some(st)) = (&self.base, &mut s.base) {
            b.model.grow(gpu, Some(&b.adapter), st, rows);
        }
    }
}
