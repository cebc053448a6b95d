//! Binary frames: a safetensors buffer (little-endian tensors with declared dtypes and shapes)
//! whose `__metadata__` carries the protocol version and the request fields. Tensors never
//! travel as JSON numbers.
//!
//! Request `forward`: `ids` U32 `[m]`, `s0` F32|F16 `[m, d]`; metadata `protocol`, `pos` (the
//! position of the first token), `rows` (`last` or `all`).
//! Response: `hidden` F32|F16 `[rows, d]` (the final normed base hidden state).

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

use super::PROTOCOL;

/// Floating-point encoding of tensors on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    F32,
    F16,
}

impl std::str::FromStr for Wire {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Wire::F32),
            "f16" => Ok(Wire::F16),
            o => Err(Error::InvalidRequest(format!(
                "wire dtype `{o}`: expected f32 or f16"
            ))),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(format!("bad frame: {}", msg.into()))
}

fn floats(wire: Wire, v: &[f32]) -> (Dtype, Vec<u8>) {
    match wire {
        Wire::F32 => (Dtype::F32, bytemuck::cast_slice(v).to_vec()),
        Wire::F16 => (
            Dtype::F16,
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
    }
}

fn encode(
    meta: HashMap<String, String>,
    tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .filter_map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .ok()
                .map(|v| (n.to_string(), v))
        })
        .collect();
    // Shapes and byte lengths are built together above, so serialization cannot fail.
    safetensors::serialize(views, Some(meta)).unwrap_or_default()
}

/// A parsed frame.
pub struct Frame<'a> {
    st: SafeTensors<'a>,
    meta: HashMap<String, String>,
}

impl<'a> Frame<'a> {
    /// Parses and checks the protocol version.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (_, md) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        match meta.get("protocol").map(String::as_str) {
            Some(PROTOCOL) => {}
            Some(v) => {
                return Err(bad(format!(
                    "protocol version {v}, this side speaks {PROTOCOL}"
                )))
            }
            None => return Err(bad("no protocol version")),
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Frame { st, meta })
    }

    /// A metadata field.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| bad(format!("missing `{key}`")))
    }

    /// A numeric metadata field.
    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta(key)?
            .parse()
            .map_err(|_| bad(format!("`{key}` is not a non-negative integer")))
    }

    /// Tensor `name` as f32 (from F32 or F16), checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, Wire)> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| bad(format!("missing tensor `{name}`")))?;
        if t.shape() != shape {
            return Err(bad(format!(
                "`{name}` has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        match t.dtype() {
            Dtype::F32 => Ok((bytemuck::pod_collect_to_vec(t.data()), Wire::F32)),
            Dtype::F16 => Ok((
                t.data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Wire::F16,
            )),
            d => Err(bad(format!(
                "`{name}` has dtype {d:?}, expected F32 or F16"
            ))),
        }
    }

    /// Whether the frame has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// An optional metadata field.
    pub fn meta_opt(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// Tensor `name` as u32 ids `[*]`.
    pub fn ids(&self, name: &str) -> Result<Vec<u32>> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| bad(format!("missing tensor `{name}`")))?;
        if t.dtype() != Dtype::U32 || t.shape().len() != 1 {
            return Err(bad(format!(
                "`{name}` must be U32 [n], found {:?} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    }
}

/// Metadata every request carries: the protocol version, `pos` and `rows` (the answer's
/// rows: the last `rows` of the `m` new positions; `last`, `all`, or the count, which only
/// servers listing the `rows-count` feature take).
fn request_meta(pos: usize, rows: usize, m: usize) -> HashMap<String, String> {
    let rows = match rows {
        r if r >= m => "all".to_string(),
        1 => "last".to_string(),
        r => r.to_string(),
    };
    HashMap::from([
        ("protocol".to_string(), PROTOCOL.to_string()),
        ("pos".to_string(), pos.to_string()),
        ("rows".to_string(), rows),
    ])
}

/// Encodes a `forward` request.
pub fn forward_request(
    pos: usize,
    ids: &[u32],
    s0: &[f32],
    hidden: usize,
    rows: usize,
    wire: Wire,
) -> Vec<u8> {
    let meta = request_meta(pos, rows, ids.len());
    let (dt, s0b) = floats(wire, s0);
    encode(
        meta,
        vec![
            (
                "ids",
                Dtype::U32,
                vec![ids.len()],
                bytemuck::cast_slice(ids).to_vec(),
            ),
            ("s0", dt, vec![ids.len(), hidden], s0b),
        ],
    )
}

/// Encodes a stepped `layer` request: `ids` for layer 0, else `hidden` `[m, d]` (the injected
/// input of `layer`). `wire` also sets the dtype of the answer.
pub fn layer_request(
    pos: usize,
    layer: usize,
    ids: Option<&[u32]>,
    hidden: &[f32],
    d: usize,
    rows: usize,
    wire: Wire,
) -> Vec<u8> {
    let m = ids.map_or(hidden.len() / d.max(1), <[u32]>::len);
    let mut meta = request_meta(pos, rows, m);
    meta.insert("layer".into(), layer.to_string());
    meta.insert("wire".into(), wire_name(wire).into());
    let t = match ids {
        Some(ids) => (
            "ids",
            Dtype::U32,
            vec![ids.len()],
            bytemuck::cast_slice(ids).to_vec(),
        ),
        None => {
            let (dt, b) = floats(wire, hidden);
            ("hidden", dt, vec![hidden.len() / d.max(1), d], b)
        }
    };
    encode(meta, vec![t])
}

/// Encodes the start of a stepped pass whose client injects before layer 0: the server embeds
/// `ids` and answers with the embedding rows (`[m, hidden]`), which come back as layer 0's
/// `hidden`.
pub fn embed_request(pos: usize, ids: &[u32], rows: usize, wire: Wire) -> Vec<u8> {
    let mut meta = request_meta(pos, rows, ids.len());
    meta.insert("layer".into(), "0".into());
    meta.insert("embed".into(), "only".into());
    meta.insert("wire".into(), wire_name(wire).into());
    encode(
        meta,
        vec![(
            "ids",
            Dtype::U32,
            vec![ids.len()],
            bytemuck::cast_slice(ids).to_vec(),
        )],
    )
}

fn wire_name(wire: Wire) -> &'static str {
    match wire {
        Wire::F32 => "f32",
        Wire::F16 => "f16",
    }
}

/// Encodes a `forward` response: `rows` rows of the final normed hidden state.
pub fn hidden_response(h: &[f32], rows: usize, hidden: usize, wire: Wire) -> Vec<u8> {
    let meta = HashMap::from([("protocol".to_string(), PROTOCOL.to_string())]);
    let (dt, b) = floats(wire, h);
    encode(meta, vec![("hidden", dt, vec![rows, hidden], b)])
}

/// One tensor of an adapter upload: name, dtype, shape and raw little-endian bytes.
pub type UploadTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Encodes the adapter upload: the injection/update tensors (as stored by shadow-peft) plus
/// the configuration the server needs to run them.
pub fn adapter_upload(tensors: Vec<UploadTensor>, meta: HashMap<String, String>) -> Vec<u8> {
    let mut meta = meta;
    meta.insert("protocol".into(), PROTOCOL.into());
    encode(
        meta,
        tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
            .collect(),
    )
}
