//! Weight storage formats: f32, f16 and block-quantised int8 / int4, with the host-side
//! encoders and the CPU decoders the tests compare against.
//!
//! Every non-f32 format works on blocks of [`BLOCK`] consecutive values of one matrix row
//! (along the input dimension K), so it needs `K % BLOCK == 0`; a matrix that does not allow
//! it stays f32 ([`WeightFormat::storage_for`]). A row chunk of `n` rows is stored as u32
//! words, block by block in row-major order, and (int formats) one f16 scale per block after
//! all the data, two to a word (block `2i` in the low half of scale word `i`, the last word
//! padded with zero):
//!
//! * `F16`: 16 words per block; word `t` holds values `2t` (low half) and `2t + 1` (high).
//! * `Q8`: 8 words per block; word `t` holds values `4t..4t + 4` as signed bytes, low byte
//!   first; value = `q * scale`, `scale = max|w| / 127`.
//! * `Q4`: 4 words per block; word `t` holds values `8t..8t + 8`, value `8t + i` in bits
//!   `4i..4i + 4`, each as `q + 8` with `q` in `-8..=7`; value = `q * scale`, where
//!   `scale = m / -8` for the value `m` of largest magnitude.
//!
//! Scales are rounded to f16 before the values are quantised with them, so the stored values
//! are the nearest the stored scale allows. Byte for byte these are the tensors of the
//! compressed-tensors convention for symmetric group-32 weights (docs/packed.md): the data
//! of a Q8 row chunk is an int8 `weight` matrix, that of a Q4 one a `weight_packed` int32
//! matrix (eight `q + 8` nibbles a word, lowest first), and the scales an f16 `weight_scale`
//! matrix of one column per block. Packed model files store them as such, and the loaders
//! upload them as they are.
//!
//! Accumulation is always f32; only the stored weights lose precision.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Values per quantisation block (along K).
pub const BLOCK: usize = 32;

/// How a matrix's weights are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightFormat {
    /// 32-bit floats, as loaded (the reference).
    #[default]
    F32,
    /// IEEE half floats, two per u32 word (read with `unpack2x16float`, so no `shader-f16`
    /// feature is needed).
    F16,
    /// Signed 8-bit values with one f16 scale per block of 32.
    Q8,
    /// Signed 4-bit values with one f16 scale per block of 32.
    Q4,
}

/// Tensors (by name component) that are stored in the requested format: the decoder
/// projections, the embeddings and the LM heads. Everything else (norms, biases, the small
/// shadow adapter networks, the shadow projection) stays f32.
const QUANTISED: [&str; 10] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "embed_tokens",
    "lm_head",
    "shadow_lm_head",
];

impl WeightFormat {
    /// Every format, reference first.
    pub const ALL: [WeightFormat; 4] = [Self::F32, Self::F16, Self::Q8, Self::Q4];

