//! The runtime's kernels against their CPU references, run in the browser on the WebGPU
//! device (the same cases as tests/tests/kernels.rs, quant.rs and linear_scan.rs, cut to a
//! representative set): random inputs at ragged sizes (not multiples of tiles or
//! workgroups), every output buffer filled with NaN first so an unwritten element fails.
//!
//! Each case reports `||gpu - ref|| / ||ref||`; it passes at or below its tolerance, the
//! native tests' own: exact (0) for gathers and single correctly-rounded f32 ops, 1e-5 for
//! sums of up to a few hundred f32 terms, attention and RoPE (see tests/tests/kernels.rs
//! for the reasoning). A NaN makes the error NaN, which fails.

use std::sync::Arc;

use half::f16;
use kestrel_runtime::kernels::attention::{self, AttnBuffers, AttnShape, CacheView};
use kestrel_runtime::kernels::elementwise::{self, Elementwise};
use kestrel_runtime::kernels::linear_scan::{self, Decay, ScanBuffers, ScanInputs, ScanShape};
use kestrel_runtime::kernels::{
    self as kernels, decode_attention, embedding, matmul, matvec, moe, rms_norm, rope, softmax,
    Dispatch, Step,
};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::quant::{self, QuantFormat};
use kestrel_runtime::readback;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::engine::{gpu_info, open_gpu};
use crate::error::Result;

const EXACT: f64 = 0.0;
const SUM_TOL: f64 = 1e-5;
const ATTN_TOL: f64 = 1e-5;
const ROPE_TOL: f64 = 1e-5;
const SCAN_TOL: f64 = 1e-5;

/// One compared output.
struct Case {
    kernel: &'static str,
    what: String,
    err: f64,
    tol: f64,
}

