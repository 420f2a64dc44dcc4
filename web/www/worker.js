// The Kestrel worker: owns the wasm engine and the WebGPU device, so the page never blocks.
// Messages in: {id, type, ...}; out: {id, type: 'result'|'error'|'chunk'|'progress', ...}.
// Model files are kept (model_store.js: a GGUF file or a folder's safetensors shards in the
// Origin Private File System, read by the engine a range at a time; a folder's small files in
// the Cache API), so a reload does not download them again.
import init, * as wasm from './pkg/kestrel_web.js';
import { CACHE, storeWriter, storedFile } from './model_store.js';

const ready = init();
let engine = null;
let modelName = '';
// The Cache API record of the loaded model's pipeline keys, and how many it holds.
let pipelineRecord = null;
let keptKeys = 0;
const aborted = new Set();
let queue = Promise.resolve();

const post = (m, transfer) => self.postMessage(m, transfer || []);
const progress = (id, p) => post({ id, type: 'progress', progress: p });

function named(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

async function openCache() {
  if (typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE);
  } catch {
    return null;
  }
}

// GET `abs`, its body handed to `sink(chunk)` a chunk at a time with progress; resolves to
// the byte count, or to null for a 404 when `optional`.
async function download(id, abs, sink, { optional = false } = {}) {
  let resp;
  try {
    resp = await fetch(abs);
  } catch (e) {
    throw named('KestrelDownloadError', `download of ${abs} failed: ${e.message || e} (network error or server unreachable)`);
  }
  if (!resp.ok) {
    if (optional && resp.status === 404) return null;
    throw named('KestrelDownloadError', `download of ${abs} failed: HTTP ${resp.status} ${resp.statusText}`);
  }
  const total = Number(resp.headers.get('content-length')) || 0;
  const reader = resp.body.getReader();
  let loaded = 0;
  let last = 0;
  for (;;) {
    let r;
    try {
      r = await reader.read();
    } catch (e) {
      throw named('KestrelDownloadError', `download of ${abs} broke off after ${loaded} bytes: ${e.message || e}`);
    }
    if (r.done) break;
    await sink(r.value);
    loaded += r.value.length;
    if (loaded - last > (1 << 20) || loaded === total) {
      last = loaded;
      progress(id, { phase: 'download', url: abs, loaded, total });
    }
  }
  if (total && loaded !== total) {
    throw named('KestrelDownloadError', `download of ${abs} is incomplete: ${loaded} of ${total} bytes`);
  }
  return loaded;
}

// The header of the Cache API's record of an optional file that was not there (a 404).
const MISSING = 'x-kestrel-missing';
const isQuota = (e) => e && (e.name === 'QuotaExceededError' || /quota/i.test(e.message || ''));
const quotaWarning = (id, abs, what) => progress(id, {
  phase: 'warning',
  message: `the browser's storage quota is full: ${abs} (${what}) was not cached and will be downloaded again next time`,
});

