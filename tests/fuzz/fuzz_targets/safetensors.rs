//! Arbitrary bytes as a safetensors file (header, then every tensor's view, shape and
//! values; the family of a checkpoint without config.json), or, when they start with `{`, as
//! a sharded checkpoint's model.safetensors.index.json (shard names, each resolved inside
//! the model folder or refused).

#![no_main]

use std::path::Path;

use kestrel_models::families;
use kestrel_models::formats::folder::file_in_folder;
use kestrel_models::formats::host::{numel, TensorSource};
use kestrel_models::formats::range_read::FileBytes;
use kestrel_models::formats::safetensors::{shard_names, Blob, SafetensorsFiles};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        let index = Path::new("/nonexistent/model/model.safetensors.index.json");
        if let Ok(names) = shard_names(index, data) {
            for name in names {
                if let Ok(p) = file_in_folder(Path::new("/nonexistent/model"), &name, index) {
                    assert!(p.starts_with("/nonexistent/model"), "{name} -> {p:?}");
                    let up = Path::new(&name)
                        .components()
                        .any(|c| c == std::path::Component::ParentDir);
                    assert!(!up, "{name} accepted");
                }
            }
        }
        return;
    }
    let path = Path::new("fuzz.safetensors");
    let whole =
        SafetensorsFiles::from_blobs(path, vec![(path.to_path_buf(), Blob::Owned(data.to_vec()))]);
    // Read a range at a time: accepted or refused alike (the messages of a header whose
    // offsets are bad differ: serde's wording around safetensors' own).
    let ranged = SafetensorsFiles::from_files(
        path,
        vec![(
            path.to_path_buf(),
            FileBytes::Ranged(Box::new(data.to_vec())),
        )],
    );
    assert_eq!(whole.is_ok(), ranged.is_ok(), "whole vs ranged");
    let Ok(files) = whole else {
        return;
    };
    let names: Vec<String> = files.tensor_names().map(str::to_string).collect();
    for name in names {
        let Ok(t) = files.tensor(&name) else {
            continue;
        };
        let n = numel(&t.shape).expect("a parsed tensor's element count fits");
        let _ = t.expect_numel(&[n]);
        assert_eq!(
            t.to_f32().len(),
            n,
            "{name}: values read vs shape {:?}",
            t.shape
        );
    }
    let _ = families::from_tensors(&files);
});
