// The models the chat page offers: the native catalogue (desktop/src/catalogue.rs, `kestrel
// models --json`) with the same names, files, sizes, SHA-256s and licences; web/tests/
// chat_page.mjs checks that the two agree. Each model is fetched from `models/<file>` (what
// web/serve.mjs serves from Kestrel's model cache, after `kestrel pull NAME`).
import { storedFile } from './model_store.js';

export const CATALOGUE = [
  {
    name: 'smollm2-135m-instruct',
    label: 'SmolLM2-135M-Instruct, Q4_1 GGUF (llama)',
    file: 'SmolLM2-135M-Instruct.Q4_1.gguf',
    size: 98_362_432,
    sha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
    licence: 'Apache-2.0',
  },
  {
    name: 'qwen2.5-coder-0.5b-instruct',
    label: 'Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2)',
    file: 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf',
    size: 491_400_064,
    sha256: '1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32',
    licence: "Apache-2.0 (upstream's; the packager states none)",
  },
  {
    name: 'gemma-3-270m',
    label: 'Gemma-3-270M (base), Q4_K_M GGUF (gemma3)',
    file: 'gemma-3-270m-q4_k_m.gguf',
    size: 253_113_024,
    sha256: 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818',
    licence: 'Gemma Terms of Use',
  },
  {
    name: 'qwen2.5-coder-1.5b-instruct',
    label: 'Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2)',
    file: 'qwen2.5-coder-1.5b-instruct-q4_k_m.gguf',
    size: 1_117_320_768,
    sha256: 'cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046',
    licence: "Apache-2.0 (upstream's; the packager states none)",
  },
].map((m) => ({ ...m, url: `models/${m.file}` }));

/** Sizes as `kestrel models` prints them: whole megabytes (10^6 bytes). */
export const megabytes = (bytes) => `${Math.round(bytes / 1e6)} MB`;

/** The catalogue's model served at `url` (relative to the page, or absolute), if any. */
export function byUrl(url, base = globalThis.location?.href) {
  const abs = new URL(url, base).href;
  return CATALOGUE.find((m) => new URL(m.url, base).href === abs) || null;
}

/**
 * Check the cached copy of catalogue model `m` against its pinned size and SHA-256.
 * Resolves to 'verified', 'mismatch' (with the reason) or 'not cached'. A verified file is
 * remembered (localStorage), so the hash is computed once per download.
 */
export async function verify(m) {
  const abs = new URL(m.url, location.href).href;
  const key = `kestrel-verified:${abs}`;
  if (localStorage.getItem(key) === m.sha256) return { result: 'verified' };
  const file = await storedFile(abs);
  if (!file) return { result: 'not cached' };
  // Whole in the page's memory for the digest (WebCrypto hashes no stream), once a download.
  const bytes = await file.arrayBuffer();
  if (bytes.byteLength !== m.size) {
    return { result: 'mismatch', reason: `${bytes.byteLength} bytes, the catalogue says ${m.size}` };
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  const hex = [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
  if (hex !== m.sha256) return { result: 'mismatch', reason: `SHA-256 ${hex}, the catalogue says ${m.sha256}` };
  localStorage.setItem(key, m.sha256);
  return { result: 'verified' };
}
