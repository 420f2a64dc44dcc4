//! The liveness planner: buffers are reused once their tensor is dead, an op never reads and
//! writes the same buffer (unless it is one in-place tensor), graph outputs are never shared,
//! and a planned graph computes what its ops compute one by one on the CPU.

use std::sync::Arc;

use kestrel_runtime::executor::Plan;
use kestrel_runtime::graph::Source;
use kestrel_runtime::kernels::attention::AttnShape;
use kestrel_runtime::kernels::{embedding, matmul, matvec, rms_norm, rope, Step};
use kestrel_runtime::kv::KvLayout;
use kestrel_runtime::planner::{self, Assignment};
use kestrel_runtime::rng::Rng;
use kestrel_runtime::state::StateStore;
use kestrel_runtime::tensor::{DType, GpuWeight, HostData};
use kestrel_runtime::{Gpu, Graph, TensorId};
use kestrel_tests::*;

fn gpu() -> Arc<Gpu> {
    gpus()
        .into_iter()
        .next()
        .expect("KESTREL_TEST_BACKENDS names no backend")
}

fn upload(gpu: &Gpu, name: &str, rows: usize, cols: usize, data: &[f32]) -> Arc<GpuWeight> {
    GpuWeight::upload(gpu, name, rows, cols, HostData::F32(data)).unwrap()
}

fn is_activation(g: &Graph, t: TensorId) -> bool {
    matches!(g.tensors[t].source, Source::Activation)
}

/// [first write, last access] of every tensor, by op index.
fn live_ranges(g: &Graph) -> Vec<Option<(usize, usize)>> {
    let mut r: Vec<Option<(usize, usize)>> = vec![None; g.tensors.len()];
    for (i, op) in g.ops.iter().enumerate() {
        let (reads, writes) = op.reads_writes();
        for t in writes {
            r[t] = Some(r[t].map_or((i, i), |(a, _)| (a, i)));
        }
        for t in reads {
            if let Some((a, _)) = r[t] {
                r[t] = Some((a, i));
            }
        }
    }
    r
}

/// Check every property the executor relies on; returns the number of activations that got a
/// pooled slot.
fn check_assignment(g: &Graph, a: &Assignment) -> usize {
    assert_eq!(a.slot_of.len(), g.tensors.len());
    let ranges = live_ranges(g);
    let mut pooled = 0;
    for t in 0..g.tensors.len() {
        let Some(s) = a.slot_of[t] else { continue };
        assert!(
            is_activation(g, t),
            "tensor {t} is not an activation but has slot {s}"
        );
        pooled += 1;
        let bytes = g.tensors[t].dtype.bytes(g.tensors[t].numel());
        assert!(
            a.slot_bytes[s] >= bytes,
            "slot {s} ({} bytes) too small for tensor {t} ({bytes} bytes)",
            a.slot_bytes[s]
        );
    }
    // Tensors sharing a slot are never alive at the same time.
    for t in 0..g.tensors.len() {
        for u in t + 1..g.tensors.len() {
            if a.slot_of[t].is_none() || a.slot_of[t] != a.slot_of[u] {
                continue;
            }
            let (rt, ru) = (ranges[t].unwrap(), ranges[u].unwrap());
            assert!(
                rt.1 < ru.0 || ru.1 < rt.0,
                "tensors {t} (ops {rt:?}) and {u} (ops {ru:?}) share slot {:?} while both alive",
                a.slot_of[t]
            );
        }
    }
    // No op reads and writes one slot through two different tensors.
    for (i, op) in g.ops.iter().enumerate() {
        let (reads, writes) = op.reads_writes();
        for &w in &writes {
            for &r in &reads {
                if r != w && a.slot_of[r].is_some() {
                    assert_ne!(
                        a.slot_of[r], a.slot_of[w],
                        "op {i} ({op:?}) reads tensor {r} and writes tensor {w} in one slot"
                    );
                }
            }
        }
    }
    // Outputs own their buffer: either a dedicated one (no slot) or a slot nobody else uses.
    for &o in &g.outputs {
        if let Some(s) = a.slot_of[o] {
            let sharers: Vec<_> = (0..g.tensors.len())
                .filter(|&t| t != o && a.slot_of[t] == Some(s))
                .collect();
            assert!(
                sharers.is_empty(),
                "output {o} shares slot {s} with {sharers:?}"
            );
        }
    }
    pooled
}

