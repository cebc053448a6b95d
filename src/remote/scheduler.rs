//! The backbone server's scheduler: continuous batching.
//!
//! Every request that runs the base (a fused forward, a stepped layer, a stepped pass start)
//! is queued. One thread owns the base's batch buffers and, pass after pass, takes requests
//! from the queue and runs them as one batched base pass ([`crate::model::batch`]), then
//! answers them. Requests that arrive during a pass join the next one. Decoding goes first, as
//! in vLLM's chunked prefill: a pass takes the short requests (decode steps, verifications) in
//! arrival order, then chunks of prompts in arrival order, at most `prefill_chunk` prompt rows
//! in all, up to `max_rows` rows; a prompt's remaining rows go back to the end of the queue.
//! So a long prompt never makes the decoding sessions wait for a long pass, and it still
//! advances every pass. A stepped session's requests arrive layer by layer; each joins
//! whatever pass comes next, and no pass waits for one.
//!
//! A session's state (position, stepped pass, KV blocks) changes only here, in queue order:
//! a request is checked against it when its first chunk is taken, and a request's KV blocks
//! are all taken then (or it is refused with 429, the session unchanged).
//!
//! When the pool runs dry, sessions that already hold blocks could each wait for a block
//! that another holds, and none would ever finish. So, as vLLM preempts by recomputation, a
//! session that holds blocks and needs more takes them from the youngest sessions that are
//! between requests (created after it): their caches are dropped, and their next request is
//! answered 404, after which the client rebuilds the session by re-sending its tokens (the
//! protocol's recovery from an expiry, giving the same results). The oldest session thus
//! always advances. A new session takes no one's blocks: it is refused with 429 until blocks
//! are free.

use std::collections::VecDeque;
use std::sync::Weak;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::oneshot;

use crate::gpu::Gpu;
use crate::model::adapter::Adapter;
use crate::model::base::BaseModel;
use crate::model::batch::{Batch, Input, Rows};
use crate::model::kv_pool::{Blocks, KvPool};

use super::api_error::{ApiError, ApiResult};
use super::metrics::Metrics;

/// A session on the server.
pub struct Session {
    /// Fused sessions run the uploaded adapter; stepped sessions have none.
    pub adapter: Option<Arc<Adapter>>,
    /// Positions held (the KV cache's length).
    pub pos: usize,
    /// A stepped pass in progress: its first position, row count and next layer.
    pub pass: Option<(usize, usize, usize)>,
    pub blocks: Blocks,
    pub last_used: Instant,
    /// The request of this session being run (several passes when chunked).
    running: Option<u64>,
    /// Creation order (older sessions are never evicted for younger ones).
    seq: u64,
    /// Its KV cache was dropped for an older session: every request now answers 404.
    evicted: bool,
}

impl Session {
    /// A new session with no positions.
    pub fn new(adapter: Option<Arc<Adapter>>, blocks: Blocks) -> Self {
        Session {
            adapter,
            pos: 0,
            pass: None,
            blocks,
            last_used: Instant::now(),
            running: None,
            seq: 0,
            evicted: false,
        }
    }

    /// Whether its KV cache was dropped for an older session (the client must rebuild it).
    pub fn evicted(&self) -> bool {
        self.evicted
    }
}

/// What a request runs.
pub enum Work {
    /// Fused: tokens and their shadow state rows through every layer.
    Fused { ids: Vec<u32>, s0: Vec<f32> },
    /// Stepped layer 0 from the embeddings of `ids` (a pass start); `embed_only` stops after
    /// the embeddings (the client injects before layer 0).
    Start { ids: Vec<u32>, embed_only: bool },
    /// Stepped layer `layer` >= 1 (or 0 after an embed-only start) from the client's rows.
    Layer { layer: usize, hidden: Vec<f32> },
}

/// A request for the scheduler: `work` at position `pos`; the answer is the last `keep`
/// rows of its output.
pub struct Request {
    pub work: Work,
    pub pos: usize,
    pub keep: usize,
}

impl Request {
    fn rows(&self, hidden: usize) -> usize {
        match &self.work {
            Work::Fused { ids, .. } | Work::Start { ids, .. } => ids.len(),
            Work::Layer { hidden: h, .. } => h.len() / hidden.max(1),
        }
    }
}

