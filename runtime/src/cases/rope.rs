//! RoPE in place at several positions, partial rotation and Llama-3 frequency scaling; RoPE
//! fused with the K/V cache writes.

use super::{poisoned, step, step_buffer, upload_f32, Case, Expect, Output, Prepared, ROPE_TOL};
use crate::kernels::rope::{self, Llama3Scaling};
use crate::kernels::rope_cache_write::{self, Heads, Io, QkNorm, QkSpan};
use crate::kv::KvLayout;
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    let llama3 = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    // (heads, head_dim, rot_dims, theta, scaling, pos, tokens)
    let specs = [
        (3, 64, 64, 10000.0, None, 0, 7),
        (3, 64, 64, 10000.0, None, 37, 7),
        (2, 64, 32, 10000.0, None, 11, 5), // partial rotary: dims 32..64 untouched
        (4, 128, 128, 500000.0, Some(llama3), 100, 5),
        (4, 128, 128, 500000.0, Some(llama3), 0, 29),
        (1, 16, 16, 10000.0, None, 3, 1),
    ];
    let mut cases = Vec::new();
    for (i, (heads, hd, rot, theta, scaling, pos, t)) in specs.into_iter().enumerate() {
        let seed = 900 + i as u64;
        let what = format!(
            "heads={heads} hd={hd} rot={rot} llama3={} pos={pos} T={t}",
            scaling.is_some()
        );
        let case = Case::new("rope", what, move |gpu| {
            let x = Rng::new(seed).vec(t * heads * hd, 2.0);
            let freqs = rope::inv_freq(theta, rot, scaling);
            let (xb, fb) = (upload_f32(gpu, &x), upload_f32(gpu, &freqs));
            let sb = step_buffer(gpu, &step(pos, t as u32));
            let d = rope::launch(gpu, &sb, &xb, &fb, t, heads, hd, rot)?;
            let want = rope::reference(&x, &freqs, pos as usize, heads, hd);
            Ok(Prepared::new(
                gpu,
                vec![d],
                vec![Output::close("", &xb, want, ROPE_TOL)],
            ))
        });
        cases.push(case.browser(rot == hd && scaling.is_none()));
    }
    cases
}

