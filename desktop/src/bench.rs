//! `kestrel bench`: model prefill/decode tokens/s (with per-window decode time, so a long
//! decode through attention sinks shows it stays flat), the GPU work of a decoded token
//! (dispatches, submits, round trips, weight bytes read per second, and its GPU time by
//! kernel class from timestamp queries), cold start and pipeline creation, and kernel
//! roofline figures on the same adapter: matmul GFLOP/s, matvec GB/s and buffer-copy GB/s
//! (decode's bandwidth bound).
//! `--attention` adds attention kernel figures (see `bench_attention`), with or without a model.
//! `--speculate ngram` or `--draft-model PATH` times decoding with and without speculation
//! instead of the model figures (see `bench_speculate`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kestrel_models::chat_template::Message;
use kestrel_models::generate::{Generation, Prompt, Request};
use kestrel_runtime::kernels::{self, matmul, matvec};
use kestrel_runtime::profile::{self, KernelTimes};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::tensor::{GpuWeight, HostData};
use kestrel_runtime::Gpu;
use serde_json::{json, Value};

use crate::cli::{BenchArgs, Speculation};
use crate::stdout::outln;
use crate::{bench_attention, bench_batch, bench_kernels, bench_speculate, open_gpu, open_model};

/// The user's message of the chat turn whose first token is the cold start.
const COLD_START_MESSAGE: &str = "Hello";

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

pub fn run(a: &BenchArgs) -> Result<(), String> {
    // Cold start counts from here: device, model load, pipeline compiles, first token.
    let start = Instant::now();
    if a.kernels {
        return bench_kernels::run(&open_gpu(&a.device)?, a.json);
    }
    let text = !a.json;
    let path = match &a.model {
        Some(spec) => Some(crate::model_ref::resolve(spec, a.fetch.offline)?),
        None => None,
    };
    let gpu = open_gpu(&a.device)?;
    a.precision.apply(&gpu)?;
    let device_open_s = start.elapsed().as_secs_f64();
    if text {
        outln!("adapter: {} ({})", gpu.info.name, gpu.backend_name());
        outln!("matvec precision: {}", gpu.matvec_precision().name());
    }
    let mut report = json!({
        "adapter": gpu.info.name,
        "backend": gpu.backend_name(),
        "device_open_s": device_open_s,
        "matvec_precision": gpu.matvec_precision().name(),
    });
    let mut attention = serde_json::Map::new();
    let mut tuning = Value::Null;
    let mut start = start;
    if let (true, Some(path)) = (a.tune, &path) {
        let model = kestrel_models::load(&gpu, path).map_err(|e| e.to_string())?;
        tuning = crate::tune::tune(&gpu, &model, text)?;
        start = Instant::now();
    }
    let speculation = a.speculate.speculation();
    if let (Some(path), Some(n)) = (&path, a.batch) {
        report["batch"] = bench_batch::run(&gpu, path, a, n, text)?;
    } else if let (Some(path), false) = (&path, speculation == Speculation::Off) {
        report["speculation"] = bench_speculate::run(&gpu, path, a, &speculation, text)?;
    } else if let Some(path) = &path {
        let (model_report, model_attention) = model_bench(&gpu, path, a, text, start)?;
        merge(&mut report, model_report);
        attention.extend(model_attention);
    }
    if a.attention {
        if let Value::Object(m) = bench_attention::run(&gpu, a.max_len, text)? {
            attention.extend(m);
        }
    }
    report["attention"] = Value::Object(attention);
    report["tuning"] = crate::tune::report(&gpu.tuning());
    if !tuning.is_null() {
        report["tuning"]["timed"] = tuning;
    }
    if !text {
        outln!("{report:#}");
    }
    Ok(())
}

/// Kernel class -> `f(ms)` as a JSON object.
pub(crate) fn class_map(k: &KernelTimes, f: impl Fn(f64) -> f64) -> Value {
    Value::Object(
        k.classes
            .iter()
            .map(|c| (c.name.to_string(), json!(f(c.ms))))
            .collect(),
    )
}

