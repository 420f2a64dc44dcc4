//! tokenizer_config.json: the chat template and the BOS/EOS strings a model ships.

use serde_json::Value;

use crate::formats::config::JsonConfig;
use crate::model::ChatInfo;

/// `chat_template` may be a string or a list of named templates (the one named "default"
/// is used); special tokens may be strings or objects with a `content` field.
pub fn chat_info_from_tokenizer_config(c: &JsonConfig) -> ChatInfo {
    let token = |key: &str| match c.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    let template = match c.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template").and_then(|s| s.as_str()))
            .map(str::to_string),
        _ => None,
    };
    ChatInfo {
        template,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    }
}
