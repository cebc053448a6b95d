//! One base pass over the rows of many sessions: the backbone server's continuous batching.
//!
//! Each session brings rows at its own positions, with its own KV blocks in a shared
//! [`KvPool`]: fused rows (tokens and shadow state, through every layer with the session's
//! adapter), or a stepped session's rows for one layer (from token embeddings or from the
//! client's injected hidden state), or a stepped pass start that only embeds. Every layer
//! runs once over all the rows that need it; attention reads each row's own session through
//! its block list. Rows of different sessions meet only in the order of float sums inside
//! the shared products, so each session's result is its single-session result within float
//! tolerance.
//!
//! Row layout of a pass (F fused rows, S stepped rows):
//! ```text
//! x  [F fused | n_l stepped rows of layer l]   the layer input, per layer
//! s  [F]                                       fused rows' shadow state
//! sx [S]  stepped inputs: embed-only, layer 0 from ids, layer 0, layer 1, ... (by layer)
//! out [F | S]                                  what each row answers
//! ```
//! Fused rows are ordered by adapter, so each adapter's injection and update run once per
//! layer over its contiguous rows.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops::{self, KvLayout};

use super::adapter::Adapter;
use super::base::BaseModel;
use super::decoder::Scratch;
use super::kv_pool::KvPool;

/// What one session runs in a pass.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Fused: tokens and their shadow state rows `[m, hidden]`, through every layer with the
    /// adapter between them; answers the final normed rows.
    Fused {
        adapter: &'a Adapter,
        ids: &'a [u32],
        s0: &'a [f32],
    },
    /// Stepped, layer 0 from the embeddings of `ids`; answers the layer's output.
    FirstLayer { ids: &'a [u32] },
    /// Stepped, layer `layer` from the client's rows `[m, hidden]`; answers the layer's
    /// output, or after the last layer the final normed rows.
    Layer { layer: usize, hidden: &'a [f32] },
    /// Stepped pass start that only embeds `ids` (the client injects before layer 0).
    Embed { ids: &'a [u32] },
}

/// One session's rows in a pass: `input` at positions `pos..pos + m`, whose keys and values
/// live in `blocks` (the session's block list, covering at least `pos + m` positions).
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub input: Input<'a>,
    pub pos: usize,
    pub blocks: &'a [u32],
}

impl Rows<'_> {
    /// Rows of this input (`hidden` is the model width).
    pub fn len(&self, hidden: usize) -> usize {
        match self.input {
            Input::Fused { ids, .. } | Input::FirstLayer { ids } | Input::Embed { ids } => {
                ids.len()
            }
            Input::Layer { hidden: h, .. } => h.len() / hidden.max(1),
        }
    }

    /// Whether it has no rows.
    pub fn is_empty(&self, hidden: usize) -> bool {
        self.len(hidden) == 0
    }

    /// The layer a stepped input runs (`None`: fused, or embed only).
    fn layer(&self) -> Option<usize> {
        match self.input {
            Input::FirstLayer { .. } => Some(0),
            Input::Layer { layer, .. } => Some(layer),
            _ => None,
        }
    }

    /// Where a stepped input goes in `sx`: embed-only first, then by layer (layer 0 from
    /// ids before layer 0 from hidden rows), so the rows that embed come first and each
    /// layer's rows are contiguous.
    fn stepped_order(&self) -> usize {
        match self.input {
            Input::Embed { .. } => 0,
            Input::FirstLayer { .. } => 1,
            Input::Layer { layer, .. } => 2 + layer,
            Input::Fused { .. } => usize::MAX,
        }
    }

    fn ids(&self) -> Option<&[u32]> {
        match self.input {
            Input::Fused { ids, .. } | Input::FirstLayer { ids } | Input::Embed { ids } => {
                Some(ids)
            }
            Input::Layer { .. } => None,
        }
    }
}

/// Device buffers for passes of up to `rows` rows.
pub struct Batch {
    rows: usize,
    ids: Tensor,
    x: Tensor,
    s: Tensor,
    sx: Tensor,
    out: Tensor,
    table: Tensor,
    scratch: Scratch,
}

