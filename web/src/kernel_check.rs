//! The runtime's kernels against their CPU references, run in the browser on the WebGPU
//! device: the cases of the runtime's table (`kestrel_runtime::cases`) marked for the
//! browser, a representative subset (the browser's WebGPU runs on SwiftShader in the tests,
//! so it must stay quick). Each compared output reports `||gpu - ref|| / ||ref||` and passes
//! at or below its tolerance, the native tests' own (defined and justified in the table); a
//! NaN makes the error NaN, which fails.

use std::collections::BTreeMap;

use kestrel_runtime::cases::{self, Outcome};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::engine::{gpu_info, open_gpu};

/// Run every browser case; resolves to `{"adapter": {...}, "cases": [{kernel, what, err, tol,
/// ok}], "kernels": {name: {max_err, cases, ok}}, "ok": bool}` (a JSON string), one entry of
/// "cases" per compared output. A GPU or readback error rejects the promise.
#[wasm_bindgen(js_name = runKernelChecks)]
pub async fn run_kernel_checks() -> std::result::Result<String, JsValue> {
    let gpu = open_gpu().await?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for case in cases::all().into_iter().filter(|c| c.browser) {
        let run = case.run(&gpu).await;
        outcomes.extend(run.map_err(crate::error::WebError::from)?);
    }
    // Per kernel: (worst error, outputs, all passed); a NaN error is the worst there is.
    let mut kernels: BTreeMap<&str, (f64, usize, bool)> = BTreeMap::new();
    let num = |e: f64| {
        if e.is_finite() {
            json!(e)
        } else {
            json!("NaN")
        }
    };
    let cases: Vec<_> = outcomes
        .iter()
        .map(|o| {
            let k = kernels.entry(o.kernel).or_insert((0.0, 0, true));
            k.0 = if o.err.is_nan() || k.0.is_nan() {
                f64::NAN
            } else {
                k.0.max(o.err)
            };
            k.1 += 1;
            k.2 &= o.ok;
            json!({"kernel": o.kernel, "what": o.what, "err": num(o.err), "tol": o.tol, "ok": o.ok})
        })
        .collect();
    let all_ok = !kernels.is_empty() && kernels.values().all(|k| k.2);
    let kernels: serde_json::Map<String, serde_json::Value> = kernels
        .into_iter()
        .map(|(name, (err, n, ok))| {
            let summary = json!({"max_err": num(err), "cases": n, "ok": ok});
            (name.to_string(), summary)
        })
        .collect();
    let report =
        json!({"adapter": gpu_info(&gpu), "cases": cases, "kernels": kernels, "ok": all_ok});
    Ok(report.to_string())
}