/// `||out - reference|| / ||reference||` in f64; NaN when `out` holds a NaN or the lengths differ.
fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() {
        return f64::NAN;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        let d = o as f64 - r as f64;
        diff += d * d;
        norm += r as f64 * r as f64;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

struct Checker {
    gpu: Arc<Gpu>,
    cases: Vec<Case>,
}

impl Checker {
    fn upload(&self, data: &[f32]) -> wgpu::Buffer {
        self.gpu
            .storage_buffer_init("check f32", bytemuck::cast_slice(data))
    }
    fn upload_u32(&self, data: &[u32]) -> wgpu::Buffer {
        self.gpu
            .storage_buffer_init("check u32", bytemuck::cast_slice(data))
    }
    fn poisoned(&self, n: usize) -> wgpu::Buffer {
        self.upload(&vec![f32::NAN; n.max(1)])
    }
    fn step(&self, pos: usize, n_tokens: usize) -> wgpu::Buffer {
        let s = Step {
            pos: pos as u32,
            n_tokens: n_tokens as u32,
            top_p: 1.0,
            ..Step::default()
        };
        self.gpu.uniform_buffer_init("step", bytemuck::bytes_of(&s))
    }
    /// Submit, then read `n` floats of `buf` (the read waits for the work).
    async fn run(&self, d: &[Dispatch], buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        kernels::submit(&self.gpu, d);
        let out = readback::read_f32(&self.gpu, buf, 0, n).await?;
        self.gpu.check()?;
        Ok(out)
    }
    fn record(&mut self, kernel: &'static str, what: String, out: &[f32], want: &[f32], tol: f64) {
        let err = if tol == EXACT {
            let same = out.len() == want.len()
                && out
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits() || a == b);
            if same {
                0.0
            } else {
                rel_err(out, want).max(f64::MIN_POSITIVE)
            }
        } else {
            rel_err(out, want)
        };
        self.cases.push(Case {
            kernel,
            what,
            err,
            tol,
        });
    }

    async fn matmul(&mut self, m: usize, n: usize, k: usize, f16w: bool, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k, 1.0);
        let (w, w_ref) = self.weight(n, k, &rng.vec(n * k, 1.0), f16w)?;
        let b = rng.vec(n, 1.0);
        let (xb, bb, y) = (self.upload(&x), self.upload(&b), self.poisoned(m * n));
        let d = matmul::launch(&self.gpu, &xb, &w, Some(&bb), &y, m)?;
        let out = self.run(&d, &y, m * n).await?;
        let want = matmul::reference(&x, &w_ref, Some(&b), m, n, k);
        self.record(
            "matmul",
            format!("{m}x{n}x{k} f16={f16w}"),
            &out,
            &want,
            SUM_TOL,
        );
        Ok(())
    }

    async fn matvec(&mut self, n: usize, k: usize, f16w: bool, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(k, 1.0);
        let (w, w_ref) = self.weight(n, k, &rng.vec(n * k, 1.0), f16w)?;
        let (xb, y) = (self.upload(&x), self.poisoned(n));
        let d = matvec::launch(&self.gpu, &xb, &w, None, &y)?;
        let out = self.run(&d, &y, n).await?;
        let want = matvec::reference(&x, &w_ref, None, n, k);
        self.record(
            "matvec",
            format!("{n}x{k} f16={f16w}"),
            &out,
            &want,
            SUM_TOL,
        );
        Ok(())
    }

    /// A weight in f32, or rounded to f16 (for the reference too: the GPU widens exactly).
    fn weight(
        &self,
        rows: usize,
        cols: usize,
        data: &[f32],
        f16w: bool,
    ) -> Result<(Arc<GpuWeight>, Vec<f32>)> {
        if f16w {
            let bits: Vec<u16> = data.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let rounded = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
            let w = GpuWeight::upload(&self.gpu, "w16", rows, cols, HostData::F16(&bits))?;
            Ok((w, rounded))
        } else {
            let w = GpuWeight::upload(&self.gpu, "w32", rows, cols, HostData::F32(data))?;
            Ok((w, data.to_vec()))
        }
    }

    /// Random valid ggml blocks: random bytes with each f16 scale set to a finite normal.
    fn quant_weight(
        &self,
        format: QuantFormat,
        rows: usize,
        cols: usize,
        rng: &mut Rng,
    ) -> Result<(Arc<GpuWeight>, Vec<f32>)> {
        let fields: &[usize] = match format {
            QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => &[0],
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => {
                &[0, 2]
            }
            QuantFormat::Q6_K => &[208],
        };
        let mut bytes: Vec<u8> = (0..format.file_bytes(rows * cols))
            .map(|_| rng.next_u32() as u8)
            .collect();
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            for &off in fields {
                let v =
                    2.0f32.powf(-9.0 + 6.0 * (rng.uniform() * 0.5 + 0.5)) * rng.uniform().signum();
                block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        let w = GpuWeight::upload(
            &self.gpu,
            format.name(),
            rows,
            cols,
            HostData::Quant(format, &bytes),
        )?;
        Ok((w, quant::dequantize(format, &bytes)))
    }

    async fn matvec_quant(
        &mut self,
        format: QuantFormat,
        n: usize,
        k: usize,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(k, 1.0);
        let (w, w_ref) = self.quant_weight(format, n, k, &mut rng)?;
        let (xb, y) = (self.upload(&x), self.poisoned(n));
        let d = matvec::launch(&self.gpu, &xb, &w, None, &y)?;
        let out = self.run(&d, &y, n).await?;
        let want = matvec::reference(&x, &w_ref, None, n, k);
        self.record(
            "matvec",
            format!("{} {n}x{k}", format.name()),
            &out,
            &want,
            SUM_TOL,
        );
        Ok(())
    }

    async fn matmul_quant(
        &mut self,
        format: QuantFormat,
        m: usize,
        n: usize,
        k: usize,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k, 1.0);
        let (w, w_ref) = self.quant_weight(format, n, k, &mut rng)?;
        let (xb, y) = (self.upload(&x), self.poisoned(m * n));
        let d = matmul::launch(&self.gpu, &xb, &w, None, &y, m)?;
        let out = self.run(&d, &y, m * n).await?;
        let want = matmul::reference(&x, &w_ref, None, m, n, k);
        self.record(
            "matmul",
            format!("{} {m}x{n}x{k}", format.name()),
            &out,
            &want,
            SUM_TOL,
        );
        Ok(())
    }

    async fn embedding(
        &mut self,
        format: Option<QuantFormat>,
        vocab: usize,
        dim: usize,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let (table, table_ref) = match format {
            Some(f) => self.quant_weight(f, vocab, dim, &mut rng)?,
            None => self.weight(vocab, dim, &rng.vec(vocab * dim, 1.0), true)?,
        };
        let v = vocab as u32;
        let mut ids = vec![0, v - 1, 1, 17, 17, v / 2, v - 2];
        ids.extend((0..6).map(|_| rng.below(v)));
        let (idb, out) = (self.upload_u32(&ids), self.poisoned(ids.len() * dim));
        let d = embedding::launch(&self.gpu, &idb, &table, &out, ids.len())?;
        let got = self.run(&d, &out, ids.len() * dim).await?;
        let want = embedding::reference(&ids, &table_ref, dim);
        let name = format.map_or("f16", |f| f.name());
        self.record(
            "embedding",
            format!("{name} {vocab}x{dim}"),
            &got,
            &want,
            EXACT,
        );
        Ok(())
    }

    async fn rms_norm(&mut self, rows: usize, dim: usize, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = rng.vec(rows * dim, 3.0).iter().map(|v| v + 1.5).collect();
        let w = rng.vec(dim, 1.5);
        let (xb, wb, out) = (self.upload(&x), self.upload(&w), self.poisoned(rows * dim));
        let d = rms_norm::launch(&self.gpu, &xb, &wb, &out, rows, dim, 1e-5)?;
        let got = self.run(&[d], &out, rows * dim).await?;
        let want = rms_norm::reference(&x, &w, dim, 1e-5);
        self.record("rms_norm", format!("{rows}x{dim}"), &got, &want, SUM_TOL);
        Ok(())
    }

    async fn rope(
        &mut self,
        heads: usize,
        hd: usize,
        pos: usize,
        t: usize,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(t * heads * hd, 2.0);
        let freqs = rope::inv_freq(10000.0, hd, None);
        let (xb, fb, sb) = (self.upload(&x), self.upload(&freqs), self.step(pos, t));
        let d = rope::launch(&self.gpu, &sb, &xb, &fb, t, heads, hd, hd)?;
        let got = self.run(&[d], &xb, x.len()).await?;
        let want = rope::reference(&x, &freqs, pos, heads, hd);
        self.record(
            "rope",
            format!("heads={heads} hd={hd} pos={pos} T={t}"),
            &got,
            &want,
            ROPE_TOL,
        );
        Ok(())
    }

    async fn softmax(&mut self, rows: usize, dim: usize, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        let x = rng.vec(rows * dim, 8.0);
        let (xb, out) = (self.upload(&x), self.poisoned(rows * dim));
        let d = softmax::launch(&self.gpu, &xb, &out, rows, dim)?;
        let got = self.run(&[d], &out, rows * dim).await?;
        let want = softmax::reference(&x, dim);
        self.record("softmax", format!("{rows}x{dim}"), &got, &want, SUM_TOL);
        Ok(())
    }

    async fn elementwise(
        &mut self,
        op: Elementwise,
        rows: usize,
        width: usize,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let n = rows * width;
        let a = rng.vec(n, 24.0);
        let b = rng.vec(n, 2.0);
        let (ab, bb, out) = (self.upload(&a), self.upload(&b), self.poisoned(n));
        let d = elementwise::launch(&self.gpu, op, &ab, &bb, &out, n, b.len())?;
        let got = self.run(&[d], &out, n).await?;
        let want = elementwise::reference(op, &a, &b);
        let tol = match op {
            Elementwise::Add | Elementwise::Mul | Elementwise::Sub | Elementwise::ReluSquare => {
                EXACT
            }
            _ => SUM_TOL,
        };
        self.record(
            "elementwise",
            format!("{op:?} {rows}x{width}"),
            &got,
            &want,
            tol,
        );
        Ok(())
    }

    /// A KV cache [capacity, width]: random rows up to `len`, NaN after.
    fn kv_cache(rng: &mut Rng, len: usize, capacity: usize, width: usize) -> Vec<f32> {
        let mut c = rng.vec(len * width, 1.0);
        c.resize(capacity * width, f32::NAN);
        c
    }

    async fn attention(
        &mut self,
        heads: usize,
        kv_heads: usize,
        hd: usize,
        t: usize,
        pos: usize,
        seed: u64,
    ) -> Result<()> {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut rng = Rng::new(seed);
        let (len, capacity, kvw) = (pos + t, pos + t + 3, kv_heads * hd);
        let q = rng.vec(t * heads * hd, 3.0);
        let k = Self::kv_cache(&mut rng, len, capacity, kvw);
        let v = Self::kv_cache(&mut rng, len, capacity, kvw);
        let (qb, kb, vb) = (self.upload(&q), self.upload(&k), self.upload(&v));
        let out = self.poisoned(q.len());
        let sb = self.step(pos, t);
        let io = AttnBuffers {
            q: &qb,
            k_cache: &kb,
            v_cache: &vb,
            out: &out,
            inv_freq: None,
            mask: None,
        };
        let layout = KvLayout::linear(capacity);
        let d = attention::launch(&self.gpu, &sb, &io, shape, layout, t, true)?;
        let got = self.run(&[d], &out, q.len()).await?;
        let cache = CacheView {
            k: &k,
            v: &v,
            layout,
        };
        let want = attention::reference(&q, cache, shape, pos, true, None, None);
        self.record(
            "attention",
            format!("heads={heads}/{kv_heads} hd={hd} T={t} pos={pos}"),
            &got,
            &want,
            ATTN_TOL,
        );
        Ok(())
    }

    async fn decode_attention(
        &mut self,
        heads: usize,
        kv_heads: usize,
        hd: usize,
        len: usize,
        seed: u64,
    ) -> Result<()> {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut rng = Rng::new(seed);
        let (capacity, kvw) = (len + 5, kv_heads * hd);
        let q = rng.vec(heads * hd, 3.0);
        let k = Self::kv_cache(&mut rng, len, capacity, kvw);
        let v = Self::kv_cache(&mut rng, len, capacity, kvw);
        let (qb, kb, vb) = (self.upload(&q), self.upload(&k), self.upload(&v));
        let layout = KvLayout::linear(capacity);
        let splits = decode_attention::max_splits_for(capacity);
        let partial = self.poisoned(decode_attention::partial_floats(&shape, splits, 1));
        let out = self.poisoned(q.len());
        let sb = self.step(len - 1, 1);
        let io = AttnBuffers {
            q: &qb,
            k_cache: &kb,
            v_cache: &vb,
            out: &out,
            inv_freq: None,
            mask: None,
        };
        let d = decode_attention::launch(
            &self.gpu, &sb, &io, &partial, shape, layout, splits, 1, true,
        )?;
        let got = self.run(&d, &out, q.len()).await?;
        let cache = CacheView {
            k: &k,
            v: &v,
            layout,
        };
        let want = decode_attention::reference(&q, cache, shape, len - 1, true, None, None);
        self.record(
            "decode_attention",
            format!("heads={heads}/{kv_heads} hd={hd} len={len} splits={splits}"),
            &got,
            &want,
            ATTN_TOL,
        );
        Ok(())
    }

    /// GLA-style gated recurrence, token by token and as the chunked scan.
    async fn linear_scan(
        &mut self,
        name: &str,
        shape: ScanShape,
        tokens: usize,
        chunk: Option<usize>,
        seed: u64,
    ) -> Result<()> {
        let mut rng = Rng::new(seed);
        let ScanShape {
            heads,
            qk_heads,
            dk,
            dv,
            ..
        } = shape;
        let q = rng.vec(tokens * qk_heads * dk, 1.0);
        let k = rng.vec(tokens * qk_heads * dk, 1.0);
        let v = rng.vec(tokens * heads * dv, 1.0);
        let decay: Vec<f32> = (0..tokens * heads * shape.gk())
            .map(|_| -3.0 * (rng.uniform() + 1.0) / 2.0)
            .collect();
        let consts = if shape.bonus {
            rng.vec(heads * dk, 1.0)
        } else {
            vec![]
        };
        let state0 = rng.vec(heads * dv * dk, 0.5);
        let inputs = ScanInputs {
            q: &q,
            k: &k,
            v: &v,
            decay: &decay,
            consts: &consts,
            ab: &[],
        };
        let mut state64: Vec<f64> = state0.iter().map(|&x| x as f64).collect();
        let want: Vec<f32> = linear_scan::reference(&inputs, &shape, tokens, &mut state64)
            .iter()
            .map(|&x| x as f32)
            .collect();
        let want_state: Vec<f32> = state64.iter().map(|&x| x as f32).collect();
        let (qb, kb, vb, db) = (
            self.upload(&q),
            self.upload(&k),
            self.upload(&v),
            self.upload(&decay),
        );
        let cb = (!consts.is_empty()).then(|| self.upload(&consts));
        let state = self.upload(&state0);
        let n_out = tokens * heads * dv;
        let out = self.poisoned(n_out);
        let b = ScanBuffers {
            q: &qb,
            k: &kb,
            v: &vb,
            decay: Some(&db),
            consts: cb.as_ref(),
            ab: None,
            state: &state,
            out: &out,
        };
        let (d, form) = match chunk {
            None => (
                linear_scan::launch_recurrent(&self.gpu, &b, &shape, tokens)?,
                "recurrent".to_string(),
            ),
            Some(c) => {
                let scratch = self.poisoned(linear_scan::scratch_floats(&shape, tokens, c));
                let d = linear_scan::launch_chunked(&self.gpu, &b, &scratch, &shape, tokens, c)?
                    .to_vec();
                (d, format!("chunked({c})"))
            }
        };
        let got = self.run(&d, &out, n_out).await?;
        let got_state = readback::read_f32(&self.gpu, &state, 0, shape.state_floats()).await?;
        let what = format!("{name} T={tokens} {form}");
        self.record(
            "linear_scan",
            format!("{what} outputs"),
            &got,
            &want,
            SCAN_TOL,
        );
        self.record(
            "linear_scan",
            format!("{what} state"),
            &got_state,
            &want_state,
            SCAN_TOL,
        );
        Ok(())
    }
}

