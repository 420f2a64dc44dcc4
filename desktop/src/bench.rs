//! `kestrel bench`: model prefill/decode tokens/s, and kernel roofline figures on the same
//! adapter: matmul GFLOP/s, matvec GB/s and buffer-copy GB/s (decode's bandwidth bound).

use std::sync::Arc;
use std::time::Instant;

use kestrel_runtime::kernels::{self, matmul, matvec};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::session::Sampling;
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;
use serde_json::json;

use crate::args::Args;
use crate::{open_gpu, open_model};

/// Seconds per call of `f` (which submits GPU work), after one warm-up, over `iters` calls.
fn time_gpu(gpu: &Gpu, iters: usize, mut f: impl FnMut()) -> Result<f64, String> {
    f();
    gpu.wait().map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    gpu.wait().map_err(|e| e.to_string())?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn upload_random(
    gpu: &Arc<Gpu>,
    rows: usize,
    cols: usize,
    f16: bool,
) -> Result<Arc<GpuWeight>, String> {
    let data = Rng::new(7).vec(rows * cols, 1.0);
    let w = if f16 {
        let bits: Vec<u16> = data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        GpuWeight::upload(gpu, "bench", rows, cols, HostData::F16(&bits))
    } else {
        GpuWeight::upload(gpu, "bench", rows, cols, HostData::F32(&data))
    };
    w.map_err(|e| e.to_string())
}

fn matmul_gflops(gpu: &Arc<Gpu>, n: usize) -> Result<f64, String> {
    let x = gpu.storage_buffer_init("x", bytemuck::cast_slice(&Rng::new(1).vec(n * n, 1.0)));
    let y = gpu.storage_buffer("y", (n * n * 4) as u64);
    let w = upload_random(gpu, n, n, false)?;
    let d = matmul::launch(gpu, &x, &w, None, &y, n).map_err(|e| e.to_string())?;
    let secs = time_gpu(gpu, 3, || kernels::submit(gpu, &d))?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

fn matvec_gbs(gpu: &Arc<Gpu>, rows: usize, cols: usize, f16: bool) -> Result<f64, String> {
    let x = gpu.storage_buffer_init("x", bytemuck::cast_slice(&Rng::new(2).vec(cols, 1.0)));
    let y = gpu.storage_buffer("y", (rows * 4) as u64);
    let w = upload_random(gpu, rows, cols, f16)?;
    let d = matvec::launch(gpu, &x, &w, None, &y).map_err(|e| e.to_string())?;
    let secs = time_gpu(gpu, 5, || kernels::submit(gpu, &d))?;
    Ok(w.bytes() as f64 / secs / 1e9)
}

/// Bytes read plus bytes written per second by `copy_buffer_to_buffer`.
fn copy_gbs(gpu: &Arc<Gpu>, bytes: u64) -> Result<f64, String> {
    let a = gpu.storage_buffer("copy src", bytes);
    let b = gpu.storage_buffer("copy dst", bytes);
    let secs = time_gpu(gpu, 5, || {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        gpu.queue.submit([enc.finish()]);
    })?;
    Ok(2.0 * bytes as f64 / secs / 1e9)
}

pub fn run(a: &Args) -> Result<(), String> {
    a.only(&["model", "json", "backend", "prompt-tokens", "decode-tokens"])?;
    let gpu = open_gpu(a)?;
    let model = open_model(&gpu, a)?;
    let cfg = model.config().clone();
    // Defaults fit the model's context: half for the prompt, up to 32 decoded tokens after it.
    let half = (cfg.max_positions / 2).max(1);
    let prompt_len: usize = a
        .parsed("prompt-tokens", 64usize.min(half))?
        .clamp(1, cfg.max_positions);
    let decode_len: usize = a
        .parsed("decode-tokens", 32usize)?
        .min(cfg.max_positions - prompt_len);
    let mut rng = Rng::new(3);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.below(cfg.vocab as u32))
        .collect();
    let err = |e: kestrel_models::ModelError| e.to_string();
    let rt = |e: kestrel_runtime::Error| e.to_string();

    // Warm-up run (pipeline compilation), then measured runs on a fresh cache.
    let mut session = model.session(&gpu, prompt_len + decode_len).map_err(err)?;
    let greedy = Sampling::default();
    let first = pollster::block_on(session.next_token(&prompt, &greedy)).map_err(rt)?;
    pollster::block_on(session.next_token(&[first], &greedy)).map_err(rt)?;
    session.reset();
    let t = Instant::now();
    let mut next = pollster::block_on(session.next_token(&prompt, &greedy)).map_err(rt)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..decode_len {
        next = pollster::block_on(session.next_token(&[next], &greedy)).map_err(rt)?;
    }
    let decode_s = t.elapsed().as_secs_f64();

    let copy_bytes = (64u64 << 20).min(gpu.caps.max_storage_binding);
    let report = json!({
        "adapter": gpu.info.name,
        "backend": gpu.backend_name(),
        "model": model.path.display().to_string(),
        "weight_bytes": model.weight_bytes(),
        "weight_file_bytes": model.file_bytes(),
        "kv_cache_bytes": session.state_bytes(),
        "prefill_tokens": prompt_len,
        "prefill_tokens_per_s": prompt_len as f64 / prefill_s,
        "decode_tokens": decode_len,
        "decode_tokens_per_s": decode_len as f64 / decode_s,
        "matmul_512_gflops": matmul_gflops(&gpu, 512)?,
        "matvec_4096x4096_f32_gbs": matvec_gbs(&gpu, 4096, 4096, false)?,
        "matvec_4096x4096_f16_gbs": matvec_gbs(&gpu, 4096, 4096, true)?,
        "copy_gbs": copy_gbs(&gpu, copy_bytes)?,
    });
    if a.flag("json") {
        println!("{report:#}");
    } else {
        let r = &report;
        println!(
            "adapter: {} ({})",
            r["adapter"].as_str().unwrap_or(""),
            r["backend"].as_str().unwrap_or("")
        );
        println!("model: {}", r["model"].as_str().unwrap_or(""));
        println!(
            "weights on GPU: {:.2} MiB ({:.3} x the {:.2} MiB in the file); KV cache: {:.2} MiB",
            model.weight_bytes() as f64 / 1048576.0,
            model.weight_bytes() as f64 / model.file_bytes().max(1) as f64,
            model.file_bytes() as f64 / 1048576.0,
            session.state_bytes() as f64 / 1048576.0
        );
        println!(
            "prefill: {:.1} tokens/s ({prompt_len} tokens)",
            r["prefill_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "decode: {:.1} tokens/s ({decode_len} tokens)",
            r["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "matmul 512x512x512 f32: {:.2} GFLOP/s",
            r["matmul_512_gflops"].as_f64().unwrap_or(0.0)
        );
        println!(
            "matvec 4096x4096: {:.2} GB/s f32, {:.2} GB/s f16",
            r["matvec_4096x4096_f32_gbs"].as_f64().unwrap_or(0.0),
            r["matvec_4096x4096_f16_gbs"].as_f64().unwrap_or(0.0)
        );
        println!(
            "buffer copy: {:.2} GB/s (read + write)",
            r["copy_gbs"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