fn activation_count(g: &Graph) -> usize {
    (0..g.tensors.len())
        .filter(|&t| is_activation(g, t))
        .count()
}

/// A pre-norm MLP block and a head: embedding, norm, gate/up, SwiGLU, down, residual, norm,
/// logits. Returns the graph and its weights' values.
struct Mlp {
    graph: Graph,
    table: Vec<f32>,
    norm1: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    norm2: Vec<f32>,
    head: Vec<f32>,
}

const VOCAB: usize = 97;
const DIM: usize = 48;
const HIDDEN: usize = 75;

fn mlp_graph(gpu: &Gpu, n_tokens: usize, sample: bool) -> Mlp {
    let mut rng = Rng::new(77);
    let table = rng.vec(VOCAB * DIM, 1.0);
    let norm1 = rng.vec(DIM, 1.0);
    let gate = rng.vec(HIDDEN * DIM, 0.3);
    let up = rng.vec(HIDDEN * DIM, 0.3);
    let down = rng.vec(DIM * HIDDEN, 0.3);
    let norm2 = rng.vec(DIM, 1.0);
    let head = rng.vec(VOCAB * DIM, 0.5);
    let mut g = Graph::new();
    let ids = g.input("tokens", &[n_tokens], DType::U32);
    let w = |g: &mut Graph, name: &str, rows: usize, cols: usize, data: &[f32]| {
        g.weight(&upload(gpu, name, rows, cols, data))
    };
    let t = w(&mut g, "table", VOCAB, DIM, &table);
    let n1 = w(&mut g, "norm1", 1, DIM, &norm1);
    let wg = w(&mut g, "gate", HIDDEN, DIM, &gate);
    let wu = w(&mut g, "up", HIDDEN, DIM, &up);
    let wd = w(&mut g, "down", DIM, HIDDEN, &down);
    let n2 = w(&mut g, "norm2", 1, DIM, &norm2);
    let wh = w(&mut g, "head", VOCAB, DIM, &head);
    let x = g.embedding(t, ids).unwrap();
    let h = g.rms_norm(x, n1, 1e-5).unwrap();
    let a = g.linear(h, wg, None).unwrap();
    let b = g.linear(h, wu, None).unwrap();
    let s = g.swiglu(a, b).unwrap();
    let d = g.linear(s, wd, None).unwrap();
    let r = g.add_tensors(x, d).unwrap();
    let o = g.rms_norm(r, n2, 1e-5).unwrap();
    let logits = g.linear(o, wh, None).unwrap();
    let out = if sample {
        g.sample(logits).unwrap()
    } else {
        logits
    };
    g.output(out);
    Mlp {
        graph: g,
        table,
        norm1,
        gate,
        up,
        down,
        norm2,
        head,
    }
}

impl Mlp {
    /// The block on the CPU, op by op with the kernels' references.
    fn reference(&self, ids: &[u32]) -> Vec<f32> {
        use kestrel_runtime::kernels::elementwise::{reference as ew, Elementwise};
        let t = ids.len();
        let lin = |x: &[f32], w: &[f32], n: usize, k: usize| {
            if t == 1 {
                matvec::reference(x, w, None, n, k)
            } else {
                matmul::reference(x, w, None, t, n, k)
            }
        };
        let x = embedding::reference(ids, &self.table, DIM);
        let h = rms_norm::reference(&x, &self.norm1, DIM, 1e-5);
        let a = lin(&h, &self.gate, HIDDEN, DIM);
        let b = lin(&h, &self.up, HIDDEN, DIM);
        let s = ew(Elementwise::SwiGlu, &a, &b);
        let d = lin(&s, &self.down, DIM, HIDDEN);
        let r = ew(Elementwise::Add, &x, &d);
        let o = rms_norm::reference(&r, &self.norm2, DIM, 1e-5);
        lin(&o, &self.head, VOCAB, DIM)
    }
}

