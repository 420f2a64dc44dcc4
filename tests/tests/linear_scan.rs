//! The gated linear recurrence (kernels::linear_scan): every kind the linear-time models use
//! (GLA, Mamba, Mamba-2, RWKV-6, RWKV-7, linear attention), token by token and as the
//! chunked scan, against its f64 CPU reference — the runtime's table of kernel cases
//! (`kestrel_runtime::cases`, where sizes, inputs and the tolerance are defined and
//! justified) on every backend; and the shapes and inputs it must refuse.

use kestrel_runtime::cases;
use kestrel_runtime::kernels::linear_scan::{self, Decay, ScanBuffers, ScanShape};
use kestrel_tests::*;

#[test]
fn both_forms_match_the_reference_for_every_kind() {
    check_cases(cases::family("linear_scan"));
}

fn shape(heads: usize, qk_heads: usize, dk: usize, dv: usize, decay: Decay) -> ScanShape {
    ScanShape {
        heads,
        qk_heads,
        dk,
        dv,
        decay,
        delta: false,
        bonus: false,
    }
}

#[test]
fn bad_shapes_are_errors() {
    let gate = Decay::Gate { per_key: true };
    let bad = [
        shape(3, 2, 16, 16, gate),
        shape(2, 2, 300, 16, gate),
        shape(0, 1, 16, 16, gate),
        ScanShape {
            bonus: true,
            ..shape(2, 2, 16, 16, Decay::DtA { per_key: false })
        },
    ];
    for s in bad {
        assert!(s.validate().is_err(), "{s:?} accepted");
    }
    // A missing input is an error, not a read of the dummy buffer.
    let gpu = &gpus()[0];
    let x = upload_f32(gpu, &[0.0; 64]);
    let b = ScanBuffers {
        q: &x,
        k: &x,
        v: &x,
        decay: None,
        consts: None,
        ab: None,
        state: &x,
        out: &x,
    };
    let err = linear_scan::launch_recurrent(gpu, &b, &shape(1, 1, 4, 4, gate), 1)
        .expect_err("a gate decay without its input was accepted");
    assert!(err.to_string().contains("decay"), "{err}");
    // The matmul form refuses the delta term with a bonus and chunks it has no room for.
    let plain = shape(1, 1, 4, 4, Decay::None);
    let delta = ScanShape {
        delta: true,
        ..plain
    };
    let with_ab = ScanBuffers { ab: Some(&x), ..b };
    let with_u = ScanBuffers {
        consts: Some(&x),
        ..with_ab
    };
    let both = ScanShape {
        bonus: true,
        ..delta
    };
    let err = linear_scan::launch_matmul(gpu, &with_u, &x, &both, 4, 4)
        .expect_err("the matmul form took the delta term with a bonus");
    assert!(err.to_string().contains("delta"), "{err}");
    let chunk = linear_scan::MM_CHUNK + 1;
    let err = linear_scan::launch_matmul(gpu, &b, &x, &plain, 64, chunk)
        .expect_err("the matmul form took chunks over MM_CHUNK");
    assert!(err.to_string().contains("chunks of"), "{err}");
    let chunk = linear_scan::MM_DELTA_CHUNK + 1;
    let err = linear_scan::launch_matmul(gpu, &with_ab, &x, &delta, 64, chunk)
        .expect_err("the delta kind's matmul form took chunks over MM_DELTA_CHUNK");
    assert!(err.to_string().contains("chunks of"), "{err}");
}
