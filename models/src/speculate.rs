//! Speculative decoding, exact: a drafter proposes the next few tokens (prompt lookup — the
//! tokens that followed the latest earlier occurrence of the last n tokens —, or a smaller
//! draft model decoding greedily), the target model runs the last token and the drafts in
//! one forward that draws a token after each of them on the GPU (`Head::Verify`, reading
//! back one id per position), and the drafts are kept up to the first one the target drew
//! differently, whose drawn token replaces it (`kernels::sample::accepted`). The drafts are
//! deterministic, so this is the standard accept/reject rule (see `kernels::sample`): at
//! temperature 0 the reply is the plain greedy one, and with sampling every token keeps the
//! target distribution — with the same seed, the same tokens as plain decoding wherever the
//! one-forward logits equal the token-by-token ones. Rejected drafts are cut off the session
//! again (`Session::truncate`), which is free for KV caches; models whose state cannot be cut
//! back for free (recurrent states, ring caches without room) are refused by name.

use kestrel_runtime::kernels::sample::accepted;
use kestrel_runtime::session::{Sampling, Session};

use crate::generate::GenerateError;
use crate::Model;

/// The longest n-gram prompt lookup matches (then shorter ones, down to 1).
pub const NGRAM_MAX: usize = 3;
/// The drafts of one verification pass by default (`--draft-tokens`).
pub const DEFAULT_DRAFT_TOKENS: usize = 6;
/// The most drafts of one verification pass (each length of pass keeps a plan).
pub const MAX_DRAFT_TOKENS: usize = 16;
/// The most tokens decoded plainly after verification passes that accepted nothing.
const MAX_BACKOFF: usize = 16;

/// Where drafts come from.
pub enum Drafter {
    /// Prompt lookup over the sequence so far.
    Ngram,
    /// A smaller model with the same vocabulary, decoding greedily in its own session.
    Model(Box<DraftModel>),
}

/// A draft model and its session (which keeps the prefix it shares with the target's
/// sequence between rounds and replies).
pub struct DraftModel {
    pub model: Model,
    pub session: Session,
}

/// Counters of a speculating generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Draft tokens verified.
    pub drafted: usize,
    /// Draft tokens the target drew too.
    pub accepted: usize,
    /// Verification passes (forwards of the target with drafts).
    pub passes: usize,
}

impl SpeculationStats {
    /// Accepted drafts per drafted token (0 when nothing was drafted).
    pub fn acceptance(&self) -> f64 {
        match self.drafted {
            0 => 0.0,
            d => self.accepted as f64 / d as f64,
        }
    }
}

/// A drafter, how many tokens it drafts, and its counters.
pub struct Speculator {
    drafter: Drafter,
    draft_tokens: usize,
    stats: SpeculationStats,
    /// Tokens to decode plainly before drafting again, and how many the next pass that
    /// accepts nothing will set that to (doubling from 1 to [`MAX_BACKOFF`]; 1 again after
    /// a pass that accepts a draft). A verification pass costs several decode steps on some
    /// adapters, so text that does not repeat is decoded in plain batches most of the time.
    plain_left: usize,
    backoff: usize,
}

impl Speculator {
    /// Prompt lookup, `draft_tokens` (1 to [`MAX_DRAFT_TOKENS`]) a pass.
    pub fn ngram(draft_tokens: usize) -> Result<Speculator, GenerateError> {
        Speculator::new(Drafter::Ngram, draft_tokens)
    }

    /// `draft` drafts for `target` in `session`, `draft_tokens` a pass. A draft whose
    /// vocabulary differs from the target's (size or any token) is refused, naming both.
    pub fn draft_model(
        target: &Model,
        draft: Model,
        session: Session,
        draft_tokens: usize,
    ) -> Result<Speculator, GenerateError> {
        if let Some(why) = vocabulary_difference(target, &draft) {
            return Err(GenerateError::DraftVocabulary {
                target: target.name.clone(),
                draft: draft.name.clone(),
                why,
            });
        }
        if !draft.config().causal {
            return Err(GenerateError::CannotSpeculate {
                model: draft.name.clone(),
                why: "it is a diffusion model",
            });
        }
        if !session.rewinds(draft_tokens) {
            return Err(GenerateError::CannotSpeculate {
                model: draft.name.clone(),
                why: CANNOT_REWIND,
            });
        }
        let draft = Box::new(DraftModel {
            model: draft,
            session,
        });
        Speculator::new(Drafter::Model(draft), draft_tokens)
    }