#[test]
fn chain_reuses_buffers() {
    let gpu = gpu();
    let m = mlp_graph(&gpu, 5, false);
    let a = planner::plan(&m.graph);
    let pooled = check_assignment(&m.graph, &a);
    let acts = activation_count(&m.graph);
    assert_eq!(pooled, acts, "every activation gets a slot");
    assert!(
        a.slot_bytes.len() < pooled,
        "{} slots for {pooled} activations: no reuse",
        a.slot_bytes.len()
    );
    // x lives across the MLP (residual), h across gate and up, plus the output's own slot.
    assert!(
        a.slot_bytes.len() <= 5,
        "{} slots: {:?}",
        a.slot_bytes.len(),
        a.slot_of
    );
}

#[test]
fn long_chain_ping_pongs_between_two_buffers() {
    let gpu = gpu();
    let mut g = Graph::new();
    let ids = g.input("tokens", &[3], DType::U32);
    let table = g.weight(&upload(&gpu, "table", 10, 16, &[0.5; 160]));
    let norm = g.weight(&upload(&gpu, "norm", 1, 16, &[1.0; 16]));
    let mut x = g.embedding(table, ids).unwrap();
    for _ in 0..12 {
        x = g.rms_norm(x, norm, 1e-5).unwrap();
    }
    g.output(x);
    let a = planner::plan(&g);
    assert_eq!(check_assignment(&g, &a), 13);
    // Two buffers in turn for the chain, one for the output.
    assert_eq!(a.slot_bytes.len(), 3, "slots {:?}", a.slot_bytes);
}

#[test]
fn in_place_ops_states_and_several_outputs() {
    let gpu = gpu();
    let (t, heads, kv_heads, hd) = (4, 4, 2, 16);
    let mut rng = Rng::new(5);
    let mut g = Graph::new();
    let ids = g.input("tokens", &[t], DType::U32);
    let table = g.weight(&upload(
        &gpu,
        "table",
        11,
        heads * hd,
        &rng.vec(11 * heads * hd, 1.0),
    ));
    let wq = g.weight(&upload(
        &gpu,
        "q",
        heads * hd,
        heads * hd,
        &rng.vec(heads * hd * heads * hd, 0.1),
    ));
    let wk = g.weight(&upload(
        &gpu,
        "k",
        kv_heads * hd,
        heads * hd,
        &rng.vec(kv_heads * hd * heads * hd, 0.1),
    ));
    let wv = g.weight(&upload(
        &gpu,
        "v",
        kv_heads * hd,
        heads * hd,
        &rng.vec(kv_heads * hd * heads * hd, 0.1),
    ));
    let freqs = rope::inv_freq(10000.0, hd, None);
    let inv_freq = g.weight(&upload(&gpu, "inv_freq", 1, hd / 2, &freqs));
    let k_cache = g.state("k", &[32, kv_heads * hd]);
    let v_cache = g.state("v", &[32, kv_heads * hd]);
    let x = g.embedding(table, ids).unwrap();
    let q = g.linear(x, wq, None).unwrap();
    let k = g.linear(x, wk, None).unwrap();
    let v = g.linear(x, wv, None).unwrap();
    let q = g.rope(q, inv_freq, heads, hd).unwrap();
    let k = g.rope(k, inv_freq, kv_heads, hd).unwrap();
    let layout = KvLayout::linear(32);
    g.cache_write(k, k_cache, layout).unwrap();
    g.cache_write(v, v_cache, layout).unwrap();
    let shape = AttnShape {
        softcap: None,
        heads,
        kv_heads,
        head_dim: hd,
        scale: 0.25,
    };
    let o = g
        .attention(q, k_cache, v_cache, shape, true, layout, None, None)
        .unwrap();
    let r = g.add_tensors(x, o).unwrap();
    let last = g.last_row(r).unwrap();
    let probs = g.softmax(last).unwrap();
    g.output(r);
    g.output(probs);
    let a = planner::plan(&g);
    check_assignment(&g, &a);
    for s in [k_cache, v_cache] {
        assert_eq!(
            a.slot_of[s], None,
            "states are bound from the state store, not pooled"
        );
    }
    // x, q, k and v are alive together (4 slots); the attention output reuses k's or v's
    // slot, the last row one freed after the residual; the two outputs own one each: 6 for 8.
    let (slots, acts) = (a.slot_bytes.len(), activation_count(&g));
    assert!(
        slots <= 6 && slots < acts,
        "{slots} slots for {acts} activations: {:?}",
        a.slot_of
    );
}