    /// The name used by the CLI, the JS API and the benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// u32 data words per block of [`BLOCK`] values (`None` for f32, which is not blocked).
    pub(crate) fn words_per_block(self) -> Option<usize> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(16),
            Self::Q8 => Some(8),
            Self::Q4 => Some(4),
        }
    }

    /// Whether blocks carry an f16 scale.
    pub(crate) fn scaled(self) -> bool {
        matches!(self, Self::Q8 | Self::Q4)
    }

    /// u32 words of block data in `rows` rows of `cols` values (all of a row for f32).
    pub(crate) fn data_words(self, rows: usize, cols: usize) -> usize {
        match self.words_per_block() {
            None => rows * cols,
            Some(w) => rows * cols / BLOCK * w,
        }
    }

    /// u32 words the f16 scales of `rows` rows of `cols` values take (0 unless scaled).
    pub(crate) fn scale_words(self, rows: usize, cols: usize) -> usize {
        if self.scaled() {
            (rows * cols / BLOCK).div_ceil(2)
        } else {
            0
        }
    }

    /// u32 words a chunk of `rows` rows of `cols` values takes: data, then scales.
    pub(crate) fn chunk_words(self, rows: usize, cols: usize) -> usize {
        self.data_words(rows, cols) + self.scale_words(rows, cols)
    }

    /// Bytes one row of `cols` values takes, data and scales (for sizing chunks).
    pub(crate) fn row_bytes(self, cols: usize) -> usize {
        4 * self.data_words(1, cols) + if self.scaled() { 2 * cols / BLOCK } else { 0 }
    }

    /// The format tensor `name` `[rows, cols]` is stored in when `self` is requested: `self`
    /// for decoder projections, embeddings and heads whose rows split into whole blocks, f32
    /// for everything else.
    pub fn storage_for(self, name: &str, cols: usize) -> WeightFormat {
        let listed = name
            .trim_end_matches(".weight")
            .split('.')
            .any(|part| QUANTISED.contains(&part));
        if self != Self::F32 && listed && name.ends_with(".weight") && cols.is_multiple_of(BLOCK) {
            self
        } else {
            Self::F32
        }
    }

    /// Encodes `rows` rows of `cols` values (`cols % BLOCK == 0` unless f32) as this format's
    /// u32 words: all block data, then (int formats) all block scales.
    pub(crate) fn encode(self, data: &[f32], rows: usize, cols: usize) -> Vec<u32> {
        if self.words_per_block().is_none() {
            return data.iter().map(|v| v.to_bits()).collect();
        }
        let mut words = Vec::with_capacity(self.chunk_words(rows, cols));
        let mut scales: Vec<u16> = Vec::with_capacity(if self.scaled() {
            rows * cols / BLOCK
        } else {
            0
        });
        for b in data.chunks_exact(BLOCK) {
            match self {
                Self::F16 => words.extend(b.chunks_exact(2).map(|p| {
                    let lo = half::f16::from_f32(p[0]).to_bits() as u32;
                    let hi = half::f16::from_f32(p[1]).to_bits() as u32;
                    lo | hi << 16
                })),
                Self::Q8 => {
                    let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let (scale, inv) = f16_scale(amax / 127.0);
                    scales.push(scale);
                    words.extend(b.chunks_exact(4).map(|q| {
                        q.iter().enumerate().fold(0u32, |acc, (i, v)| {
                            let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                            acc | (q as u8 as u32) << (8 * i)
                        })
                    }));
                }
                Self::Q4 => {
                    let m = b
                        .iter()
                        .fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    let (scale, inv) = f16_scale(m / -8.0);
                    scales.push(scale);
                    let nib = |v: f32| ((v * inv).round().clamp(-8.0, 7.0) as i32 + 8) as u32;
                    words.extend(b.chunks_exact(8).map(|e| {
                        e.iter()
                            .enumerate()
                            .fold(0u32, |acc, (i, &v)| acc | nib(v) << (4 * i))
                    }));
                }
                Self::F32 => unreachable!("f32 is not blocked"),
            }
        }
        words.extend(
            scales
                .chunks(2)
                .map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16),
        );
        words
    }

    /// Decodes words made by [`WeightFormat::encode`] back to `rows * cols` f32 values.
    pub fn decode(self, words: &[u32], rows: usize, cols: usize) -> Vec<f32> {
        let Some(wpb) = self.words_per_block() else {
            return words.iter().map(|&w| f32::from_bits(w)).collect();
        };
        let (data, scales) = words.split_at(self.data_words(rows, cols));
        let scale = |b: usize| {
            scales.get(b / 2).map_or(1.0, |&w| {
                half::f16::from_bits((w >> (16 * (b % 2))) as u16).to_f32()
            })
        };
        let mut out = Vec::with_capacity(rows * cols);
        for (b, block) in data.chunks_exact(wpb).enumerate() {
            let s = scale(b);
            match self {
                Self::F16 => out.extend(block.iter().flat_map(|&w| {
                    [w & 0xffff, w >> 16].map(|h| half::f16::from_bits(h as u16).to_f32())
                })),
                Self::Q8 => out.extend(
                    block
                        .iter()
                        .flat_map(|&w| (0..4).map(move |i| (w >> (8 * i)) as u8 as i8 as f32 * s)),
                ),
                Self::Q4 => out.extend(block.iter().flat_map(|&w| {
                    (0..8)
                        .map(move |i| ((w >> (4 * i)) & 15) as f32 - 8.0)
                        .map(move |q| q * s)
                })),
                Self::F32 => unreachable!("f32 is not blocked"),
            }
        }
        out
    }
}

