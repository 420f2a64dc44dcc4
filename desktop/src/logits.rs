//! `kestrel logits`: the logits after each token of a sequence, as float32 .npy of shape
//! [T, vocab], by one prefill or token by token through the cache (the contract's command).

use crate::cli::{LogitsArgs, Mode};
use crate::{model_ref, npy, open_gpu, open_model, CliResult};

pub fn run(a: &LogitsArgs) -> CliResult {
    let tokens = &a.tokens.0;
    let path = model_ref::resolve(&a.model, a.fetch.offline)?;
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let model = open_model(&gpu, &path, a.attention.options())?;
    let vocab = model.config().vocab;
    let max = model.architecture().max_context();
    if tokens.len() > max {
        return Err(format!(
            "{} tokens exceed the model's context of {max} positions",
            tokens.len()
        ));
    }
    let mut session = model
        .session(&gpu, tokens.len())
        .map_err(|e| e.to_string())?;
    let rows = match a.mode {
        Mode::Prefill => pollster::block_on(session.logits(tokens)).map_err(|e| e.to_string())?,
        Mode::Decode => {
            let mut all = Vec::with_capacity(tokens.len() * vocab);
            for t in tokens {
                all.extend(pollster::block_on(session.logits(&[*t])).map_err(|e| e.to_string())?);
            }
            all
        }
    };
    npy::write_f32(&a.out, &[tokens.len(), vocab], &rows)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))
}
