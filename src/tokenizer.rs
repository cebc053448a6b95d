//! Text <-> token ids (`tokenizer.json` through the `tokenizers` crate) and chat templates
//! (`tokenizer_config.json`'s `chat_template`, rendered with minijinja).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::source::{read_json_opt, read_required, Source};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A tokenizer with its optional chat template.
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    location: String,
    chat_template: Option<String>,
    template_location: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("location", &self.location)
            .finish()
    }
}

fn special(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and (when present) `tokenizer_config.json` from `src`.
    pub async fn load<S: Source>(src: &S) -> Result<Self> {
        let tj = read_required(src, "tokenizer.json", "the tokenizer").await?;
        let cfg = read_json_opt(src, "tokenizer_config.json").await?;
        Self::from_parts(
            &src.location("tokenizer.json"),
            &tj,
            &src.location("tokenizer_config.json"),
            cfg.as_ref(),
        )
    }

    /// Builds a tokenizer from `tokenizer.json` bytes and the parsed `tokenizer_config.json`.
    pub fn from_parts(
        location: &str,
        tokenizer_json: &[u8],
        cfg_location: &str,
        cfg: Option<&serde_json::Value>,
    ) -> Result<Self> {
        let tok =
            tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| Error::Tokenizer {
                file: location.to_string(),
                msg: format!("not a valid tokenizer.json: {e}"),
            })?;
        let empty = serde_json::Value::Null;
        let cfg = cfg.unwrap_or(&empty);
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        Ok(TextTokenizer {
            tok,
            location: location.to_string(),
            chat_template,
            template_location: cfg_location.to_string(),
            bos_token: special(cfg, "bos_token"),
            eos_token: special(cfg, "eos_token"),
        })
    }

    /// Encodes text; `add_special` adds the tokenizer's own specials (e.g. a BOS), as
    /// Hugging Face's `tokenizer(text)` does.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer {
                file: self.location.clone(),
                msg: format!("cannot encode: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, true).map_err(|e| Error::Tokenizer {
            file: self.location.clone(),
            msg: format!("cannot decode: {e}"),
        })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let err = |msg: String| Error::Tokenizer {
            file: self.template_location.clone(),
            msg,
        };
        let tpl = self
            .chat_template
            .as_deref()
            .ok_or_else(|| err("no `chat_template` (needed for --chat)".into()))?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(10_000_000));
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tpl)
            .map_err(|e| err(format!("chat_template does not parse: {e}")))?;
        let t = env.get_template("chat").map_err(|e| err(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| err(format!("chat_template failed: {e}")))
    }
}

/// Turns a growing list of ids into text pieces as they become printable (never splits a
/// multi-byte character).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Adds a token; returns the new text, if any is complete.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}
