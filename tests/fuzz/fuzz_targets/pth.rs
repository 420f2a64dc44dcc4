//! Arbitrary bytes as a PyTorch `.pth` checkpoint (zip container, pickled state dict): the
//! parse never executes anything and never panics; every tensor it accepts lies inside the
//! file with as many bytes as its shape and dtype say; the family rule for checkpoints
//! without config.json (BlinkDL's RWKV-7) runs over it.

#![no_main]

use std::path::Path;

use kestrel_models::families;
use kestrel_models::formats::host::{numel, TensorSource};
use kestrel_models::formats::pth::PthFile;
use kestrel_models::formats::safetensors::Blob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = PthFile::parse(Path::new("fuzz.pth"), Blob::Owned(data.to_vec())) else {
        return;
    };
    for name in file.names().to_vec() {
        let Ok(t) = file.tensor(&name) else {
            continue;
        };
        let n = numel(&t.shape).expect("a parsed tensor's element count fits");
        assert_eq!(t.to_f32().len(), n, "{name}: values vs shape {:?}", t.shape);
    }
    let _ = families::from_tensors(&file);
});
