//! The fusion of elementwise chains (runtime/src/fusion.rs): which ops merge and which must
//! not (a value read twice, a graph output, a broadcast row, an input written in between,
//! the kernel's limits), and fused graphs on the GPU giving the unfused graphs' outputs.

use kestrel_runtime::executor::{Lowering, Plan};
use kestrel_runtime::fusion::fuse_elementwise;
use kestrel_runtime::graph::Source;
use kestrel_runtime::kernels::elementwise::Elementwise::{self, *};
use kestrel_runtime::kernels::Step;
use kestrel_runtime::op::Op;
use kestrel_runtime::rng::Rng;
use kestrel_runtime::state::StateStore;
use kestrel_runtime::tensor::DType;
use kestrel_runtime::{Graph, TensorId};
use kestrel_tests::*;

const ROWS: usize = 3;
const WIDTH: usize = 37;

/// A graph over f32 inputs x, d ([ROWS, WIDTH]) and mu (a row of WIDTH).
fn inputs(g: &mut Graph) -> [TensorId; 3] {
    [
        g.input("x", &[ROWS, WIDTH], DType::F32),
        g.input("d", &[ROWS, WIDTH], DType::F32),
        g.input("mu", &[WIDTH], DType::F32),
    ]
}

/// The op names of `g` in order.
fn names(g: &Graph) -> Vec<&'static str> {
    g.ops.iter().map(|op| op.name()).collect()
}

/// An op that only declares that it writes `t` (what an in-place kernel does to a state).
#[derive(Debug)]
struct Writes(TensorId);

impl Op for Writes {
    fn name(&self) -> &'static str {
        "writes"
    }
    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        (vec![self.0], vec![self.0])
    }
    fn lower(&self, _: &mut Lowering) -> kestrel_runtime::error::Result<()> {
        Ok(())
    }
}

#[test]
fn chains_merge_only_where_nothing_else_sees_their_values() {
    // x + d * mu, then sigmoid: one op of three steps; the two values between are fused.
    let mut g = Graph::new();
    let [x, d, mu] = inputs(&mut g);
    let m = g.elementwise(Mul, d, mu).unwrap();
    let y = g.add_tensors(x, m).unwrap();
    let z = g.unary(Sigmoid, y).unwrap();
    g.output(z);
    fuse_elementwise(&mut g);
    assert_eq!(names(&g), ["elementwise_fused"]);
    assert!(matches!(g.tensors[m].source, Source::Fused));
    assert!(matches!(g.tensors[y].source, Source::Fused));
    assert!(matches!(g.tensors[z].source, Source::Activation));

    // A value read by two ops stays (and its readers merge around it); so does an output.
    let mut g = Graph::new();
    let [x, d, mu] = inputs(&mut g);
    let a = g.unary(Sigmoid, x).unwrap();
    let b = g.elementwise(Mul, a, d).unwrap();
    let c = g.add_tensors(a, b).unwrap();
    let e = g.elementwise(Mul, c, mu).unwrap();
    let f = g.add_tensors(e, x).unwrap();
    g.output(e);
    g.output(f);
    fuse_elementwise(&mut g);
    assert_eq!(
        names(&g),
        ["elementwise", "elementwise_fused", "elementwise"]
    );
    assert!(matches!(g.tensors[a].source, Source::Activation));
    assert!(matches!(g.tensors[b].source, Source::Fused));

    // A row vector computed by one op and broadcast by the next keeps its own op.
    let mut g = Graph::new();
    let [x, _, mu] = inputs(&mut g);
    let r = g.unary(Tanh, mu).unwrap();
    let y = g.elementwise(Mul, x, r).unwrap();
    g.output(y);
    fuse_elementwise(&mut g);
    assert_eq!(names(&g), ["elementwise", "elementwise"]);

    // An op between that writes an input of the chain: the chain cannot move past it.
    let mut g = Graph::new();
    let [x, d, _] = inputs(&mut g);
    let m = g.elementwise(Mul, d, x).unwrap();
    g.ops.push(Box::new(Writes(d)));
    let y = g.add_tensors(x, m).unwrap();
    g.output(y);
    fuse_elementwise(&mut g);
    assert_eq!(names(&g), ["elementwise", "writes", "elementwise"]);
    // ... but one that writes something else does not stop it.
    let mut g = Graph::new();
    let [x, d, mu] = inputs(&mut g);
    let m = g.elementwise(Mul, d, x).unwrap();
    g.ops.push(Box::new(Writes(mu)));
    let y = g.add_tensors(x, m).unwrap();
    g.output(y);
    fuse_elementwise(&mut g);
    assert_eq!(names(&g), ["writes", "elementwise_fused"]);
}

/// A chain of `len` ops alternating over x, d and mu, ending in one output.
fn long_chain(len: usize) -> Graph {
    let mut g = Graph::new();
    let [x, d, mu] = inputs(&mut g);
    let ops = [Mul, Add, Tanh, Sub, SigmoidMul, Sigmoid];
    let mut v = x;
    for k in 0..len {
        let op: Elementwise = ops[k % ops.len()];
        let other = [d, mu, x][k % 3];
        v = match op.unary() {
            true => g.unary(op, v).unwrap(),
            false => g.elementwise(op, v, other).unwrap(),
        };
    }
    g.output(v);
    g
}

#[test]
fn long_chains_split_at_the_kernels_limit() {
    let mut g = long_chain(20);
    fuse_elementwise(&mut g);
    // 8 steps per op at most: 20 ops in 3.
    assert_eq!(names(&g), ["elementwise_fused"; 3]);
}

/// Run `g` with random x, d, mu and return its outputs.
fn run(gpu: &std::sync::Arc<kestrel_runtime::Gpu>, g: &Graph) -> Vec<Vec<f32>> {
    let plan = Plan::new(gpu, g, &StateStore::default()).unwrap();
    let mut rng = Rng::new(91);
    for (name, n) in [("x", ROWS * WIDTH), ("d", ROWS * WIDTH), ("mu", WIDTH)] {
        let v: Vec<u32> = rng.vec(n, 2.0).iter().map(|f| f.to_bits()).collect();
        plan.write_input(name, &v).unwrap();
    }
    plan.run(&Step::default()).unwrap();
    (0..g.outputs.len())
        .map(|i| pollster::block_on(plan.read_f32(i)).unwrap())
        .collect()
}

#[test]
fn fused_graphs_give_the_unfused_outputs() {
    for gpu in gpus() {
        for len in [2, 7, 8, 9, 20] {
            let plain = long_chain(len);
            let mut fused = long_chain(len);
            fuse_elementwise(&mut fused);
            assert!(fused.ops.len() < plain.ops.len());
            let (want, got) = (run(&gpu, &plain), run(&gpu, &fused));
            // The same f32 ops; a driver may contract a multiply and an add into one FMA,
            // and exp differs by an ulp or two: SUM_TOL as the kernel cases.
            let what = format!("chain of {len} on {}", gpu.backend_name());
            assert_close(&what, &got[0], &want[0], 1e-5);
        }
    }
}
