//! A file the worker reads synchronously for the engine, a range at a time: any object with
//! `size` (bytes) and `read(offset, length)` returning a `Uint8Array` of exactly `length`
//! bytes (worker.js reads a `Blob` — a `File` from the Origin Private File System or the
//! user — with `FileReaderSync`).

use js_sys::{Function, Reflect, Uint8Array};
use kestrel_models::formats::range_read::RangeRead;
use wasm_bindgen::{JsCast, JsValue};

use crate::error::{Result, WebError};

pub struct JsFile {
    this: JsValue,
    read: Function,
    len: u64,
}

/// A JavaScript exception's message.
fn message(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(e) => String::from(e.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}

impl JsFile {
    /// The reader `file`, checked for its `size` and `read`.
    pub fn new(file: JsValue) -> Result<JsFile> {
        let bad = |what: &str| WebError::BadRequest(format!("a model file reader needs {what}"));
        let get = |key: &str| Reflect::get(&file, &JsValue::from_str(key)).unwrap_or_default();
        let len = get("size")
            .as_f64()
            .filter(|s| *s >= 0.0 && s.fract() == 0.0)
            .ok_or_else(|| bad("a size in bytes"))?;
        let read = get("read")
            .dyn_into::<Function>()
            .map_err(|_| bad("a read(offset, length) function"))?;
        Ok(JsFile {
            this: file,
            read,
            len: len as u64,
        })
    }
}

impl RangeRead for JsFile {
    fn size(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, String> {
        let out = self
            .read
            .call2(
                &self.this,
                &JsValue::from_f64(offset as f64),
                &JsValue::from_f64(len as f64),
            )
            .map_err(|e| message(&e))?;
        let bytes = out
            .dyn_into::<Uint8Array>()
            .map_err(|_| "the reader gave no Uint8Array".to_string())?;
        if bytes.length() as usize != len {
            return Err(format!(
                "the reader gave {} bytes at {offset}, not {len}",
                bytes.length()
            ));
        }
        Ok(bytes.to_vec())
    }
}
