//! The chat window's state machine, free of any drawing: the conversation, the reply being
//! streamed, the model being loaded. The window feeds it what the user did and what the engine
//! said; unit tests feed it the same without a window or a GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use kestrel_models::chat_template::Message;
use kestrel_models::generate::{Request, MAX_TEMPERATURE};
use kestrel_runtime::session::Sampling;

use crate::engine::{Event, Finish, Job, ModelInfo, Prompt, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum EntryStatus {
    /// Waiting in the engine's queue or running its prompt.
    Waiting,
    /// Pieces are arriving.
    Streaming,
    Complete,
    /// Stopped by the user; the text so far stays in the conversation.
    Stopped,
    /// The engine failed; the exchange is left out of later prompts.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub role: Role,
    pub text: String,
    pub status: EntryStatus,
    /// The prompt's length in tokens, once the engine has started on it.
    pub prompt_tokens: Option<usize>,
    /// What the engine reported when the reply finished.
    pub summary: Option<Summary>,
}

/// The reply being generated.
struct Pending {
    cancel: Arc<AtomicBool>,
    events: mpsc::Receiver<Event>,
}

/// What happened to a reply, for the log line the screenshot test waits for.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished { tokens: usize, finish: Finish },
    Failed(String),
}

pub struct Chat {
    pub entries: Vec<Entry>,
    pub system: String,
    pub temperature: f32,
    pub max_tokens: usize,
    pub seed: u32,
    /// Decode rate of the last finished reply.
    pub last_tokens_per_second: Option<f64>,
    pending: Option<Pending>,
}

impl Chat {
    pub fn new(system: String) -> Chat {
        Chat {
            entries: Vec::new(),
            system,
            temperature: 0.7,
            max_tokens: 256,
            seed: 0,
            last_tokens_per_second: None,
            pending: None,
        }
    }

    pub fn generating(&self) -> bool {
        self.pending.is_some()
    }