// Fetch `url` whole (a folder's file, which the engine takes whole): from the Cache API when
// it is there, else from the network (then cached).
async function fetchBytes(id, url, { optional = false } = {}) {
  const abs = new URL(url, self.location.href).href;
  const cache = await openCache();
  const hit = cache && (await cache.match(abs));
  // An optional file found missing before (a folder's files never change): missing still,
  // offline too.
  if (hit && optional && hit.headers.get(MISSING)) return null;
  if (hit && !hit.headers.get(MISSING)) {
    const bytes = new Uint8Array(await hit.arrayBuffer());
    progress(id, { phase: 'cache', url: abs, loaded: bytes.length, total: bytes.length });
    return bytes;
  }
  const parts = [];
  const loaded = await download(id, abs, (c) => parts.push(c), { optional });
  if (loaded === null) {
    await cache?.put(abs, new Response('', { status: 404, headers: { [MISSING]: '1' } })).catch(() => {});
    return null;
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  if (cache) {
    try {
      await cache.put(abs, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
    } catch (e) {
      if (isQuota(e)) quotaWarning(id, abs, `${loaded} bytes`);
      else progress(id, { phase: 'warning', message: `could not cache ${abs}: ${e.message || e}` });
    }
  }
  return bytes;
}

// A weights file by URL (a GGUF, a safetensors shard, a .pth) as a Blob the engine reads a
// range at a time: the stored download, else downloaded into the Origin Private File System
// a chunk at a time. Where that cannot be
// written (no OPFS, or the storage quota runs out) the download is kept as a Blob in memory
// instead — the browser's, never the engine's wasm memory — and not cached.
async function fetchModelFile(id, url) {
  const abs = new URL(url, self.location.href).href;
  // One download of a URL at a time in this origin (tabs, workers): a second waits, then
  // finds the file stored. Two would each write the file and replace it on closing, and an
  // engine reading the first one's File while the second replaced it could not read it.
  if (navigator.locks) return navigator.locks.request(`kestrel-download ${abs}`, () => fetchModelFileNow(id, abs));
  return fetchModelFileNow(id, abs);
}

async function fetchModelFileNow(id, abs) {
  const stored = await storedFile(abs);
  if (stored) {
    progress(id, { phase: 'cache', url: abs, loaded: stored.size, total: stored.size });
    return stored;
  }
  let writer = null;
  try {
    writer = await storeWriter(abs);
    if (!writer) progress(id, { phase: 'warning', message: `this browser has no Origin Private File System: ${abs} is not cached and will be downloaded again next time` });
  } catch (e) {
    if (isQuota(e)) quotaWarning(id, abs, 'no room for it');
    else progress(id, { phase: 'warning', message: `could not cache ${abs}: ${e.message || e}` });
  }
  if (writer) {
    let written = 0;
    try {
      await download(id, abs, async (c) => {
        await writer.write(c);
        written += c.length;
      });
      await writer.done();
      const file = await storedFile(abs);
      if (file) return file;
      throw named('KestrelDownloadError', `${abs} was stored but cannot be read back`);
    } catch (e) {
      await writer.abort();
      if (!isQuota(e)) throw e;
      // Downloaded again, into memory: the first download went where it could not stay.
      quotaWarning(id, abs, `the quota ran out after ${written} bytes`);
    }
  }
  const parts = [];
  await download(id, abs, (c) => parts.push(c));
  return new Blob(parts);
}

// The engine's synchronous reader of `blob` (see web/src/js_file.rs): a range at a time.
function rangeReader(blob) {
  const sync = new FileReaderSync();
  return {
    size: blob.size,
    read: (offset, length) => new Uint8Array(sync.readAsArrayBuffer(blob.slice(offset, offset + length))),
  };
}

const base = (s) => s.split('/').filter(Boolean).pop() || s;

// Files of a Hugging Face folder at `baseUrl`: config.json (none in BlinkDL's RWKV-7
// folders, whose family the engine reads from the tensors), tokenizer files (whole), and
// safetensors shards (kept like a GGUF file and read by the engine a tensor at a time).
async function fetchHfFolder(id, baseUrl) {
  const dir = baseUrl.endsWith('/') ? baseUrl : baseUrl + '/';
  const files = [];
  const get = async (name, optional) => {
    const b = await fetchBytes(id, dir + name, { optional });
    if (b) files.push([name, b]);
    return b;
  };
  const shard = async (name) => files.push([name, rangeReader(await fetchModelFile(id, dir + name))]);
  await get('config.json', true);
  await get('tokenizer.json', true);
  await get('tokenizer_config.json', true);
  const index = await get('model.safetensors.index.json', true);
  if (index) {
    let map;
    try {
      map = JSON.parse(new TextDecoder().decode(index)).weight_map;
    } catch (e) {
      throw named('KestrelModelError', `${dir}model.safetensors.index.json: ${e.message}`);
    }
    for (const name of [...new Set(Object.values(map || {}))].sort()) await shard(name);
  } else {
    await shard('model.safetensors');
  }
  return files;
}

// The pipelines an engine used are kept per Kestrel version, adapter and model (the Cache
// API, 'kestrel-pipelines-v1'): the next engine on them creates those pipelines as soon as
// its weights are loaded and skips the warm-up, so createEngine resolves while the browser
// compiles them and the first reply waits only for what is left. A list is a hint only (a
// key the device refuses is caught; see pipelinesAhead in web/src/engine.rs).
const PIPELINES = 'kestrel-pipelines-v1';

async function adapterId() {
  try {
    const a = await navigator.gpu.requestAdapter();
    const i = a.info || {};
    return [i.vendor, i.architecture, i.device, i.description, [...a.features].sort().join(',')].join('|');
  } catch {
    return '';
  }
}

// The record's URL for `source` (a URL, or the user's files by name, size and date).
async function pipelineRecordUrl(source) {
  const what = source.kind === 'url'
    ? new URL(source.url, self.location.href).href
    : source.files.map((f) => `${f.name}:${f.size}:${f.lastModified}`).join('/');
  const id = `${wasm.version()}\n${await adapterId()}\n${what}`;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(id)));
  const hex = [...digest.subarray(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return new URL(`/__kestrel/pipelines/${hex}`, self.location.href).href;
}

// The kept keys at `url` (a JSON array) and their count, or null.
async function keptPipelines(url) {
  try {
    const hit = await (await caches.open(PIPELINES)).match(url);
    if (!hit) return null;
    const text = await hit.text();
    return { text, count: JSON.parse(text).length };
  } catch {
    return null;
  }
}

// Keep the loaded engine's keys when there are more than were kept (plans add pipelines:
// a longer prompt may take another tile size).
async function keepPipelines() {
  if (!engine || !pipelineRecord) return;
  const text = engine.pipelineKeys();
  const count = JSON.parse(text).length;
  if (count <= keptKeys) return;
  try {
    await (await caches.open(PIPELINES)).put(pipelineRecord, new Response(text, { headers: { 'content-type': 'application/json' } }));
    keptKeys = count;
  } catch {}
}

async function load(id, { source, options: engineOptions, speculate, draftTokens, maxConversations }) {
  await ready;
  // The engine's options (context, precision, attention options), refused before anything
  // is downloaded when they are bad.
  const options = JSON.stringify(engineOptions || {});
  wasm.checkOptions(options);
  // The engine's bound (setMaxConversations checks it again), before anything downloads.
  if (maxConversations != null && !(Number.isInteger(maxConversations) && maxConversations >= 1 && maxConversations <= 64)) {
    throw named('KestrelRequestError', `bad request: maxConversations must be 1 to 64, not ${maxConversations}`);
  }
  const started = performance.now();
  const record = typeof caches === 'undefined' ? null : await pipelineRecordUrl(source);
  const kept = record && (await keptPipelines(record));
  const pipelines = kept?.text;
  let e;
  if (source.kind === 'url' && /\.pth$/i.test(source.url)) {
    // BlinkDL's RWKV-7 .pth release: read like a folder holding only it (kept like a GGUF
    // file; the engine reads a .pth archive whole).
    const file = await fetchModelFile(id, source.url);
    progress(id, { phase: 'load', message: 'uploading weights to the GPU' });
    modelName = base(source.url);
    e = await wasm.loadHfFiles(modelName, [modelName], [rangeReader(file)], options, pipelines);
  } else if (source.kind === 'url' && !source.url.endsWith('/')) {
    const file = await fetchModelFile(id, source.url);
    progress(id, { phase: 'load', message: 'uploading weights to the GPU' });
    modelName = base(source.url);
    e = await wasm.loadGgufFile(modelName, rangeReader(file), options, pipelines);
  } else if (source.kind === 'url') {
    const files = await fetchHfFolder(id, source.url);
    progress(id, { phase: 'load', message: 'uploading weights to the GPU' });
    modelName = base(source.url);
    e = await wasm.loadHfFiles(modelName, files.map((f) => f[0]), files.map((f) => f[1]), options, pipelines);
  } else {
    const files = source.files;
    const gguf = files.find((f) => /\.gguf$/i.test(f.name));
    progress(id, { phase: 'read', message: `reading ${files.length} file(s)` });
    if (gguf) {
      modelName = gguf.name;
      e = await wasm.loadGgufFile(gguf.name, rangeReader(gguf), options, pipelines);
    } else {
      // Weights read a tensor at a time from the chosen files; the small files whole.
      const contents = await Promise.all(files.map(async (f) => /\.(safetensors|pth)$/i.test(f.name) ? rangeReader(f) : new Uint8Array(await f.arrayBuffer())));
      const folder = (files[0]?.webkitRelativePath || '').split('/')[0] || 'model';
      modelName = folder;
      e = await wasm.loadHfFiles(folder, files.map((f) => f.name), contents, options, pipelines);
    }
  }
  if (speculate) e.setSpeculation(String(speculate), Number(draftTokens ?? 0));
  if (maxConversations != null) e.setMaxConversations(maxConversations);
  const loadMs = performance.now() - started;
  // Without kept pipelines, a warm-up compiles those of a prefill and a decode step (so the
  // first reply does not wait for them) and tells which to keep; with them, they are
  // compiling already and the first reply waits only for what is left.
  let pipelineMs = 0;
  if (!pipelines) {
    progress(id, { phase: 'compile', message: 'compiling GPU pipelines' });
    const t = performance.now();
    await e.warmUp();
    pipelineMs = performance.now() - t;
  }
  engine = e;
  pipelineRecord = record;
  keptKeys = kept?.count ?? 0;
  await keepPipelines();
  const info = JSON.parse(engine.info());
  info.timings = { loadMs, pipelineMs };
  return info;
}

async function chat(id, request) {
  if (!engine) throw named('KestrelStateError', 'no model is loaded');
  const t0 = performance.now();
  const begun = JSON.parse(engine.chatBegin(JSON.stringify(request)));
  let first = 0;
  let finish = null;
  let completion = 0;
  try {
    for (;;) {
      if (aborted.has(id)) {
        finish = 'abort';
        break;
      }
      const piece = JSON.parse(await engine.chatNext());
      completion = piece.completion_tokens;
      if (piece.done) {
        finish = piece.finish_reason;
        break;
      }
      if (!first) first = performance.now();
      post({ id, type: 'chunk', text: piece.text });
    }
  } finally {
    aborted.delete(id);
    try {
      engine.chatEnd();
    } catch {}
  }
  const end = performance.now();
  await keepPipelines();
  const decodeS = first ? (end - first) / 1000 : 0;
  return {
    finish_reason: finish,
    usage: {
      prompt_tokens: begun.prompt_tokens,
      completion_tokens: completion,
      total_tokens: begun.prompt_tokens + completion,
    },
    timings: {
      reused_tokens: begun.reused_tokens,
      ttft_ms: first ? first - t0 : null,
      decode_tokens_per_s: completion > 1 && decodeS > 0 ? (completion - 1) / decodeS : null,
      total_ms: end - t0,
    },
  };
}

// Run `f` after the replies (and other queued calls) before it: one reply generates at a
// time, whichever conversation it belongs to.
function queued(f) {
  const run = queue.then(f);
  queue = run.catch(() => {});
  return run;
}

const handlers = {
  load: (id, m) => load(id, m),
  // Replies queue first come, first served (as in the native engine), each in its
  // conversation (request.conversation; the engine's "default" without one).
  chat: (id, m) => queued(() => chat(id, m.request)),
  abort: (_id, m) => {
    aborted.add(m.target);
    return null;
  },
  logits: async (_id, m) => {
    if (!engine) throw named('KestrelStateError', 'no model is loaded');
    return await engine.logits(Uint32Array.from(m.tokens));
  },
  info: async () => {
    if (engine) return JSON.parse(engine.info());
    await ready;
    return JSON.parse(await wasm.adapterInfo());
  },
  // After the replies queued before them, so they never meet a reply half way.
  reset: (_id, m) => queued(() => {
    if (engine) engine.reset(m.conversation == null ? undefined : String(m.conversation));
    return null;
  }),
  dropConversation: (_id, m) => queued(() => {
    if (!engine) throw named('KestrelStateError', 'no model is loaded');
    return engine.dropConversation(String(m.conversation));
  }),
  decodeProfile: async (_id, m) => {
    if (!engine) throw named('KestrelStateError', 'no model is loaded');
    return JSON.parse(await engine.decodeProfile(m.promptTokens));
  },
  kernelChecks: async () => {
    await ready;
    return JSON.parse(await wasm.runKernelChecks());
  },
  dispose: () => {
    if (engine) engine.free();
    engine = null;
    pipelineRecord = null;
    return null;
  },
};

self.onmessage = async (ev) => {
  const { id, type } = ev.data;
  const h = handlers[type];
  if (!h) {
    post({ id, type: 'error', error: { name: 'KestrelRequestError', message: `unknown message ${type}` } });
    return;
  }
  try {
    const value = await h(id, ev.data);
    post({ id, type: 'result', value }, value instanceof Float32Array ? [value.buffer] : undefined);
  } catch (e) {
    const name = e && e.name ? e.name : 'Error';
    post({ id, type: 'error', error: { name, message: e && e.message ? e.message : String(e) } });
  }
};
