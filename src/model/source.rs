//! Where model files come from. The loader only needs bytes by file name, so the same code
//! loads from a local directory (native), from memory, or (in the browser) from fetched files.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::error::{Error, Result};

use super::stream::UploadedFile;

/// A set of named files (a model directory).
pub trait Source {
    /// How to name `file` in messages, e.g. `models/tiny/base/config.json`.
    fn location(&self, file: &str) -> String;

    /// Reads a whole file; `Ok(None)` when it does not exist. The bytes are shared, not
    /// copied, when the source already holds them.
    fn read(&self, file: &str) -> impl Future<Output = Result<Option<Arc<Vec<u8>>>>>;

    /// A safetensors file already parsed and uploaded to the device as it streamed in.
    fn uploaded(&self, _file: &str) -> Option<UploadedFile> {
        None
    }
}

/// Files held in memory.
#[derive(Default, Clone)]
pub struct MemSource {
    name: String,
    files: HashMap<String, Arc<Vec<u8>>>,
    uploaded: HashMap<String, UploadedFile>,
}

impl std::fmt::Debug for MemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSource")
            .field("name", &self.name)
            .field("files", &self.files.len())
            .field("uploaded", &self.uploaded.len())
            .finish()
    }
}

impl MemSource {
    /// An empty set called `name` in messages.
    pub fn new(name: impl Into<String>) -> Self {
        MemSource {
            name: name.into(),
            files: HashMap::new(),
            uploaded: HashMap::new(),
        }
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, file: impl Into<String>, bytes: Vec<u8>) {
        self.files.insert(file.into(), Arc::new(bytes));
    }

    /// Reserves room for `bytes` more bytes of `file` (e.g. from a Content-Length).
    pub fn reserve(&mut self, file: &str, bytes: usize) {
        let f = self.files.entry(file.to_string()).or_default();
        Arc::make_mut(f).reserve(bytes);
    }

    /// Appends a chunk to `file` (created empty if new): files arrive as streams.
    pub fn append(&mut self, file: &str, chunk: &[u8]) {
        let f = self.files.entry(file.to_string()).or_default();
        Arc::make_mut(f).extend_from_slice(chunk);
    }

    /// Adds a safetensors file that was uploaded while it streamed in.
    pub fn insert_uploaded(&mut self, file: impl Into<String>, up: UploadedFile) {
        self.uploaded.insert(file.into(), up);
    }

    /// The bytes of `file`, if held.
    pub fn bytes(&self, file: &str) -> Option<Arc<Vec<u8>>> {
        self.files.get(file).cloned()
    }

    /// Names of the files held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

impl Source for MemSource {
    fn location(&self, file: &str) -> String {
        format!("{}/{file}", self.name)
    }

    async fn read(&self, file: &str) -> Result<Option<Arc<Vec<u8>>>> {
        Ok(self.files.get(file).cloned())
    }

    fn uploaded(&self, file: &str) -> Option<UploadedFile> {
        self.uploaded.get(file).cloned()
    }
}

/// A directory on the local file system.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirSource {
    /// Opens `dir`, failing with a clear message when it is not a directory.
    pub fn open(dir: impl Into<std::path::PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.display().to_string(),
                msg: "no such model directory".into(),
            });
        }
        Ok(DirSource { dir })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Source for DirSource {
    fn location(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    async fn read(&self, file: &str) -> Result<Option<Arc<Vec<u8>>>> {
        let path = self.dir.join(file);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(Arc::new(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                path: path.display().to_string(),
                msg: e.to_string(),
            }),
        }
    }
}

/// Reads a file that must exist.
pub async fn read_required<S: Source>(src: &S, file: &str, what: &str) -> Result<Arc<Vec<u8>>> {
    src.read(file).await?.ok_or_else(|| Error::Io {
        path: src.location(file),
        msg: format!("missing ({what})"),
    })
}

/// Reads and parses a JSON file that must exist.
pub async fn read_json<S: Source>(src: &S, file: &str, what: &str) -> Result<serde_json::Value> {
    let bytes = read_required(src, file, what).await?;
    parse_json(&src.location(file), &bytes)
}

/// Reads and parses a JSON file that may be absent.
pub async fn read_json_opt<S: Source>(src: &S, file: &str) -> Result<Option<serde_json::Value>> {
    match src.read(file).await? {
        Some(b) => parse_json(&src.location(file), &b).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn parse_json(loc: &str, bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: loc.to_string(),
        msg: e.to_string(),
    })
}