struct Job {
    id: u64,
    session: Arc<Mutex<Session>>,
    req: Request,
    /// Rows run so far.
    done: usize,
    /// The answer rows gathered so far.
    out: Vec<f32>,
    queued: Instant,
    reply: oneshot::Sender<ApiResult<Vec<f32>>>,
}

impl Job {
    /// Sends the answer, after letting go of the session: a client that deletes the session
    /// as soon as it has the answer finds its KV blocks back in the pool.
    fn answer(self, answer: ApiResult<Vec<f32>>) {
        let Job { session, reply, .. } = self;
        drop(session);
        let _ = reply.send(answer);
    }
}

/// Requests of at most this many rows left are short (decode steps, verifications of a few
/// drafted tokens) and go first in a pass; longer ones are prompts, chunked.
pub const SHORT_ROWS: usize = 8;

/// Settings of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in one pass.
    pub max_rows: usize,
    /// Most rows of prompts (requests of more than [`SHORT_ROWS`] rows) in one pass, all
    /// together.
    pub prefill_chunk: usize,
    /// How long a pass may wait, after the one before, for the sessions that pass answered:
    /// each decode step is a round trip to its client, so the next pass waits this long at
    /// most for the clients' next steps instead of running without them (a dynamic batcher's
    /// queue delay, as in Triton's `max_queue_delay`).
    pub wait: Duration,
}

/// The queue and the thread that runs it.
pub struct Scheduler {
    queue: Mutex<Queue>,
    wake: Condvar,
    pub(crate) pool: Arc<KvPool>,
    pub(crate) metrics: Arc<Metrics>,
    hidden: usize,
    layers: usize,
    max_seq: usize,
    limits: Limits,
    /// Every session, in creation order (those gone are pruned as new ones come).
    sessions: Mutex<Vec<Weak<Mutex<Session>>>>,
    next_seq: std::sync::atomic::AtomicU64,
}

