//! The mixture-of-experts kernels (kernels::moe): router, permutation, grouped expert
//! matmuls and matvecs, combine — the whole block against its CPU reference, the runtime's
//! table of kernel cases (`kestrel_runtime::cases`, where sizes and tolerances are defined
//! and justified) on every backend; and the router's ties and its check of k.

use kestrel_runtime::cases;
use kestrel_runtime::kernels::moe;
use kestrel_tests::*;

#[test]
fn moe_block_matches_reference() {
    check_cases(cases::family("moe"));
}

#[test]
fn router_ties_go_to_the_lower_index_and_k_is_checked() {
    for gpu in gpus() {
        // Every expert equal: the first k win, in index order.
        let (t, e, k) = (3, 6, 4);
        let logits = upload_f32(&gpu, &vec![0.5; t * e]);
        let route = upload_u32(&gpu, &vec![u32::MAX; t * 2 * k]);
        run(
            &gpu,
            &[moe::launch_route(&gpu, &logits, &route, t, e, k, true).unwrap()],
        );
        let got = read_u32(&gpu, &route, t * 2 * k);
        for row in got.chunks(2 * k) {
            assert_eq!(&row[..k], &[0, 1, 2, 3]);
            for &w in &row[k..] {
                assert_eq!(f32::from_bits(w), 0.25);
            }
        }
        let reference = moe::route_reference(&vec![0.5; e], e, k, true);
        assert_eq!(reference[0].0, vec![0, 1, 2, 3]);
        for bad in [0, e + 1] {
            let err = moe::launch_route(&gpu, &logits, &route, t, e, bad, true).unwrap_err();
            assert!(err.to_string().contains("experts per token"), "{err}");
        }
    }
}
