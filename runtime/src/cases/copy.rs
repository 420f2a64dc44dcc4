//! The offset copy (a KV row appended at `Step::pos`, the last row of a sequence): exact,
//! and every value it must not write stays poisoned.

use super::{poisoned, step, step_buffer, upload_f32, Case, Output, Prepared};
use crate::kernels::copy::{self, CopyParams};
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    // Append 300 values at row pos of a cache with rows of 300, from an offset source; take
    // the last row of a [4, 37] sequence (stride 0); two rows at once.
    let specs = [
        (
            CopyParams {
                n: 300,
                src_offset: 7,
                dst_offset: 5,
                dst_pos_stride: 300,
            },
            3,
            320,
            5 + 300 * 5,
        ),
        (
            CopyParams {
                n: 37,
                src_offset: 3 * 37,
                dst_offset: 0,
                dst_pos_stride: 0,
            },
            9,
            4 * 37,
            37,
        ),
        (
            CopyParams {
                n: 600,
                src_offset: 0,
                dst_offset: 0,
                dst_pos_stride: 300,
            },
            2,
            600,
            300 * 6,
        ),
    ];
    let mut cases = Vec::new();
    for (i, (p, pos, src_len, dst_len)) in specs.into_iter().enumerate() {
        let seed = 1000 + i as u64;
        cases.push(Case::new("copy", format!("{p:?} pos={pos}"), move |gpu| {
            let src = Rng::new(seed).vec(src_len, 1.0);
            let (sb, db) = (upload_f32(gpu, &src), poisoned(gpu, dst_len));
            let stb = step_buffer(gpu, &step(pos, 1));
            let d = copy::launch(gpu, &stb, &sb, &db, p)?;
            let mut want = vec![f32::NAN; dst_len];
            copy::reference(&src, &mut want, p, pos);
            Ok(Prepared::new(
                gpu,
                vec![d],
                vec![Output::bits("", &db, want)],
            ))
        }));
    }
    cases
}
