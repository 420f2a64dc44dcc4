//! Continuous batching for the engine: every job admitted runs in the same steps of one
//! [`BatchSession`], so concurrent clients share each weight read.
//!
//! Jobs wait in arrival order. The job at the front is admitted when a sequence slot is free
//! and the KV pool has the blocks for its prompt and longest reply (reserved at once, so an
//! admitted job never waits for memory); a job that could never fit fails at once with the
//! reason. Each step feeds every decoding sequence its last token and then prompt chunks of
//! the sequences still reading their prompts, oldest first, within [`STEP_ROWS`] rows: a long
//! prompt is read over several steps while the others keep decoding. A job whose client has
//! gone, or whose cancel flag is set, is dropped before the next step and its blocks freed.
//! A prompt whose leading blocks are in the pool (the same system prompt, the earlier turns
//! of a conversation) runs only the rest (`kestrel_runtime::kv_blocks`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use kestrel_models::chat_template::ChatTemplate;
use kestrel_models::generate::{Finish, Generation, Step};
use kestrel_models::Model;
use kestrel_runtime::batch::{BatchSession, SeqId, Work};

use crate::engine::{Event, Job, Summary};

/// Rows of one step: every decoding sequence's token, then prompt chunks up to this many.
pub const STEP_ROWS: usize = 64;

/// The most rows a step of a batch of `max_seqs` sequences runs.
pub fn max_step_rows(max_seqs: usize) -> usize {
    STEP_ROWS.max(max_seqs)
}

/// A job admitted to the batch.
struct Running {
    job: Job,
    seq: SeqId,
    gen: Generation,
    /// Prompt tokens found in the pool (prefix caching).
    reused: usize,
    started: Instant,
    first_token: Option<Instant>,
}

/// A job waiting, its prompt encoded once it reaches the front.
struct Waiting {
    job: Job,
    gen: Option<Generation>,
}

