//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template` or
//! tokenizer_config.json `chat_template`), rendered with minijinja and Python-compatible
//! string methods; ChatML when a model has none.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// ChatML, the fallback for models without a template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The work one render may do, in minijinja's fuel units (about one per instruction and one
/// per byte a value allocates), so that a template from a stranger's file that loops without
/// end or builds huge strings stops with an error: a base for the template's own work, plus
/// a share per byte of the conversation (templates copy each message a few times).
pub const RENDER_FUEL_BASE: u64 = 1 << 22;
pub const RENDER_FUEL_PER_BYTE: u64 = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// True when the model had no template and ChatML stands in.
    pub is_fallback: bool,
}

fn template_error(e: JinjaError) -> ModelError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    ModelError::ChatTemplate(msg)
}

impl ChatTemplate {
    /// A template from the model's own source; checked by compiling it once.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let t = ChatTemplate {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback: false,
        };
        t.environment()?;
        Ok(t)
    }

    /// The model's template when it has one, else ChatML.
    pub fn or_fallback(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate> {
        match source {
            Some(s) if !s.trim().is_empty() => Self::new(s, bos_token, eos_token),
            _ => {
                let mut t = Self::new(CHATML, bos_token, eos_token)?;
                t.is_fallback = true;
                Ok(t)
            }
        }
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(template_error)?;
        Ok(env)
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = self.environment()?;
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        let per_byte = RENDER_FUEL_PER_BYTE.saturating_mul(bytes as u64);
        env.set_fuel(Some(RENDER_FUEL_BASE.saturating_add(per_byte)));
        let tmpl = env.get_template("chat").map_err(template_error)?;
        tmpl.render(context! {
            messages => messages.iter().map(|m| context! { role => m.role.clone(), content => m.content.clone() }).collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(template_error)
    }
}
