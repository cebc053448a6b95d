//! The forward pass of [`ShadowModel`]: the shadow backbone, then the base (local, remote
//! fused or remote stepped) with the adapter between its layers, then the heads and the
//! readout.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops;
use crate::remote::client::LocalAdapter;

use super::adapter::Adapter;
use super::{Mode, Session, ShadowModel};

/// Client-side activations of the stepped protocol.
pub(crate) struct StepBuffers {
    rows: usize,
    x: Tensor,
    s: Tensor,
}

/// Runs the injection and update between the server's layers (stepped protocol).
pub(super) struct Stepper<'a> {
    pub gpu: &'a Gpu,
    pub adapter: &'a Adapter,
    pub hidden: usize,
    pub buf: &'a mut Option<StepBuffers>,
}

impl Stepper<'_> {
    fn buffers(&mut self, m: usize) -> &StepBuffers {
        let (gpu, d) = (self.gpu, self.hidden);
        if self.buf.as_ref().is_none_or(|b| b.rows < m) {
            *self.buf = Some(StepBuffers {
                rows: m,
                x: gpu.zeros("stepped x", m * d),
                s: gpu.zeros("stepped s", m * d),
            });
        }
        // Just filled when absent.
        self.buf.as_ref().expect("stepped buffers")
    }
}

impl LocalAdapter for Stepper<'_> {
    async fn begin(&mut self, s0: &[f32], m: usize) -> Result<()> {
        let gpu = self.gpu;
        let b = self.buffers(m);
        gpu.write_f32(&b.s, s0);
        Ok(())
    }

    async fn between(&mut self, next: usize, h: &[f32], m: usize) -> Result<Vec<f32>> {
        let (gpu, adapter, d) = (self.gpu, self.adapter, self.hidden);
        if !adapter.acts_before(next) {
            return Ok(h.to_vec());
        }
        let b = self.buffers(m);
        gpu.write_f32(&b.x, h);
        let mut step = Step::new(gpu);
        adapter.between(&mut step, next, &b.x, &b.s, m);
        step.submit()?;
        gpu.read_f32(&b.x, 0, m * d).await
    }

    fn injects_first(&self) -> bool {
        self.adapter.injects(0)
    }
}

/// Where a forward's final normed base rows are.
#[derive(Clone, Copy)]
pub(super) enum Main {
    /// In the local base state, from this element offset.
    Local(usize),
    /// In the session's copy of the server's answer.
    Remote,
}

/// What a forward pass reads back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readout {
    /// Logits of every new position.
    AllLogits,
    /// Logits of the last position only.
    LastLogits,
    /// Only the argmax of the last position's logits (4 bytes read back).
    Argmax,
    /// The argmax of the last position's logits and its softmax probability (8 bytes read
    /// back): a draft, whose confidence decides whether drafting goes on.
    ArgmaxProb,
    /// Logits of the last n new positions (all of them when fewer): the verification of
    /// sampled drafts.
    LogitRows(usize),
    /// The argmax of each of the last n new positions' logits (4 bytes a row read back): the
    /// verification of greedy drafts.
    ArgmaxRows(usize),
    /// Only a token sampled from the last position's logits on the device (4 bytes read
    /// back; the repetition penalty covers the ids of [`Session::set_penalized`]). Settings
    /// with a top-k beyond [`crate::ops::TOP_K_MAX`] sample on the host after reading the row.
    Sample(crate::ops::Sampling),
}

impl Readout {
    /// Rows of logits this readout needs out of `m` new positions.
    pub(super) fn rows(self, m: usize) -> usize {
        match self {
            Readout::AllLogits => m,
            Readout::LogitRows(n) | Readout::ArgmaxRows(n) => n.clamp(1, m),
            _ => 1,
        }
    }
}