impl Checker {
    /// A whole mixture-of-experts block (as tests/tests/moe.rs): route, permute, grouped
    /// gate/up (gathering token rows), SwiGLU, grouped down, combine (+ a gated shared
    /// expert). The last expert is never chosen and its weights are NaN, so reading it fails.
    async fn moe(
        &mut self,
        t: usize,
        e: usize,
        k: usize,
        hn: [usize; 2],
        shared: bool,
        seed: u64,
    ) -> Result<()> {
        let [h, n] = hn;
        let mut rng = Rng::new(seed);
        let x = rng.vec(t * h, 1.0);
        let mut logits = rng.vec(t * e, 3.0);
        for row in logits.chunks_mut(e) {
            row[e - 1] = -100.0;
        }
        let routes = moe::route_reference(&logits, e, k, true);
        let gpu = self.gpu.clone();
        let mut stacked = |rows: usize, cols: usize| -> Result<(Arc<GpuWeight>, Vec<f32>)> {
            let mut w = rng.vec(e * rows * cols, 0.3);
            w[(e - 1) * rows * cols..].fill(f32::NAN);
            let up =
                GpuWeight::upload_experts(&gpu, "experts", e, e * rows, cols, HostData::F32(&w))?;
            Ok((up, w))
        };
        let (wg, wg_ref) = stacked(n, h)?;
        let (wu, wu_ref) = stacked(n, h)?;
        let (wd, wd_ref) = stacked(h, n)?;
        let shared_out = rng.vec(t * h, 1.0);
        let shared_gate = rng.vec(t, 2.0);
        let r = t * k;
        let (logits_b, xb) = (self.upload(&logits), self.upload(&x));
        let route = self.upload_u32(&vec![u32::MAX; t * 2 * k]);
        let perm = self.upload_u32(&vec![u32::MAX; moe::perm_words(t, k, e)]);
        let counts = self.upload_u32(&vec![0; e]);
        let (gate, up, act) = (
            self.poisoned(r * n),
            self.poisoned(r * n),
            self.poisoned(r * n),
        );
        let (y, out) = (self.poisoned(r * h), self.poisoned(t * h));
        let (sb, sg) = (self.upload(&shared_out), self.upload(&shared_gate));
        let g = &self.gpu;
        let grouped = |x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, gather: bool| {
            if t == 1 {
                matvec::launch_grouped(g, x, w, &perm, y, r, gather)
            } else {
                let (offset, tiles) = (moe::tiles_offset(r, e), moe::max_tiles(r, e));
                matmul::launch_grouped(g, x, w, &perm, y, r, offset, tiles, gather)
            }
        };
        let mut d = vec![
            moe::launch_route(g, &logits_b, &route, t, e, k, true)?,
            moe::launch_permute(g, &route, &perm, &counts, t, e, k)?,
        ];
        d.extend(grouped(&xb, &wg, &gate, true)?);
        d.extend(grouped(&xb, &wu, &up, true)?);
        d.push(elementwise::launch(
            g,
            Elementwise::SwiGlu,
            &gate,
            &up,
            &act,
            r * n,
            r * n,
        )?);
        d.extend(grouped(&act, &wd, &y, false)?);
        let b = moe::CombineBuffers {
            route: &route,
            perm: &perm,
            y: &y,
            shared: shared.then_some((&sb, &sg)),
            out: &out,
        };
        d.push(moe::launch_combine(g, &b, t, h, k)?);
        let got = self.run(&d, &out, t * h).await?;
        let rows = |w: &[f32], v: &[f32], rows: usize, cols: usize, ex: u32| {
            let m = &w[ex as usize * rows * cols..(ex as usize + 1) * rows * cols];
            matvec::reference(v, m, None, rows, cols)
        };
        let expert = |ex: u32, tok: usize| {
            let xt = &x[tok * h..(tok + 1) * h];
            let gate = rows(&wg_ref, xt, n, h, ex);
            let a =
                elementwise::reference(Elementwise::SwiGlu, &gate, &rows(&wu_ref, xt, n, h, ex));
            rows(&wd_ref, &a, h, n, ex)
        };
        let shared_fn = |tok: usize| -> Vec<f32> {
            let sig = 1.0 / (1.0 + (-shared_gate[tok]).exp());
            shared_out[tok * h..(tok + 1) * h]
                .iter()
                .map(|v| v * sig)
                .collect()
        };
        let shared_ref: Option<&dyn Fn(usize) -> Vec<f32>> = shared.then_some(&shared_fn);
        let want = moe::combine_reference(&routes, h, expert, shared_ref);
        let what = format!("T={t} E={e} k={k} H={h} I={n} shared={shared}");
        self.record("moe", what, &got, &want, SUM_TOL);
        Ok(())
    }
}

