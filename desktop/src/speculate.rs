//! The speculative decoding a command asked for (`--speculate ngram`, `--draft-model PATH`):
//! the generator's speculator, a draft model loaded on the same device with a session as long
//! as the target's.

use std::sync::Arc;

use kestrel_models::speculate::{SpeculationStats, Speculator};
use kestrel_models::{AttentionOptions, Model};
use kestrel_runtime::Gpu;

use crate::cli::Speculation;
use crate::generate::cli_error;
use crate::{model_ref, open_model};

/// The speculator for `target` in a session of `capacity` tokens, or None when `spec` is off.
/// A draft model with another vocabulary is refused, naming both models.
pub fn open(
    gpu: &Arc<Gpu>,
    spec: &Speculation,
    target: &Model,
    capacity: usize,
    offline: bool,
) -> Result<Option<Speculator>, String> {
    let speculator = match spec {
        Speculation::Off => return Ok(None),
        Speculation::Ngram { draft_tokens } => Speculator::ngram(*draft_tokens),
        Speculation::Draft { path, draft_tokens } => {
            let path = model_ref::resolve(path, offline)?;
            let draft = open_model(gpu, &path, AttentionOptions::default())?;
            let session = draft
                .session(gpu, capacity)
                .map_err(|e| format!("the draft model's session: {e}"))?;
            Speculator::draft_model(target, draft, session, *draft_tokens)
        }
    };
    speculator.map(Some).map_err(cli_error)
}

/// "speculation: A of D drafts accepted (P%) in N verification passes".
pub fn describe(stats: &SpeculationStats) -> String {
    format!(
        "speculation: {} of {} drafts accepted ({:.1}%) in {} verification passes",
        stats.accepted,
        stats.drafted,
        100.0 * stats.acceptance(),
        stats.passes
    )
}
