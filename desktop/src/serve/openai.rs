//! OpenAI's request JSON for /v1/chat/completions and /v1/completions: requests are read
//! field by field (an unknown or unsupported field is a 400 naming it, never silently
//! ignored), their ranges checked by the generator's `Request::validate`, and turned into
//! engine jobs. Replies and stream chunks are built in the server's `reply.rs`.

use serde_json::{json, Map, Value};

use kestrel_models::chat_template::Message;
use kestrel_models::generate::Request;
use kestrel_runtime::session::Sampling;

use kestrel_models::generate::Prompt;

/// An error reply in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// For a 405: the method the path takes (the Allow header).
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            allow: None,
        }
    }

    pub fn with_status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            message: message.into(),
            param: None,
            allow: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Text,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Text => "cmpl-",
        }
    }
}

/// A checked completion request.
#[derive(Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
}

/// Defaults follow OpenAI: temperature 1 and top_p 1; top_k (an extension, as in vLLM and
/// llama.cpp) is off. Chat replies may run to the end of the context; completions stop at
/// 16 tokens unless told otherwise.
const DEFAULT_TEMPERATURE: f32 = 1.0;
const DEFAULT_TEXT_MAX_TOKENS: usize = 16;

/// Fields both endpoints take.
const COMMON: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "metadata",
    "store",
    "service_tier",
];
const CHAT_ONLY: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "response_format",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];
const TEXT_ONLY: &[&str] = &["prompt", "echo", "logprobs", "suffix", "best_of"];

pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(map) = v else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    };
    let only = match endpoint {
        Endpoint::Chat => CHAT_ONLY,
        Endpoint::Text => TEXT_ONLY,
    };
    if let Some(k) = map
        .keys()
        .find(|k| !COMMON.contains(&k.as_str()) && !only.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {k}"),
            Some(k),
        ));
    }
    let f = Fields(&map);
    f.common_defaults()?;
    // Chat requests may name the limit by its newer name.
    let max_key = match f.get("max_completion_tokens") {
        Some(_) if endpoint == Endpoint::Chat => "max_completion_tokens",
        _ => "max_tokens",
    };
    let (prompt, max_tokens) = match endpoint {
        Endpoint::Chat => {
            f.chat_defaults()?;
            let messages = f.get("messages").ok_or_else(|| {
                ApiError::invalid("you must provide a messages parameter", Some("messages"))
            })?;
            let max = f.count(max_key)?.unwrap_or(usize::MAX);
            (Prompt::Chat(parse_messages(messages)?), max)
        }
        Endpoint::Text => {
            f.text_defaults()?;
            let max = f.count(max_key)?.unwrap_or(DEFAULT_TEXT_MAX_TOKENS);
            (Prompt::Text(f.prompt()?), max)
        }
    };
    let request = Request {
        sampling: f.sampling()?,
        max_tokens,
        stop: f.stop()?,
        ..Request::default()
    };
    request.validate().map_err(|e| {
        let key = match e.field() {
            "max_tokens" => max_key,
            field => field,
        };
        ApiError::invalid(e.message(|_| format!("'{key}'")), Some(key))
    })?;
    let stream = f.bool("stream")?.unwrap_or(false);
    Ok(CompletionRequest {
        prompt,
        request,
        stream,
        include_usage: f.include_usage()?,
    })
}