/// RoPE of q and k with both cache writes in one kernel (kernels::rope_cache_write), from one
/// fused q/k/v projection or three tensors, for every cache layout, with partial rotation
/// and without RoPE (keys cached before it), with q/k RMSNorms per head and over the whole
/// projection, with LongRoPE's per-pair factors and attention factor (scale 1.22: one more
/// f32 product, 1 ulp). Rotated q and cached k within [`ROPE_TOL`] (the same f32 angle as
/// rope's; the GPU's sin/cos; a norm adds an f32 sum of at most a few hundred squares, ~1e-7
/// relative), v exact; cache rows not written stay NaN.
pub fn rope_cache_write() -> Vec<Case> {
    let linear = KvLayout::linear;
    let sliding = |w, c| KvLayout::sliding(w, c).expect("a valid sliding window");
    let streaming = |s, w| KvLayout::streaming(s, w).expect("a valid sink + window layout");
    let (head, whole) = (Some(QkSpan::Head), Some(QkSpan::Whole));
    // LongRoPE (Phi-3.5): factors per rotated pair, cos and sin times the attention factor.
    let long = Some(1.2247449);
    // (layout, heads, kv_heads, head_dim, rot_dims (0: no RoPE), pos, T, fused, q/k norm,
    // LongRoPE attention factor)
    let specs = [
        (linear(40), 3, 1, 16, 16, 0, 7, true, None, None),
        (linear(40), 3, 1, 16, 16, 9, 1, false, None, None),
        (linear(40), 4, 2, 32, 16, 5, 3, true, None, None), // partial rotary
        (sliding(8, 4096), 2, 2, 8, 8, 29, 6, true, None, None), // ring wrap
        (sliding(8, 4096), 2, 1, 8, 8, 1003, 1, false, None, None),
        (streaming(3, 10), 2, 1, 8, 0, 1, 9, true, None, None), // sinks: keys cached unrotated
        (streaming(2, 5), 5, 5, 6, 0, 103, 1, false, None, None),
        (linear(40), 3, 1, 24, 24, 4, 5, true, head, None), // Qwen3, Gemma 3
        (sliding(8, 4096), 4, 2, 16, 16, 13, 1, true, head, None),
        (linear(40), 4, 2, 16, 0, 2, 3, false, head, None), // a NoPE layer
        (linear(40), 3, 3, 10, 10, 6, 4, true, whole, None), // OLMo-2
        (linear(40), 2, 1, 8, 4, 0, 1, false, whole, None),
        (linear(40), 4, 2, 16, 12, 5, 7, true, None, long), // Phi-4-mini's partial rotary
        (sliding(8, 4096), 3, 1, 24, 24, 17, 1, false, None, long),
    ];
    let mut cases = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let (layout, h, kvh, hd, rot, pos, t, fused, span, long) = spec;
        let what = format!(
            "{layout:?} heads={h}/{kvh} hd={hd} rot={rot} pos={pos} T={t} fused={fused} norm={span:?} longrope={long:?}"
        );
        let seed = 950 + i as u64;
        let heads = Heads {
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
        };
        cases.push(Case::new("rope_cache_write", what, move |gpu| {
            let (qd, kvd) = (h * hd, kvh * hd);
            let mut rng = Rng::new(seed);
            let [q, k, v] = [qd, kvd, kvd].map(|w| rng.vec(t * w, 2.0));
            let freqs = match long {
                // Factors as Phi-3.5's: from 1 (short) up to tens (long).
                Some(_) => {
                    let factors: Vec<f32> =
                        (0..rot / 2).map(|_| 11.0 + 10.0 * rng.uniform()).collect();
                    rope::longrope_inv_freq(10000.0, &factors)
                }
                None => rope::inv_freq(10000.0, rot, None),
            };
            let rope_scale = long.unwrap_or(1.0);
            let sb = step_buffer(gpu, &step(pos as u32, t as u32));
            let fb = upload_f32(gpu, &freqs);
            let inv_freq = (rot > 0).then_some((&*fb, freqs.len()));
            // Norm weights around 1 (as trained ones are), eps as Qwen3's.
            let norm_w: Vec<f32> = match span {
                Some(s) => rng
                    .vec(QkNorm::len(s, heads), 0.5)
                    .into_iter()
                    .map(|w| 1.0 + w)
                    .collect(),
                None => Vec::new(),
            };
            let nb = upload_f32(gpu, &norm_w);
            let eps = 1e-6;
            let qk_norm = span.map(|s| (&*nb, eps, s));
            // One [T, qd + 2 kvd] buffer or three.
            let (bufs, cols) = if fused {
                let rows: Vec<f32> = (0..t)
                    .flat_map(|r| {
                        let row = |x: &[f32], w: usize| x[r * w..(r + 1) * w].to_vec();
                        [row(&q, qd), row(&k, kvd), row(&v, kvd)].concat()
                    })
                    .collect();
                let w = qd + 2 * kvd;
                (
                    vec![upload_f32(gpu, &rows)],
                    [(w, 0), (w, qd), (w, qd + kvd)],
                )
            } else {
                let bufs = vec![
                    upload_f32(gpu, &q),
                    upload_f32(gpu, &k),
                    upload_f32(gpu, &v),
                ];
                (bufs, [(qd, 0), (kvd, 0), (kvd, 0)])
            };
            let src = [0, 1, 2].map(|j| &*bufs[j.min(bufs.len() - 1)]);
            let q_out = poisoned(gpu, t * qd);
            let caches = [0, 1].map(|_| poisoned(gpu, layout.rows * kvd));
            let io = Io {
                src,
                inv_freq,
                rope_scale,
                qk_norm,
                q_out: &q_out,
                caches: [&caches[0], &caches[1]],
                batch: None,
            };
            let d = rope_cache_write::launch(gpu, &sb, &io, cols, t, heads, layout)?;
            let mut want = [0, 1].map(|_| vec![f32::NAN; layout.rows * kvd]);
            let [wk, wv] = &mut want;
            let norm = span.map(|s| (&norm_w[..], eps, s));
            let want_q = rope_cache_write::reference(
                [&q, &k, &v],
                (&freqs, rope_scale),
                norm,
                [wk, wv],
                layout,
                pos,
                heads,
            );
            // The written rows of a cache, then the others (which must stay NaN).
            let written: Vec<usize> = (pos..pos + t).map(|j| layout.row(j)).collect();
            let rows = layout.rows;
            let split = move |words: &[u32], keep: bool| -> Vec<u32> {
                (0..rows)
                    .filter(|r| written.contains(r) == keep)
                    .flat_map(|r| words[r * kvd..(r + 1) * kvd].to_vec())
                    .collect()
            };
            let pick = |x: &[f32], keep: bool| -> Vec<f32> {
                let words: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
                split(&words, keep)
                    .into_iter()
                    .map(f32::from_bits)
                    .collect()
            };
            let words = rows * kvd;
            let mut outputs = vec![Output::close("q", &q_out, want_q, ROPE_TOL)];
            for (label, cache, want) in [("k", &caches[0], &want[0]), ("v", &caches[1], &want[1])] {
                let expect = match label == "k" && (rot > 0 || span.is_some()) {
                    true => Expect::Close(pick(want, true), ROPE_TOL),
                    false => Expect::Bits(pick(want, true)),
                };
                let s = split.clone();
                outputs.push(Output::new(label, cache, expect).derived(words, move |w| s(w, true)));
                let s = split.clone();
                let stale = format!("{label} untouched rows");
                let untouched = Output::bits(&stale, cache, pick(want, false));
                outputs.push(untouched.derived(words, move |w| s(w, false)));
            }
            Ok(Prepared::new(gpu, vec![d], outputs))
        }));
    }
    cases
}