/// The result of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// Main logits (`[rows, vocab]`): base logits attached, shadow logits detached.
    pub logits: Vec<f32>,
    /// Shadow-head logits (`[rows, vocab]`), when asked for.
    pub shadow_logits: Vec<f32>,
    /// The token chosen for the last position, for [`Readout::Argmax`],
    /// [`Readout::ArgmaxProb`] and [`Readout::Sample`].
    pub token: Option<u32>,
    /// The softmax probability of `token`, for [`Readout::ArgmaxProb`].
    pub top_prob: Option<f32>,
    /// Each row's argmax, for [`Readout::ArgmaxRows`].
    pub tokens: Vec<u32>,
    /// Which model produced `logits`: attached, or detached (a detached model, or an
    /// attached one that fell back after its backbone failed).
    pub mode: Option<Mode>,
}

impl ShadowModel {
    /// Runs `ids` (new tokens, appended after the session's position) and reads back what
    /// `readout` asks for; `shadow_logits` also computes the shadow head's logits.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        ids: &[u32],
        readout: Readout,
        shadow_logits: bool,
    ) -> Result<ForwardOutput> {
        let m = ids.len();
        if m == 0 {
            return Err(Error::InvalidRequest("no tokens to run".into()));
        }
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= self.vocab {
                return Err(Error::TokenOutOfRange {
                    id,
                    position: i,
                    vocab_size: self.vocab,
                });
            }
        }
        if sess.position() + m > self.max_seq() {
            return Err(Error::InvalidRequest(format!(
                "sequence of {} tokens exceeds the session's maximum of {} (raise max_seq)",
                sess.position() + m,
                self.max_seq()
            )));
        }
        let rows = readout.rows(m);
        let v = self.vocab;
        if rows > self.max_logit_rows(gpu) {
            return Err(Error::InvalidRequest(format!(
                "{rows} rows of {v} logits exceed one storage binding; run at most {} tokens per call",
                self.max_logit_rows(gpu)
            )));
        }
        if !sess.deferred && sess.pending_rows() > 0 {
            // An attached forward after a deferred stretch: the base catches up first.
            self.catch_up(gpu, sess).await?;
        }
        self.grow(gpu, sess, m);
        gpu.write_u32(&sess.ids, ids);
        let pos0 = sess.position();
        let d = self.hidden;
        let mut step = Step::new(gpu);

        // 1. Shadow backbone -> s0 (projected to the base width when they differ).
        ops::embedding(&mut step, &sess.ids, &self.shadow_embed, &sess.shadow_x, m);
        for l in 0..self.shadow.num_layers() {
            self.shadow.layer(
                &mut step,
                l,
                &sess.shadow_x,
                m,
                pos0,
                &sess.shadow_cache,
                &sess.shadow_scratch,
            );
        }
        match &self.proj {
            Some(p) => {
                self.shadow
                    .final_norm(&mut step, &sess.shadow_x, &sess.shadow_h, m);
                ops::linear(&mut step, &sess.shadow_h, 0, m, p, &sess.s0, 0, d);
            }
            None => {
                self.shadow
                    .final_norm(&mut step, &sess.shadow_x, &sess.s0, m);
            }
        }
        if sess.deferred {
            // Detached for now; keep what the base needs to catch up.
            step.submit()?;
            let s0 = gpu.read_f32(&sess.s0, 0, m * d).await?;
            sess.pending_s0.extend_from_slice(&s0);
            step = Step::new(gpu);
            sess.tokens.extend_from_slice(ids);
            return self
                .heads(gpu, sess, step, None, m, rows, readout, shadow_logits)
                .await;
        }
        let main = self
            .run_base(gpu, sess, &mut step, ids, None, pos0, rows)
            .await?;
        sess.tokens.extend_from_slice(ids);
        self.heads(gpu, sess, step, main, m, rows, readout, shadow_logits)
            .await
    }

    /// Ends a deferred stretch (see [`Session::defer_base`]): runs the base over every
    /// deferred position in one pass and returns its logits for the last one, so the next
    /// token comes from the attached model. Later forwards run attached.
    pub async fn escalate(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        readout: Readout,
    ) -> Result<ForwardOutput> {
        if self.base.is_none() && self.remote.is_none() {
            return Err(Error::InvalidRequest(
                "escalation needs an attached model (a local or remote base)".into(),
            ));
        }
        let (m, rows) = self.pending_readout(gpu, sess, readout)?;
        sess.deferred = false;
        let (step, main) = self.run_pending(gpu, sess, rows).await?;
        self.heads(gpu, sess, step, main, m, rows, readout, false)
            .await
    }

    /// The deferred positions of `sess` and the rows of logits `readout` needs of them, or
    /// why they cannot be escalated (none, or more rows than one storage binding holds).
    pub(super) fn pending_readout(
        &self,
        gpu: &Gpu,
        sess: &Session,
        readout: Readout,
    ) -> Result<(usize, usize)> {
        let m = sess.pending_rows();
        if m == 0 {
            return Err(Error::InvalidRequest(
                "nothing to escalate: no deferred positions".into(),
            ));
        }
        let rows = readout.rows(m);
        if rows > self.max_logit_rows(gpu) {
            return Err(Error::InvalidRequest(format!(
                "{rows} rows of logits exceed one storage binding"
            )));
        }
        Ok((m, rows))
    }

    /// Runs the base over the deferred positions (an attached forward after a deferred
    /// stretch), without reading anything back.
    async fn catch_up(&self, gpu: &Gpu, sess: &mut Session) -> Result<()> {
        let (step, _) = self.run_pending(gpu, sess, 1).await?;
        step.submit()
    }

    /// Records (local) or requests (remote) the base pass over the deferred positions, whose
    /// ids are the session's last ones; they are no longer pending afterwards (still
    /// pending after an error).
    async fn run_pending<'g>(
        &self,
        gpu: &'g Gpu,
        sess: &mut Session,
        rows: usize,
    ) -> Result<(Step<'g>, Option<Main>)> {
        let s0 = sess.pending_s0.clone();
        let m = s0.len() / self.hidden;
        let pos0 = sess.position() - m;
        let ids = sess.tokens[pos0..].to_vec();
        self.grow(gpu, sess, m);
        gpu.write_u32(&sess.ids, &ids);
        gpu.write_f32(&sess.s0, &s0);
        let mut step = Step::new(gpu);
        let main = self
            .run_base(gpu, sess, &mut step, &ids, Some(s0), pos0, rows)
            .await?;
        sess.pending_s0.clear();
        Ok((step, main))
    }

    /// Step 2 of a forward: the base with injection before and update after every layer
    /// l >= 1, here or on the backbone server (s0 goes out, the final normed hidden rows
    /// come back). `sess.ids` / `sess.s0` hold the `m` rows; `s0_host` is their host copy
    /// when the caller has one. Returns where the normed rows are (`None`: detached,
    /// including after a backbone failure with fallback on).
    #[allow(clippy::too_many_arguments)]
    async fn run_base<'g>(
        &self,
        gpu: &'g Gpu,
        sess: &mut Session,
        step: &mut Step<'g>,
        ids: &[u32],
        s0_host: Option<Vec<f32>>,
        pos0: usize,
        rows: usize,
    ) -> Result<Option<Main>> {
        let (m, d) = (ids.len(), self.hidden);
        if let (Some(b), Some(st)) = (&self.base, &sess.base) {
            b.model
                .record(step, &b.adapter, st, &sess.ids, &sess.s0, m, pos0)?;
            return Ok(Some(Main::Local((m - rows) * d)));
        }
        let (Some(r), Some(_)) = (&self.remote, &sess.remote) else {
            return Ok(None);
        };
        if sess.fallback_error.is_some() {
            return Ok(None);
        }
        let s0_host = match s0_host {
            Some(v) => v,
            None => {
                std::mem::replace(step, Step::new(gpu)).submit()?;
                gpu.read_f32(&sess.s0, 0, m * d).await?
            }
        };
        let rs = sess.remote.as_mut().expect("checked above");
        let res = match &r.adapter {
            Some(a) => {
                let mut st = Stepper {
                    gpu,
                    adapter: a,
                    hidden: d,
                    buf: &mut sess.stepped,
                };
                r.client
                    .forward(rs, pos0, ids, &s0_host, rows, &mut st)
                    .await
            }
            None => {
                r.client
                    .forward(rs, pos0, ids, &s0_host, rows, &mut ())
                    .await
            }
        };
        match res {
            Ok(h) => {
                if sess.remote_xn.len() < rows * d {
                    sess.remote_xn = gpu.zeros("remote hidden", rows * d);
                }
                gpu.write_f32(&sess.remote_xn, &h);
                Ok(Some(Main::Remote))
            }
            Err(e @ Error::Remote { .. }) if sess.fallback => {
                log::warn!("{e}; continuing detached");
                sess.fallback_error = Some(e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Step 3: heads and readout.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn heads(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        mut step: Step<'_>,
        main: Option<Main>,
        m: usize,
        rows: usize,
        readout: Readout,
        shadow_logits: bool,
    ) -> Result<ForwardOutput> {
        let (v, d) = (self.vocab, self.hidden);
        let first = m - rows;
        if rows > sess.logit_rows {
            sess.logits = gpu.zeros("logits", rows * v);
            sess.shadow_logits = gpu.zeros("shadow logits", rows * v);
            sess.logit_rows = rows;
        }
        if shadow_logits || main.is_none() {
            ops::linear(
                &mut step,
                &sess.s0,
                first * d,
                rows,
                &self.shadow_head,
                &sess.shadow_logits,
                0,
                v,
            );
        }
        let base_rows = match main {
            Some(Main::Local(off)) => match (&self.base, &sess.base) {
                (Some(b), Some(st)) => Some((&st.xn, off, &b.head)),
                _ => None,
            },
            Some(Main::Remote) => self.remote.as_ref().map(|r| (&sess.remote_xn, 0, &r.head)),
            None => None,
        };
        if let Some((h, off, head)) = base_rows {
            ops::linear(&mut step, h, off, rows, head, &sess.logits, 0, v);
        }
        let out_logits = if main.is_some() {
            &sess.logits
        } else {
            &sess.shadow_logits
        };
        let last = (rows - 1) * v;
        if 2 * rows > sess.sampling.out.len() {
            sess.sampling.out = gpu.zeros("tokens", 2 * rows);
        }
        match readout {
            Readout::Argmax | Readout::ArgmaxProb => {
                let prob = readout == Readout::ArgmaxProb;
                ops::argmax(&mut step, out_logits, last, v, &sess.sampling.out, prob)
            }
            Readout::ArgmaxRows(_) => {
                ops::argmax_rows(&mut step, out_logits, 0, v, rows, &sess.sampling.out, false)
            }
            Readout::Sample(s) if ops::sample_on_device(&s) => {
                ops::sample(&mut step, out_logits, last, v, &s, &sess.sampling)
            }
            _ => {}
        }
        step.submit()?;
        let mut out = ForwardOutput {
            mode: Some(if main.is_some() {
                Mode::Attached
            } else {
                Mode::Detached
            }),
            ..Default::default()
        };
        match readout {
            Readout::Argmax => {
                out.token = Some(gpu.read_u32(&sess.sampling.out, 0, 1).await?[0]);
            }
            Readout::ArgmaxProb => {
                let r = gpu.read_u32(&sess.sampling.out, 0, 2).await?;
                out.token = Some(r[0]);
                out.top_prob = Some(f32::from_bits(r[1]));
            }
            Readout::ArgmaxRows(_) => {
                let r = gpu.read_u32(&sess.sampling.out, 0, rows).await?;
                out.token = r.last().copied();
                out.tokens = r;
            }
            Readout::Sample(s) if ops::sample_on_device(&s) => {
                let t = gpu.read_u32(&sess.sampling.out, 0, 1).await?[0];
                out.token = Some(if t == ops::UNDECIDED {
                    // Beyond the device candidates: the host finishes with the same draw on
                    // the row (already penalised on the device).
                    let mut row = gpu.read_f32(out_logits, last, v).await?;
                    let s = crate::ops::Sampling {
                        repetition_penalty: 1.0,
                        ..s
                    };
                    s.pick(&mut row, &[])
                } else {
                    t
                });
            }
            Readout::Sample(s) => {
                let mut row = gpu.read_f32(out_logits, last, v).await?;
                out.token = Some(s.pick(&mut row, sess.sampling.penalized()));
            }
            _ => out.logits = gpu.read_f32(out_logits, 0, rows * v).await?,
        }
        if shadow_logits {
            out.shadow_logits = gpu.read_f32(&sess.shadow_logits, 0, rows * v).await?;
        }
        Ok(out)
    }
}
