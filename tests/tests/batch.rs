//! Batched steps of several sequences over a paged KV cache (kestrel_runtime::batch): ragged
//! steps that mix prompt chunks and decode tokens of sequences at different positions give
//! each sequence the logits it gets alone in a session; each sequence draws with its own
//! settings; blocks freed by a closed sequence serve a new one; a full pool, a sequence
//! longer than the pool, a closed sequence and a model that cannot be batched are refused.

use std::sync::Arc;

use kestrel_runtime::batch::{BatchConfig, BatchSession, SeqId, Work};
use kestrel_runtime::kernels::{sample, Step};
use kestrel_runtime::rng::pcg_hash;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::Gpu;
use kestrel_tests::*;

/// Batched logits against a session's: the same f32 arithmetic in another order (matmul rows
/// against whole passes, attention row by row over pages against the session's kernel), so
/// they differ by rounding, a few ulp per sum over at most a few hundred terms.
const TOL: f64 = 2e-5;

/// One sequence of the test: its tokens and how they are fed (chunk lengths, in steps).
struct Script {
    tokens: Vec<u32>,
    /// Tokens fed in each step from `start` (0: not in that step).
    chunks: Vec<usize>,
    start: usize,
    sampling: Sampling,
}

fn sampled() -> Sampling {
    Sampling {
        temperature: 0.8,
        top_k: 20,
        top_p: 0.9,
        seed: 5,
    }
}

/// Three sequences at different positions: A reads a 5-token prompt then decodes; B reads
/// 17 tokens in chunks of 9 and 8, then decodes with sampling; C starts in the second step
/// with one token; D starts after A is closed, on A's freed blocks.
fn scripts(vocab: u32) -> Vec<Script> {
    let toks = |seed: u32, n: usize| tokens(vocab, seed, n);
    vec![
        Script {
            tokens: toks(1, 9),
            chunks: vec![5, 1, 1, 1, 1],
            start: 0,
            sampling: Sampling::default(),
        },
        Script {
            tokens: toks(2, 22),
            chunks: vec![9, 8, 1, 1, 1, 1, 1],
            start: 0,
            sampling: sampled(),
        },
        Script {
            tokens: toks(3, 6),
            chunks: vec![1, 1, 1, 1, 1, 1],
            start: 1,
            sampling: Sampling::default(),
        },
        Script {
            tokens: toks(4, 7),
            chunks: vec![4, 1, 1, 1],
            start: 5,
            sampling: Sampling::default(),
        },
    ]
}

/// The logits a session alone gives after each token of `tokens`.
fn alone(gpu: &Arc<Gpu>, model: &kestrel_models::Model, tokens: &[u32]) -> Vec<f32> {
    let mut s = model.session(gpu, tokens.len()).expect("session");
    pollster::block_on(s.logits(tokens)).expect("logits")
}

/// `tokens(seed, n)`: n token ids below `vocab`.
fn tokens(vocab: u32, seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| pcg_hash(seed * 977 + i) % vocab)
        .collect()
}

fn check_model(gpu: &Arc<Gpu>, name: &str) {
    let model = kestrel_models::load(gpu, &fixture(name)).expect("load");
    let scripts = scripts(model.architecture().vocab_size() as u32);
    check_scripts(gpu, &model, name, &scripts, 32);
}