async fn run_all(c: &mut Checker) -> Result<()> {
    for (i, &(m, n, k)) in [(37, 70, 45), (1, 67, 33), (65, 130, 64)]
        .iter()
        .enumerate()
    {
        for f16w in [false, true] {
            c.matmul(m, n, k, f16w, 100 + 2 * i as u64 + f16w as u64)
                .await?;
        }
    }
    for (i, &(n, k)) in [(70, 45), (300, 576), (1, 33)].iter().enumerate() {
        for f16w in [false, true] {
            c.matvec(n, k, f16w, 300 + 2 * i as u64 + f16w as u64)
                .await?;
        }
    }
    for (i, format) in [
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4_K,
        QuantFormat::Q6_K,
    ]
    .into_iter()
    .enumerate()
    {
        let k = if format.block_elems() == 32 { 576 } else { 512 };
        c.matvec_quant(format, 37, k, 400 + i as u64).await?;
        c.matmul_quant(format, 27, 70, k, 420 + i as u64).await?;
        c.embedding(Some(format), 103, k, 450 + i as u64).await?;
    }
    c.embedding(None, 103, 45, 500).await?;
    for (i, &(rows, dim)) in [(3, 64), (5, 1000), (1, 37), (2, 2049)].iter().enumerate() {
        c.rms_norm(rows, dim, 700 + i as u64).await?;
    }
    for (i, &(heads, hd, pos, t)) in [(3, 64, 0, 7), (3, 64, 37, 7), (1, 16, 3, 1)]
        .iter()
        .enumerate()
    {
        c.rope(heads, hd, pos, t, 900 + i as u64).await?;
    }
    for (i, &(rows, dim)) in [(4, 1000), (2, 37), (1, 4099)].iter().enumerate() {
        c.softmax(rows, dim, 800 + i as u64).await?;
    }
    for (i, op) in Elementwise::ALL.into_iter().enumerate() {
        c.elementwise(op, 7, 37, 600 + i as u64).await?;
    }
    for (i, &(h, kvh, hd, t, pos)) in [
        (4, 2, 16, 29, 0),
        (4, 1, 64, 29, 45),
        (4, 2, 64, 70, 13),
        (3, 3, 16, 1, 9),
    ]
    .iter()
    .enumerate()
    {
        c.attention(h, kvh, hd, t, pos, 1100 + i as u64).await?;
    }
    for (i, &(h, kvh, hd, len)) in [(4, 2, 16, 1), (4, 1, 64, 37), (6, 3, 64, 300)]
        .iter()
        .enumerate()
    {
        c.decode_attention(h, kvh, hd, len, 1200 + i as u64).await?;
    }
    let gla = ScanShape {
        heads: 4,
        qk_heads: 4,
        dk: 16,
        dv: 24,
        decay: Decay::Gate { per_key: true },
        delta: false,
        bonus: false,
    };
    let rwkv6 = ScanShape {
        heads: 3,
        qk_heads: 3,
        dk: 16,
        dv: 16,
        bonus: true,
        ..gla
    };
    for (name, shape) in [("gla", gla), ("rwkv6", rwkv6)] {
        c.linear_scan(name, shape, 5, None, 1300).await?;
        c.linear_scan(name, shape, 150, Some(linear_scan::CHUNK), 1301)
            .await?;
    }
    // Decode (grouped matvec) and prefill (grouped tiles, some experts over 64 rows).
    c.moe(1, 8, 2, [40, 24], false, 1400).await?;
    c.moe(29, 5, 2, [36, 52], true, 1401).await?;
    c.moe(150, 4, 2, [32, 20], true, 1402).await?;
    Ok(())
}

