//! The fusion of elementwise chains: a run of elementwise ops whose intermediate values
//! nothing else reads becomes one [`FusedElementwiseOp`] (one dispatch, the values kept in
//! registers). Architectures build their graphs op by op (an RWKV token-shift mix is a
//! multiply and an add, six times a layer); this pass, run on every graph a session plans,
//! makes them one kernel each without any family knowing.
//!
//! An elementwise op P is merged into the op C that reads its output when: the output is an
//! activation read by C alone and not a graph output; it has C's length (not a broadcast
//! row); nothing between P's chain and C writes a tensor the chain reads (the chain now runs
//! at C's place); and the merged chain fits the kernel ([`MAX_STEPS`], [`MAX_INPUTS`]).
//! Merged values become [`Source::Fused`].

use crate::graph::{Graph, Source, TensorId};
use crate::kernels::elementwise_fused::{
    FusedElementwiseOp, FusedStep, Operand, MAX_INPUTS, MAX_STEPS,
};

/// A chain being built: its inputs and steps, and the ops it replaces.
#[derive(Default)]
struct Chain {
    inputs: Vec<TensorId>,
    steps: Vec<FusedStep>,
    members: Vec<usize>,
}

impl Chain {
    fn input(&mut self, t: TensorId) -> Operand {
        let j = match self.inputs.iter().position(|&i| i == t) {
            Some(j) => j,
            None => {
                self.inputs.push(t);
                self.inputs.len() - 1
            }
        };
        Operand::Input(j)
    }

    /// Append `sub`'s steps (its operands renumbered); its value as an operand.
    fn absorb(&mut self, sub: Chain) -> Operand {
        let offset = self.steps.len();
        for s in &sub.steps {
            let mut map = |o: Operand| match o {
                Operand::Input(j) => self.input(sub.inputs[j]),
                Operand::Step(k) => Operand::Step(k + offset),
            };
            let (a, b) = (map(s.a), map(s.b));
            self.steps.push(FusedStep { op: s.op, a, b });
        }
        self.members.extend(sub.members);
        Operand::Step(self.steps.len() - 1)
    }

    /// Inputs of `self` and `other` together.
    fn inputs_with(&self, other: &Chain) -> usize {
        let extra = other.inputs.iter().filter(|t| !self.inputs.contains(t));
        self.inputs.len() + extra.count()
    }
}

/// Merge the elementwise chains of `graph` (see the module's comment).
pub fn fuse_elementwise(graph: &mut Graph) {
    let ops = std::mem::take(&mut graph.ops);
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    let mut readers = vec![0usize; graph.tensors.len()];
    for op in &ops {
        let (mut r, w) = op.reads_writes();
        r.sort_unstable();
        r.dedup();
        for &t in &r {
            readers[t] += 1;
        }
        reads.push(r);
        writes.push(w);
    }
    let mut producer = vec![None; graph.tensors.len()];
    let mut chains: Vec<Option<Chain>> = (0..ops.len()).map(|_| None).collect();
    for (c, op) in ops.iter().enumerate() {
        let Some(e) = op.as_elementwise() else {
            continue;
        };
        let mut chain = Chain {
            members: vec![c],
            ..Chain::default()
        };
        let mut operands = [Operand::Input(0); 2];
        for (k, t) in [e.a, e.b].into_iter().enumerate() {
            if k == 1 && e.b == e.a {
                operands[1] = operands[0];
                continue;
            }
            let sub = producer[t].and_then(|p: usize| chains[p].take().map(|ch| (p, ch)));
            operands[k] = match sub {
                Some((_, sub))
                    if mergeable(graph, &writes, &readers, (t, e.out, c), &chain, &sub) =>
                {
                    graph.tensors[t].source = Source::Fused;
                    chain.absorb(sub)
                }
                Some((p, sub)) => {
                    chains[p] = Some(sub);
                    chain.input(t)
                }
                None => chain.input(t),
            };
        }
        chain.steps.push(FusedStep {
            op: e.kind,
            a: operands[0],
            b: operands[1],
        });
        producer[e.out] = Some(c);
        chains[c] = Some(chain);
    }
    // Each op in order: a chain's last op becomes the chain (or stays as it is, alone);
    // merged ops go.
    let mut merged = vec![false; ops.len()];
    for ch in chains.iter().flatten() {
        for &m in &ch.members[1..] {
            merged[m] = true;
        }
    }
    for (i, op) in ops.into_iter().enumerate() {
        match chains[i].take() {
            Some(ch) if ch.steps.len() > 1 => {
                let out = op.reads_writes().1[0];
                graph.ops.push(Box::new(FusedElementwiseOp {
                    inputs: ch.inputs,
                    steps: ch.steps,
                    out,
                }));
            }
            _ if merged[i] => {}
            _ => graph.ops.push(op),
        }
    }
}

/// Whether chain `sub`, whose value is `t`, may merge into the chain of op `c` (output
/// `out`) built so far.
fn mergeable(
    graph: &Graph,
    writes: &[Vec<TensorId>],
    readers: &[usize],
    (t, out, c): (TensorId, TensorId, usize),
    chain: &Chain,
    sub: &Chain,
) -> bool {
    let first = sub.members.iter().copied().min().unwrap_or(c);
    let written_between = (first + 1..c)
        .filter(|i| !sub.members.contains(i))
        .any(|i| writes[i].iter().any(|w| sub.inputs.contains(w)));
    matches!(graph.tensors[t].source, Source::Activation)
        && !graph.outputs.contains(&t)
        && readers[t] == 1
        && graph.numel(t) == graph.numel(out)
        && !written_between
        // Room for the step of op c itself, and one more input for its other operand.
        && chain.steps.len() + sub.steps.len() < MAX_STEPS
        && chain.inputs_with(sub) < MAX_INPUTS
}