/// The request's fields; a null counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, what: &str) -> ApiError {
        ApiError::invalid(format!("'{key}' must be {what}"), Some(key))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "a boolean")))
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<f32>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.wrong(key, "a number"))
            })
            .transpose()
    }

    /// A token count (the generator's checks want at least 1).
    fn count(&self, key: &str) -> Result<Option<usize>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                    .ok_or_else(|| self.wrong(key, "an integer of at least 1"))
            })
            .transpose()
    }

    fn sampling(&self) -> Result<Sampling, ApiError> {
        let top_k = match self.get("top_k") {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or_else(|| self.wrong("top_k", "a non-negative integer"))?,
        };
        let seed = match self.get("seed") {
            None => clock_seed(),
            Some(v) => v
                .as_i64()
                .map(fold_seed)
                .ok_or_else(|| self.wrong("seed", "an integer"))?,
        };
        Ok(Sampling {
            temperature: self.number("temperature")?.unwrap_or(DEFAULT_TEMPERATURE),
            top_k,
            top_p: self.number("top_p")?.unwrap_or(1.0),
            seed,
        })
    }

    /// A string or an array of strings (the generator takes up to four).
    fn stop(&self) -> Result<Vec<String>, ApiError> {
        let wrong = || self.wrong("stop", "a string or an array of up to 4 strings");
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(wrong))
                .collect(),
            Some(_) => Err(wrong()),
        }
    }

    fn include_usage(&self) -> Result<bool, ApiError> {
        let Some(v) = self.get("stream_options") else {
            return Ok(false);
        };
        let wrong = || {
            self.wrong(
                "stream_options",
                "an object with only a boolean include_usage",
            )
        };
        let o = v.as_object().ok_or_else(wrong)?;
        if o.keys().any(|k| k != "include_usage") {
            return Err(wrong());
        }
        match o.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(wrong()),
        }
    }

    /// A field we accept only at its default value (so a request that relies on a feature
    /// we lack is refused rather than answered wrongly).
    fn only_default(
        &self,
        key: &str,
        is_default: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Result<(), ApiError> {
        match self.get(key) {
            Some(v) if !is_default(v) => Err(ApiError::invalid(
                format!("'{key}' is not supported here: only {what} is"),
                Some(key),
            )),
            _ => Ok(()),
        }
    }

    fn common_defaults(&self) -> Result<(), ApiError> {
        let zero = |v: &Value| v.as_f64() == Some(0.0);
        if let Some(v) = self.get("model") {
            v.as_str().ok_or_else(|| self.wrong("model", "a string"))?;
        }
        if let Some(v) = self.get("user") {
            v.as_str().ok_or_else(|| self.wrong("user", "a string"))?;
        }
        self.only_default("n", |v| v.as_u64() == Some(1), "n = 1")?;
        self.only_default("frequency_penalty", zero, "0")?;
        self.only_default("presence_penalty", zero, "0")?;
        self.only_default(
            "logit_bias",
            |v| v.as_object().is_some_and(|o| o.is_empty()),
            "an empty object",
        )
    }

    fn chat_defaults(&self) -> Result<(), ApiError> {
        self.only_default(
            "response_format",
            |v| v.get("type").and_then(Value::as_str) == Some("text"),
            "{\"type\": \"text\"}",
        )?;
        self.only_default("logprobs", |v| v == &Value::Bool(false), "false")?;
        self.only_default("top_logprobs", |v| v.as_u64() == Some(0), "0")?;
        self.only_default(
            "tools",
            |v| v.as_array().is_some_and(|a| a.is_empty()),
            "an empty list",
        )?;
        self.only_default("tool_choice", |v| v == "none", "\"none\"")
    }

    fn text_defaults(&self) -> Result<(), ApiError> {
        self.only_default("echo", |v| v == &Value::Bool(false), "false")?;
        self.only_default("logprobs", |v| v.as_u64() == Some(0), "0")?;
        self.only_default("suffix", |v| v == "", "an empty string")?;
        self.only_default("best_of", |v| v.as_u64() == Some(1), "1")
    }

    /// A string, or an array holding one string.
    fn prompt(&self) -> Result<String, ApiError> {
        let wrong = || self.wrong("prompt", "a string or an array of one string");
        match self.get("prompt") {
            None => Err(ApiError::invalid(
                "you must provide a prompt parameter",
                Some("prompt"),
            )),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => Ok(s.clone()),
                _ => Err(wrong()),
            },
            Some(_) => Err(wrong()),
        }
    }
}

fn parse_messages(v: &Value) -> Result<Vec<Message>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("'messages' must be an array", Some("messages")))?;
    if list.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must hold at least one message",
            Some("messages"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, &format!("messages[{i}]")))
        .collect()
}

fn parse_message(v: &Value, param: &str) -> Result<Message, ApiError> {
    let bad = |what: &str, at: &str| ApiError::invalid(format!("'{at}' {what}"), Some(at));
    let m = v
        .as_object()
        .ok_or_else(|| bad("must be an object", param))?;
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "role" | "content" | "name"))
    {
        let at = format!("{param}.{k}");
        return Err(bad("is not supported", &at));
    }
    let role_at = format!("{param}.role");
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("system" | "user" | "assistant")) => r,
        // The newer name for a system message.
        Some("developer") => "system",
        _ => {
            return Err(bad(
                "must be one of system, developer, user, assistant",
                &role_at,
            ))
        }
    };
    let content_at = format!("{param}.content");
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(parts, &content_at)?,
        // An assistant turn that only called tools has no content.
        Some(Value::Null) if role == "assistant" => String::new(),
        _ => {
            return Err(bad(
                "must be a string or an array of text parts",
                &content_at,
            ))
        }
    };
    Ok(Message::new(role, &content))
}