/// Run every case; resolves to `{"adapter": {...}, "cases": [{kernel, what, err, tol, ok}],
/// "kernels": {name: max err / tol ...}, "ok": bool}` (a JSON string). A GPU or readback
/// error rejects the promise.
#[wasm_bindgen(js_name = runKernelChecks)]
pub async fn run_kernel_checks() -> std::result::Result<String, JsValue> {
    let gpu = open_gpu().await?;
    let mut c = Checker {
        gpu: gpu.clone(),
        cases: Vec::new(),
    };
    run_all(&mut c).await?;
    // Per kernel: (worst error, cases, all passed); a NaN error is the worst there is.
    let mut kernels: std::collections::BTreeMap<&str, (f64, usize, bool)> = Default::default();
    let num = |e: f64| {
        if e.is_finite() {
            json!(e)
        } else {
            json!("NaN")
        }
    };
    let cases: Vec<_> = c
        .cases
        .iter()
        .map(|k| {
            let ok = k.err <= k.tol;
            let e = kernels.entry(k.kernel).or_insert((0.0, 0, true));
            e.0 = if k.err.is_nan() || e.0.is_nan() {
                f64::NAN
            } else {
                e.0.max(k.err)
            };
            e.1 += 1;
            e.2 &= ok;
            json!({"kernel": k.kernel, "what": k.what, "err": num(k.err), "tol": k.tol, "ok": ok})
        })
        .collect();
    let all_ok = kernels.values().all(|k| k.2) && !kernels.is_empty();
    let kernels: serde_json::Map<String, serde_json::Value> = kernels
        .into_iter()
        .map(|(name, (err, n, ok))| {
            (
                name.to_string(),
                json!({"max_err": num(err), "cases": n, "ok": ok}),
            )
        })
        .collect();
    Ok(
        json!({"adapter": gpu_info(&gpu), "cases": cases, "kernels": kernels, "ok": all_ok})
            .to_string(),
    )
}