/// A block scale rounded to f16 (its bits), and the inverse of the rounded value that the
/// block's values are quantised with (0 for a zero scale).
fn f16_scale(scale: f32) -> (u16, f32) {
    let h = half::f16::from_f32(scale);
    let s = h.to_f32();
    (
        h.to_bits(),
        if s != 0.0 && s.is_finite() {
            1.0 / s
        } else {
            0.0
        },
    )
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "weights: unknown format `{s}`; expected one of f32, f16, q8, q4"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::rand_vec;

    #[test]
    fn formats_round_trip_within_their_precision() {
        let (rows, cols) = (7, 96);
        let mut w = rand_vec(5, rows * cols, 1.0);
        w[40] = 0.0;
        w[64..96].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        for (fmt, tol) in [
            (WeightFormat::F32, 0.0),
            (WeightFormat::F16, 1e-3),
            // Half a step, the step being the f16 scale (within 2^-11 of max/127).
            (WeightFormat::Q8, 1.001 / 254.0 + 1e-6),
            // Half a step of max/8, or (for the opposite sign of the largest value, which
            // can reach -7 steps only) one whole step.
            (WeightFormat::Q4, 1.001 / 8.0 + 1e-6),
        ] {
            let words = fmt.encode(&w, rows, cols);
            assert_eq!(words.len(), fmt.chunk_words(rows, cols), "{fmt} size");
            let back = fmt.decode(&words, rows, cols);
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                // Block maximum is at most 1, so the step is at most 1/127 (q8) or 1/8 (q4).
                assert!((a - b).abs() <= tol, "{fmt}: value {i}: {a} decoded as {b}");
            }
            assert!(back[64..96].iter().all(|v| *v == 0.0), "{fmt}: zero block");
        }
    }

    #[test]
    fn q4_keeps_the_largest_value_of_each_block_to_f16_precision() {
        let mut w = rand_vec(6, 64, 0.5);
        w[3] = -0.9;
        w[40] = 0.8;
        let back = WeightFormat::Q4.decode(&WeightFormat::Q4.encode(&w, 2, 32), 2, 32);
        assert_eq!(back[3], half::f16::from_f32(-0.9).to_f32());
        assert_eq!(back[40], half::f16::from_f32(0.8).to_f32());
    }

    #[test]
    fn the_layout_is_that_of_packed_int_tensors() {
        // Q4: value 8t + i in bits 4i of word t, as q + 8; scales two f16 to a word.
        let mut w = vec![0.0f32; 64];
        w[0] = -8.0; // the block maximum: scale 1
        w[1] = 1.0;
        w[9] = -3.0;
        w[32] = 4.0; // second block: scale -0.5, so 4.0 is q = -8
        w[33] = -0.5;
        let words = WeightFormat::Q4.encode(&w, 1, 64);
        assert_eq!(words.len(), 8 + 1);
        assert_eq!(words[0], 0x8888_8890);
        assert_eq!(words[1] & 0xf0, 5 << 4);
        assert_eq!(words[4] & 0xff, 0x90);
        let scales = words[8];
        assert_eq!(scales & 0xffff, half::f16::from_f32(1.0).to_bits() as u32);
        assert_eq!(scales >> 16, half::f16::from_f32(-0.5).to_bits() as u32);
        // Q8: signed bytes in order, then the scales; an odd block count pads the last word.
        let w: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let words = WeightFormat::Q8.encode(&w, 1, 32);
        assert_eq!(words.len(), 8 + 1);
        let bytes: Vec<i8> = words[..8]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(|b| b as i8)
            .collect();
        assert_eq!(bytes[0], -127);
        assert_eq!(bytes[16], 0);
        assert_eq!(words[8] >> 16, 0, "padding");
    }

    #[test]
    fn only_projections_embeddings_and_heads_with_whole_blocks_are_quantised() {
        let q = WeightFormat::Q4;
        for name in [
            "model.layers.0.self_attn.q_proj.weight",
            "shadow_model.layers.1.mlp.down_proj.weight",
            "model.embed_tokens.weight",
            "lm_head.weight",
            "base_model.model.lm_head.modules_to_save.default.weight",
        ] {
            assert_eq!(q.storage_for(name, 64), q, "{name}");
            assert_eq!(q.storage_for(name, 48), WeightFormat::F32, "{name}");
        }
        for name in [
            "model.layers.0.self_attn.q_proj.bias",
            "model.norm.weight",
            "shadow_update_model.update_gates.0.0.weight",
            "base_model.model.model.layers.1.shadow_down.default.weight",
            "base_model.shadow_projection.default.weight",
        ] {
            assert_eq!(q.storage_for(name, 64), WeightFormat::F32, "{name}");
        }
        assert_eq!(
            WeightFormat::F32.storage_for("lm_head.weight", 64),
            WeightFormat::F32
        );
        assert_eq!("q8".parse::<WeightFormat>().unwrap(), WeightFormat::Q8);
        assert!("int3".parse::<WeightFormat>().is_err());
    }
}
