// format_q4: the decoder of int4 weights (layout: src/gpu/quant.rs), prepended to the
// blocked-weight kernels. A block of 32 values is V = 1 vec4<u32> word of XPW = 8 vec4 of
// values; u32 t of the word holds values 8t..8t + 7, value 8t + i in bits 4i..4i + 3, each
// stored as q + 8. Values are unscaled: the caller multiplies by the block's scale (SCALED).

const V: u32 = 1u;
const XPW: u32 = 8u;
const SCALED: bool = true;

// Values 4j..4j + 3 of word `u` (j < XPW), before scaling.
fn word_values(u: vec4<u32>, j: u32) -> vec4<f32> {
    let w = u[j / 2u] >> (16u * (j % 2u));
    return vec4<f32>(vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u)) - 8.0;
}
