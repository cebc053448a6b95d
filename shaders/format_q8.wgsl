// format_q8: the decoder of int8 weights (layout: src/gpu/quant.rs), prepended to the
// blocked-weight kernels. A block of 32 values is V = 2 vec4<u32> words of XPW = 4 vec4 of
// values each; u32 j of a word holds 4 values as signed bytes, low byte first. Values are
// unscaled: the caller multiplies by the block's scale (SCALED).

const V: u32 = 2u;
const XPW: u32 = 4u;
const SCALED: bool = true;

// Values 4j..4j + 3 of word `u` (j < XPW), before scaling.
fn word_values(u: vec4<u32>, j: u32) -> vec4<f32> {
    let i = bitcast<i32>(u[j]);
    return vec4<f32>(vec4<i32>((i << 24u) >> 24u, (i << 16u) >> 24u, (i << 8u) >> 24u, i >> 24u));
}