/// The answer to a request of a session whose KV cache was evicted.
pub fn evicted_error() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "the session's KV cache was evicted to make room for older sessions (KV memory is \
         full): open a new session and re-send its tokens"
            .into(),
    )
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    next_id: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    /// Starts the scheduler thread for `base` with KV blocks from `pool`.
    pub fn start(
        gpu: Arc<Gpu>,
        base: Arc<BaseModel>,
        pool: Arc<KvPool>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        let limits = Limits {
            max_rows: limits.max_rows.max(1),
            prefill_chunk: limits.prefill_chunk.clamp(1, limits.max_rows.max(1)),
            wait: limits.wait,
        };
        let mut batch = Batch::new(&gpu, &base, limits.max_rows);
        warm_up(&gpu, &base, &pool, &mut batch);
        let s = Arc::new(Scheduler {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            pool,
            metrics,
            hidden: base.cfg().hidden,
            layers: base.decoder.num_layers(),
            max_seq: base.decoder.max_seq(),
            limits,
            sessions: Mutex::new(Vec::new()),
            next_seq: std::sync::atomic::AtomicU64::new(0),
        });
        // The thread holds the scheduler weakly: it ends once the server is gone.
        let weak = Arc::downgrade(&s);
        std::thread::Builder::new()
            .name("shadowpeft-scheduler".into())
            .spawn(move || run(weak, gpu, base, batch))?;
        Ok(s)
    }

    /// The settings in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Makes `session` (new) known to the scheduler, as the youngest.
    pub fn register(&self, session: &Arc<Mutex<Session>>) {
        lock(session).seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all = lock(&self.sessions);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(session));
    }

    /// Drops the KV caches of sessions younger than `s` (of `job`) that are between requests,
    /// youngest first, until `s` has blocks for `positions`; whether it has them.
    fn evict_for(&self, job: &Job, s: &mut Session, positions: usize) -> bool {
        let younger: Vec<Arc<Mutex<Session>>> = lock(&self.sessions)
            .iter()
            .rev()
            .filter_map(Weak::upgrade)
            .filter(|o| !Arc::ptr_eq(o, &job.session))
            .collect();
        for other in younger {
            // Another thread holding it (a handler) means it is busy: skip it.
            let Ok(mut o) = other.try_lock() else {
                continue;
            };
            if o.seq < s.seq || o.running.is_some() || o.blocks.ids().is_empty() {
                continue;
            }
            let _ = o.blocks.fit(0, 0);
            o.evicted = true;
            o.pos = 0;
            o.pass = None;
            drop(o);
            self.metrics.evictions.inc();
            if s.blocks.fit(positions, 0).is_ok() {
                return true;
            }
        }
        false
    }

    /// Queues `req` for `session` and waits for its answer rows.
    pub async fn submit(&self, session: Arc<Mutex<Session>>, req: Request) -> ApiResult<Vec<f32>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.queue);
            let id = q.next_id;
            q.next_id += 1;
            q.jobs.push_back(Job {
                id,
                session,
                req,
                done: 0,
                out: Vec::new(),
                queued: Instant::now(),
                reply: tx,
            });
        }
        self.wake.notify_one();
        rx.await.unwrap_or_else(|_| {
            Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the scheduler stopped".into(),
            ))
        })
    }

    /// Takes the jobs of the next pass from `q`, one per session, each with the rows it runs
    /// now: first, in queue order, the short requests (at most [`SHORT_ROWS`] rows left: decode
    /// steps, verifications, a decode step's stepped layers), until `max_rows` rows less the
    /// prompts' share; then, in queue order, chunks of the longer ones (prompts), at most
    /// `prefill_chunk` rows in all. A pass thus never holds more than `prefill_chunk` prompt
    /// rows, so decoding sessions wait for short passes, and every pass with prompts waiting
    /// advances them.
    fn take(&self, q: &mut Queue) -> Vec<(Job, usize)> {
        let Limits {
            max_rows,
            prefill_chunk,
            ..
        } = self.limits;
        let left = |job: &Job| job.req.rows(self.hidden) - job.done;
        let prompts = q.jobs.iter().any(|j| left(j) > SHORT_ROWS);
        let mut prompt_budget = if prompts { prefill_chunk } else { 0 };
        let mut short_budget = max_rows - prompt_budget;
        let mut taken: Vec<(Job, usize)> = Vec::new();
        for short in [true, false] {
            let mut i = 0;
            while i < q.jobs.len() {
                let job = &q.jobs[i];
                let budget = if short {
                    &mut short_budget
                } else {
                    &mut prompt_budget
                };
                if *budget == 0 {
                    break;
                }
                let same = |t: &(Job, usize)| Arc::ptr_eq(&t.0.session, &job.session);
                // One request per session and pass; a session's next request waits for the
                // one it is running.
                let busy = taken.iter().any(same)
                    || lock(&job.session).running.is_some_and(|r| r != job.id);
                if busy || (left(job) <= SHORT_ROWS) != short {
                    i += 1;
                    continue;
                }
                let n = left(job).min(prefill_chunk).min(*budget);
                *budget -= n;
                if let Some(job) = q.jobs.remove(i) {
                    taken.push((job, n));
                }
            }
            // Rows the prompts leave go to no one this pass; short requests may use them next.
        }
        taken
    }

    /// Checks a job's first chunk against its session and takes its KV blocks; the session
    /// is then running it.
    fn admit(&self, job: &Job) -> ApiResult<()> {
        let mut s = lock(&job.session);
        s.last_used = Instant::now();
        if job.done > 0 {
            return Ok(());
        }
        if s.evicted {
            return Err(evicted_error());
        }
        if s.adapter.is_some() != matches!(job.req.work, Work::Fused { .. }) {
            return Err(super::api_error::bad_request(
                "the request does not match the session's mode (fused or stepped)",
            ));
        }
        let (pos, m) = (job.req.pos, job.req.rows(self.hidden));
        let conflict = |msg: String| Err(ApiError(StatusCode::CONFLICT, msg));
        let starts = !matches!(job.req.work, Work::Layer { .. });
        if starts {
            if pos > s.pos {
                return conflict(format!(
                    "position {pos} is past the session's {} tokens",
                    s.pos
                ));
            }
            if pos + m > self.max_seq {
                return Err(super::api_error::bad_request(format!(
                    "sequence of {} tokens exceeds the server's maximum of {}",
                    pos + m,
                    self.max_seq
                )));
            }
            // New sessions leave a block per running session free, so that those can grow.
            let reserve = if s.blocks.ids().is_empty() {
                self.pool.holders()
            } else {
                0
            };
            let fits = s.blocks.fit(pos + m, reserve);
            // A session that holds blocks takes the rest from younger ones.
            let fits = match fits {
                Err(_) if !s.blocks.ids().is_empty() && self.evict_for(job, &mut s, pos + m) => {
                    Ok(())
                }
                r => r,
            };
            if let Err(e) = fits {
                self.metrics.refuse("kv_blocks");
                return Err(ApiError(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "KV memory is full: {} more blocks of {} positions needed, {} free; retry \
                         later",
                        e.needed,
                        self.pool.block(),
                        e.free
                    ),
                ));
            }
            // The tokens from `pos` on are being replaced.
            s.pos = pos;
            s.pass = match job.req.work {
                Work::Start { .. } => Some((pos, m, 0)),
                _ => None,
            };
        } else if let Work::Layer { layer, .. } = job.req.work {
            match s.pass {
                Some((p, pm, next)) if p == pos && pm == m && next == layer => {}
                _ => {
                    return conflict(format!(
                        "layer {layer} at position {pos} does not continue this session's pass"
                    ))
                }
            }
        }
        s.running = Some(job.id);
        Ok(())
    }

    /// After a job's last chunk: the session's new state.
    fn finish(&self, job: &Job) {
        let mut s = lock(&job.session);
        s.running = None;
        s.last_used = Instant::now();
        let (pos, m) = (job.req.pos, job.req.rows(self.hidden));
        match job.req.work {
            Work::Fused { .. } => {
                s.pos = pos + m;
                s.pass = None;
            }
            Work::Start {
                embed_only: true, ..
            } => {}
            Work::Start { .. } if self.layers == 1 => {
                s.pos = pos + m;
                s.pass = None;
            }
            Work::Start { .. } => s.pass = Some((pos, m, 1)),
            Work::Layer { layer, .. } if layer + 1 == self.layers => {
                s.pos = pos + m;
                s.pass = None;
            }
            Work::Layer { layer, .. } => s.pass = Some((pos, m, layer + 1)),
        }
    }

    /// A failed pass: the job's session keeps the positions before it.
    fn abandon(&self, job: &Job) {
        let mut s = lock(&job.session);
        s.running = None;
        s.pass = None;
        s.pos = s.pos.min(job.req.pos);
    }
}