/// Where each input's rows sit in a pass, and the table the kernels read.
struct Plan<'a> {
    /// Fused rows, stepped rows, embedding rows (embed-only and layer 0 from ids).
    fused: usize,
    stepped: usize,
    embed: usize,
    /// Rows of `sx` that only embed.
    embed_only: usize,
    /// Each input's first row: in `x`/`s`/`out` for fused inputs, in `sx` for stepped.
    row0: Vec<usize>,
    /// (adapter, first row, rows) of each run of fused rows sharing an adapter.
    groups: Vec<(&'a Adapter, usize, usize)>,
    /// Per layer: the first `sx` row of its stepped rows and their count.
    layer_rows: Vec<(usize, usize)>,
    /// Per layer: where its rows' entries start in `table`.
    segments: Vec<usize>,
    table: Vec<u32>,
    ids: Vec<u32>,
    s0: Vec<f32>,
    sx: Vec<f32>,
    has_hidden: bool,
}

impl Batch {
    /// Buffers for passes of up to `rows` rows of `base`.
    pub fn new(gpu: &Gpu, base: &BaseModel, rows: usize) -> Self {
        let rows = rows.max(1);
        let d = base.cfg().hidden;
        Batch {
            rows,
            ids: gpu.zeros("batch ids", rows),
            x: gpu.zeros("batch x", rows * d),
            s: gpu.zeros("batch s", rows * d),
            sx: gpu.zeros("batch stepped x", rows * d),
            out: gpu.zeros("batch out", rows * d),
            table: gpu.zeros("batch table", 1024),
            scratch: base.decoder.new_scratch(gpu, rows),
        }
    }

