//! `kestrel bench --kernels`: every case of the runtime's table of kernel cases
//! (`kestrel_runtime::cases`) timed on the chosen adapter. Each case runs once and is checked
//! against its CPU reference (a wrong result is flagged: its time measures something else);
//! then, after a warm-up run, its dispatches run `RUNS` times, each submitted alone and
//! waited for, and the median is reported, with GFLOP/s or GB/s where the case declares its
//! work. The sizes are the tests' (small and ragged): the figures compare kernels and
//! adapters, not peak throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_runtime::cases::{self, Case};
use kestrel_runtime::Gpu;
use serde_json::{json, Value};

use crate::stdout::outln;

/// Timed runs per case.
const RUNS: usize = 7;

/// One case's figures.
struct Timing {
    median: Duration,
    /// The worst relative error of its outputs, and whether every output passed.
    err: f64,
    ok: bool,
    gflops: Option<f64>,
    gbs: Option<f64>,
}

fn time_case(gpu: &Arc<Gpu>, case: &Case) -> Result<Timing, String> {
    let p = case.prepare(gpu).map_err(|e| e.to_string())?;
    p.submit();
    let outcomes = pollster::block_on(p.check(case)).map_err(|e| e.to_string())?;
    let ok = outcomes.iter().all(|o| o.ok);
    let err = outcomes.iter().map(|o| o.err).fold(0.0, |m: f64, e| {
        if e.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(e)
        }
    });
    let wait = || p.gpu.wait().map_err(|e| e.to_string());
    p.submit();
    wait()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        p.submit();
        wait()?;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[RUNS / 2];
    let per_s = |x: f64| (x > 0.0).then(|| x / median.as_secs_f64() / 1e9);
    Ok(Timing {
        median,
        err,
        ok,
        gflops: per_s(p.work.flops),
        gbs: per_s(p.work.bytes),
    })
}

/// Time every case; print a line per case (or, with `json`, one array of objects). Fails
/// when a case cannot run or does not match its reference.
pub fn run(gpu: &Arc<Gpu>, json: bool) -> Result<(), String> {
    let all = cases::all();
    if !json {
        outln!("adapter: {}", gpu.describe());
        outln!("{} kernel cases, median of {RUNS} runs each", all.len());
        outln!(
            "{:<17} {:>11} {:>13}  check  case",
            "kernel",
            "time",
            "rate"
        );
    }
    let (mut report, mut failed) = (Vec::new(), Vec::new());
    for case in &all {
        let timing = time_case(gpu, case);
        let entry = match &timing {
            Ok(t) => json!({
                "kernel": case.kernel,
                "what": case.what,
                "adapter": gpu.info.name,
                "backend": gpu.backend_name(),
                "median_us": t.median.as_secs_f64() * 1e6,
                "gflops": t.gflops,
                "gbs": t.gbs,
                "max_rel_err": if t.err.is_finite() { json!(t.err) } else { json!("NaN") },
                "ok": t.ok,
            }),
            Err(e) => json!({
                "kernel": case.kernel,
                "what": case.what,
                "adapter": gpu.info.name,
                "backend": gpu.backend_name(),
                "error": e,
                "ok": false,
            }),
        };
        if !matches!(&timing, Ok(t) if t.ok) {
            failed.push(format!("{} {}", case.kernel, case.what));
        }
        if !json {
            outln!("{}", line(case, &timing));
        }
        report.push(entry);
    }
    if json {
        outln!("{:#}", Value::Array(report));
    }
    match failed.as_slice() {
        [] => Ok(()),
        [first, ..] => Err(format!(
            "{} of {} kernel cases failed their check (first: {first})",
            failed.len(),
            all.len()
        )),
    }
}

/// One text line: kernel, median time, rate, check, case.
fn line(case: &Case, timing: &Result<Timing, String>) -> String {
    match timing {
        Ok(t) => {
            let rate = match (t.gflops, t.gbs) {
                (Some(f), _) => format!("{f:.2} GFLOP/s"),
                (None, Some(b)) => format!("{b:.2} GB/s"),
                (None, None) => String::new(),
            };
            let check = if t.ok { "ok" } else { "WRONG" };
            let us = t.median.as_secs_f64() * 1e6;
            format!(
                "{:<17} {:>8.1} us {:>13}  {check:<5}  {}",
                case.kernel, us, rate, case.what
            )
        }
        Err(e) => format!(
            "{:<17} {:>11} {:>13}  error  {}: {e}",
            case.kernel, "", "", case.what
        ),
    }
}