/// Compiles the kernels of passes of 1 to 16 rows (one of each multi-row tile, see
/// [`crate::ops::linear`]) before the first request, so that no request waits for a compile,
/// with a throwaway session's blocks (given back; nothing is answered from them).
fn warm_up(gpu: &Gpu, base: &BaseModel, pool: &Arc<KvPool>, batch: &mut Batch) {
    let mut blocks = pool.session();
    let m = crate::ops::CMATMUL_ROWS
        .min(batch.rows())
        .min(base.decoder.max_seq());
    if blocks.fit(m, 0).is_err() {
        return;
    }
    let ids = vec![0u32; m];
    let mut n = 1;
    while n <= m {
        let rows = [Rows {
            input: Input::FirstLayer { ids: &ids[..n] },
            pos: 0,
            blocks: blocks.ids(),
        }];
        if let Err(e) = pollster::block_on(batch.run(gpu, base, pool, &rows)) {
            log::warn!("warm-up pass of {n} rows failed: {e}");
            return;
        }
        n *= 2;
    }
}

/// The scheduler thread: pass after pass until the scheduler is dropped.
fn run(weak: Weak<Scheduler>, gpu: Arc<Gpu>, base: Arc<BaseModel>, mut batch: Batch) {
    // The sessions the last pass answered, and when it ended.
    let mut answered: Vec<Weak<Mutex<Session>>> = Vec::new();
    let mut ended = Instant::now();
    loop {
        let Some(sched) = weak.upgrade() else { return };
        let taken = {
            let mut q = lock(&sched.queue);
            loop {
                if q.jobs.is_empty() {
                    // Wake now and then to notice that the server is gone.
                    let (g, _) = sched
                        .wake
                        .wait_timeout(q, Duration::from_millis(500))
                        .unwrap_or_else(|p| p.into_inner());
                    q = g;
                    if q.jobs.is_empty() && Arc::strong_count(&sched) == 1 {
                        return;
                    }
                    continue;
                }
                // Wait a little for the sessions just answered that have not asked again.
                let waited = ended.elapsed();
                if waited >= sched.limits.wait || !missing(&answered, &q) {
                    break;
                }
                let (g, _) = sched
                    .wake
                    .wait_timeout(q, sched.limits.wait - waited)
                    .unwrap_or_else(|p| p.into_inner());
                q = g;
            }
            sched.take(&mut q)
        };
        answered = pass(&sched, &gpu, &base, &mut batch, taken);
        ended = Instant::now();
    }
}

