//! BlinkDL's `.pth` checkpoints (torch.save of a state dict) read by Kestrel's pickle-free
//! reader (models/src/formats/pth.rs): the rwkv7_blink fixture's model.pth (torch.save of the
//! same tensors as its model.safetensors) gives the fixture's reference logits — as a file,
//! as a folder without config.json, and as bytes (the browser's path) — and hostile,
//! unsupported or truncated files give typed errors.
//!
//! Tolerance as the folder tests (models.rs): relative error <= 1e-4, identical argmax; the
//! .pth and the safetensors hold the same f32 values, so their logits must be identical.

use std::path::{Path, PathBuf};

use kestrel_models::formats::pth::{PthError, PthFile};
use kestrel_models::formats::safetensors::Blob;
use kestrel_models::formats::zip_stored::ZipError;
use kestrel_models::ModelError;
use kestrel_tests::fixture::{self, assert_logits};
use kestrel_tests::gpus;

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    fixture::dir("")
}

/// The rwkv7_blink fixture's tokens.
fn tokens() -> Vec<u32> {
    fixture::tokens("rwkv7_blink")
}

fn prefill(model: &kestrel_models::Model, gpu: &std::sync::Arc<kestrel_runtime::Gpu>) -> Vec<f32> {
    let toks = tokens();
    let mut s = model.session(gpu, toks.len()).expect("session");
    pollster::block_on(s.logits(&toks)).expect("prefill")
}

#[test]
fn blinkdl_pth_gives_the_reference_logits() {
    let dir = fixtures().join("rwkv7_blink");
    let pth = dir.join("model.pth");
    let (shape, want) = fixture::read_npy(&dir.join("logits_prefill.npy"));
    let (_, want_decode) = fixture::read_npy(&dir.join("logits_decode.npy"));
    let vocab = shape[1];
    // A folder holding only the .pth (and the tokenizer), as BlinkDL ships it.
    let only = std::env::temp_dir().join(format!("kestrel-pth-{}", std::process::id()));
    std::fs::create_dir_all(&only).expect("temp dir");
    for f in ["model.pth", "tokenizer.json"] {
        std::fs::copy(dir.join(f), only.join(f)).expect("copy");
    }
    for gpu in gpus() {
        let b = gpu.backend_name();
        let model = kestrel_models::load(&gpu, &pth).expect("load .pth");
        assert!(model.tokenizer.is_some(), "tokenizer.json beside the .pth");
        let got = prefill(&model, &gpu);
        assert_logits(
            &format!("model.pth prefill on {b}"),
            &got,
            &want,
            vocab,
            TOL,
        );
        let toks = tokens();
        let mut s = model.session(&gpu, toks.len()).expect("session");
        let mut decode = Vec::new();
        for &t in &toks {
            decode.extend(pollster::block_on(s.logits(&[t])).expect("decode"));
        }
        assert_logits(
            &format!("model.pth decode on {b}"),
            &decode,
            &want_decode,
            vocab,
            TOL,
        );
        // The same tensors as the safetensors folder: the same logits, bit for bit.
        let from_dir = kestrel_models::load(&gpu, &dir).expect("load folder");
        assert_eq!(
            got,
            prefill(&from_dir, &gpu),
            "{b}: .pth and safetensors differ"
        );
        assert_eq!(model.file_bytes(), from_dir.file_bytes(), "{b}");
        let from_folder = kestrel_models::load(&gpu, &only).expect("load .pth folder");
        assert_eq!(got, prefill(&from_folder, &gpu), "{b}: folder with a .pth");
    }
    // The browser's path: the folder's files as bytes.
    let gpu = gpus().into_iter().next().expect("a GPU");
    let files = ["model.pth", "tokenizer.json"]
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).expect("read")))
        .to_vec();
    let model = kestrel_models::model_from_files(&gpu, &only, files).expect("load bytes");
    let from_dir = kestrel_models::load(&gpu, &dir).expect("load folder");
    assert_eq!(prefill(&model, &gpu), prefill(&from_dir, &gpu));
    std::fs::remove_dir_all(&only).ok();
}

fn pth_error(path: &Path) -> PthError {
    match PthFile::open(path) {
        Ok(_) => panic!("{} parsed", path.display()),
        Err(ModelError::Pth { error, .. }) => error,
        Err(e) => panic!("{}: not a .pth error: {e}", path.display()),
    }
}

#[test]
fn hostile_and_unsupported_checkpoints_are_refused_by_name() {
    let dir = fixtures().join("pth_hostile");
    assert_eq!(
        pth_error(&dir.join("system.pth")),
        PthError::Global("posix.system".into())
    );
    assert_eq!(
        pth_error(&dir.join("eval.pth")),
        PthError::Global("builtins.eval".into())
    );
    assert_eq!(
        pth_error(&dir.join("float64.pth")),
        PthError::Global("torch.DoubleStorage".into())
    );
    assert!(matches!(
        pth_error(&dir.join("compressed.pth")),
        PthError::Zip(ZipError::Compressed(name)) if name.ends_with("data.pkl")
    ));
    assert!(matches!(
        pth_error(&dir.join("view.pth")),
        PthError::Tensor { name, message } if name == "w" && message.contains("row-major")
    ));
    assert!(matches!(
        pth_error(&dir.join("not_tensor.pth")),
        PthError::Tensor { name, message } if name == "w" && message.contains("not a tensor")
    ));
    // The message names the file and what was refused.
    let e = PthFile::open(&dir.join("system.pth"))
        .err()
        .expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("system.pth") && text.contains("'posix.system'"),
        "{text}"
    );
    // Through the loader, with a GPU: the same error, before any weight is uploaded.
    let gpu = gpus().into_iter().next().expect("a GPU");
    match kestrel_models::load(&gpu, &dir.join("system.pth")) {
        Err(ModelError::Pth { error, .. }) => {
            assert_eq!(error, PthError::Global("posix.system".into()))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a hostile .pth loaded"),
    }
}

#[test]
fn truncated_and_corrupted_checkpoints_give_errors() {
    let path = fixtures().join("rwkv7_blink/model.pth");
    let bytes = std::fs::read(&path).expect("read");
    let parse = |b: Vec<u8>| PthFile::parse(&path, Blob::Owned(b));
    // 72 tensors (one storage each): 2 layers of BlinkDL's RWKV-7, the embedding, the head
    // and the final norm.
    let names = parse(bytes.clone()).expect("whole file").names().to_vec();
    assert_eq!(names.len(), 72);
    assert_eq!(names[0], "emb.weight");
    // Every cut of the file fails cleanly (no panic): the central directory is at the end.
    for cut in (0..bytes.len())
        .step_by(997)
        .chain(bytes.len() - 30..bytes.len())
    {
        assert!(parse(bytes[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    // Flipped bytes anywhere in the pickle (data.pkl, 6807 bytes, is the first entry) fail
    // or parse, never panic.
    let pkl_end = 6807 + 64;
    for at in (0..pkl_end).step_by(7) {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        let _ = parse(b);
    }
}
