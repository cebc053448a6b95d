//! The tokenizer and chat template against Hugging Face transformers' own output
//! (tests/fixtures/tokenizer_golden.json, made by scripts/gen_fixtures.py).

mod common;

use common::fixture;
use shadowpeft::{DirSource, Message, StreamDecoder, TextTokenizer};

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("tokenizer_golden.json")).unwrap()).unwrap()
}

fn tokenizer() -> TextTokenizer {
    pollster::block_on(TextTokenizer::load(
        &DirSource::open(fixture("qwen3_implicit/base")).unwrap(),
    ))
    .unwrap()
}

#[test]
fn encodings_match_transformers() {
    let (g, tok) = (golden(), tokenizer());
    for e in g["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            want,
            "encoding of {text:?}"
        );
        if !text.contains("<|") {
            // Decoding skips special tokens, so only plain text round-trips.
            assert_eq!(tok.decode(&want).unwrap(), text, "decoding of {text:?}");
        }
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let (g, tok) = (golden(), tokenizer());
    let chat = &g["chat"];
    let msgs: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(text, chat["rendered"].as_str().unwrap());
    let want: Vec<u32> = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.encode(&text, false).unwrap(), want);
}

#[test]
fn stream_decoder_never_splits_characters() {
    let tok = tokenizer();
    let text = "Unicode: naïve café – 日本語 🙂";
    let ids = tok.encode(text, false).unwrap();
    let mut d = StreamDecoder::default();
    let mut out = String::new();
    for id in ids {
        let piece = d.push(&tok, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "partial character emitted: {piece:?}"
        );
        out.push_str(&piece);
    }
    assert_eq!(out, text);
}
