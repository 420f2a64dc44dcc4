//! The decode gate: indirect arguments copied or zeroed, and the `ended` flag, exactly. The
//! argument count is ragged (not a multiple of the 64-invocation workgroup), the token is or
//! is not an end id, and a batch that already ended stays ended whatever the token.

use super::{upload_u32, Case, Expect, Output, Prepared};
use crate::kernels::decode_gate;
use crate::rng::Rng;

pub fn cases() -> Vec<Case> {
    // (dispatches, token, end ids, ended before)
    let specs: [(usize, u32, &[u32], bool); 5] = [
        (183, 7, &[2, 0], false),
        (183, 2, &[2, 0], false),
        (545, 9, &[], false),
        (1, 5, &[3, 4, 5], false),
        (70, 11, &[2], true),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (n, token, ends, ended))| {
            let seed = 2600 + i as u64;
            Case::new(
                "decode_gate",
                format!("{n} dispatches token={token} ends={ends:?} ended={ended}"),
                move |gpu| {
                    let mut rng = Rng::new(seed);
                    let counts: Vec<u32> = (0..3 * n).map(|_| 1 + rng.below(1000)).collect();
                    let mut ids = vec![ends.len() as u32];
                    ids.extend_from_slice(ends);
                    let (want_args, want_ended) =
                        decode_gate::reference(&counts, ended, token, ends);
                    let cb = upload_u32(gpu, &counts);
                    let args = upload_u32(gpu, &vec![u32::MAX; 3 * n]);
                    let flag = upload_u32(gpu, &[ended as u32]);
                    let tb = upload_u32(gpu, &[token]);
                    let eb = upload_u32(gpu, &ids);
                    let d = decode_gate::launch(gpu, &cb, 3 * n, &args, &flag, &tb, &eb)?;
                    Ok(Prepared::new(
                        gpu,
                        vec![d],
                        vec![
                            Output::new("args", &args, Expect::Words(want_args)),
                            Output::new("ended", &flag, Expect::Words(vec![want_ended as u32])),
                        ],
                    ))
                },
            )
            .browser(i == 1)
        })
        .collect()
}
