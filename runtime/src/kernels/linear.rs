//! The Linear op, `y = x Wᵀ + b` for x [T, K] and a weight W [N, K] of any weight dtype: the
//! matvec kernel for one row (decode), the tiled matmul otherwise (prefill).

use super::{matmul, matvec};
use crate::error::Result;
use crate::executor::Lowering;
use crate::graph::{mismatch, Graph, TensorId};
use crate::op::Op;

#[derive(Debug)]
pub struct Linear {
    pub x: TensorId,
    pub w: TensorId,
    pub bias: Option<TensorId>,
    pub out: TensorId,
}

impl Graph {
    pub fn linear(&mut self, x: TensorId, w: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        if xs[1] != ws[1] {
            let name = &self.weight_of(w)?.name;
            return Err(mismatch(
                &format!("weight {name} (input features)"),
                &[ws[0], xs[1]],
                &ws,
            ));
        }
        if let Some(b) = bias {
            self.expect_vector(b, ws[0], "bias")?;
        }
        let out = self.activation(vec![xs[0], ws[0]]);
        self.push(Linear { x, w, bias, out });
        Ok(out)
    }
}

impl Op for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn reads_writes(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let mut r = vec![self.x, self.w];
        r.extend(self.bias);
        (r, vec![self.out])
    }

    fn lower(&self, cx: &mut Lowering) -> Result<()> {
        let gpu = cx.gpu();
        let m = cx.shape(self.x)[0];
        let (x, w, out) = (cx.buf(self.x)?, cx.weight(self.w)?, cx.buf(self.out)?);
        let bias = cx.opt_buf(self.bias)?;
        let d = if m == 1 {
            matvec::launch(gpu, x, w, bias, out)?
        } else {
            matmul::launch(gpu, x, w, bias, out, m)?
        };
        cx.push(d);
        Ok(())
    }
}
