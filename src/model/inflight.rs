//! Escalation in three parts, for a base on a backbone server: [`ShadowModel::send_pending`]
//! takes the deferred positions and the backbone session out of a [`Session`],
//! [`ShadowModel::fly`] runs the base pass on the server without the session, and
//! [`ShadowModel::land`] gives the backbone session back and reads out as
//! [`ShadowModel::escalate`] does. Between the first and the last, the session can go on
//! with shadow work (deferred forwards), which is how a speculative round drafts ahead while
//! its verification is in flight. The shadow never reads the base, so that work is the same
//! whether it runs before, during or after the pass.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step};
use crate::remote::client::RemoteState;

use super::forward::{Main, StepBuffers, Stepper};
use super::{ForwardOutput, Readout, Session, ShadowModel};

/// A base pass over a session's deferred positions, on its way to the backbone server.
pub struct InFlight {
    remote: RemoteState,
    stepped: Option<StepBuffers>,
    ids: Vec<u32>,
    s0: Vec<f32>,
    pos0: usize,
    rows: usize,
    readout: Readout,
}

impl ShadowModel {
    /// Whether `sess`'s base is a backbone server that still answers (no fallback taken):
    /// then its escalation can be split ([`ShadowModel::send_pending`]).
    pub fn base_is_remote(&self, sess: &Session) -> bool {
        self.remote.is_some() && sess.remote.is_some() && sess.fallback_error.is_none()
    }

    /// Takes the deferred positions, with the backbone session, out of `sess` for a pass that
    /// reads out `readout` ([`Readout::ArgmaxRows`] or [`Readout::LogitRows`]). The session
    /// stays deferred and holds the positions; it must not be truncated before
    /// [`ShadowModel::land`] gives the backbone session back.
    pub fn send_pending(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        readout: Readout,
    ) -> Result<InFlight> {
        if !self.base_is_remote(sess) {
            return Err(Error::InvalidRequest(
                "only a pass on a backbone server can fly without its session".into(),
            ));
        }
        let (m, rows) = self.pending_readout(gpu, sess, readout)?;
        let pos0 = sess.position() - m;
        let remote = sess.remote.take().expect("checked by base_is_remote");
        Ok(InFlight {
            remote,
            stepped: sess.stepped.take(),
            ids: sess.tokens[pos0..].to_vec(),
            s0: std::mem::take(&mut sess.pending_s0),
            pos0,
            rows,
            readout,
        })
    }

    /// The server's part of the pass (and, stepped, the injection and update between its
    /// layers): the final normed hidden rows it reads out.
    pub async fn fly(&self, gpu: &Gpu, f: &mut InFlight) -> Result<Vec<f32>> {
        let r = self.remote.as_ref().ok_or(Error::InvalidRequest(
            "the model has no backbone server".into(),
        ))?;
        match &r.adapter {
            Some(a) => {
                let mut st = Stepper {
                    gpu,
                    adapter: a,
                    hidden: self.hidden,
                    buf: &mut f.stepped,
                };
                r.client
                    .forward(&mut f.remote, f.pos0, &f.ids, &f.s0, f.rows, &mut st)
                    .await
            }
            None => {
                r.client
                    .forward(&mut f.remote, f.pos0, &f.ids, &f.s0, f.rows, &mut ())
                    .await
            }
        }
    }

    /// Gives the backbone session back to `sess` and reads out what the pass asked for, from
    /// the server's answer `h`. A backbone failure with fallback on reads out the shadow's
    /// logits instead (reported as detached), as [`ShadowModel::escalate`] does. Positions
    /// `sess` ran meanwhile stay deferred after the pass's.
    pub async fn land(
        &self,
        gpu: &Gpu,
        sess: &mut Session,
        f: InFlight,
        h: Result<Vec<f32>>,
    ) -> Result<ForwardOutput> {
        let (m, d) = (f.ids.len(), self.hidden);
        sess.remote = Some(f.remote);
        sess.stepped = f.stepped;
        let main = match h {
            Ok(h) => {
                if sess.remote_xn.len() < f.rows * d {
                    sess.remote_xn = gpu.zeros("remote hidden", f.rows * d);
                }
                gpu.write_f32(&sess.remote_xn, &h);
                Some(Main::Remote)
            }
            Err(e @ Error::Remote { .. }) if sess.fallback => {
                log::warn!("{e}; continuing detached");
                sess.fallback_error = Some(e.to_string());
                None
            }
            Err(e) => {
                // The positions are still to run: pending again, before any run meanwhile.
                let later = std::mem::take(&mut sess.pending_s0);
                sess.pending_s0 = f.s0;
                sess.pending_s0.extend(later);
                return Err(e);
            }
        };
        if main.is_none() {
            // The shadow head reads the pass's shadow states.
            self.grow(gpu, sess, m);
            gpu.write_f32(&sess.s0, &f.s0);
        }
        self.heads(gpu, sess, Step::new(gpu), main, m, f.rows, f.readout, false)
            .await
    }
}