/// Run jobs from `jobs` in batches until every sender is gone.
pub fn serve(
    model: &Model,
    template: &ChatTemplate,
    batch: &mut BatchSession,
    jobs: mpsc::Receiver<Job>,
    waiting: &AtomicUsize,
    running: &AtomicUsize,
) {
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    let mut active: Vec<Running> = Vec::new();
    // Counted out before its last event, so that whoever hears it sees the job gone.
    let finish = |job: &Job, event: Event| {
        waiting.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(event);
    };
    loop {
        if active.is_empty() && queue.is_empty() {
            match jobs.recv() {
                Ok(job) => queue.push_back(Waiting { job, gen: None }),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            queue.push_back(Waiting { job, gen: None });
        }
        admit(model, template, batch, &mut queue, &mut active, &finish);
        running.store(active.len(), Ordering::SeqCst);
        // Jobs leave `running` before their last event (see `finish`).
        let leave = |r: &Running, event: Event| {
            running.fetch_sub(1, Ordering::SeqCst);
            finish(&r.job, event);
        };
        if active.is_empty() {
            continue;
        }
        // Decoding sequences first (one row each), then prompt chunks, oldest first.
        let mut plan: Vec<(usize, usize)> = (active.iter().enumerate())
            .filter(|(_, r)| r.gen.to_feed().len() == 1)
            .map(|(i, _)| (i, 1))
            .collect();
        let mut rows = plan.len();
        for (i, r) in active.iter().enumerate() {
            let n = r.gen.to_feed().len().min(batch.max_seq_rows());
            let budget = STEP_ROWS.saturating_sub(rows);
            if n > 1 && budget > 0 {
                plan.push((i, n.min(budget)));
                rows += n.min(budget);
            }
        }
        let work: Vec<Work> = plan
            .iter()
            .map(|&(i, n)| Work {
                seq: active[i].seq,
                tokens: &active[i].gen.to_feed()[..n],
                sampling: active[i].job.request.sampling,
            })
            .collect();
        let ids = match pollster::block_on(batch.step(&work)) {
            Ok(ids) => ids,
            Err(e) => {
                // The pool's contents are suspect: every running job fails.
                for r in active.drain(..) {
                    batch.close(r.seq);
                    leave(&r, Event::Failed(e.to_string()));
                }
                continue;
            }
        };
        // What ends each job this step: None goes on.
        let mut ends: Vec<Option<Event>> = (0..active.len()).map(|_| None).collect();
        for (&(i, n), id) in plan.iter().zip(ids) {
            let r = &mut active[i];
            if n < r.gen.to_feed().len() {
                r.gen.fed(n);
                continue;
            }
            let step = r.gen.drawn(model, id);
            r.first_token.get_or_insert_with(Instant::now);
            ends[i] = match step {
                Ok(Step::Text(piece)) => {
                    if !piece.is_empty() && r.job.events.send(Event::Piece(piece)).is_err() {
                        r.gen.cancel();
                    }
                    // A reply's last text comes with its end.
                    r.gen.finish().map(|_| Event::Done(r.summary()))
                }
                Ok(Step::Done(_)) => Some(Event::Done(r.summary())),
                Err(e) => Some(Event::Failed(e.to_string())),
            };
        }
        // Finished and cancelled jobs leave; their blocks are free for the next admission.
        let mut kept = Vec::with_capacity(active.len());
        for (mut r, end) in active.drain(..).zip(ends) {
            let end = end.or_else(|| {
                r.job.abandoned().then(|| {
                    r.gen.cancel();
                    Event::Done(r.summary())
                })
            });
            match end {
                Some(event) => {
                    batch.close(r.seq);
                    leave(&r, event);
                }
                None => kept.push(r),
            }
        }
        active = kept;
    }
}

/// Admit waiting jobs in order while the batch has room; fail those that never will fit
/// and drop those whose client has gone.
fn admit(
    model: &Model,
    template: &ChatTemplate,
    batch: &mut BatchSession,
    queue: &mut VecDeque<Waiting>,
    active: &mut Vec<Running>,
    finish: &impl Fn(&Job, Event),
) {
    // The front job leaves the queue, ending with `event`.
    let refuse = |queue: &mut VecDeque<Waiting>, event: Event| {
        if let Some(w) = queue.pop_front() {
            finish(&w.job, event);
        }
    };
    while let Some(front) = queue.front_mut() {
        let job = &front.job;
        if job.abandoned() {
            refuse(queue, Event::Done(Summary::empty(0, Finish::Cancelled)));
            continue;
        }
        let gen = match front.gen.take() {
            Some(g) => Ok(g),
            None => (job.prompt.encode(model, Some(template)))
                .and_then(|ids| Generation::detached(model, batch.context(), ids, &job.request)),
        };
        let gen = match gen {
            Ok(g) => front.gen.insert(g),
            Err(e) => {
                refuse(queue, Event::Failed(e.to_string()));
                continue;
            }
        };
        let (seq, cached) = match batch.open(gen.to_feed(), gen.reserve()) {
            Ok(Some(opened)) => opened,
            Ok(None) => return,
            Err(e) => {
                refuse(queue, Event::Failed(e.to_string()));
                continue;
            }
        };
        let Some(Waiting {
            job,
            gen: Some(mut gen),
        }) = queue.pop_front()
        else {
            continue;
        };
        // The prompt's leading blocks another sequence already wrote are not run again.
        gen.fed(cached);
        let prompt_tokens = gen.prompt_tokens();
        if job.events.send(Event::Started { prompt_tokens }).is_err() {
            batch.close(seq);
            finish(&job, Event::Done(Summary::empty(0, Finish::Cancelled)));
            continue;
        }
        active.push(Running {
            job,
            seq,
            gen,
            reused: cached,
            started: Instant::now(),
            first_token: None,
        });
    }
}

impl Running {
    fn summary(&self) -> Summary {
        let g = &self.gen;
        let produced = g.completion_tokens();
        let decode = self.first_token.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Summary {
            text: g.reply().to_string(),
            prompt_tokens: g.prompt_tokens(),
            reused_tokens: self.reused,
            completion_tokens: produced,
            finish: g.finish().unwrap_or(Finish::Cancelled),
            first_token_seconds: self
                .first_token
                .map_or(0.0, |t| (t - self.started).as_secs_f64()),
            tokens_per_second: if decode > 0.0 && produced > 1 {
                (produced - 1) as f64 / decode
            } else {
                0.0
            },
            first_token_at: self.first_token,
            speculation: None,
        }
    }
}
