// Kestrel in the browser: an OpenAI-shaped engine running in a Web Worker on WebGPU.
//
//   import { createEngine } from './kestrel.js';
//   const engine = await createEngine({ model: 'models/SmolLM2-135M-Instruct.Q4_1.gguf', onProgress: console.log });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true }))
//     out += chunk.choices[0].delta.content ?? '';
//
// Several conversations share the loaded model: `create({ messages, conversation: 'id' })`
// replies in conversation 'id' (any string; 'default' without one), each with its own KV
// cache, so a conversation's next turn prefills only its new tokens whichever others ran in
// between. Replies generate one at a time, queued first come, first served. At most
// `createEngine({ maxConversations })` (default 8) caches are held: a reply in a new
// conversation beyond that drops the least recently used one's (which, if it goes on,
// prefills its whole history again); `engine.dropConversation(id)` frees one.
//
// `model` is a URL (a .gguf file, BlinkDL's RWKV-7 .pth, or a Hugging Face folder's base URL
// ending in '/'), a File (.gguf or .pth), or an array/FileList of a Hugging Face folder's files
// (config.json — none for BlinkDL's RWKV-7 —, *.safetensors or a .pth, tokenizer.json,
// tokenizer_config.json). Downloads are kept in the Cache API.

export class KestrelError extends Error {
  constructor(name, message) {
    super(message);
    this.name = name;
  }
}

/** Is WebGPU there at all? (A clear message before any worker starts.) */
export function webgpuAvailable() {
  return typeof navigator !== 'undefined' && !!navigator.gpu;
}

class Rpc {
  constructor(workerUrl) {
    this.worker = new Worker(workerUrl, { type: 'module' });
    this.next = 1;
    this.pending = new Map();
    this.worker.onmessage = (ev) => this.receive(ev.data);
    this.worker.onerror = (ev) => {
      const err = new KestrelError('KestrelWorkerError', `the Kestrel worker failed: ${ev.message || 'could not load'}`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
  }
  receive(m) {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.type === 'progress') p.onProgress?.(m.progress);
    else if (m.type === 'chunk') p.onChunk?.(m.text);
    else {
      this.pending.delete(m.id);
      if (m.type === 'result') p.resolve(m.value);
      else p.reject(new KestrelError(m.error.name, m.error.message));
    }
  }
  call(type, args = {}, hooks = {}) {
    const id = this.next++;
    const promise = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, ...hooks }));
    this.worker.postMessage({ id, type, ...args });
    return { id, promise };
  }
  terminate() {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new KestrelError('KestrelDisposedError', 'the engine was disposed'));
    this.pending.clear();
  }
}

function sourceOf(model) {
  if (typeof model === 'string' || model instanceof URL) return { kind: 'url', url: String(model) };
  if (typeof File !== 'undefined' && model instanceof File) return { kind: 'files', files: [model] };
  if (model && typeof model[Symbol.iterator] === 'function') {
    const files = [...model];
    if (files.length && files.every((f) => f instanceof File)) return { kind: 'files', files };
  }
  throw new KestrelError('KestrelRequestError', 'model must be a URL, a File, or a list of Files');
}

const chunkId = () => 'chatcmpl-' + Math.random().toString(36).slice(2, 12);

class Engine {
  constructor(rpc, info) {
    this.rpc = rpc;
    this.loaded = info;
    this.current = null;
    this.chat = { completions: { create: (req) => this.create(req) } };
  }

  /** Adapter (name, features, limits), the model, timings and counters. */
  async info() {
    const { promise } = this.rpc.call('info');
    const info = { ...(await promise), timings: this.loaded.timings };
    // A browser compiles pipelines after its create calls return, so the runtime cannot
    // time them: the warm-up (first prefill and decode step, where they compile) stands in.
    const c = info.counters;
    if (c && c.pipelineCreationS == null && info.timings) c.pipelineCreationS = info.timings.pipelineMs / 1000;
    return info;
  }

  /** Logits after each token: a Float32Array of T×V, row-major. */
  async logits(tokens) {
    const { promise } = this.rpc.call('logits', { tokens: Array.from(tokens) });
    return await promise;
  }

  /** A decode step's GPU time by kernel class from timestamp queries, on a scratch sequence
   * of `promptTokens` tokens (null without timestamp queries). */
  async decodeProfile(promptTokens = 32) {
    return await this.rpc.call('decodeProfile', { promptTokens }).promise;
  }

  /** Stop the reply in progress (its stream ends with finish_reason "abort"). */
  interrupt() {
    if (this.current) this.rpc.call('abort', { target: this.current });
  }

  /** Forget conversation `conversation`'s history in its KV cache, or every conversation's
   * without it (after the replies queued before). The caches stay held. */
  async reset(conversation) {
    await this.rpc.call('reset', { conversation }).promise;
  }

  /** Drop a conversation and free its KV cache (after the replies queued before); resolves
   * to whether it was held. Its next reply, if any, starts afresh. */
  async dropConversation(conversation) {
    if (typeof conversation !== 'string') throw new KestrelError('KestrelRequestError', 'bad request: conversation must be a string');
    return await this.rpc.call('dropConversation', { conversation }).promise;
  }