/// The human table of a decode token's time by kernel class, slowest first.
pub(crate) fn print_kernel_times(k: Option<&KernelTimes>) {
    let Some(k) = k else {
        outln!("decode by kernel class: not measured (the adapter has no timestamp queries)");
        return;
    };
    let total = k.total_ms();
    let share = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
    outln!(
        "decode by kernel class (timestamp queries; one pass per dispatch, fastest of 3 replays):"
    );
    outln!(
        "  {:<22} {:>10} {:>12} {:>7}",
        "class",
        "dispatches",
        "ms/token",
        "share"
    );
    let mut classes: Vec<_> = k.classes.iter().collect();
    classes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for c in classes {
        outln!(
            "  {:<22} {:>10} {:>12.3} {:>6.1}%",
            c.name,
            c.dispatches,
            c.ms,
            share(c.ms)
        );
    }
    let dispatches: usize = k.classes.iter().map(|c| c.dispatches).sum();
    outln!(
        "  {:<22} {:>10} {:>12.3} {:>6.1}%  (first start to last end: {:.3} ms)",
        "all",
        dispatches,
        total,
        100.0,
        k.span_ms
    );
}

/// Add the keys of `extra` (an object) to `report`.
fn merge(report: &mut Value, extra: Value) {
    if let (Value::Object(r), Value::Object(e)) = (report, extra) {
        r.extend(e);
    }
}

/// Decode time over one run of consecutive tokens.
struct DecodeWindow {
    /// Decode steps before this window.
    from: usize,
    tokens: usize,
    secs: f64,
}

/// The bytes of the GPU buffers the runtime holds now and at its peak (weights, sequence
/// state, plan activations and scratch, uniforms, staging), as counted by the runtime.
fn gpu_memory(gpu: &Gpu) -> Value {
    json!({ "gpu_bytes": gpu.allocated_bytes(), "gpu_peak_bytes": gpu.peak_allocated_bytes() })
}

