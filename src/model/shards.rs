//! Checking the shards of a model against its index: the byte size and sha256 of each shard,
//! as `shadowpeft pack` lists them in `metadata.shards` of `model.safetensors.index.json`
//! ([`super::pack`]). An index without that list (an ordinary Hugging Face one) checks nothing.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What the index says a shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub size: u64,
    /// Lower-case hex, when the index carries one.
    pub sha256: Option<String>,
}

/// The shards an index lists with their sizes (`metadata.shards`), by file name; empty when it
/// lists none. `loc` names the index in errors.
pub fn listed(loc: &str, index: &serde_json::Value) -> Result<HashMap<String, ShardInfo>> {
    let Some(shards) = index.pointer("/metadata/shards") else {
        return Ok(HashMap::new());
    };
    let shards = shards
        .as_object()
        .ok_or_else(|| Error::config(loc, "metadata.shards", "expected an object of file names"))?;
    let mut out = HashMap::with_capacity(shards.len());
    for (file, s) in shards {
        let field = |f: &str| format!("metadata.shards.{file}.{f}");
        let size = s["size"]
            .as_u64()
            .ok_or_else(|| Error::config(loc, &field("size"), "expected a byte count"))?;
        let sha256 = match &s["sha256"] {
            serde_json::Value::Null => None,
            v => Some(
                v.as_str()
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| Error::config(loc, &field("sha256"), "expected 64 hex digits"))?
                    .to_ascii_lowercase(),
            ),
        };
        out.insert(file.clone(), ShardInfo { size, sha256 });
    }
    Ok(out)
}

/// Counts and hashes a shard as its bytes arrive.
#[derive(Debug, Default, Clone)]
pub struct ShardDigest {
    bytes: u64,
    hash: Sha256,
}

impl ShardDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.hash.update(chunk);
    }

    /// Checks the bytes seen against `want`; `file` names the shard in errors.
    pub fn check(self, file: &str, want: &ShardInfo) -> Result<()> {
        check_size(file, self.bytes, want)?;
        if let Some(w) = &want.sha256 {
            let got = hex(&self.hash.finalize());
            if &got != w {
                return Err(corrupt(
                    file,
                    format!("sha256 {got} differs from the index's {w}: the file is corrupt"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a shard's byte count against `want`.
pub fn check_size(file: &str, bytes: u64, want: &ShardInfo) -> Result<()> {
    if bytes == want.size {
        return Ok(());
    }
    Err(corrupt(
        file,
        format!(
            "{bytes} bytes, but the index lists {} (metadata.shards): the file is {}",
            want.size,
            if bytes < want.size {
                "incomplete"
            } else {
                "not the one the index describes"
            }
        ),
    ))
}

fn corrupt(file: &str, msg: String) -> Error {
    Error::Safetensors {
        file: file.to_string(),
        msg,
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(shards: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "metadata": { "shards": shards }, "weight_map": {} })
    }

    #[test]
    fn sizes_and_hashes_are_checked() {
        let data = b"shard bytes";
        let sha = hex(&Sha256::digest(data));
        let listed = listed(
            "i.json",
            &index(serde_json::json!({ "a.safetensors": { "size": 11, "sha256": sha } })),
        )
        .unwrap();
        let want = &listed["a.safetensors"];
        let digest = |parts: &[&[u8]]| {
            let mut d = ShardDigest::default();
            for p in parts {
                d.update(p);
            }
            d
        };
        assert!(digest(&[b"shard ", b"bytes"]).check("a", want).is_ok());
        let e = digest(&[b"shard byte"]).check("a", want).unwrap_err();
        assert!(
            e.to_string().contains("10 bytes") && e.to_string().contains("incomplete"),
            "{e}"
        );
        let e = digest(&[b"shard bytez"]).check("a", want).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        // No sha256: the size alone.
        let no_sha = ShardInfo {
            size: 11,
            sha256: None,
        };
        assert!(digest(&[b"shard bytez"]).check("a", &no_sha).is_ok());
    }

    #[test]
    fn a_plain_index_lists_nothing_and_a_bad_one_names_the_field() {
        assert!(listed("i.json", &serde_json::json!({ "weight_map": {} }))
            .unwrap()
            .is_empty());
        let e = listed(
            "i.json",
            &index(serde_json::json!({ "a": { "size": "big" } })),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("i.json") && e.contains("metadata.shards.a.size"),
            "{e}"
        );
        let e = listed(
            "i.json",
            &index(serde_json::json!({ "a": { "size": 1, "sha256": "xyz" } })),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("metadata.shards.a.sha256"), "{e}");
    }
}