/// Runs `scripts` in batched steps of up to three sequences of up to `context` tokens,
/// checking every step's logits and draws against each sequence's alone.
fn check_scripts(
    gpu: &Arc<Gpu>,
    model: &kestrel_models::Model,
    name: &str,
    scripts: &[Script],
    context: usize,
) {
    let what = format!("{name} on {}", gpu.backend_name());
    let arch = model.architecture();
    let vocab = arch.vocab_size();
    let config = BatchConfig {
        max_seqs: 3,
        context,
        pool_tokens: 3 * context,
    };
    let mut batch = BatchSession::new(gpu, arch, config).expect("batch session");
    let refs: Vec<Vec<f32>> = scripts
        .iter()
        .map(|s| alone(gpu, model, &s.tokens))
        .collect();
    let mut seqs: Vec<Option<SeqId>> = vec![None; scripts.len()];
    let mut fed = vec![0; scripts.len()];
    let steps = scripts
        .iter()
        .map(|s| s.start + s.chunks.len())
        .max()
        .unwrap_or(0);
    for step in 0..steps {
        let mut work = Vec::new();
        let mut who = Vec::new();
        for (i, s) in scripts.iter().enumerate() {
            let Some(&n) = step.checked_sub(s.start).and_then(|k| s.chunks.get(k)) else {
                if seqs[i].is_some() && step >= s.start + s.chunks.len() {
                    batch.close(seqs[i].take().expect("open"));
                }
                continue;
            };
            let seq = *seqs[i].get_or_insert_with(|| {
                let (seq, cached) = batch
                    .open(&s.tokens, s.tokens.len())
                    .expect("open")
                    .unwrap_or_else(|| panic!("{what}: no room for sequence {i} at step {step}"));
                assert_eq!(cached, 0, "{what}: no prefix of another sequence");
                seq
            });
            work.push(Work {
                seq,
                tokens: &s.tokens[fed[i]..fed[i] + n],
                sampling: s.sampling,
            });
            who.push(i);
            fed[i] += n;
        }
        let ids = pollster::block_on(batch.step(&work)).expect("step");
        let logits = pollster::block_on(batch.last_logits()).expect("logits");
        for (k, &i) in who.iter().enumerate() {
            let pos = fed[i] - 1;
            let got = &logits[k * vocab..][..vocab];
            let want = &refs[i][pos * vocab..][..vocab];
            assert_close(&format!("{what}: sequence {i} at {pos}"), got, want, TOL);
            let sm = scripts[i].sampling;
            let settings = Step {
                seed: pcg_hash(sm.seed ^ pcg_hash(pos as u32)),
                top_k: sm.top_k,
                temperature: sm.temperature,
                top_p: sm.top_p,
                ..Step::default()
            };
            let candidates = sample::reference(got, &settings);
            assert!(
                candidates.accepts(ids[k], 1e-5),
                "{what}: sequence {i} at {pos} drew {} (expected {})",
                ids[k],
                candidates.pick()
            );
        }
    }
}

#[test]
fn batched_steps_give_each_sequence_its_own_logits() {
    for gpu in gpus() {
        // GQA; q/k norms per head; a sliding window; experts.
        for name in ["llama_gqa", "qwen3", "mistral_window", "mixtral"] {
            check_model(&gpu, name);
        }
    }
}

/// Recurrent states in per-sequence slots: each family's convolutions and recurrences run
/// every sequence of a step from its own slot, zeroed when a sequence opens there (sequence
/// D reuses A's slot); the hybrids mix them with paged attention.
#[test]
fn recurrent_models_keep_a_state_per_sequence() {
    for gpu in gpus() {
        for name in [
            "mamba", "mamba2", "rwkv6", "rwkv7", "gla", "jamba", "zamba2",
        ] {
            check_model(&gpu, name);
        }
    }
}

