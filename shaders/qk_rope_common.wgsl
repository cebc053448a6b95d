// qk_rope_common: attention's per-head steps after the joined q/k/v projection, in one dispatch:
// Qwen3's per-head RMSNorm (NORM_Q, NORM_K), then the rotary position embedding in the
// rotate-half (GPT-NeoX / Hugging Face) layout; q goes to its buffer, k straight into the KV
// cache, and v is copied into the cache unchanged.
//   u = NORM ? x * inverseSqrt(mean(x^2) + eps) * w : x     (over one head of D values)
//   for i < D/2 at position pos = pos0 + m:
//   y[i]       = u[i] * cos[pos, i] - u[i + D/2] * sin[pos, i]
//   y[i + D/2] = u[i + D/2] * cos[pos, i] + u[i] * sin[pos, i]
// What the two kernels share, prepended to each: qk_rope (a workgroup per head, for GPUs) and
// cqk_rope (an invocation per head, for CPU devices).
// Bindings: 0 Params, 1 cos [S, D/2], 2 sin [S, D/2], 3 qkv [M, (heads + 2 kv_heads) D] (each
// row q, then k, then v), 4 qw [D], 5 kw [D], 6 q [M, heads, D], 7 k and 8 v
// [.., kv_heads * D] (the caches: row m goes to cache row kv_slot(m, row_pos(m)) of the prelude,
// kv_seq or kv_paged, which also gives its position; values stored as the prelude kv_f32 or
// kv_f16 says, the latter with head_dim % 4 == 0).
// Heads are numbered g = m * (heads + 2 kv_heads) + hh: row m's q heads, then its k heads, then
// its v heads. Constants: NORM_Q, NORM_K.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos0: u32,
    tab0: u32,
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> qw: array<f32>;
@group(0) @binding(5) var<storage, read> kw: array<f32>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> k: array<KvWord>;
@group(0) @binding(8) var<storage, read_write> v: array<KvWord>;

fn weight(is_k: bool, i: u32) -> f32 {
    if (is_k) {
        return kw[i];
    }
    return qw[i];
}

// Where head g reads and writes.
struct Head {
    // Its first value in qkv.
    src: u32,
    // Its row's position.
    pos: u32,
    // A v head: where its values go in the v cache.
    is_v: bool,
    v_dst: u32,
    // A q or k head: whether it is k, whether it is normalised, and its first value in q or
    // in the k cache.
    is_k: bool,
    norm: bool,
    base: u32,
}

fn head_at(g: u32) -> Head {
    let per_row = p.heads + 2u * p.kv_heads;
    let m = g / per_row;
    let hh = g - m * per_row;
    let d = p.head_dim;
    let pos = row_pos(m);
    let kv_off = kv_slot(m, pos) * p.kv_heads * d;
    let is_v = hh >= p.heads + p.kv_heads;
    let is_k = !is_v && hh >= p.heads;
    let nheads = select(p.heads, p.kv_heads, is_k);
    let h = select(hh, hh - p.heads, is_k);
    return Head((m * per_row + hh) * d, pos, is_v, kv_off + (hh - min(hh, p.heads + p.kv_heads)) * d,
                is_k, select(NORM_Q, NORM_K, is_k) == 1u,
                select((m * nheads + h) * d, kv_off + h * d, is_k));
}

// Copies values i .. i + KV_PER_WORD of v head `hd` into the cache (i a multiple of KV_PER_WORD).
fn copy_v(hd: Head, i: u32) {
    var a: array<f32, KV_PER_WORD>;
    for (var t = 0u; t < KV_PER_WORD; t++) {
        a[t] = qkv[hd.src + i + t];
    }
    v[(hd.v_dst + i) / KV_PER_WORD] = kv_pack(a);
}

// Rotates values i .. i + KV_PER_WORD of each half of q or k head `hd` (i a multiple of
// KV_PER_WORD below D/2), scaled by the norm's `inv` where the head is normalised, and stores
// them.
fn rope_store(hd: Head, i: u32, inv: f32) {
    let half = p.head_dim / 2u;
    var ya: array<f32, KV_PER_WORD>;
    var yb: array<f32, KV_PER_WORD>;
    for (var e = 0u; e < KV_PER_WORD; e++) {
        let ie = i + e;
        var a = qkv[hd.src + ie];
        var b = qkv[hd.src + ie + half];
        if (hd.norm) {
            a = weight(hd.is_k, ie) * (a * inv);
            b = weight(hd.is_k, ie + half) * (b * inv);
        }
        let t = hd.pos * half + ie;
        let c = cos_t[t];
        let s = sin_t[t];
        ya[e] = a * c - b * s;
        yb[e] = b * c + a * s;
    }
    if (hd.is_k) {
        k[(hd.base + i) / KV_PER_WORD] = kv_pack(ya);
        k[(hd.base + i + half) / KV_PER_WORD] = kv_pack(yb);
    } else {
        for (var e = 0u; e < KV_PER_WORD; e++) {
            q[hd.base + i + e] = ya[e];
            q[hd.base + i + e + half] = yb[e];
        }
    }
}
