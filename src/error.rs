//! The library's one error type.
//!
//! Every variant names what the user can act on: the file, the field or tensor, and what was
//! expected. Nothing derived from user input panics; it becomes one of these.

/// Errors of the shadowpeft library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, permission, not a file).
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },

    /// A JSON file did not parse.
    #[error("{file}: malformed JSON: {msg}")]
    Json { file: String, msg: String },

    /// A configuration field is missing or has an unusable value.
    #[error("{file}: field `{field}`: {msg}")]
    Config {
        file: String,
        field: String,
        msg: String,
    },

    /// The model type is not one we run.
    #[error("{file}: unsupported architecture `{found}` (supported: {supported})")]
    UnsupportedArch {
        file: String,
        found: String,
        supported: String,
    },

    /// A safetensors file is truncated, corrupt or inconsistent.
    #[error("{file}: invalid safetensors file: {msg}")]
    Safetensors { file: String, msg: String },

    /// A tensor the model needs is absent.
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: String, name: String },

    /// A tensor has the wrong shape.
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor has a dtype we cannot widen to f32.
    #[error("{file}: tensor `{name}` has dtype {found}, expected F32, F16 or BF16")]
    Dtype {
        file: String,
        name: String,
        found: String,
    },

    /// The tokenizer or its chat template could not be loaded or applied.
    #[error("{file}: {msg}")]
    Tokenizer { file: String, msg: String },

    /// A token id is outside the model's vocabulary.
    #[error("token id {id} at position {position} is out of vocabulary (vocab_size {vocab_size})")]
    TokenOutOfRange {
        id: u32,
        position: usize,
        vocab_size: usize,
    },

    /// The request does not fit the model or the session (context length, empty prompt, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A prompt and the tokens asked for do not fit the session's positions.
    #[error("context length: the prompt's {prompt} tokens and max_tokens {max_tokens} exceed the {max_seq} positions of the model's KV cache (shorten the conversation, lower max_tokens, raise max_seq, or truncate the oldest turns)")]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        max_seq: usize,
    },

    /// No usable GPU adapter, or the adapter lacks what the model needs.
    #[error("GPU unavailable: {0}")]
    NoGpu(String),

    /// The backbone server could not be reached or refused a request.
    #[error("backbone {url}: {msg}")]
    Remote {
        url: String,
        /// HTTP status, when the server answered.
        status: Option<u16>,
        msg: String,
    },

    /// The GPU reported an error (out of memory, device lost, validation).
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(file: &str, field: &str, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.to_string(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