/// Rings in pages: where every layer keeps a sliding window (Mistral's) or attention sinks,
/// a batched sequence keeps a ring of window + 64 rows (+ the sinks) in its blocks; two
/// sequences of 100 and 90 tokens run past it (prompt chunks of 64 and less, then decode
/// steps) and keep the logits they get alone, whose sessions keep rings of their own size.
#[test]
fn rings_and_sinks_wrap_in_their_blocks() {
    use kestrel_models::AttentionOptions;
    for gpu in gpus() {
        for (name, sinks) in [("mistral_window", None), ("llama_gqa", Some((4, 12)))] {
            let mut model = kestrel_models::load(&gpu, &fixture(name)).expect("load");
            let label = match sinks {
                Some(s) => {
                    let options = AttentionOptions {
                        streaming: Some(s),
                        sparse: None,
                    };
                    model.set_attention(options).expect("sinks");
                    format!("{name} with sinks {s:?}")
                }
                None => name.to_string(),
            };
            let vocab = model.architecture().vocab_size() as u32;
            let decode = |n: usize| vec![1; n];
            let scripts = [
                Script {
                    tokens: tokens(vocab, 7, 100),
                    chunks: [vec![40, 30], decode(30)].concat(),
                    start: 0,
                    sampling: Sampling::default(),
                },
                Script {
                    tokens: tokens(vocab, 8, 90),
                    chunks: [vec![64], decode(26)].concat(),
                    start: 1,
                    sampling: sampled(),
                },
            ];
            // A sequence of 100 tokens holds its ring's 72 or 80 rows (5 blocks), not 7 blocks.
            let config = BatchConfig {
                max_seqs: 3,
                context: 128,
                pool_tokens: 3 * 128,
            };
            let mut batch = BatchSession::new(&gpu, model.architecture(), config).expect("batch");
            let free = batch.free_tokens();
            let (seq, cached) = (batch.open(&scripts[0].tokens, 100))
                .expect("open")
                .expect("room");
            assert_eq!((free - batch.free_tokens(), cached), (80, 0), "{label}");
            batch.close(seq);
            check_scripts(&gpu, &model, &label, &scripts, 128);
        }
    }
}

#[test]
fn pool_limits_and_bad_steps_are_refused() {
    let gpu = gpus().remove(0);
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let config = BatchConfig {
        max_seqs: 2,
        context: 40,
        pool_tokens: 48,
    };
    let mut batch = BatchSession::new(&gpu, model.architecture(), config).expect("batch");
    assert_eq!(batch.pool_tokens(), 48);
    // Longer than the context or the pool: never.
    assert!(batch.open(&[], 41).is_err());
    let (a, _) = batch.open(&[], 32).expect("open").expect("room");
    // 32 reserved, 16 left: a second sequence of 17 waits, of 16 fits; no third slot.
    assert!(batch.open(&[], 17).expect("open").is_none());
    let (b, _) = batch.open(&[], 16).expect("open").expect("room");
    assert!(batch.open(&[], 1).expect("open").is_none());
    // Past the sequence's reservation, a token outside the vocabulary, a sequence twice.
    let long = vec![1u32; 17];
    let work = |seq, tokens| Work {
        seq,
        tokens,
        sampling: Sampling::default(),
    };
    assert!(pollster::block_on(batch.step(&[work(b, &long)])).is_err());
    assert!(pollster::block_on(batch.step(&[work(a, &[u32::MAX])])).is_err());
    assert!(pollster::block_on(batch.step(&[work(a, &[1]), work(a, &[2])])).is_err());
    // Closing frees the blocks at once; a closed sequence cannot step.
    batch.close(a);
    assert!(pollster::block_on(batch.step(&[work(a, &[1])])).is_err());
    assert_eq!(batch.free_tokens(), 32);
    assert!(batch.open(&[], 32).expect("open").is_some());
}