    fn new(drafter: Drafter, draft_tokens: usize) -> Result<Speculator, GenerateError> {
        if !(1..=MAX_DRAFT_TOKENS).contains(&draft_tokens) {
            return Err(GenerateError::DraftTokens(draft_tokens));
        }
        Ok(Speculator {
            drafter,
            draft_tokens,
            stats: SpeculationStats::default(),
            plain_left: 0,
            backoff: 1,
        })
    }

    pub fn draft_tokens(&self) -> usize {
        self.draft_tokens
    }
    pub fn stats(&self) -> SpeculationStats {
        self.stats
    }
    /// Start counting again (a new reply), drafting from its first token.
    pub fn reset_stats(&mut self) {
        self.stats = SpeculationStats::default();
        self.plain_left = 0;
        self.backoff = 1;
    }
    /// The draft model, if any (its name for a front end's report).
    pub fn draft(&self) -> Option<&DraftModel> {
        match &self.drafter {
            Drafter::Model(d) => Some(d),
            Drafter::Ngram => None,
        }
    }

    /// Refuse to speculate for `model` in `session` unless rejected drafts can be cut back
    /// for free.
    pub fn check_target(&self, model: &Model, session: &Session) -> Result<(), GenerateError> {
        let why = match model.config().causal {
            false => "it is a diffusion model",
            true if !session.rewinds(self.draft_tokens) => CANNOT_REWIND,
            true => return Ok(()),
        };
        Err(GenerateError::CannotSpeculate {
            model: model.name.clone(),
            why,
        })
    }

    /// Feed `last` to `session` with up to `n - 1` drafts after it (n >= 1 tokens may still
    /// be drawn and fed), and return the tokens drawn: the accepted drafts and the target's
    /// own token after them — or, when the drawn tokens hold one of `ends`, up to it. The
    /// session keeps the tokens fed before the last one returned, as `Session::decode` does.
    /// While backing off, a plain decode batch of at most `batch` steps (the generator's,
    /// which a streaming front end keeps short) runs instead.
    pub async fn step(
        &mut self,
        session: &mut Session,
        last: u32,
        n: usize,
        batch: usize,
        sampling: &Sampling,
        ends: &[u32],
    ) -> Result<Vec<u32>, GenerateError> {
        if self.plain_left > 0 {
            // Backing off after drafts that were all rejected: a plain decode batch.
            let steps = self.plain_left.min(batch).min(n).max(1);
            self.plain_left -= steps.min(self.plain_left);
            return Ok(session.decode(last, steps, sampling, ends).await?);
        }
        let k = self.draft_tokens.min(n.saturating_sub(1));
        let mut history = session.tokens().to_vec();
        history.push(last);
        let drafts = match (&mut self.drafter, k) {
            (_, 0) => Vec::new(),
            (Drafter::Ngram, k) => lookup(&history, k),
            (Drafter::Model(d), k) => d.draft(&history, k, ends).await?,
        };
        if drafts.is_empty() {
            return Ok(vec![session.next_token(&[last], sampling).await?]);
        }
        let start = session.pos();
        let mut fed = Vec::with_capacity(1 + drafts.len());
        fed.push(last);
        fed.extend_from_slice(&drafts);
        let drawn = session.verify(&fed, sampling).await?;
        let kept = accepted(&drafts, &drawn);
        self.stats.drafted += drafts.len();
        self.stats.accepted += kept;
        self.stats.passes += 1;
        if kept == 0 {
            self.plain_left = self.backoff;
            self.backoff = (2 * self.backoff).min(MAX_BACKOFF);
        } else {
            self.backoff = 1;
        }
        // An end token drawn inside the accepted run ends the reply there: nothing after it
        // was fed in plain decoding either.
        let take = drawn[..kept]
            .iter()
            .position(|t| ends.contains(t))
            .unwrap_or(kept);
        session.truncate(start + 1 + take);
        Ok(drawn[..=take].to_vec())
    }
}

const CANNOT_REWIND: &str =
    "its state cannot be cut back after rejected drafts (recurrent states or a ring cache)";

