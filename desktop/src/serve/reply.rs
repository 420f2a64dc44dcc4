//! OpenAI's reply JSON: the whole reply of a request, its stream chunks and the usage.

use serde_json::{json, Map, Value};

use crate::engine::Summary;
use kestrel::serve::openai::Endpoint;

/// What every reply object of one request shares.
pub struct ReplyMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ReplyMeta {
    pub fn new(endpoint: Endpoint, model: &str, serial: u64) -> ReplyMeta {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ReplyMeta {
            endpoint,
            id: format!(
                "{}{:x}{:04x}",
                endpoint.id_prefix(),
                now.as_micros(),
                serial & 0xffff
            ),
            created: now.as_secs(),
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Text, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("system_fingerprint".into(), Value::Null);
        m.insert("choices".into(), choices);
        m
    }

    /// The whole reply of a non-streaming request.
    pub fn reply(&self, s: &Summary) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": s.text, "refusal": null},
                "logprobs": null,
                "finish_reason": s.finish.reason(),
            }),
            Endpoint::Text => json!({
                "index": 0,
                "text": s.text,
                "logprobs": null,
                "finish_reason": s.finish.reason(),
            }),
        };
        let mut m = self.wrap(false, json!([choice]));
        m.insert("usage".into(), usage(s));
        Value::Object(m)
    }

    /// A stream chunk: the first carries the role (chat), then text, then the finish reason.
    /// With include_usage every chunk carries `"usage": null`, as OpenAI's do.
    pub fn chunk(
        &self,
        role: bool,
        text: &str,
        finish: Option<&str>,
        include_usage: bool,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = if role {
                    json!({"role": "assistant", "content": ""})
                } else if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut m = self.wrap(true, json!([choice]));
        if include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    /// The last chunk when include_usage is set: no choices, the usage.
    pub fn usage_chunk(&self, s: &Summary) -> Value {
        let mut m = self.wrap(true, json!([]));
        m.insert("usage".into(), usage(s));
        Value::Object(m)
    }
}

/// OpenAI's usage; `cached_tokens`: prompt tokens found in the KV cache, not run again.
fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.reused_tokens},
    })
}