/// Prefix caching: a sequence whose prompt begins with another's full blocks shares them (a
/// prompt token always left to run), while both are open and after the first has closed,
/// and gets the logits it gets alone; once the pool needs those blocks they are reused and
/// the prefix runs again.
#[test]
fn sequences_share_the_blocks_of_a_common_prefix() {
    let gpu = gpus().remove(0);
    let model = kestrel_models::load(&gpu, &fixture("llama_gqa")).expect("load");
    let vocab = model.architecture().vocab_size();
    let config = BatchConfig {
        max_seqs: 2,
        context: 64,
        pool_tokens: 96,
    };
    let mut batch = BatchSession::new(&gpu, model.architecture(), config).expect("batch");
    let prompt: Vec<u32> = (0..40).map(|i| pcg_hash(i) % vocab as u32).collect();
    let mut other = prompt[..36].to_vec();
    other.extend([1, 2, 3, 4]);
    // Run `tokens`' rest in `seq` (holding `held`) and check the last logits against alone.
    let run = |batch: &mut BatchSession, seq, tokens: &[u32], held: usize| {
        let work = Work {
            seq,
            tokens: &tokens[held..],
            sampling: Sampling::default(),
        };
        pollster::block_on(batch.step(&[work])).expect("step");
        let got = pollster::block_on(batch.last_logits()).expect("logits");
        let want = alone(&gpu, &model, tokens);
        let last = &want[(tokens.len() - 1) * vocab..];
        assert_close(&format!("after {held} shared"), &got, last, TOL);
    };
    let (a, held) = batch.open(&prompt, 48).expect("open").expect("room");
    assert_eq!(held, 0);
    run(&mut batch, a, &prompt, held);
    // The same 32 tokens in two full blocks; the rest differs.
    let (b, held) = batch.open(&other, 48).expect("open").expect("room");
    assert_eq!(held, 32);
    run(&mut batch, b, &other, held);
    batch.close(a);
    batch.close(b);
    assert_eq!(batch.free_tokens(), 96);
    // After both closed, the blocks are still there.
    let (c, held) = batch.open(&prompt, 48).expect("open").expect("room");
    assert_eq!(held, 32);
    run(&mut batch, c, &prompt, held);
    batch.close(c);
    // Sequences that need the whole pool take them; the prefix is gone.
    let (d, _) = batch.open(&[], 64).expect("open").expect("room");
    let (e, _) = batch.open(&[], 32).expect("open").expect("room");
    batch.close(d);
    batch.close(e);
    let (_, held) = batch.open(&prompt, 48).expect("open").expect("room");
    assert_eq!(held, 0);
}

#[test]
fn models_without_a_batched_form_are_refused_by_name() {
    let gpu = gpus().remove(0);
    let model = kestrel_models::load(&gpu, &fixture("rwkv4")).expect("load");
    let config = BatchConfig {
        max_seqs: 2,
        context: 16,
        pool_tokens: 32,
    };
    let err = BatchSession::new(&gpu, model.architecture(), config)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("batched decoding") && text.contains("RWKV-4"),
        "{err}"
    );
}

