//! `kestrel models` (the catalogue, as a table or JSON) and `kestrel pull NAME` (one model
//! of it, or a Hugging Face repository, into its cache; the path on stdout).

use serde_json::json;

use crate::catalogue::{self, CATALOGUE};
use crate::cli::{ModelsArgs, PullArgs};
use crate::hub::HubModel;
use crate::stdout::outln;
use crate::CliResult;

pub fn models(a: &ModelsArgs) -> CliResult {
    if a.json {
        let models: Vec<_> = CATALOGUE
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "label": m.label,
                    "file": m.file,
                    "size": m.size,
                    "sha256": m.sha256,
                    "licence": m.licence,
                    "source": m.source(),
                    "wheels": m.parts.iter().map(|p| json!({
                        "package": p.package,
                        "version": p.version,
                        "sha256": p.wheel_sha256,
                        "member": p.member,
                    })).collect::<Vec<_>>(),
                    "cached": m.is_cached(),
                    "path": m.cached_path(),
                })
            })
            .collect();
        outln!("{}", json!({ "models": models }));
        return Ok(());
    }
    outln!(
        "{:<28} {:>8}  {:<7} {:<50} {:<64}  SOURCE",
        "NAME",
        "SIZE",
        "CACHED",
        "LICENCE",
        "SHA256"
    );
    for m in CATALOGUE {
        outln!(
            "{:<28} {:>5} MB  {:<7} {:<50} {}  {}",
            m.name,
            (m.size as f64 / 1e6).round(),
            if m.is_cached() { "yes" } else { "no" },
            m.licence,
            m.sha256,
            m.source()
        );
    }
    outln!(
        "cache: {}; `kestrel pull NAME` downloads one, `--model NAME` uses one",
        catalogue::default_model()
            .cached_path()
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}

pub fn pull(a: &PullArgs) -> CliResult {
    // Catalogue names have no '/', so the two never overlap.
    let path = match HubModel::parse(&a.name) {
        Some(hub) => hub.obtain(false)?,
        None => catalogue::lookup(&a.name)?.obtain()?,
    };
    outln!("{}", path.display());
    Ok(())
}