/// `[{"type": "text", "text": ...}, ...]` joined by newlines (as vLLM does).
fn text_parts(parts: &[Value], param: &str) -> Result<String, ApiError> {
    let texts = parts
        .iter()
        .map(
            |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                _ => Err(ApiError::invalid(
                    format!("'{param}' may hold only {{\"type\": \"text\", \"text\": ...}} parts"),
                    Some(param),
                )),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(texts.join("\n"))
}

/// Without a seed every request samples differently, as OpenAI's do.
fn clock_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    fold_seed(nanos as i64)
}

fn fold_seed(seed: i64) -> u32 {
    let s = seed as u64;
    (s ^ (s >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<CompletionRequest, ApiError> {
        parse(Endpoint::Chat, body.as_bytes())
    }

    #[test]
    fn a_full_chat_request_is_read() {
        let r = chat(
            r#"{"model":"x","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
            "max_tokens":5,"temperature":0,"top_p":0.5,"seed":7,"stop":["x","y"],"n":1,
            "stream":true,"stream_options":{"include_usage":true},"frequency_penalty":0,
            "logit_bias":{},"response_format":{"type":"text"},"user":"u"}"#,
        )
        .expect("valid");
        let Prompt::Chat(m) = &r.prompt else {
            panic!("not chat")
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "a\nb");
        assert_eq!(r.request.max_tokens, 5);
        assert_eq!(r.request.sampling.temperature, 0.0);
        assert_eq!(r.request.sampling.seed, 7);
        assert_eq!(r.request.stop, vec!["x", "y"]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let param = |body: &str| chat(body).expect_err(body).param;
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(param("{"), None);
        assert_eq!(param("[]"), None);
        assert_eq!(param("{}"), Some("messages".into()));
        assert_eq!(param(&format!("{{{m},\"foo\":1}}")), Some("foo".into()));
        assert_eq!(param(&format!("{{{m},\"n\":2}}")), Some("n".into()));
        assert_eq!(
            param(&format!("{{{m},\"temperature\":\"hot\"}}")),
            Some("temperature".into())
        );
        assert_eq!(
            param(&format!("{{{m},\"max_tokens\":0}}")),
            Some("max_tokens".into())
        );
        assert_eq!(param(&format!("{{{m},\"stop\":5}}")), Some("stop".into()));
        // Ranges are the generator's: the same everywhere.
        assert_eq!(
            param(&format!("{{{m},\"temperature\":2.5}}")),
            Some("temperature".into())
        );
        assert_eq!(param(&format!("{{{m},\"top_p\":0}}")), Some("top_p".into()));
        assert_eq!(
            param(&format!("{{{m},\"max_completion_tokens\":0}}")),
            Some("max_completion_tokens".into())
        );
        assert_eq!(
            param(&format!("{{{m},\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}}")),
            Some("stop".into())
        );
        assert_eq!(
            param(&format!("{{{m},\"stop\":[\"\"]}}")),
            Some("stop".into())
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"tool","content":"x"}]}"#),
            Some("messages[0].role".into())
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#),
            Some("messages[0].content".into())
        );
        assert_eq!(param(r#"{"messages":[]}"#), Some("messages".into()));
    }

    #[test]
    fn completion_prompts_and_defaults() {
        let text = |body: &str| parse(Endpoint::Text, body.as_bytes());
        let r = text(r#"{"prompt":["once"]}"#).expect("valid");
        assert!(matches!(r.prompt, Prompt::Text(ref t) if t == "once"));
        assert_eq!(r.request.max_tokens, DEFAULT_TEXT_MAX_TOKENS);
        assert_eq!(r.request.sampling.temperature, DEFAULT_TEMPERATURE);
        assert!(text(r#"{"prompt":[1,2]}"#).is_err());
        assert!(text(r#"{"prompt":"a","messages":[]}"#).is_err());
        assert!(text(r#"{"prompt":"a","echo":true}"#).is_err());
    }
}