/// The paged attention kernel (decode_attention's, PAGED) against the f64 reference: queries
/// of three sequences at ragged positions (one sequence with a chunk of three, so queries of
/// one sequence see each other's keys causally), each sequence's cache rows in blocks
/// scattered through the pool by a shuffled block table, the output poisoned first; each
/// sequence's layout linear, with a sliding window, a ring that has wrapped (cache row =
/// position mod 10) and attention sinks with RoPE inside attention; GQA groups of 1, 2 and
/// 3, head dims 16, 32 and 64. The gather of pick rows against its reference too.
#[test]
fn paged_attention_and_gather_match_their_references() {
    use kestrel_runtime::batch::{BatchRows, KV_BLOCK};
    use kestrel_runtime::kernels::attention::{self, AttnBuffers, AttnShape, CacheView, Paged};
    use kestrel_runtime::kernels::{copy, decode_attention};
    use kestrel_runtime::kv::KvLayout;
    use kestrel_runtime::rng::Rng;
    let windowed = KvLayout {
        window: Some(5),
        ..KvLayout::linear(48)
    };
    let ring = KvLayout::sliding(5, 100).expect("ring");
    let sinks = KvLayout::streaming(2, 6).expect("sinks");
    assert_eq!((ring.rows, sinks.rows), (10, 14));
    for gpu in gpus() {
        let mut rng = Rng::new(7);
        for (heads, kv_heads, d, layout) in [
            (4, 2, 16, KvLayout::linear(48)),
            (6, 2, 64, windowed),
            (6, 3, 32, ring),
            (8, 8, 32, sinks),
        ] {
            let what = format!(
                "paged attention {heads}/{kv_heads}x{d} {layout:?} on {}",
                gpu.backend_name()
            );
            let shape = AttnShape {
                heads,
                kv_heads,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                softcap: None,
            };
            let kvd = kv_heads * d;
            // In-attention RoPE (sinks): the frequencies of the rotated half.
            let freqs: Vec<f32> = (0..d / 2)
                .map(|i| 10000f32.powf(-2.0 * i as f32 / d as f32))
                .collect();
            let inv_freq = layout.rope_in_attention.then_some(freqs.as_slice());
            // (slot, position) of each query; slot 1 has a chunk of three.
            let queries = [(0usize, 0usize), (1, 10), (1, 11), (1, 12), (2, 37)];
            let (slots, width) = (3, 3);
            let pool_blocks = 1 + slots * width;
            let mut order: Vec<u32> = (1..pool_blocks as u32).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u32 + 1) as usize);
            }
            let table: Vec<u32> = order.clone();
            let rows = pool_blocks * KV_BLOCK;
            let (k, v) = (rng.vec(rows * kvd, 1.0), rng.vec(rows * kvd, 1.0));
            let q = rng.vec(queries.len() * heads * d, 1.0);
            let mut batch = <BatchRows as bytemuck::Zeroable>::zeroed();
            let mut want = Vec::new();
            for (t, &(slot, pos)) in queries.iter().enumerate() {
                batch.rows[t] = [pos as u32, 0, slot as u32, 0];
                // The sequence's cache rows in order, as its own unpaged cache.
                let row_of = |c: usize| {
                    table[slot * width + c / KV_BLOCK] as usize * KV_BLOCK + c % KV_BLOCK
                };
                let gather = |data: &[f32]| -> Vec<f32> {
                    (0..layout.rows)
                        .flat_map(|c| data[row_of(c) * kvd..][..kvd].to_vec())
                        .collect()
                };
                let (kl, vl) = (gather(&k), gather(&v));
                let cache = CacheView {
                    k: &kl,
                    v: &vl,
                    layout,
                };
                let qt = &q[t * heads * d..][..heads * d];
                want.extend(attention::reference(
                    qt, cache, shape, pos, true, inv_freq, None,
                ));
            }
            let (qb, kb, vb) = (
                upload_f32(&gpu, &q),
                upload_f32(&gpu, &k),
                upload_f32(&gpu, &v),
            );
            let tb = upload_u32(&gpu, &table);
            let fb = upload_f32(&gpu, &freqs);
            let out = poisoned(&gpu, q.len());
            let partial = poisoned(&gpu, q.len());
            let bb = gpu.uniform_buffer_init("batch", bytemuck::bytes_of(&batch));
            let sb = step_buffer(&gpu, &step(0, queries.len() as u32));
            let io = AttnBuffers {
                q: &qb,
                k_cache: &kb,
                v_cache: &vb,
                out: &out,
                inv_freq: inv_freq.map(|f| (&*fb, f.len())),
                mask: None,
                paged: Some(Paged {
                    rows: &bb,
                    table: &tb,
                    width,
                }),
            };
            let layout = layout.paged(rows);
            let dispatches = decode_attention::launch(
                &gpu,
                &sb,
                &io,
                &partial,
                shape,
                layout,
                1,
                queries.len(),
                true,
            )
            .expect("launch");
            run(&gpu, &dispatches);
            assert_close(&what, &read(&gpu, &out, want.len()), &want, 1e-5);

            // The gather: pick rows 3, 0 and 4 of the queries.
            let width = heads * d;
            let picks = [3u32, 0, 4];
            for (s, &r) in picks.iter().enumerate() {
                batch.picks[s] = [r, 0, 0, 0];
            }
            let bb = gpu.uniform_buffer_init("batch", bytemuck::bytes_of(&batch));
            let gathered = poisoned(&gpu, picks.len() * width);
            let g =
                copy::launch_gather(&gpu, &bb, &qb, &gathered, picks.len(), width).expect("gather");
            run(&gpu, &[g]);
            let want = copy::reference_gather(&q, &picks, width);
            assert_same_bits("gather", &read(&gpu, &gathered, want.len()), &want);
        }
    }
}