    /// True once Stop was pressed for the running reply.
    pub fn stopping(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.cancel.load(Ordering::SeqCst))
    }

    /// Add the user's message and an empty reply, and return the job that fills it in.
    pub fn send(&mut self, text: &str) -> Result<Job, String> {
        if self.generating() {
            return Err("a reply is still being generated".into());
        }
        let text = text.trim();
        if text.is_empty() {
            return Err("type a message first".into());
        }
        self.entries.push(Entry {
            role: Role::User,
            text: text.to_string(),
            status: EntryStatus::Complete,
            prompt_tokens: None,
            summary: None,
        });
        let messages = self.prompt();
        self.entries.push(Entry {
            role: Role::Assistant,
            text: String::new(),
            status: EntryStatus::Waiting,
            prompt_tokens: None,
            summary: None,
        });
        let (events, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        self.pending = Some(Pending {
            cancel: cancel.clone(),
            events: rx,
        });
        Ok(Job {
            prompt: Prompt::Chat(messages),
            request: Request {
                sampling: Sampling {
                    temperature: self.temperature.clamp(0.0, MAX_TEMPERATURE),
                    top_k: 0,
                    top_p: 1.0,
                    seed: self.seed,
                },
                max_tokens: self.max_tokens.max(1),
                ..Request::default()
            },
            streamed: true,
            cancel,
            events: events.into(),
        })
    }

    /// The conversation as the model sees it: the system prompt, then every exchange that
    /// did not fail.
    pub fn prompt(&self) -> Vec<Message> {
        let mut messages = Vec::new();
        if !self.system.trim().is_empty() {
            messages.push(Message::new("system", self.system.trim()));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let failed = |e: &Entry| matches!(e.status, EntryStatus::Failed(_));
            let skip = match e.role {
                // A question whose answer failed is left out with it.
                Role::User => self.entries.get(i + 1).is_some_and(failed),
                Role::Assistant => failed(e) || e.status == EntryStatus::Waiting,
            };
            if !skip {
                messages.push(Message::new(e.role.name(), &e.text));
            }
        }
        messages
    }

    /// Ask the running reply to stop; it ends when the engine says so.
    pub fn stop(&mut self) {
        if let Some(p) = &self.pending {
            p.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Forget the conversation (a running reply is cancelled and its events dropped).
    pub fn new_chat(&mut self) {
        self.stop();
        self.pending = None;
        self.entries.clear();
    }

    /// The job could not be queued: the reply fails with `message`.
    pub fn submit_failed(&mut self, message: String) -> Option<Outcome> {
        self.apply(Event::Failed(message))
    }

    /// Apply every event waiting on the channel, in order. Returns the outcome when the reply
    /// ended during this call.
    pub fn poll(&mut self) -> Option<Outcome> {
        let mut outcome = None;
        while let Some(p) = &self.pending {
            match p.events.try_recv() {
                Ok(event) => {
                    if let Some(o) = self.apply(event) {
                        outcome = Some(o);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    outcome = self.apply(Event::Failed(
                        "the engine stopped before the reply finished".into(),
                    ));
                }
            }
        }
        outcome
    }

    /// Apply one event to the reply being generated.
    pub fn apply(&mut self, event: Event) -> Option<Outcome> {
        self.pending.as_ref()?;
        let entry = match self.entries.last_mut() {
            Some(e) if e.role == Role::Assistant => e,
            _ => return None,
        };
        match event {
            Event::Started { prompt_tokens } => {
                entry.status = EntryStatus::Streaming;
                entry.prompt_tokens = Some(prompt_tokens);
                None
            }
            Event::Piece(piece) => {
                entry.status = EntryStatus::Streaming;
                entry.text.push_str(&piece);
                None
            }
            Event::Done(summary) => {
                self.pending = None;
                entry.status = if summary.finish == Finish::Cancelled {
                    EntryStatus::Stopped
                } else {
                    EntryStatus::Complete
                };
                // The summary's text is the whole reply; pieces may have been held back.
                if summary.finish != Finish::Cancelled {
                    entry.text = summary.text.clone();
                }
                if summary.completion_tokens > 1 {
                    self.last_tokens_per_second = Some(summary.tokens_per_second);
                }
                let outcome = Outcome::Finished {
                    tokens: summary.completion_tokens,
                    finish: summary.finish,
                };
                entry.summary = Some(summary);
                Some(outcome)
            }
            Event::Failed(message) => {
                self.pending = None;
                entry.status = EntryStatus::Failed(message.clone());
                Some(Outcome::Failed(message))
            }
        }
    }
}

/// The model slot of the window.
#[derive(Clone, Debug)]
pub enum ModelStatus {
    /// No model yet: the window asks for a path.
    Empty,
    Loading {
        path: String,
        progress: String,
    },
    Ready(ModelInfo),
    Failed(String),
}

/// What the loader thread reports.
pub enum LoadEvent<E> {
    Progress(String),
    Loaded(Result<E, String>),
}

impl ModelStatus {
    pub fn loading(&self) -> bool {
        matches!(self, ModelStatus::Loading { .. })
    }

    pub fn start(path: &str) -> Result<ModelStatus, String> {
        let path = path.trim();
        if path.is_empty() {
            return Err(
                "enter a model folder or file, a catalogue name or a Hugging Face repository"
                    .into(),
            );
        }
        Ok(ModelStatus::Loading {
            path: path.to_string(),
            progress: "starting".into(),
        })
    }

    /// Apply a loader event; returns the engine once it is loaded.
    pub fn apply<E>(&mut self, event: LoadEvent<E>, info: impl Fn(&E) -> ModelInfo) -> Option<E> {
        match event {
            LoadEvent::Progress(p) => {
                if let ModelStatus::Loading { progress, .. } = self {
                    *progress = p;
                }
                None
            }
            LoadEvent::Loaded(Ok(engine)) => {
                *self = ModelStatus::Ready(info(&engine));
                Some(engine)
            }
            LoadEvent::Loaded(Err(e)) => {
                let path = match self {
                    ModelStatus::Loading { path, .. } => path.clone(),
                    _ => String::new(),
                };
                *self = ModelStatus::Failed(if path.is_empty() {
                    e
                } else {
                    format!("cannot load {path}: {e}")
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(text: &str, tokens: usize, finish: Finish) -> Summary {
        Summary {
            text: text.into(),
            prompt_tokens: 5,
            reused_tokens: 0,
            completion_tokens: tokens,
            finish,
            first_token_seconds: 0.1,
            tokens_per_second: 20.0,
            first_token_at: None,
            speculation: None,
        }
    }

    #[test]
    fn events_stream_into_the_reply_in_order() {
        let mut chat = Chat::new("Be brief.".into());
        let job = chat.send("  hello  ").unwrap();
        match &job.prompt {
            Prompt::Chat(m) => assert_eq!(
                m,
                &vec![
                    Message::new("system", "Be brief."),
                    Message::new("user", "hello")
                ]
            ),
            _ => panic!("a chat job"),
        }
        assert!(chat.generating());
        assert_eq!(chat.entries[1].status, EntryStatus::Waiting);
        let tx = job.events.clone();
        tx.send(Event::Started { prompt_tokens: 5 }).unwrap();
        tx.send(Event::Piece("Hi".into())).unwrap();
        tx.send(Event::Piece(" there".into())).unwrap();
        assert_eq!(chat.poll(), None);
        assert_eq!(chat.entries[1].prompt_tokens, Some(5));
        assert_eq!(chat.entries[1].text, "Hi there");
        assert_eq!(chat.entries[1].status, EntryStatus::Streaming);
        assert!(chat.send("again").is_err(), "one reply at a time");
        tx.send(Event::Done(summary("Hi there", 2, Finish::Stop)))
            .unwrap();
        assert_eq!(
            chat.poll(),
            Some(Outcome::Finished {
                tokens: 2,
                finish: Finish::Stop
            })
        );
        assert!(!chat.generating());
        assert_eq!(chat.entries[1].status, EntryStatus::Complete);
        assert_eq!(chat.last_tokens_per_second, Some(20.0));
        // The next prompt carries the whole conversation.
        let job = chat.send("more").unwrap();
        let Prompt::Chat(m) = &job.prompt else {
            panic!("a chat job")
        };
        assert_eq!(m.len(), 4);
        assert_eq!(m[2], Message::new("assistant", "Hi there"));
        assert_eq!(m[3], Message::new("user", "more"));
    }

    #[test]
    fn stop_sets_the_cancel_flag_and_keeps_the_partial_reply() {
        let mut chat = Chat::new(String::new());
        let job = chat.send("count").unwrap();
        chat.apply(Event::Piece("1 2".into()));
        assert!(!chat.stopping());
        chat.stop();
        assert!(job.cancel.load(Ordering::SeqCst));
        assert!(chat.stopping() && chat.generating());
        let out = chat.apply(Event::Done(summary("1 2 3", 3, Finish::Cancelled)));
        assert_eq!(
            out,
            Some(Outcome::Finished {
                tokens: 3,
                finish: Finish::Cancelled
            })
        );
        assert_eq!(chat.entries[1].text, "1 2", "only what was shown stays");
        assert_eq!(chat.entries[1].status, EntryStatus::Stopped);
        let job = chat.send("next").unwrap();
        let Prompt::Chat(m) = &job.prompt else {
            panic!("a chat job")
        };
        assert_eq!(m[1], Message::new("assistant", "1 2"));
    }

    #[test]
    fn new_chat_cancels_and_clears() {
        let mut chat = Chat::new(String::new());
        let job = chat.send("hi").unwrap();
        chat.new_chat();
        assert!(job.cancel.load(Ordering::SeqCst));
        assert!(chat.entries.is_empty() && !chat.generating());
        // Late events of the old reply are ignored.
        assert_eq!(chat.apply(Event::Piece("late".into())), None);
        assert!(job.events.send(Event::Piece("x".into())).is_err());
        assert!(chat.send("fresh").is_ok());
    }

    #[test]
    fn errors_end_the_reply_and_leave_the_exchange_out_of_the_prompt() {
        let mut chat = Chat::new(String::new());
        assert!(chat.send("   ").is_err());
        assert!(chat.entries.is_empty());
        chat.send("hi").unwrap();
        let out = chat.apply(Event::Failed("out of memory".into()));
        assert_eq!(out, Some(Outcome::Failed("out of memory".into())));
        assert_eq!(
            chat.entries[1].status,
            EntryStatus::Failed("out of memory".into())
        );
        assert!(chat.prompt().is_empty());
        // A job that could not be queued fails the same way.
        chat.send("again").unwrap();
        chat.submit_failed("the engine has stopped".into());
        assert!(!chat.generating());
        assert!(chat.prompt().is_empty());
        // An engine that goes away mid-reply.
        let job = chat.send("third").unwrap();
        drop(job);
        assert!(matches!(chat.poll(), Some(Outcome::Failed(_))));
        assert!(!chat.generating());
    }

    #[test]
    fn model_status_follows_the_loader() {
        let info = |_: &u32| ModelInfo {
            id: "m".into(),
            name: "m".into(),
            adapter: "a".into(),
            backend: "vulkan".into(),
            context: 64,
            weight_bytes: 1 << 20,
            state_bytes: 1 << 10,
            load_seconds: 0.1,
            speculation: None,
            fallback_template: false,
            max_batch: 1,
            kv_pool: None,
        };
        assert!(ModelStatus::start("  ").is_err());
        let mut s = ModelStatus::start("models/x").unwrap();
        assert!(s.loading());
        assert!(s
            .apply(LoadEvent::Progress("allocating".into()), info)
            .is_none());
        assert!(matches!(&s, ModelStatus::Loading { progress, .. } if progress == "allocating"));
        assert!(s
            .apply(LoadEvent::Loaded(Err("no such file".into())), info)
            .is_none());
        assert!(matches!(&s, ModelStatus::Failed(e) if e == "cannot load models/x: no such file"));
        let mut s = ModelStatus::start("models/x").unwrap();
        assert_eq!(s.apply(LoadEvent::Loaded(Ok(7)), info), Some(7));
        assert!(matches!(&s, ModelStatus::Ready(i) if i.id == "m"));
    }
}
