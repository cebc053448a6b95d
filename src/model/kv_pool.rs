//! KV memory as a budget: one pool of fixed-size blocks of positions per decoder, shared by
//! every session of the backbone server. A session holds the blocks its positions need, in
//! order (its block list), takes more as it grows and gives them back when it rewinds, ends
//! or expires. Nothing is reserved per session up front, so a server holds as many sessions as
//! their actual lengths fit in the budget.
//!
//! Layout: per layer one key and one value buffer of `[blocks * block, kv_heads * head_dim]`
//! values, f32 or f16 ([`KvStore`]); position `j` of a session is row `list[j / block] * block + j % block`
//! ([`crate::ops::KvLayout::Paged`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::KvStore;

use super::decoder::Decoder;

/// The device buffers and free list of a block pool.
pub struct KvPool {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    block: usize,
    blocks: usize,
    store: KvStore,
    bytes_per_block: u64,
    free: Mutex<Vec<u32>>,
    /// Block lists holding at least one block.
    holders: AtomicUsize,
}

/// What sizes a pool: its budget and block size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvBudget {
    /// Bytes for all layers' keys and values.
    pub bytes: u64,
    /// Positions per block.
    pub block: usize,
    /// How the values are stored.
    pub store: KvStore,
}

/// The blocks one session holds, in position order; they go back to the pool when dropped.
pub struct Blocks {
    pool: Arc<KvPool>,
    ids: Vec<u32>,
}

/// Not enough free blocks: the request that needed them can be retried later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoBlocks {
    pub needed: usize,
    pub free: usize,
}

impl KvPool {
    /// A pool of `budget.bytes` for `decoder`'s layers, in blocks of `budget.block`
    /// positions. The pool is cut to what one storage binding holds per layer (`warn`ed).
    pub fn new(gpu: &Gpu, decoder: &Decoder, budget: KvBudget) -> Result<Arc<Self>> {
        let c = &decoder.cfg;
        let kv_width = (c.kv_heads * c.head_dim) as u64;
        let layers = decoder.num_layers() as u64;
        if budget.block == 0 || budget.block > 4096 {
            return Err(Error::InvalidRequest(format!(
                "KV block of {} positions: expected 1 to 4096",
                budget.block
            )));
        }
        if budget.store == KvStore::F16 && !c.head_dim.is_multiple_of(4) {
            return Err(Error::InvalidRequest(format!(
                "KV cache in f16: expected a head dimension that is a multiple of 4, this \
                 model's is {}",
                c.head_dim
            )));
        }
        let row_words = budget.store.words(kv_width as usize) as u64;
        let block_bytes = budget.block as u64 * row_words * 4;
        let bytes_per_block = 2 * layers * block_bytes;
        let mut blocks = budget.bytes / bytes_per_block.max(1);
        let per_binding = gpu.max_binding() / block_bytes.max(1);
        if blocks > per_binding {
            log::warn!(
                "KV budget of {} bytes cut to {} blocks: one layer's keys must fit one storage \
                 binding of {} bytes on this device",
                budget.bytes,
                per_binding,
                gpu.max_binding()
            );
            blocks = per_binding;
        }
        let blocks = blocks.min(u32::MAX as u64) as usize;
        if blocks == 0 {
            return Err(Error::InvalidRequest(format!(
                "KV budget of {} bytes holds no block: one block of {} positions takes {} \
                 bytes over this model's {} layers",
                budget.bytes, budget.block, bytes_per_block, layers
            )));
        }
        let n = blocks * budget.block * row_words as usize;
        Ok(Arc::new(KvPool {
            k: (0..layers).map(|_| gpu.zeros("k pool", n)).collect(),
            v: (0..layers).map(|_| gpu.zeros("v pool", n)).collect(),
            block: budget.block,
            blocks,
            store: budget.store,
            bytes_per_block,
            // Popped from the end: the lowest ids go first.
            free: Mutex::new((0..blocks as u32).rev().collect()),
            holders: AtomicUsize::new(0),
        }))
    }

    /// Positions per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// How the values are stored.
    pub fn store(&self) -> KvStore {
        self.store
    }

    /// Blocks in the pool.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Blocks free now.
    pub fn free_blocks(&self) -> usize {
        self.lock().len()
    }

    /// Sessions holding blocks now.
    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }

    /// Device bytes of the pool (keys and values of every layer).
    pub fn bytes(&self) -> u64 {
        self.blocks as u64 * self.bytes_per_block
    }

    /// Device bytes one block takes over all layers.
    pub fn bytes_per_block(&self) -> u64 {
        self.bytes_per_block
    }

    /// An empty block list on this pool.
    pub fn session(self: &Arc<Self>) -> Blocks {
        Blocks {
            pool: self.clone(),
            ids: Vec::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Blocks {
    /// The block ids, in position order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Positions these blocks hold.
    pub fn capacity(&self) -> usize {
        self.ids.len() * self.pool.block
    }

    /// Makes these blocks hold exactly the `positions` a session needs: takes blocks from
    /// the pool, or gives back those past the end. All or nothing: when the pool has fewer
    /// than needed beyond `reserve` free blocks (kept for sessions already running), nothing
    /// changes.
    pub fn fit(&mut self, positions: usize, reserve: usize) -> std::result::Result<(), NoBlocks> {
        let want = positions.div_ceil(self.pool.block);
        let mut free = self.pool.lock();
        if want <= self.ids.len() {
            if want == 0 && !self.ids.is_empty() {
                self.pool.holders.fetch_sub(1, Ordering::Relaxed);
            }
            free.extend(self.ids.drain(want..).rev());
            return Ok(());
        }
        let needed = want - self.ids.len();
        if free.len() < needed + reserve {
            return Err(NoBlocks {
                needed,
                free: free.len(),
            });
        }
        if self.ids.is_empty() {
            self.pool.holders.fetch_add(1, Ordering::Relaxed);
        }
        let at = free.len() - needed;
        self.ids.extend(free.drain(at..).rev());
        Ok(())
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        let _ = self.fit(0, 0);
    }
}