    /// The most rows one pass takes.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Checks `work` and lays it out.
    fn plan<'a>(&self, base: &BaseModel, pool: &KvPool, work: &[Rows<'a>]) -> Result<Plan<'a>> {
        let (d, layers) = (base.cfg().hidden, base.decoder.num_layers());
        let max_seq = base.decoder.max_seq();
        let bad = |i: usize, what: String| {
            Err(Error::InvalidRequest(format!("batch row set {i}: {what}")))
        };
        let mut total = 0;
        for (i, r) in work.iter().enumerate() {
            let m = r.len(d);
            if m == 0 {
                return bad(i, "no rows".into());
            }
            if let Input::Layer { hidden, layer } = r.input {
                if hidden.len() != m * d {
                    return bad(
                        i,
                        format!("{} values are not whole rows of {d}", hidden.len()),
                    );
                }
                if layer >= layers {
                    return bad(i, format!("layer {layer}: the base has {layers} layers"));
                }
            }
            if let Input::Fused { s0, .. } = r.input {
                if s0.len() != m * d {
                    return bad(
                        i,
                        format!("{} shadow-state values for {m} rows of {d}", s0.len()),
                    );
                }
            }
            if r.pos + m > max_seq {
                return bad(i, format!("positions up to {} exceed {max_seq}", r.pos + m));
            }
            if r.blocks.len() * pool.block() < r.pos + m {
                return bad(
                    i,
                    format!(
                        "{} blocks do not hold {} positions",
                        r.blocks.len(),
                        r.pos + m
                    ),
                );
            }
            if r.blocks.iter().any(|&b| b as usize >= pool.blocks()) {
                return bad(i, "a block id is outside the pool".into());
            }
            total += m;
        }
        if total > self.rows {
            return Err(Error::InvalidRequest(format!(
                "a pass of {total} rows exceeds the batch's {}",
                self.rows
            )));
        }
        let adapter_key = |r: &Rows| match r.input {
            Input::Fused { adapter, .. } => adapter as *const Adapter as usize,
            _ => 0,
        };
        let mut fused: Vec<usize> = (0..work.len())
            .filter(|&i| matches!(work[i].input, Input::Fused { .. }))
            .collect();
        fused.sort_by_key(|&i| adapter_key(&work[i]));
        let mut stepped: Vec<usize> = (0..work.len())
            .filter(|&i| !matches!(work[i].input, Input::Fused { .. }))
            .collect();
        stepped.sort_by_key(|&i| work[i].stepped_order());

        let mut p = Plan {
            fused: 0,
            stepped: 0,
            embed: 0,
            embed_only: 0,
            row0: vec![0; work.len()],
            groups: Vec::new(),
            layer_rows: vec![(0, 0); layers],
            segments: Vec::with_capacity(layers),
            table: Vec::new(),
            ids: Vec::new(),
            s0: Vec::new(),
            sx: Vec::new(),
            has_hidden: false,
        };
        // Block lists first; each input's list starts at `list[i]`.
        let mut list = vec![0; work.len()];
        for (i, r) in work.iter().enumerate() {
            list[i] = p.table.len() as u32;
            let need = (r.pos + r.len(d)).div_ceil(pool.block());
            p.table.extend_from_slice(&r.blocks[..need]);
        }
        for &i in &fused {
            let r = &work[i];
            let m = r.len(d);
            p.row0[i] = p.fused;
            if let Input::Fused { adapter, ids, s0 } = r.input {
                match p.groups.last_mut() {
                    Some(g) if std::ptr::eq(g.0, adapter) => g.2 += m,
                    _ => p.groups.push((adapter, p.fused, m)),
                }
                p.ids.extend_from_slice(ids);
                p.s0.extend_from_slice(s0);
            }
            p.fused += m;
        }
        for &i in &stepped {
            let r = &work[i];
            let m = r.len(d);
            p.row0[i] = p.stepped;
            match r.input {
                Input::Layer { hidden, .. } => {
                    p.sx.extend_from_slice(hidden);
                    p.has_hidden = true;
                }
                _ => {
                    p.sx.resize(p.sx.len() + m * d, 0.0);
                    p.ids.extend_from_slice(r.ids().unwrap_or_default());
                    p.embed += m;
                    if matches!(r.input, Input::Embed { .. }) {
                        p.embed_only += m;
                    }
                }
            }
            if let Some(l) = r.layer() {
                let lr = &mut p.layer_rows[l];
                if lr.1 == 0 {
                    lr.0 = p.stepped;
                }
                lr.1 += m;
            }
            p.stepped += m;
        }
        for l in 0..layers {
            p.segments.push(p.table.len());
            let rows_of = |i: usize| (0..work[i].len(d)).map(move |k| (i, k));
            let layer_inputs = stepped.iter().filter(|&&i| work[i].layer() == Some(l));
            for (i, k) in fused.iter().chain(layer_inputs).flat_map(|&i| rows_of(i)) {
                p.table.push((work[i].pos + k) as u32);
                p.table.push(list[i]);
            }
        }
        Ok(p)
    }

    /// Runs one pass of `work` on `base`, keys and values in `pool`, and returns each input's
    /// answer rows `[m, hidden]` in `work`'s order.
    pub async fn run(
        &mut self,
        gpu: &Gpu,
        base: &BaseModel,
        pool: &KvPool,
        work: &[Rows<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let p = self.plan(base, pool, work)?;
        let (d, layers) = (base.cfg().hidden, base.decoder.num_layers());
        if p.table.len() > self.table.len() {
            self.table = gpu.zeros("batch table", p.table.len().next_power_of_two());
        }
        gpu.write_u32(&self.table, &p.table);
        if !p.ids.is_empty() {
            gpu.write_u32(&self.ids, &p.ids);
        }
        if !p.s0.is_empty() {
            gpu.write_f32(&self.s, &p.s0);
        }
        if p.has_hidden {
            gpu.write_f32(&self.sx, &p.sx);
        }
        let (f, x, sx, out) = (p.fused, &self.x, &self.sx, &self.out);
        let mut step = Step::new(gpu);
        // 1. Embeddings of fused rows into x, of stepped starts into x then sx.
        if f + p.embed > 0 {
            ops::embedding(&mut step, &self.ids, &base.embed, x, f + p.embed);
            step.copy(x, f * d, sx, 0, p.embed * d);
        }
        // 2. Every layer over its rows: the fused ones, then the stepped ones of this layer.
        for l in 0..layers {
            for &(a, row0, m) in &p.groups {
                a.between_rows(&mut step, l, x, &self.s, (row0, m));
            }
            let (c, n) = p.layer_rows[l];
            step.copy(sx, c * d, x, f * d, n * d);
            if f + n > 0 {
                let kv = KvLayout::Paged {
                    table: &self.table,
                    tab0: p.segments[l],
                    block: pool.block(),
                    store: pool.store(),
                    max_ctx: base.decoder.max_seq(),
                };
                let cache = (&pool.k[l], &pool.v[l]);
                base.decoder
                    .layer_kv(&mut step, l, x, f + n, &kv, cache, &self.scratch);
            }
            if n > 0 {
                if l + 1 < layers {
                    step.copy(x, f * d, out, (f + c) * d, n * d);
                } else {
                    base.decoder
                        .final_norm_rows(&mut step, (x, f), (out, f + c), n);
                }
            }
        }
        // 3. The fused rows' final norm; embed-only rows answer their embeddings.
        if f > 0 {
            base.decoder.final_norm_rows(&mut step, (x, 0), (out, 0), f);
        }
        step.copy(sx, 0, out, f * d, p.embed_only * d);
        step.submit()?;
        let all = gpu.read_f32(out, 0, (f + p.stepped) * d).await?;
        Ok(work
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = match r.input {
                    Input::Fused { .. } => p.row0[i],
                    _ => f + p.row0[i],
                };
                all[at * d..(at + r.len(d)) * d].to_vec()
            })
            .collect())
    }
}