#[test]
fn unread_results_do_not_leak_their_slot() {
    let gpu = gpu();
    let mut g = Graph::new();
    let ids = g.input("tokens", &[2], DType::U32);
    let table = g.weight(&upload(&gpu, "table", 10, 16, &[0.5; 160]));
    let norm = g.weight(&upload(&gpu, "norm", 1, 16, &[1.0; 16]));
    let x = g.embedding(table, ids).unwrap();
    let mut y = x;
    for _ in 0..6 {
        g.rms_norm(x, norm, 1e-5).unwrap(); // a result nobody reads
        y = g.rms_norm(y, norm, 1e-5).unwrap();
    }
    g.output(y);
    let a = planner::plan(&g);
    check_assignment(&g, &a);
    // x (read by every op), the chain's two buffers in turn, one for the dead results, and
    // the output's own.
    assert!(
        a.slot_bytes.len() <= 5,
        "dead results should free their slot: {:?}",
        a.slot_of
    );
}

/// The planned graph on the GPU equals the kernels' references chained on the CPU, for
/// prefill (matmul), decode (matvec), and replays with new inputs (buffers reused between runs).
#[test]
fn planned_graph_matches_op_by_op_reference() {
    for gpu in gpus() {
        for ids in [
            &[3u32, 0, 96, 41, 41][..],
            &[7],
            &[96, 1, 2, 3, 4, 5, 6, 7, 8],
        ] {
            let m = mlp_graph(&gpu, ids.len(), false);
            let plan = Plan::new(&gpu, &m.graph, &StateStore::default()).unwrap();
            assert!(plan.activation_bytes < plan.activation_bytes_unplanned || ids.len() == 1);
            let expect = m.reference(ids);
            for run in 0..2 {
                // Replays with other inputs: run 1 uses the ids reversed.
                let ids: Vec<u32> = if run == 0 {
                    ids.to_vec()
                } else {
                    ids.iter().rev().copied().collect()
                };
                let expect = if run == 0 {
                    expect.clone()
                } else {
                    m.reference(&ids)
                };
                plan.write_input("tokens", &ids).unwrap();
                plan.run(&step(0, ids.len() as u32)).unwrap();
                let got = pollster::block_on(plan.read_f32(0)).unwrap();
                // Four chained f32 sums of <= 75 terms and two norms: 1e-5 as in tests/kernels.rs.
                assert_close(
                    &format!(
                        "planned MLP ids={ids:?} run {run} on {}",
                        gpu.backend_name()
                    ),
                    &got,
                    &expect,
                    1e-5,
                );
            }
        }
        // With a sampling head: greedy picks the argmax of the last row.
        let ids = [5u32, 6, 7];
        let m = mlp_graph(&gpu, ids.len(), true);
        let plan = Plan::new(&gpu, &m.graph, &StateStore::default()).unwrap();
        plan.write_input("tokens", &ids).unwrap();
        plan.run(&Step {
            temperature: 0.0,
            ..step(0, 3)
        })
        .unwrap();
        let tok = pollster::block_on(plan.read_u32(0)).unwrap();
        let logits = m.reference(&ids);
        let expect = kestrel_runtime::kernels::sample::argmax(&logits[2 * VOCAB..]);
        assert_eq!(
            tok,
            [expect],
            "greedy sample head on {}",
            gpu.backend_name()
        );
    }
}