impl DraftModel {
    /// Up to `k` tokens the draft model decodes greedily after `history` (ending at one of
    /// `ends`); none when its context cannot hold them.
    async fn draft(
        &mut self,
        history: &[u32],
        k: usize,
        ends: &[u32],
    ) -> Result<Vec<u32>, GenerateError> {
        if history.len() + k > self.session.capacity() {
            return Ok(Vec::new());
        }
        let greedy = Sampling::default();
        let rest = self.session.reuse_prefix(history).to_vec();
        let first = self.session.next_token(&rest, &greedy).await?;
        let mut drafts = vec![first];
        if k > 1 && !ends.contains(&first) {
            let ends = &ends[..ends
                .len()
                .min(kestrel_runtime::kernels::decode_gate::MAX_END_IDS)];
            drafts.extend(self.session.decode(first, k - 1, &greedy, ends).await?);
        }
        Ok(drafts)
    }
}

/// Prompt lookup: the (up to `k`) tokens that followed the latest earlier occurrence of the
/// last n tokens of `history`, for n from [`NGRAM_MAX`] down to 1; none without a match.
pub fn lookup(history: &[u32], k: usize) -> Vec<u32> {
    let len = history.len();
    for n in (1..=NGRAM_MAX.min(len.saturating_sub(1))).rev() {
        let tail = &history[len - n..];
        // Starts whose match ends before the last token, so something follows it.
        if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == tail) {
            return history[i + n..].iter().take(k).copied().collect();
        }
    }
    Vec::new()
}

/// Why `draft` cannot draft for `target`: a different vocabulary size, or a token that
/// differs (ids compared as tokens where both have a Hugging Face tokenizer, as decoded text
/// otherwise); None when they agree.
fn vocabulary_difference(target: &Model, draft: &Model) -> Option<String> {
    let (tv, dv) = (target.config().vocab, draft.config().vocab);
    if tv != dv {
        return Some(format!("vocabularies of {tv} and {dv} tokens"));
    }
    let (t, d) = match (&target.tokenizer, &draft.tokenizer) {
        (Some(t), Some(d)) => (t, d),
        (None, None) => return None,
        _ => return Some("only one of them has a tokenizer".into()),
    };
    if t.vocab_size() != d.vocab_size() {
        return Some(format!(
            "tokenizers of {} and {} tokens",
            t.vocab_size(),
            d.vocab_size()
        ));
    }
    let differs = |id: u32| match (t.hf(), d.hf()) {
        (Some(a), Some(b)) => a.id_to_token(id) != b.id_to_token(id),
        _ => t.decode(&[id]).ok() != d.decode(&[id]).ok(),
    };
    (0..t.vocab_size() as u32)
        .find(|&id| differs(id))
        .map(|id| format!("token {id} differs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_the_latest_longest_match() {
        // "1 2 3" occurs at 0 and 5; the latest is taken, up to k tokens after it.
        let h = [1, 2, 3, 4, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(lookup(&h, 2), vec![7, 8]);
        assert_eq!(lookup(&h, 10), vec![7, 8, 1, 2, 3]);
        // No trigram match: the bigram "5 6", then the unigram.
        assert_eq!(lookup(&[5, 6, 1, 0, 6, 5, 6], 3), vec![1, 0, 6]);
        assert_eq!(lookup(&[4, 1, 2, 9, 9, 4], 3), vec![1, 2, 9]);
        // Nothing to match, or nothing before the tail.
        assert_eq!(lookup(&[1, 2, 3], 4), Vec::<u32>::new());
        assert_eq!(lookup(&[7], 4), Vec::<u32>::new());
        assert_eq!(lookup(&[], 4), Vec::<u32>::new());
        // A run of one token overlaps itself.
        assert_eq!(lookup(&[5, 5, 5, 5], 4), vec![5]);
    }

    #[test]
    fn drafts_are_accepted_up_to_the_first_difference() {
        assert_eq!(accepted(&[1, 2, 3], &[1, 2, 3, 4]), 3);
        assert_eq!(accepted(&[1, 2, 3], &[1, 5, 3, 4]), 1);
        assert_eq!(accepted(&[1, 2, 3], &[0, 2, 3, 4]), 0);
        assert_eq!(accepted(&[], &[7]), 0);
    }
}
