//! RoPE in place at several positions, partial rotation and Llama-3 frequency scaling.

use super::{step, step_buffer, upload_f32, Case, Output, Prepared, ROPE_TOL};
use crate::kernels::rope::{self, Llama3Scaling};
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
