//! Where a query row's keys and values live, for the kernels that write and read the KV
//! cache ([`super::qk_rope`], [`super::attention`]): in one session's own cache (row `m` at
//! position `pos0 + m`, position `j` at cache row `j`), or in a block pool that many
//! sessions share, through a table of per-row positions and block lists (the backbone
//! server's batched passes). The kernels take the addressing as a prelude
//! (`shaders/kv_seq.wgsl`, `shaders/kv_paged.wgsl`), and the storage of the values as another
//! (`shaders/kv_f32.wgsl`, `shaders/kv_f16.wgsl`).

use crate::gpu::{KernelSpec, Tensor};

/// How a KV cache stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStore {
    /// One f32 a value.
    #[default]
    F32,
    /// f16, two a u32 word: half the memory; the kernels compute in f32. Needs a head
    /// dimension that is a multiple of 4.
    F16,
}

impl KvStore {
    /// Bytes a value takes.
    pub fn bytes(self) -> u64 {
        match self {
            KvStore::F32 => 4,
            KvStore::F16 => 2,
        }
    }

    /// The words (f32 or u32) a row of `width` values takes.
    pub fn words(self, width: usize) -> usize {
        match self {
            KvStore::F32 => width,
            KvStore::F16 => width.div_ceil(2),
        }
    }
}

impl std::str::FromStr for KvStore {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "f32" => Ok(KvStore::F32),
            "f16" => Ok(KvStore::F16),
            _ => Err(crate::error::Error::InvalidRequest(format!(
                "KV cache storage {s:?}: expected f32 or f16"
            ))),
        }
    }
}

/// The addressing of the KV cache for the rows of one dispatch.
#[derive(Debug, Clone, Copy)]
pub enum KvLayout<'a> {
    /// One session's cache, `[capacity, kv_heads * head_dim]` per layer: query row `m` is at
    /// position `pos0 + m`, cache row `pos0 + m`.
    Seq { pos0: usize },
    /// A pool of blocks of `block` positions: from word `tab0` of `table`, each query row has
    /// its position, then where its session's block list starts in `table` (position `j` is
    /// slot `j % block` of block `table[list + j / block]`). Every position is below
    /// `max_ctx`, the stride of the CPU attention kernel's scores. The pool stores its values
    /// as `store` says.
    Paged {
        table: &'a Tensor,
        tab0: usize,
        block: usize,
        max_ctx: usize,
        store: KvStore,
    },
}

impl KvLayout<'_> {
    /// `spec` with this addressing's prelude; `table_binding` is the binding after the
    /// kernel's own, where the paged table goes.
    pub(crate) fn prelude(&self, spec: KernelSpec, table_binding: u32) -> KernelSpec {
        let spec = match self.store() {
            KvStore::F32 => spec.prelude("kv_f32", include_str!("../../shaders/kv_f32.wgsl")),
            KvStore::F16 => spec.prelude("kv_f16", include_str!("../../shaders/kv_f16.wgsl")),
        };
        match self {
            KvLayout::Seq { .. } => {
                spec.prelude("kv_seq", include_str!("../../shaders/kv_seq.wgsl"))
            }
            KvLayout::Paged { block, .. } => spec
                .with("KV_BLOCK", *block as u32)
                .with("KV_TABLE", table_binding)
                .prelude("kv_paged", include_str!("../../shaders/kv_paged.wgsl")),
        }
    }

    /// How the cache stores its values (one session's own cache: f32).
    pub fn store(&self) -> KvStore {
        match self {
            KvLayout::Seq { .. } => KvStore::F32,
            KvLayout::Paged { store, .. } => *store,
        }
    }

    /// The first position for the kernels' `pos0` (0 when paged) and the table offset for
    /// their `tab0` (0 for one session's cache).
    pub(crate) fn words(&self) -> (u32, u32) {
        match self {
            KvLayout::Seq { pos0 } => (*pos0 as u32, 0),
            KvLayout::Paged { tab0, .. } => (0, *tab0 as u32),
        }
    }

    /// The paged table, bound after the kernel's own buffers.
    pub(crate) fn table(&self) -> Option<&Tensor> {
        match self {
            KvLayout::Seq { .. } => None,
            KvLayout::Paged { table, .. } => Some(table),
        }
    }
}
