//! The plain strategy: one forward per token, attached or detached as the model is (or
//! detached after a backbone failure with fallback on).

use super::cursor::Cursor;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::{Session, ShadowModel};

/// One token per forward.
pub(super) async fn step(
    cx: &mut Cursor,
    gpu: &Gpu,
    model: &ShadowModel,
    sess: &mut Session,
) -> Result<()> {
    let readout = cx.readout(gpu, sess, false);
    let f = model.forward(gpu, sess, &cx.input, readout, false).await?;
    let tok = cx.pick(f.token, f.logits);
    cx.emit(tok, f.mode.unwrap_or(model.mode()));
    Ok(())
}