/// The human line of a report's `gpu_bytes` and `gpu_peak_bytes`.
fn print_gpu_memory(r: &Value) {
    outln!(
        "GPU buffers: {:.2} MiB held, {:.2} MiB at the peak",
        r["gpu_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        r["gpu_peak_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    );
}

/// The model figures (cold start, prefill/decode tokens/s, GPU work per decoded token,
/// per-window decode time, KV cache and GPU buffer bytes) and the roofline figures; prints
/// them when `text`. Returns the report's keys and the model's part of its "attention" section.
fn model_bench(
    gpu: &Arc<Gpu>,
    path: &Path,
    a: &BenchArgs,
    text: bool,
    start: Instant,
) -> Result<(Value, serde_json::Map<String, Value>), String> {
    let options = a.attention_options.options();
    let t = Instant::now();
    let model = open_model(gpu, path, options.clone())?;
    let model_load_s = t.elapsed().as_secs_f64();
    if !model.config().causal {
        let mut report = crate::diffuse::bench(gpu, &model, text)?;
        merge(&mut report, gpu_memory(gpu));
        if text {
            print_gpu_memory(&report);
        }
        return Ok((report, Default::default()));
    }
    let cfg = model.config().clone();
    // With attention sinks a sequence may grow without bound (the architecture says how far).
    let max_ctx = model.architecture().max_context();
    // Defaults fit the model's context: half for the prompt, up to 32 decoded tokens after it.
    let half = (cfg.max_positions / 2).max(1);
    let prompt_len = a
        .prompt_tokens
        .unwrap_or(64usize.min(half))
        .clamp(1, max_ctx.saturating_sub(1).max(1));
    let room = max_ctx - prompt_len;
    let decode_len = match a.decode_tokens {
        None => 32usize.min(room),
        Some(n) => {
            if n > room {
                let hint = if options.streaming.is_some() {
                    String::new()
                } else {
                    "; add --attention-sinks N --kv-window W to decode without a length limit"
                        .to_string()
                };
                return Err(format!(
                    "--decode-tokens {n} after a {prompt_len}-token prompt would pass the model's \
                     context of {max_ctx} positions (at most {room} fit){hint}"
                ));
            }
            n
        }
    };
    let report_every = a
        .report_every
        .unwrap_or(if decode_len >= 2000 { 1000 } else { 0 });
    let mut rng = Rng::new(3);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.below(cfg.vocab as u32))
        .collect();
    let err = |e: kestrel_models::ModelError| e.to_string();
    let rt = |e: kestrel_runtime::Error| e.to_string();
    let gen_err = |e: kestrel_models::GenerateError| e.to_string();
    // Greedy, a fixed count of tokens through any end-of-sequence token (as llama-bench).
    let run = |tokens: usize| Request {
        max_tokens: tokens,
        ignore_eos: true,
        ..Request::default()
    };

    // Warm-up run (pipeline compilation; its second step is a batch of two decode steps, so
    // the decode loop is made too), then measured runs on a fresh cache. With sinks the
    // capacity is unbounded (the session caps it at the architecture's limit).
    let capacity = if options.streaming.is_some() {
        usize::MAX
    } else {
        prompt_len + decode_len.max(1)
    };
    // The warm-up is the cold start as a user meets it: a first chat turn (COLD_START_MESSAGE
    // through the model's chat template, as `kestrel chat` renders it) to its first token.
    // A model without a tokenizer or a chat template, or a context too small for the turn,
    // starts with the benchmark's prompt instead.
    let chat_turn = Prompt::Chat(vec![Message::new("user", COLD_START_MESSAGE)])
        .encode(&model, None)
        .ok()
        .filter(|ids| !ids.is_empty() && ids.len().saturating_add(3) <= capacity);
    let cold_prompt = chat_turn.clone().unwrap_or_else(|| prompt.clone());
    let mut session = model.session(gpu, capacity).map_err(err)?;
    let mut warm =
        Generation::new(&model, &mut session, cold_prompt.clone(), &run(3)).map_err(gen_err)?;
    let (mut cold_start_s, mut first_step_s) = (0.0, 0.0);
    for i in 0..2 {
        let t = Instant::now();
        pollster::block_on(warm.step(&model, &mut session)).map_err(gen_err)?;
        if i == 0 {
            cold_start_s = start.elapsed().as_secs_f64();
            first_step_s = t.elapsed().as_secs_f64();
        }
    }
    if chat_turn.is_some() {
        // The benchmark prompt's prefill plan (its length may pick other pipelines), so the
        // measured prefill below creates nothing.
        session.reset();
        let mut warm =
            Generation::new(&model, &mut session, prompt.clone(), &run(1)).map_err(gen_err)?;
        pollster::block_on(warm.step(&model, &mut session)).map_err(gen_err)?;
    }
    // Every pipeline of the prefill and decode plans exists now.
    let pipelines = gpu.pipeline_work();
    crate::prebuild::settle(gpu);
    let pipeline_creation_s = pipelines.secs.unwrap_or(0.0);
    session.reset();
    // Expert counters run over the session's life: the measured run is the difference.
    let counters: Vec<String> = model
        .architecture()
        .states(capacity)
        .into_iter()
        .filter(|s| s.dtype == kestrel_runtime::tensor::DType::U32)
        .map(|s| s.name)
        .collect();
    let read_counters = |session: &kestrel_runtime::session::Session| {
        counters
            .iter()
            .map(|n| pollster::block_on(session.read_counters(n)).map_err(rt))
            .collect::<Result<Vec<_>, _>>()
    };
    let counts_before = read_counters(&session)?;
    // The prompt's step draws the first token; each later step decodes one.
    let mut g =
        Generation::new(&model, &mut session, prompt, &run(decode_len + 1)).map_err(gen_err)?;
    g.unstreamed();
    let t = Instant::now();
    pollster::block_on(g.step(&model, &mut session)).map_err(gen_err)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let kv_start = session.state_bytes();
    let mut windows = Vec::new();
    let (mut w_from, mut w_start) = (0, Instant::now());
    let work_start = gpu.work();
    let t = Instant::now();
    for i in 1..=decode_len {
        pollster::block_on(g.step(&model, &mut session)).map_err(gen_err)?;
        if report_every > 0 && (i % report_every == 0 || i == decode_len) {
            windows.push(DecodeWindow {
                from: w_from,
                tokens: i - w_from,
                secs: w_start.elapsed().as_secs_f64(),
            });
            (w_from, w_start) = (i, Instant::now());
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    let work = gpu.work().since(&work_start);
    let per_token = |n: u64| n as f64 / decode_len.max(1) as f64;
    if g.sampled_tokens() != decode_len + 1 {
        return Err(format!(
            "bench: {} tokens drawn, {} expected",
            g.sampled_tokens(),
            decode_len + 1
        ));
    }
    let kv_end = session.state_bytes();
    let positions = session.pos();
    let routing: Vec<Value> = counters
        .iter()
        .zip(counts_before.iter().zip(read_counters(&session)?))
        .map(|(name, (before, after))| {
            let tokens: Vec<u32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
            let mean = tokens.iter().sum::<u32>() as f64 / tokens.len().max(1) as f64;
            let max = tokens.iter().copied().max().unwrap_or(0) as f64;
            json!({
                "layer": name.trim_start_matches("moe.").trim_end_matches(".counts"),
                "tokens_per_expert": tokens,
                "max_over_mean": if mean > 0.0 { max / mean } else { 0.0 },
            })
        })
        .collect();
    // Last, as it replays a decode step on the session (see `profile::decode_times`).
    let kernel_times = pollster::block_on(profile::decode_times(&mut session)).map_err(rt)?;
    let decode_tokens_per_s = decode_len as f64 / decode_s;
    let read_per_token = model
        .weight_bytes_per_token(&session)
        .map_err(|e| e.to_string())?;
    let decode_weight_gbs = read_per_token as f64 * decode_tokens_per_s / 1e9;

    // Before the roofline figures below allocate their own buffers.
    let memory = gpu_memory(gpu);
    let copy_bytes = (64u64 << 20).min(gpu.caps.max_storage_binding);
    let mut report = json!({
        "model": model.path.display().to_string(),
        "weight_bytes": model.weight_bytes(),
        "weight_file_bytes": model.file_bytes(),
        "weight_bytes_read_per_decode_token": read_per_token,
        "routing": routing,
        "kv_cache_bytes": session.state_bytes(),
        "prefill_tokens": prompt_len,
        "prefill_tokens_per_s": prompt_len as f64 / prefill_s,
        "decode_tokens": decode_len,
        "decode_tokens_per_s": decode_tokens_per_s,
        "decode_weight_gbs": decode_weight_gbs,
        "cold_start_s": cold_start_s,
        "cold_start_prompt": if chat_turn.is_some() { "chat turn" } else { "benchmark prompt" },
        "cold_start_prompt_tokens": cold_prompt.len(),
        "model_load_s": model_load_s,
        "load_parse_s": model.load_times.parse_s,
        "tokenizer_s": model.load_times.tokenizer_s,
        "weight_upload_s": model.load_times.upload_s,
        "first_step_s": first_step_s,
        "pipeline_creation_s": pipeline_creation_s,
        "pipeline_wait_s": pipelines.wait_secs.unwrap_or(0.0),
        "pipelines_created": pipelines.pipelines,
        "dispatches_per_decode_token": per_token(work.dispatches),
        "submits_per_decode_token": per_token(work.submits),
        "host_round_trips_per_decode_token": per_token(work.readbacks),
        "decode_kernel_ms": kernel_times.as_ref().map(|k| class_map(k, |ms| ms)),
        "decode_kernel_share": kernel_times.as_ref().map(|k| {
            let total = k.total_ms();
            class_map(k, |ms| if total > 0.0 { ms / total } else { 0.0 })
        }),
        "decode_kernel_span_ms": kernel_times.as_ref().map(|k| k.span_ms),
        "matmul_512_gflops": matmul_gflops(gpu, 512)?,
        "matvec_4096x4096_f32_gbs": matvec_gbs(gpu, 4096, 4096, false)?,
        "matvec_4096x4096_f16_gbs": matvec_gbs(gpu, 4096, 4096, true)?,
        "copy_gbs": copy_gbs(gpu, copy_bytes)?,
    });
    merge(&mut report, memory);
    let us = |w: &DecodeWindow| w.secs * 1e6 / w.tokens.max(1) as f64;
    let flatness = match (windows.first(), windows.last()) {
        (Some(f), Some(l)) if windows.len() > 1 => Some(us(l) / us(f)),
        _ => None,
    };
    let mut attention = serde_json::Map::new();
    attention.insert(
        "options".into(),
        json!({
            "attention_sinks": options.streaming.map(|(s, _)| s),
            "kv_window": options.streaming.map(|(_, w)| w),
            "block_sparse": options.sparse.as_ref().map(|s| s.to_string()),
        }),
    );
    attention.insert("max_context".into(), json!(max_ctx));
    attention.insert("session_capacity".into(), json!(session.capacity()));
    attention.insert("kv_cache_bytes_start".into(), json!(kv_start));
    attention.insert("kv_cache_bytes_end".into(), json!(kv_end));
    attention.insert("decode_report_every".into(), json!(report_every));
    attention.insert(
        "decode_windows".into(),
        Value::Array(
            windows
                .iter()
                .map(|w| {
                    json!({
                        "from_token": w.from,
                        "position": prompt_len + w.from,
                        "tokens": w.tokens,
                        "us_per_token": us(w),
                        "tokens_per_s": w.tokens as f64 / w.secs,
                    })
                })
                .collect(),
        ),
    );
    attention.insert("decode_last_over_first_window".into(), json!(flatness));

    if text {
        let r = &report;
        outln!("model: {}", r["model"].as_str().unwrap_or(""));
        let mode = match (&options.streaming, &options.sparse) {
            (Some((s, w)), _) => format!(
                "attention sinks {s} + window {w} (StreamingLLM), context up to {max_ctx} positions"
            ),
            (None, Some(sp)) => format!("block-sparse {sp}"),
            (None, None) if !model.has_attention() => format!(
                "none ({}: a recurrent state of fixed size, no position limit)",
                model.config().architecture
            ),
            (None, None) => format!("the model's own, context {max_ctx} positions"),
        };
        outln!("attention: {mode}");
        outln!(
            "weights on GPU: {:.2} MiB ({:.3} x the {:.2} MiB in the file); sequence state (KV caches, recurrent states): {:.2} MiB",
            model.weight_bytes() as f64 / 1048576.0,
            model.weight_bytes() as f64 / model.file_bytes().max(1) as f64,
            model.file_bytes() as f64 / 1048576.0,
            session.state_bytes() as f64 / 1048576.0
        );
        outln!(
            "weights read per decoded token: {:.2} MiB (an untied embedding table one row, \
             routed experts only those chosen)",
            read_per_token as f64 / 1048576.0
        );
        if !routing.is_empty() {
            outln!("routing (tokens per expert over this run: prefill + decode):");
            for r in &routing {
                outln!(
                    "  layer {:>3}: {} (max/mean {:.2})",
                    r["layer"].as_str().unwrap_or(""),
                    r["tokens_per_expert"],
                    r["max_over_mean"].as_f64().unwrap_or(0.0)
                );
            }
        }
        print_gpu_memory(r);
        outln!(
            "cold start: {cold_start_s:.2} s (device, model, pipelines, first token of {})",
            match chat_turn {
                Some(_) => format!("a {}-token chat turn", cold_prompt.len()),
                None => format!("the {prompt_len}-token benchmark prompt"),
            }
        );
        let times = &model.load_times;
        outln!(
            "  model load: {model_load_s:.2} s (files parsed {:.2} s, weights uploaded {:.2} s, \
             tokenizer built beside the upload {:.2} s); first step: {first_step_s:.2} s \
             (plan, pipelines, prefill of {} tokens)",
            times.parse_s,
            times.upload_s,
            times.tokenizer_s,
            cold_prompt.len()
        );
        outln!(
            "pipeline creation: {pipeline_creation_s:.3} s for {} pipelines (the prefill and \
             decode plans' shader modules and pipelines; a driver may finish compiling at the \
             first dispatch)",
            pipelines.pipelines
        );
        outln!(
            "prefill: {:.1} tokens/s ({prompt_len} tokens)",
            r["prefill_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "decode: {:.1} tokens/s ({decode_len} tokens)",
            r["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "per decoded token: {:.1} dispatches, {:.1} submits, {:.1} host round trips",
            per_token(work.dispatches),
            per_token(work.submits),
            per_token(work.readbacks)
        );
        outln!(
            "weights read in decode: {decode_weight_gbs:.3} GB/s ({:.2} MiB per token)",
            read_per_token as f64 / 1048576.0
        );
        print_kernel_times(kernel_times.as_ref());
        if !windows.is_empty() {
            outln!("decode per token, every {report_every} tokens:");
            for w in &windows {
                outln!(
                    "  positions {:>7}..{:<7} {:>9.1} us/token ({:.1} tokens/s)",
                    prompt_len + w.from,
                    prompt_len + w.from + w.tokens,
                    us(w),
                    w.tokens as f64 / w.secs
                );
            }
            if let Some(f) = flatness {
                outln!("  last window / first window: {f:.2}x");
            }
        }
        outln!(
            "sequence state bytes: {kv_start} at the start of decode, {kv_end} after {positions} positions"
        );
        outln!(
            "matmul 512x512x512 f32: {:.2} GFLOP/s",
            r["matmul_512_gflops"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "matvec 4096x4096: {:.2} GB/s f32, {:.2} GB/s f16",
            r["matvec_4096x4096_f32_gbs"].as_f64().unwrap_or(0.0),
            r["matvec_4096x4096_f16_gbs"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "buffer copy: {:.2} GB/s (read + write)",
            r["copy_gbs"].as_f64().unwrap_or(0.0)
        );
    }
    Ok((report, attention))
}
