// kv_f16: KV cache values stored as f16, two a u32 word (value 2i in the low half), which halves
// the cache; the kernels compute in f32. Prelude of qk_rope, attention and cattention in place
// of kv_f32 (see there). Needs no shader-f16 support: pack2x16float / unpack2x16float are core
// WGSL.

alias KvWord = u32;
alias KvWord4 = vec2<u32>;
const KV_PER_WORD: u32 = 2u;

fn kv_value(w: KvWord, i: u32) -> f32 {
    return unpack2x16float(w)[i % 2u];
}

fn kv_vec4(w: KvWord4) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn kv_pack(a: array<f32, KV_PER_WORD>) -> KvWord {
    return pack2x16float(vec2<f32>(a[0], a[1]));
}