  async dispose() {
    try {
      await this.rpc.call('dispose').promise;
    } finally {
      this.rpc.terminate();
    }
  }

  create(req) {
    const { stream = false, signal, ...fields } = req || {};
    const request = {};
    for (const k of ['messages', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'conversation', 'diffusion']) {
      if (fields[k] !== undefined && fields[k] !== null) request[k] = fields[k];
    }
    // A whole reply (no stream) decodes in the largest batches: nobody waits in between.
    request.stream = Boolean(stream);
    if (Array.isArray(request.messages)) {
      request.messages = request.messages.map((m) => ({
        role: m.role,
        content: typeof m.content === 'string' ? m.content : (m.content || []).map((p) => p.text || '').join(''),
      }));
    }
    const id = chunkId();
    const created = Math.floor(Date.now() / 1000);
    const model = this.loaded.model?.name || 'kestrel';
    const queue = [];
    let wake = null;
    const push = (item) => {
      queue.push(item);
      wake?.();
    };
    const call = this.rpc.call('chat', { request }, { onChunk: (text) => push({ text }) });
    this.current = call.id;
    const abort = () => this.rpc.call('abort', { target: call.id });
    if (signal) {
      if (signal.aborted) abort();
      else signal.addEventListener('abort', abort, { once: true });
    }
    const finished = call.promise.then(
      (r) => (push({ end: r }), r),
      (e) => (push({ error: e }), Promise.reject(e)),
    );
    finished.catch(() => {});
    finished.finally(() => {
      if (this.current === call.id) this.current = null;
      signal?.removeEventListener('abort', abort);
    }).catch(() => {});
    const abortError = () => new DOMException('The request was aborted', 'AbortError');
    if (!stream) {
      return finished.then((r) => {
        if (signal?.aborted) throw abortError();
        const content = queue.filter((q) => q.text !== undefined).map((q) => q.text).join('');
        return {
          id,
          object: 'chat.completion',
          created,
          model,
          choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: r.finish_reason }],
          usage: r.usage,
          timings: r.timings,
        };
      });
    }
    const chunk = (delta, finish_reason, extra = {}) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index: 0, delta, finish_reason }],
      ...extra,
    });
    async function* iterate() {
      yield chunk({ role: 'assistant', content: '' }, null);
      for (;;) {
        if (!queue.length) await new Promise((r) => (wake = r));
        wake = null;
        const item = queue.shift();
        if (item.error) throw item.error;
        if (item.end) {
          if (signal?.aborted) throw abortError();
          yield chunk({}, item.end.finish_reason, { usage: item.end.usage, timings: item.end.timings });
          return;
        }
        yield chunk({ content: item.text }, null);
      }
    }
    return Promise.resolve(iterate());
  }
}

/**
 * Start a worker, load `model` there and compile the GPU pipelines.
 * Rejects with a KestrelError whose name says what went wrong (KestrelNoWebGpuError,
 * KestrelLimitsError, KestrelDownloadError, KestrelModelError, ...).
 */
export async function createEngine({ model, onProgress, ctx = 0, matvecPrecision = 'f32', attentionSinks, kvWindow, blockSparse, speculate, draftTokens, maxConversations, workerUrl, ...unknown } = {}) {
  // A misspelt option would otherwise be dropped silently, and the engine run without it.
  const names = Object.keys(unknown);
  if (names.length) throw new KestrelError('KestrelRequestError', `bad request: unknown createEngine option(s): ${names.join(', ')}`);
  if (!webgpuAvailable()) {
    throw new KestrelError('KestrelNoWebGpuError', 'WebGPU is not available in this browser (navigator.gpu is missing; it needs a secure context such as https or http://127.0.0.1)');
  }
  const source = sourceOf(model);
  const rpc = new Rpc(workerUrl || new URL('./worker.js', import.meta.url));
  try {
    const options = { ctx, matvecPrecision, attentionSinks, kvWindow, blockSparse };
    const { promise } = rpc.call('load', { source, options, speculate, draftTokens, maxConversations }, { onProgress });
    const info = await promise;
    return new Engine(rpc, info);
  } catch (e) {
    rpc.terminate();
    throw e;
  }
}

/** Run the runtime's kernels against their CPU references on this browser's WebGPU device. */
export async function runKernelChecks({ workerUrl } = {}) {
  const rpc = new Rpc(workerUrl || new URL('./worker.js', import.meta.url));
  try {
    return await rpc.call('kernelChecks').promise;
  } finally {
    rpc.terminate();
  }
}

/** The adapter's name, features and limits, without loading a model. */
export async function adapterInfo({ workerUrl } = {}) {
  if (!webgpuAvailable()) throw new KestrelError('KestrelNoWebGpuError', 'WebGPU is not available in this browser');
  const rpc = new Rpc(workerUrl || new URL('./worker.js', import.meta.url));
  try {
    return await rpc.call('info').promise;
  } finally {
    rpc.terminate();
  }
}
