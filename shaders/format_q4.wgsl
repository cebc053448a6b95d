// format_q4: the decoder of int4 weights (layout: src/gpu/quant.rs), prepended to the
// blocked-weight kernels. A block of 32 values is V = 1 vec4<u32> word of XPW = 8 vec4 of
// values; byte i of u32 t holds value 8t + i in its low nibble and 8t + 4 + i in its high
// nibble, each stored as q + 8. Values are unscaled: the caller multiplies by the block's
// scale (SCALED).

const V: u32 = 1u;
const XPW: u32 = 8u;
const SCALED: bool = true;

// Values 4j..4j + 3 of word `u` (j < XPW), before scaling.
fn word_values(u: vec4<u32>, j: u32) -> vec4<f32> {
    let w = u[j / 2u] >> (4u * (j % 2u));
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(15u)) - 8.0;
}
