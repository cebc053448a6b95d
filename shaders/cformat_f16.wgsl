// cformat_f16: the f16 block decoder of the CPU decode kernels (cmatvec, cmatvec_glu, cmatmul), prepended
// to them (layout: src/gpu/quant.rs). A block of 32 values is BV = 4 vec4<u32> words; word t
// holds values 2t (low half) and 2t + 1 (high half), read with unpack2x16float (core WGSL, no
// shader-f16 needed); no scale. cmatvec_common turns x into blocks
// (XBlock: each vec4 times UNSHIFT, and OFFSET * sum(x)); the kernel defines wblock(mat, i) (vec4
// word i of weight matrix mat; mat is a constant at every call, so the choice folds away).

const BV: u32 = 4u;
const EVEN_ODD: bool = false;
const SCALED: bool = false;
const OFFSET: f32 = 0.0;
const UNSHIFT = vec4<f32>(1.0);

// Values 4j..4j + 3 of a block from its words 2j and 2j + 1.
fn halves(lo: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
}

// The 32 values of block `blk` of matrix `mat`, in x's order.
fn block_values(mat: u32, blk: u32) -> array<vec4<f32>, 8> {
    let u0 = wblock(mat, 4u * blk);
    let u1 = wblock(mat, 4u * blk + 1u);
    let u2 = wblock(mat, 4u * blk + 2u);
    let u3 = wblock(mat, 4u * blk + 3u);
    return array<vec4<f32>, 8>(halves(u0.x, u0.y), halves(u0.z, u0.w), halves(u1.x, u1.y),
                               halves(u1.z, u1.w), halves(u2.x, u2.y), halves(u2.z, u2.w),
                               halves(u3.x, u3.y), halves(u3.z, u3.w));
}
