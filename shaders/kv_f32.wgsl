// kv_f32: KV cache values stored as f32, one a word. Prelude of qk_rope, attention and
// cattention (with kv_seq or kv_paged), which declare their cache bindings as arrays of KvWord
// (one value) or KvWord4 (four values) and go through these functions; kv_f16 is the other
// storage.

alias KvWord = f32;
alias KvWord4 = vec4<f32>;
// Values a KvWord holds.
const KV_PER_WORD: u32 = 1u;

// Value `i` of the cache, from its word `w` = cache[i / KV_PER_WORD].
fn kv_value(w: KvWord, i: u32) -> f32 {
    return w;
}

fn kv_vec4(w: KvWord4) -> vec4<f32> {
    return w;
}

// The word of values a[0 .. KV_PER_WORD] (from a multiple of KV_PER_WORD).
fn kv_pack(a: array<f32, KV_PER_WORD>) -> KvWord {
    return a[0];
}