/// Whether a session of `answered` is alive and has no request queued.
fn missing(answered: &[Weak<Mutex<Session>>], q: &Queue) -> bool {
    answered.iter().any(|w| {
        w.upgrade()
            .is_some_and(|s| !q.jobs.iter().any(|j| Arc::ptr_eq(&j.session, &s)))
    })
}

/// Admits, runs and answers one pass's jobs; returns the sessions whose requests it finished.
fn pass(
    sched: &Scheduler,
    gpu: &Gpu,
    base: &BaseModel,
    batch: &mut Batch,
    taken: Vec<(Job, usize)>,
) -> Vec<Weak<Mutex<Session>>> {
    let d = sched.hidden;
    let mut jobs: Vec<(Job, usize)> = Vec::with_capacity(taken.len());
    for (job, n) in taken {
        if job.done == 0 {
            sched
                .metrics
                .queue_wait
                .observe(job.queued.elapsed().as_secs_f64());
        }
        match sched.admit(&job) {
            Ok(()) => jobs.push((job, n)),
            Err(e) => {
                job.answer(Err(e));
            }
        }
    }
    if jobs.is_empty() {
        return Vec::new();
    }
    let started = Instant::now();
    // Each job's block list, copied out of its session for the pass.
    let blocks: Vec<Vec<u32>> = jobs
        .iter()
        .map(|(j, _)| lock(&j.session).blocks.ids().to_vec())
        .collect();
    let adapters: Vec<Option<Arc<Adapter>>> = jobs
        .iter()
        .map(|(j, _)| lock(&j.session).adapter.clone())
        .collect();
    let rows: Vec<Rows> = jobs
        .iter()
        .zip(&blocks)
        .zip(&adapters)
        .filter_map(|(((job, n), blocks), adapter)| {
            let (a, b) = (job.done, job.done + n);
            // Modes were checked on admission.
            let input = match (&job.req.work, adapter) {
                (Work::Fused { ids, s0 }, Some(adapter)) => Input::Fused {
                    adapter,
                    ids: &ids[a..b],
                    s0: &s0[a * d..b * d],
                },
                (Work::Start { ids, embed_only }, None) => match embed_only {
                    true => Input::Embed { ids: &ids[a..b] },
                    false => Input::FirstLayer { ids: &ids[a..b] },
                },
                (Work::Layer { layer, hidden }, None) => Input::Layer {
                    layer: *layer,
                    hidden: &hidden[a * d..b * d],
                },
                _ => return None,
            };
            Some(Rows {
                input,
                pos: job.req.pos + a,
                blocks,
            })
        })
        .collect();
    let result = if rows.len() == jobs.len() {
        pollster::block_on(batch.run(gpu, base, &sched.pool, &rows))
    } else {
        Err(crate::error::Error::InvalidRequest(
            "a request does not match its session's mode".into(),
        ))
    };
    drop(rows);
    let m = &sched.metrics;
    m.pass_seconds.observe(started.elapsed().as_secs_f64());
    m.batch_rows
        .observe(jobs.iter().map(|(_, n)| *n).sum::<usize>() as f64);
    m.batch_sessions.observe(jobs.len() as f64);
    let outs = match result {
        Ok(o) => o,
        Err(e) => {
            log::error!("batched pass failed: {e}");
            let err = ApiError::from(e);
            for (job, _) in jobs {
                sched.abandon(&job);
                job.answer(Err(ApiError(err.0, err.1.clone())));
            }
            return Vec::new();
        }
    };
    let mut again = Vec::new();
    let mut answered = Vec::new();
    for ((mut job, n), out) in jobs.into_iter().zip(outs) {
        let kind = match job.req.work {
            Work::Fused { .. } => "fused",
            Work::Start {
                embed_only: true, ..
            } => "embed",
            _ => "stepped",
        };
        m.rows
            .get_or_create(&Metrics::label("kind", kind))
            .inc_by(n as u64);
        // Keep the rows among the last `keep` of the request.
        let total = job.req.rows(d);
        let first_kept = total - job.req.keep.min(total);
        let from = first_kept.saturating_sub(job.done).min(n);
        job.out.extend_from_slice(&out[from * d..]);
        job.done += n;
        if job.done < total {
            again.push(job);
            continue;
        }
        sched.finish(&job);
        answered.push(Arc::downgrade(&job.session));
        let out = std::mem::take(&mut job.out);
        job.answer(Ok(out));
    }
    if !again.is_empty() {
        lock(&sched.queue).jobs.extend(again);
    }
    answered
}
