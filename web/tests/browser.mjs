// Kestrel's browser tests, in headless Chromium (Debian's, on SwiftShader WebGPU) through
// playwright-core. Run by tests/run.sh after web/build.sh:
//   node web/tests/browser.mjs [--native-dir DIR] [--native-bin BIN]
// (a) the runtime's kernels against their CPU references, in the browser;
// (b) fixture models' logits in the browser against native ones (llama_gqa, a Hugging Face
//     folder, against the committed prefill logits; SmolLM2's GGUF, when in the cache,
//     against `kestrel logits` output in DIR/smollm2.npy, or else the transformers fixture;
//     every family: families.mjs); the peak wasm memory while loading SmolLM2's and, when
//     cached, Qwen2.5-Coder-0.5B's GGUF, read a tensor at a time, below the file's size;
// (c) the chat page loads a model, a message is sent, the reply streams in; screenshot in
//     target/artifacts/web-chat.png;
// (d) a reload takes the weights from the browser cache (no second GET on the server);
// (e) with --native-bin BIN and SmolLM2 in the cache: SmolLM2's decode tokens/s and GPU time
//     by kernel class in the browser and, in the same run, natively (BIN bench) on the
//     SwiftShader Vulkan driver Chromium ships, the engine the browser runs on;
// plus several conversations in one loaded model (interleaved replies equal each one's
// alone, each keeps its cache, dropConversation frees one, the maxConversations bound, and
// the engine refuses a second conversation's reply while one generates), a failed download
// gives a clear error, stop strings end a reply, out-of-range sampling settings are
// refused, and under a full storage quota a folder and a GGUF still load, the page saying so. Prints the .wasm size, pipeline-creation
// time, time to first token and decode tokens/s. Exits non-zero on any failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FLAGS, SWIFTSHADER_ICD, checker, f32FromB64, launch, modelsDir, readNpy, relErr, repo, startServer, top1Agreement } from './harness.mjs';

const args = process.argv.slice(2);
const nativeDir = args.includes('--native-dir') ? path.resolve(args[args.indexOf('--native-dir') + 1]) : null;
const nativeBin = args.includes('--native-bin') ? path.resolve(args[args.indexOf('--native-bin') + 1]) : null;
const LOGITS_TOL = 1e-4;
const SMOLLM2 = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const smolPath = path.join(modelsDir, SMOLLM2);
const haveSmol = fs.existsSync(smolPath);
const QWEN05 = 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf';
const QWEN15 = 'qwen2.5-coder-1.5b-instruct-q4_k_m.gguf';
const MB = (n) => `${(n / 1e6).toFixed(1)} MB`;

// The engine's wasm memory after loading `file` (info()), below the file's size: it was read
// a tensor at a time, not held whole.
function checkWasmMemory(what, file, info) {
  const size = fs.statSync(file).size;
  check(info.wasmMemoryBytes > 0 && info.wasmMemoryBytes < size,
    `${what}: peak wasm memory ${MB(info.wasmMemoryBytes)} while loading the ${MB(size)} GGUF (read a tensor at a time)`);
}

const { check, failures } = checker();
const t0 = Date.now();

const wasmFile = path.join(repo, 'web/www/pkg/kestrel_web_bg.wasm');
if (!fs.existsSync(wasmFile)) {
  console.error('web/www/pkg is missing: run web/build.sh first');
  process.exit(1);
}
console.log(`kestrel_web_bg.wasm: ${fs.statSync(wasmFile).size} bytes (${(fs.statSync(wasmFile).size / 1048576).toFixed(2)} MiB, after wasm-opt)`);

const { proc: server, base } = await startServer();
const browser = await launch();
const requests = async () => (await fetch(`${base}/__requests`)).json();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[page error] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page exception] ${e.message}`));
  // Any same-origin page will do for the API (a secure context on 127.0.0.1).
  await page.goto(`${base}/kestrel.d.ts`);
  const api = (fn, arg) => page.evaluate(fn, arg);

  const info = await api(async () => (await import('/kestrel.js')).adapterInfo());
  // The engine takes CPU kernels and layouts exactly where the browser's adapter says it is
  // a fallback adapter (SwiftShader).
  const gpuInfo = await api(async () => {
    const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    return { architecture: a.info.architecture, vendor: a.info.vendor, fallback: a.info.isFallbackAdapter };
  });
  check(info.runsOnCpu === (gpuInfo.fallback === true),
    `info() runsOnCpu ${info.runsOnCpu} for the browser's adapter ${JSON.stringify(gpuInfo)}`);
  console.log(`adapter: ${info.adapter} (${info.backend}); shader-f16 ${info.features['shader-f16']}; ` +
    `limits: ${info.limits.maxStorageBuffersPerShaderStage} storage buffers/stage, ${info.limits.maxComputeInvocationsPerWorkgroup} invocations/workgroup, ` +
    `${info.limits.maxStorageBufferBindingSize} B storage binding`);

  // (a) kernels against their CPU references.
  const t = Date.now();
  const kc = await api(async () => (await import('/kestrel.js')).runKernelChecks());
  for (const [name, k] of Object.entries(kc.kernels)) {
    check(k.ok, `kernel ${name}: ${k.cases} cases, max rel error ${typeof k.max_err === 'number' ? k.max_err.toExponential(2) : k.max_err}`);
  }
  for (const c of kc.cases.filter((c) => !c.ok)) console.log(`     failed: ${c.kernel} ${c.what}: ${c.err} > ${c.tol}`);
  check(kc.ok && Object.keys(kc.kernels).length >= 10, `kernel checks (${kc.cases.length} cases, ${((Date.now() - t) / 1000).toFixed(1)} s)`);

  // (b) logits.
  // Load `model` in a fresh engine, take the logits of `tokens`; with `chat`, also time a
  // greedy completion and check that an AbortSignal stops a stream.
  async function browserRun(model, tokens, chat = false) {
    const r = await api(async ({ model, tokens, chat }) => {
      const k = await import('/kestrel.js');
      const e = await k.createEngine({ model });
      try {
        const l = await e.logits(tokens);
        const info = await e.info();
        const bytes = new Uint8Array(l.buffer, l.byteOffset, l.byteLength);
        let s = '';
        for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        if (!chat) return { b64: btoa(s), info };
        const question = [{ role: 'user', content: 'What is the capital of France?' }];
        const r = await e.chat.completions.create({ messages: question, max_tokens: 12, temperature: 0 });
        // The counters of that reply (info() reports the last reply's).
        const counters = (await e.info()).counters;
        // Stop strings: the same greedy reply, streamed, ends before a few characters from its
        // middle (whole code points), which never show in a piece.
        const text = r.choices[0].message.content;
        const chars = [...text];
        const at = Math.max(1, Math.floor(chars.length / 2));
        const stopAt = chars.slice(at, at + 3).join('');
        const stop = { stop: stopAt, want: text.slice(0, text.indexOf(stopAt)), cut: '', finish: null };
        for await (const c of await e.chat.completions.create({ messages: question, max_tokens: 12, temperature: 0, stream: true, stop: [stopAt, 'never in the reply'] })) {
          stop.cut += c.choices[0].delta.content ?? '';
          stop.finish = c.choices[0].finish_reason ?? stop.finish;
        }
        // The browser takes the server's ranges: temperature in [0, 2].
        let refused = null;
        try {
          await e.chat.completions.create({ messages: question, max_tokens: 2, temperature: 3 });
        } catch (err) {
          refused = `${err.name}: ${err.message}`;
        }
        // Abort: a streamed reply stopped after its first piece rejects with AbortError.
        const ac = new AbortController();
        let pieces = 0, aborted = null;
        try {
          for await (const c of await e.chat.completions.create({ messages: [{ role: 'user', content: 'Count to fifty.' }], stream: true, max_tokens: 64, signal: ac.signal })) {
            if (c.choices[0].delta.content) {
              pieces++;
              ac.abort();
            }
          }
        } catch (err) {
          aborted = err.name;
        }
        return { b64: btoa(s), info, perf: { r, counters, pieces, aborted, stop, refused } };
      } finally {
        await e.dispose();
      }
    }, { model, tokens, chat });
    return { logits: f32FromB64(r.b64), info: r.info, perf: r.perf };
  }
  const gqaTokens = JSON.parse(fs.readFileSync(path.join(repo, 'tests/fixtures/llama_gqa/tokens.json'))).tokens;
  const gqa = await browserRun('/fixtures/llama_gqa/', gqaTokens, !haveSmol);
  let perf = gqa.perf && { ...gqa.perf, info: gqa.info };
  console.log(`llama_gqa: load ${(gqa.info.timings.loadMs / 1000).toFixed(2)} s, pipeline creation (first prefill + decode step) ${(gqa.info.timings.pipelineMs / 1000).toFixed(2)} s`);
  const gqaNative = nativeDir && fs.existsSync(path.join(nativeDir, 'llama_gqa.npy'))
    ? { what: 'native kestrel logits', ...readNpy(path.join(nativeDir, 'llama_gqa.npy')) }
    : { what: 'committed prefill logits', ...readNpy(path.join(repo, 'tests/fixtures/llama_gqa/logits_prefill.npy')) };
  const e1 = relErr(gqa.logits, gqaNative.data);
  check(e1 <= LOGITS_TOL, `llama_gqa (Hugging Face folder, safetensors) logits [${gqaTokens.length}x${gqa.info.model.vocab}] vs ${gqaNative.what}: rel error ${e1.toExponential(2)} (tol ${LOGITS_TOL})`);

  if (haveSmol) {
    const prompt = JSON.parse(fs.readFileSync(path.join(repo, 'tests/fixtures/smollm2/prompt.json')));
    const smol = await browserRun(`/models/${SMOLLM2}`, prompt.tokens, true);
    perf = { ...smol.perf, info: smol.info };
    const nativeNpy = nativeDir && path.join(nativeDir, 'smollm2.npy');
    if (nativeNpy && fs.existsSync(nativeNpy)) {
      const e = relErr(smol.logits, readNpy(nativeNpy).data);
      check(e <= LOGITS_TOL, `SmolLM2 GGUF (Q4_1) logits [${prompt.tokens.length}x${smol.info.model.vocab}] vs native kestrel logits: rel error ${e.toExponential(2)} (tol ${LOGITS_TOL})`);
    } else {
      check(false, `SmolLM2 GGUF: no native logits at ${nativeNpy} (tests/run.sh writes them with target/debug/kestrel logits)`);
    }
    // The transformers fixture holds the rows at prompt.logit_positions only.
    const ref = readNpy(path.join(repo, 'tests/fixtures/smollm2/logits.npy'));
    const V = smol.info.model.vocab;
    const rows = new Float32Array(prompt.logit_positions.length * V);
    prompt.logit_positions.forEach((p, i) => rows.set(smol.logits.subarray(p * V, (p + 1) * V), i * V));
    const eRef = relErr(rows, ref.data);
    const top1 = top1Agreement(rows, ref.data, V);
    check(eRef <= 1e-2 && top1 >= 0.95, `SmolLM2 GGUF logits vs transformers fixture: rel error ${eRef.toExponential(2)} (tol 1e-2), top-1 agreement ${(top1 * 100).toFixed(0)}%`);
    // A GGUF file is read a tensor at a time (web/src/js_file.rs), never copied whole into
    // wasm memory, whose size never shrinks: after loading it is the peak.
    checkWasmMemory('SmolLM2 Q4_1', smolPath, smol.info);

    // Cold start, the second time: the weights are in OPFS and the pipelines the first engine
    // used are kept, so a new engine loads, creates them without a warm-up, and resolves while
    // the browser compiles them. Timed from createEngine to the first streamed piece.
    const warm = await api(async (model) => {
      const k = await import('/kestrel.js');
      const t0 = performance.now();
      const e = await k.createEngine({ model });
      const created = performance.now() - t0;
      try {
        let first = 0, text = '';
        const ask = { messages: [{ role: 'user', content: 'What is the capital of France?' }], max_tokens: 4, temperature: 0, stream: true };
        for await (const c of await e.chat.completions.create(ask)) {
          const d = c.choices[0].delta.content;
          if (d && !first) first = performance.now() - t0;
          text += d ?? '';
        }
        return { created, first, text, info: await e.info() };
      } finally {
        await e.dispose();
      }
    }, `/models/${SMOLLM2}`);
    const firstVisit = smol.info.timings;
    const ttft = smol.perf.r.timings.ttft_ms;
    console.log(`SmolLM2 cold start, first visit: createEngine ${((firstVisit.loadMs + firstVisit.pipelineMs) / 1000).toFixed(2)} s ` +
      `(download and load ${(firstVisit.loadMs / 1000).toFixed(2)} s, warm-up ${(firstVisit.pipelineMs / 1000).toFixed(2)} s), then first token ${(ttft / 1000).toFixed(2)} s ` +
      `(${smol.perf.r.usage.prompt_tokens} prompt tokens)`);
    console.log(`SmolLM2 cold start, weights and pipeline list kept: createEngine ${(warm.created / 1000).toFixed(2)} s ` +
      `(load ${(warm.info.timings.loadMs / 1000).toFixed(2)} s, ${warm.info.pipelinesAhead.keys} pipelines created ahead, no warm-up), ` +
      `first token ${(warm.first / 1000).toFixed(2)} s after createEngine was called`);
    const whole = smol.perf.r.choices[0].message.content;
    check(warm.info.pipelinesAhead.keys > 0 && warm.info.pipelinesAhead.refused === null && warm.info.timings.pipelineMs === 0 &&
      warm.text.length > 0 && whole.startsWith(warm.text),
    `a second engine creates the kept pipelines ahead (${warm.info.pipelinesAhead.keys}, none refused, no warm-up) and replies as the first did: ${JSON.stringify(warm.text)} begins ${JSON.stringify(whole)}`);
  } else {
    console.log(`note: ${smolPath} is absent (tests/run.sh fetches it with \`kestrel chat\`); the GGUF logits and the SmolLM2 chat are not checked`);
  }

  // Models whose download count is checked where they load (the quota may refetch them).
  const quotaLimited = new Set();
  // Larger GGUFs when the cache has them: Qwen2.5-Coder-0.5B Q4_K_M (491 MB; tests/run.sh
  // pulls it) and 1.5B (1.1 GB; `kestrel pull qwen2.5-coder-1.5b-instruct`, not in CI).
  for (const [name, file] of [['Qwen2.5-Coder-0.5B', QWEN05], ['Qwen2.5-Coder-1.5B', QWEN15]]) {
    const qwenPath = path.join(modelsDir, file);
    if (!fs.existsSync(qwenPath)) {
      console.log(`note: ${qwenPath} is absent; its peak wasm memory is not measured`);
      continue;
    }
    const t = Date.now();
    const qwen = await api(async (model) => {
      const k = await import('/kestrel.js');
      const warnings = [];
      const e = await k.createEngine({ model, onProgress: (p) => p.phase === 'warning' && warnings.push(p.message) });
      try {
        return { ...(await e.info()), warnings };
      } finally {
        await e.dispose();
      }
    }, `/models/${file}`);
    checkWasmMemory(`${name} Q4_K_M (${((Date.now() - t) / 1000).toFixed(1)} s to load)`, qwenPath, qwen);
    // The test profile's storage quota may not hold every model at once: then the download
    // that ran out of room is fetched again into memory, and the page says so.
    if (qwen.warnings.length) console.log(`note: ${name}: ${qwen.warnings.join('; ')}`);
    const gets = (await requests())[`/models/${file}`];
    check(gets === 1 || (gets === 2 && qwen.warnings.some((w) => /quota/.test(w))),
      `${name}: downloaded ${gets} time(s)${gets === 2 ? ', the second after the storage quota ran out (shown)' : ''}`);
    quotaLimited.add(`/models/${file}`);
  }

  // createEngine's matvecPrecision: reported by info(); an unknown value is a request error
  // before anything downloads. (The fixture's weights are f32/f16, which keep the f32 matvec;
  // the int8 kernels themselves are among the kernel checks above.)
  const precision = await api(async () => {
    const k = await import('/kestrel.js');
    const e = await k.createEngine({ model: '/fixtures/llama_gqa/', matvecPrecision: 'int8' });
    let reported;
    try {
      reported = (await e.info()).matvecPrecision;
    } finally {
      await e.dispose();
    }
    try {
      await k.createEngine({ model: '/models/no-such-model.gguf', matvecPrecision: 'int4' });
      return { reported, refused: null };
    } catch (err) {
      return { reported, refused: { name: err.name, message: err.message } };
    }
  });
  check(precision.reported === 'int8', `createEngine({ matvecPrecision: 'int8' }): info() reports ${precision.reported}`);
  const refused = precision.refused;
  check(refused && refused.name === 'KestrelRequestError' && /matvecPrecision/.test(refused.message),
    `an unknown matvecPrecision gives ${refused && refused.name}: ${refused && refused.message}`);
  // 'f16' needs shader-f16: taken where the adapter has it, else refused by name.
  const f16 = await api(async () => {
    const k = await import('/kestrel.js');
    try {
      const e = await k.createEngine({ model: '/fixtures/llama_gqa/', matvecPrecision: 'f16' });
      const reported = (await e.info()).matvecPrecision;
      await e.dispose();
      return { reported };
    } catch (err) {
      return { error: { name: err.name, message: err.message } };
    }
  });
  // createEngine({ speculate: 'ngram' }): the same greedy reply as without, drafts counted;
  // an unknown kind is a request error naming the option.
  const spec = await api(async () => {
    const k = await import('/kestrel.js');
    const ask = { messages: [{ role: 'user', content: 'ab ab ab' }], max_tokens: 12, temperature: 0 };
    const reply = async (opts) => {
      const e = await k.createEngine({ model: '/fixtures/llama_gqa/', ...opts });
      try {
        const r = await e.chat.completions.create(ask);
        const i = await e.info();
        return { text: r.choices[0].message.content, speculation: i.speculation, drafted: i.counters.draftTokens };
      } finally {
        await e.dispose();
      }
    };
    const plain = await reply({});
    const fast = await reply({ speculate: 'ngram', draftTokens: 4 });
    let refused = null;
    try {
      await k.createEngine({ model: '/fixtures/llama_gqa/', speculate: 'tree' });
    } catch (err) {
      refused = { name: err.name, message: err.message };
    }
    return { plain, fast, refused };
  });
  check(spec.fast.text === spec.plain.text && spec.fast.speculation && spec.fast.speculation.kind === 'ngram' && spec.fast.speculation.draftTokens === 4,
    `createEngine({ speculate: 'ngram' }) replies as without it: ${JSON.stringify(spec)}`);
  check(spec.refused && spec.refused.name === 'KestrelRequestError' && /speculate/.test(spec.refused.message),
    `an unknown speculate gives ${JSON.stringify(spec.refused)}`);
  if (info.features['shader-f16']) {
    check(f16.reported === 'f16', `createEngine({ matvecPrecision: 'f16' }) with shader-f16: ${JSON.stringify(f16)}`);
  } else {
    check(f16.error && f16.error.name === 'KestrelRequestError' && /shader-f16/.test(f16.error.message),
      `matvecPrecision 'f16' without shader-f16 is refused: ${JSON.stringify(f16)}`);
  }

  // Several conversations in one loaded model, each with its own KV cache (on the mixtral
  // fixture: two turns fit its context of 256 bytes-as-tokens, not llama_gqa's 64). Greedy two-turn
  // conversations A and B alone (one after the other, reset between), then interleaved in
  // conversations 'a' and 'b' of a fresh engine (each pair asked at once, so the worker
  // queues them): the same replies, and the same prompt tokens reused from the cache; in one
  // conversation, the interleaving leaves A's second turn less to reuse.
  const conv = await api(async () => {
    const k = await import('/kestrel.js');
    const A = ['ab ab ab', 'cd cd ab'];
    const B = ['one two three', 'three two one'];
    const turn = async (e, history, content, conversation) => {
      history.push({ role: 'user', content });
      const r = await e.chat.completions.create({ messages: [...history], max_tokens: 6, temperature: 0, conversation });
      const text = r.choices[0].message.content;
      history.push({ role: 'assistant', content: text });
      return { text, reused: r.timings.reused_tokens, prompt: r.usage.prompt_tokens };
    };
    const alone = {};
    let one = null;
    const e1 = await k.createEngine({ model: '/fixtures/mixtral/' });
    try {
      for (const [name, turns] of [['A', A], ['B', B]]) {
        const h = [];
        alone[name] = [await turn(e1, h, turns[0]), await turn(e1, h, turns[1])];
        await e1.reset();
      }
      // A and B interleaved in the one default conversation.
      const ha = [], hb = [];
      await turn(e1, ha, A[0]);
      await turn(e1, hb, B[0]);
      one = await turn(e1, ha, A[1]);
    } finally {
      await e1.dispose();
    }
    const e2 = await k.createEngine({ model: '/fixtures/mixtral/' });
    try {
      const ha = [], hb = [];
      const first = await Promise.all([turn(e2, ha, A[0], 'a'), turn(e2, hb, B[0], 'b')]);
      const second = await Promise.all([turn(e2, ha, A[1], 'a'), turn(e2, hb, B[1], 'b')]);
      const held = (await e2.info()).conversations;
      const bytes = (await e2.info()).counters.gpuBytes;
      const dropped = await e2.dropConversation('a');
      const after = await e2.info();
      const again = await e2.dropConversation('a');
      // A conversation dropped starts afresh: nothing reused.
      const restart = await turn(e2, [], A[0], 'a');
      let badId = null;
      try {
        await e2.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1, conversation: '' });
      } catch (err) {
        badId = `${err.name}: ${err.message}`;
      }
      return {
        alone, one,
        interleaved: { A: [first[0], second[0]], B: [first[1], second[1]] },
        held, dropped, again, restart, badId,
        afterDrop: after.conversations, freed: bytes - after.counters.gpuBytes,
      };
    } finally {
      await e2.dispose();
    }
  });
  for (const n of ['A', 'B']) {
    const [x, y] = [conv.alone[n], conv.interleaved[n]];
    check(x.every((t, i) => t.text === y[i].text && t.reused === y[i].reused && t.prompt === y[i].prompt) && x[1].reused > 0,
      `conversation ${n} interleaved with the other replies as alone, its second turn reusing ${y[1].reused} of ${y[1].prompt} prompt tokens: alone ${JSON.stringify(x)}, interleaved ${JSON.stringify(y)}`);
  }
  check(conv.one.reused < conv.alone.A[1].reused,
    `interleaved in one conversation, A's second turn reuses only ${conv.one.reused} prompt tokens (its own conversation: ${conv.alone.A[1].reused})`);
  check(conv.held.held === 3 && conv.held.max === 8 && conv.held.ids.join() === 'default,a,b',
    `info() reports the conversations held: ${JSON.stringify(conv.held)}`);
  check(conv.dropped === true && conv.again === false && conv.afterDrop.held === 2 && conv.afterDrop.ids.join() === 'default,b' && conv.freed > 0,
    `dropConversation('a') frees its cache (${conv.freed} GPU bytes): ${JSON.stringify(conv.afterDrop)}, dropped again: ${conv.again}`);
  check(conv.restart.reused === 0 && conv.restart.text === conv.alone.A[0].text,
    `a dropped conversation starts afresh: ${JSON.stringify(conv.restart)}`);
  check(/^KestrelRequestError: .*conversation/.test(conv.badId || ''), `an empty conversation id is refused: ${conv.badId}`);

  // The bound: with maxConversations 2, a reply in a third conversation drops the least
  // recently used one's cache (first the default one, held from the load); an out-of-range
  // bound is refused before anything downloads.
  const bound = await api(async () => {
    const k = await import('/kestrel.js');
    const e = await k.createEngine({ model: '/fixtures/llama_gqa/', maxConversations: 2 });
    const say = async (conversation) => (await e.chat.completions.create({ messages: [{ role: 'user', content: 'ab ab' }], max_tokens: 2, temperature: 0, conversation })).timings.reused_tokens;
    try {
      const steps = [];
      for (const c of ['x', 'y', 'y', 'z', 'x']) {
        const reused = await say(c);
        steps.push({ c, reused, ids: (await e.info()).conversations.ids.join() });
      }
      let refused = null;
      try {
        await k.createEngine({ model: '/models/no-such-model.gguf', maxConversations: 0 });
      } catch (err) {
        refused = `${err.name}: ${err.message}`;
      }
      return { steps, max: (await e.info()).conversations.max, refused };
    } finally {
      await e.dispose();
    }
  });
  const want = [['x', false, 'default,x'], ['y', false, 'x,y'], ['y', true, 'x,y'], ['z', false, 'y,z'], ['x', false, 'z,x']];
  check(bound.max === 2 && want.every(([c, reused, ids], i) => bound.steps[i].c === c && (bound.steps[i].reused > 0) === reused && bound.steps[i].ids === ids),
    `maxConversations 2 holds the 2 most recently used conversations (a dropped one starts afresh): ${JSON.stringify(bound.steps)}`);
  check(/^KestrelRequestError: .*maxConversations/.test(bound.refused || ''), `maxConversations 0 is refused: ${bound.refused}`);

  // The engine itself (the wasm module, without the worker's queue): a reply in another
  // conversation while one generates is refused by name; dropping the generating
  // conversation ends its reply.
  const direct = await api(async () => {
    const w = await import('/pkg/kestrel_web.js');
    await w.default();
    const dir = new URL('/fixtures/llama_gqa/', location.href).href;
    // Where the worker kept them (the reload check below counts GETs): the shards in OPFS,
    // the small files in the Cache API.
    const { storedFile } = await import('/model_store.js');
    const get = async (n) => (await storedFile(dir + n)) || (await caches.match(dir + n)) || (await fetch(dir + n));
    const index = await (await get('model.safetensors.index.json')).json();
    const names = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors.index.json', ...new Set(Object.values(index.weight_map))];
    const files = await Promise.all(names.map(async (n) => new Uint8Array(await (await get(n)).arrayBuffer())));
    const e = await w.loadHfFiles('llama_gqa', names, files, '{}');
    const ask = (conversation) => JSON.stringify({ messages: [{ role: 'user', content: 'ab ab' }], max_tokens: 4, temperature: 0, conversation });
    try {
      e.chatBegin(ask('a'));
      const piece = JSON.parse(await e.chatNext());
      let busy = null;
      try {
        e.chatBegin(ask('b'));
      } catch (err) {
        busy = `${err.name}: ${err.message}`;
      }
      const dropped = e.dropConversation('a');
      const ended = JSON.parse(await e.chatNext());
      const begun = JSON.parse(e.chatBegin(ask('b')));
      e.chatEnd();
      return { piece, busy, dropped, ended, begun, held: JSON.parse(e.info()).conversations };
    } finally {
      e.free();
    }
  });
  check(/^KestrelBusyError: .*"a".*"b"/.test(direct.busy || '') && direct.piece.done === false,
    `the engine refuses a reply in conversation b while a's generates: ${direct.busy}`);
  check(direct.dropped === true && direct.ended.done === true && direct.begun.conversation === 'b' && direct.held.ids.join() === 'default,b',
    `dropping the generating conversation ends its reply; b starts then: ${JSON.stringify(direct)}`);

  // Two engines loading the same new URL at once (two tabs, say): one download, kept in
  // OPFS, which the second engine waits for and reads (each writing its own copy, one
  // replaced the file the other was reading). Both give the same logits.
  const twice = await api(async () => {
    const k = await import('/kestrel.js');
    const model = '/fixtures/llama_bf16/model.bf16.gguf';
    const engines = await Promise.all([k.createEngine({ model }), k.createEngine({ model })]);
    try {
      const logits = await Promise.all(engines.map((e) => e.logits([1, 2, 3])));
      return { same: logits[0].length > 0 && logits[0].every((v, i) => v === logits[1][i]) };
    } finally {
      await Promise.all(engines.map((e) => e.dispose()));
    }
  });
  const gets = (await requests())['/fixtures/llama_bf16/model.bf16.gguf'];
  check(twice.same && gets === 1, `two engines loading one new GGUF URL at once download it once (${gets} GET) and give the same logits`);

  // A failed download is a clear error.
  const bad = await api(async () => {
    try {
      await (await import('/kestrel.js')).createEngine({ model: '/models/no-such-model.gguf' });
      return null;
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  });
  check(bad && bad.name === 'KestrelDownloadError' && /404/.test(bad.message), `a missing model gives ${bad && bad.name}: ${bad && bad.message}`);

  // Timings through the API: pipeline creation at load, TTFT and decode tokens/s.
  const chatModel = haveSmol ? `/models/${SMOLLM2}` : '/fixtures/llama_gqa/';
  const m = perf.info.model;
  console.log(`model ${m.name}: weights ${m.weightBytes} B, KV ${m.stateBytes} B; load ${(perf.info.timings.loadMs / 1000).toFixed(2)} s; ` +
    `pipeline creation (first prefill + decode step) ${(perf.info.timings.pipelineMs / 1000).toFixed(2)} s`);
  console.log(`reply (${perf.r.usage.completion_tokens} tokens, ${perf.r.choices[0].finish_reason}): ${JSON.stringify(perf.r.choices[0].message.content)}`);
  console.log(`time to first token ${(perf.r.timings.ttft_ms / 1000).toFixed(2)} s (prompt ${perf.r.usage.prompt_tokens} tokens); decode ${perf.r.timings.decode_tokens_per_s?.toFixed(2)} tokens/s`);
  check(perf.r.usage.completion_tokens > 0 && perf.r.choices[0].message.content.length > 0, 'a non-streamed completion has text');
  // The counters info() reports after that reply: GPU work per decoded token (the prompt's
  // step draws the first token; an end-of-sequence token drawn is decoded too), pipelines,
  // GPU buffer and weight bytes.
  const c = perf.counters;
  console.log(`counters: ${c.decodeTokens} decoded tokens; per decoded token ${c.dispatchesPerDecodeToken?.toFixed(1)} dispatches, ` +
    `${c.submitsPerDecodeToken?.toFixed(2)} submits, ${c.hostRoundTripsPerDecodeToken?.toFixed(2)} host round trips; ` +
    `${c.pipelinesCreated} pipelines, creation ${c.pipelineCreationS?.toFixed(2)} s; GPU buffers ${c.gpuBytes} B (peak ${c.gpuPeakBytes} B); ` +
    `weights ${c.weightBytes} B, ${c.weightBytesReadPerDecodeToken} B read per decoded token`);
  const decoded = perf.r.usage.completion_tokens - 1;
  const perToken = [c.dispatchesPerDecodeToken, c.submitsPerDecodeToken, c.hostRoundTripsPerDecodeToken];
  check((decoded === 0 || c.decodeTokens >= decoded) && c.decodeTokens <= decoded + 1 &&
    (c.decodeTokens === 0 ? perToken.every((v) => v === null) : perToken.every((v) => v > 0)) &&
    c.dispatchesPerDecodeToken >= c.submitsPerDecodeToken && c.pipelinesCreated > 0 && c.pipelineCreationS > 0 &&
    c.weightBytes === m.weightBytes && c.weightBytesReadPerDecodeToken > 0 && c.gpuBytes >= c.weightBytes && c.gpuPeakBytes >= c.gpuBytes,
  `info() counters of the last reply are consistent: ${JSON.stringify(c)}`);
  // That reply was not streamed: its decode ran in batches of 16 (MAX_DECODE_BATCH), one
  // readback each, whatever the adapter's speed.
  const readbacks = Math.round(c.hostRoundTripsPerDecodeToken * c.decodeTokens);
  check(c.decodeTokens === 0 || readbacks === Math.ceil(c.decodeTokens / 16),
    `a whole (not streamed) reply reads back once per 16 decoded tokens: ${readbacks} host round trips for ${c.decodeTokens} tokens`);
  check(perf.aborted === 'AbortError' && perf.pieces >= 1 && perf.pieces <= 2, `abort via AbortSignal stops the stream (${perf.pieces} piece(s), ${perf.aborted})`);
  check(perf.stop.stop.length > 0 && perf.stop.finish === 'stop' && perf.stop.cut === perf.stop.want, `a stop string ends the streamed reply before it: ${JSON.stringify(perf.stop)}`);
  check(/^KestrelRequestError: .*temperature/.test(perf.refused || ''), `temperature 3 is refused: ${perf.refused}`);

  // (c) the chat page.
  const chat = await context.newPage();
  chat.on('pageerror', (e) => console.log(`[chat page exception] ${e.message}`));
  await chat.goto(`${base}/?model=${encodeURIComponent(chatModel)}`);
  await chat.waitForSelector('body[data-ready]', { timeout: 600_000 });
  check((await chat.getAttribute('body', 'data-ready')) === 'true', `chat page loaded ${chatModel}: ${await chat.textContent('#status')}`);
  await chat.fill('#prompt', 'Hello! Who are you?');
  await chat.press('#prompt', 'Enter');
  // Let a few words stream in, then press Stop (SwiftShader decodes well under 1 token/s).
  await chat.waitForFunction(() => (document.querySelector('.msg.assistant .text')?.textContent || '').split(/\s+/).length >= 4, null, { timeout: 600_000 });
  await chat.click('#stop');
  await chat.waitForSelector('body[data-replying="false"]', { timeout: 600_000 });
  const reply = await chat.textContent('.msg.assistant .text');
  const stats = await chat.textContent('#stats');
  check(reply.length > 0, `the chat page streamed a reply: ${JSON.stringify(reply.slice(0, 120))}`);
  check(/stopped/.test(stats), `the Stop button ended the reply: ${stats}`);
  const shot = path.join(repo, 'target/artifacts/web-chat.png');
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await chat.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);

  // (d) a reload serves the weights from the Cache API: no second GET of any model file.
  await chat.reload();
  await chat.waitForSelector('body[data-ready]', { timeout: 600_000 });
  check((await chat.getAttribute('body', 'data-ready')) === 'true', 'the chat page loaded the model again after a reload');
  const counts = await requests();
  const modelFiles = Object.entries(counts).filter(([p]) => (p.endsWith('.gguf') || p.endsWith('.safetensors')) && !quotaLimited.has(p));
  check(modelFiles.length > 0 && modelFiles.every(([p, n]) => n === 1 || p.includes('no-such-model')), `each model file was downloaded once: ${JSON.stringify(Object.fromEntries(modelFiles))}`);

  // A Hugging Face folder chosen as Files in the page's file input.
  const files = await context.newPage();
  await files.goto(`${base}/?model=`);
  const dir = path.join(repo, 'tests/fixtures/llama_gqa');
  await files.setInputFiles('#model-files', fs.readdirSync(dir).filter((f) => /\.(json|safetensors)$/.test(f)).map((f) => path.join(dir, f)));
  await files.click('#load');
  await files.waitForSelector('body[data-ready]', { timeout: 600_000 });
  check((await files.getAttribute('body', 'data-ready')) === 'true', `a Hugging Face folder chosen as files loads: ${await files.textContent('#status')}`);
  await files.close();

  // A full storage quota: the model still loads, and the page says it was not cached.
  const small = await browser.newContext();
  const qpage = await small.newPage();
  const cdp = await small.newCDPSession(qpage);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: base, quotaSize: 4096 });
  await qpage.goto(`${base}/?model=${encodeURIComponent('/fixtures/llama_gqa/')}`);
  await qpage.waitForSelector('body[data-ready]', { timeout: 600_000 });
  const warning = (await qpage.textContent('#error')) || '';
  check((await qpage.getAttribute('body', 'data-ready')) === 'true' && /quota is full/.test(warning), `a full quota is shown in the page: ${JSON.stringify(warning.slice(0, 140))}`);
  // A GGUF file, which goes to the Origin Private File System: it loads from memory instead,
  // with the same warning, and gives the logits it gives when stored.
  const quotaGguf = await qpage.evaluate(async () => {
    const k = await import('/kestrel.js');
    const warnings = [];
    const e = await k.createEngine({ model: '/fixtures/qwen3/model-f32.gguf', onProgress: (p) => p.phase === 'warning' && warnings.push(p.message) });
    try {
      return { warnings, logits: Array.from(await e.logits([1, 2, 3])) };
    } finally {
      await e.dispose();
    }
  });
  const storedGguf = await api(async () => {
    const k = await import('/kestrel.js');
    const e = await k.createEngine({ model: '/fixtures/qwen3/model-f32.gguf' });
    try {
      return Array.from(await e.logits([1, 2, 3]));
    } finally {
      await e.dispose();
    }
  });
  check(quotaGguf.warnings.some((w) => /quota is full/.test(w)) && relErr(quotaGguf.logits, storedGguf) === 0,
    `a GGUF under a full quota loads from memory, the quota shown (${JSON.stringify(quotaGguf.warnings[0]?.slice(0, 120))}), logits equal to the stored file's`);
  await small.close();

  // (e) SmolLM2's decode in the browser and natively on the same SwiftShader, one run
  // (printed, not checked: timings are for benchmarks, and this machine is shared).
  if (haveSmol && nativeBin && fs.existsSync(SWIFTSHADER_ICD)) {
    const DECODE = 48;
    const b = await api(async ({ model, DECODE }) => {
      const k = await import('/kestrel.js');
      const e = await k.createEngine({ model });
      try {
        const rates = [];
        for (let i = 0; i < 2; i++) {
          const r = await e.chat.completions.create({ messages: [{ role: 'user', content: 'Write a long story about a cat who learns to fly.' }], max_tokens: DECODE + 1, temperature: 0 });
          rates.push({ tokens: r.usage.completion_tokens, rate: r.timings.decode_tokens_per_s });
          await e.reset();
        }
        return { rates, profile: await e.decodeProfile(32) };
      } finally {
        await e.dispose();
      }
    }, { model: `/models/${SMOLLM2}`, DECODE });
    const n = spawnSync(nativeBin, ['bench', '--model', smolPath, '--prompt-tokens', '32', '--decode-tokens', String(DECODE), '--json'],
      { env: { ...process.env, VK_ICD_FILENAMES: SWIFTSHADER_ICD }, encoding: 'utf8', maxBuffer: 1 << 26 });
    const native = n.status === 0 ? JSON.parse(n.stdout) : null;
    check(native !== null, `native kestrel bench on SwiftShader ran${native ? '' : `: ${n.stderr.slice(-400)}`}`);
    const browserRate = Math.max(...b.rates.map((r) => r.rate || 0));
    const fmt = (m) => m ? Object.entries(m).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ') : 'no timestamp queries';
    const browserClasses = b.profile && Object.fromEntries(b.profile.classes.map((c) => [c.name, c.ms]));
    if (native) {
      console.log(`SwiftShader decode, SmolLM2 Q4_1, one run: browser ${browserRate.toFixed(2)} tokens/s (best of ${b.rates.length} replies of ${b.rates.map((r) => r.tokens).join(', ')} tokens), ` +
        `native ${native.decode_tokens_per_s.toFixed(2)} tokens/s (${native.adapter}, ${DECODE} tokens after a 32-token prompt): browser/native ${(100 * browserRate / native.decode_tokens_per_s).toFixed(0)}%`);
      console.log(`  ms a decoded token by kernel class: browser ${fmt(browserClasses)}; native ${fmt(native.decode_kernel_ms)}`);
    }
  } else {
    console.log(`not measured: SmolLM2 browser vs native on SwiftShader (needs the model in the cache, --native-bin and ${SWIFTSHADER_ICD})`);
  }
} catch (e) {
  check(false, `browser test: ${e.stack || e}`);
} finally {
  await browser.close();
  server.kill();
}
// No WebGPU (Chromium without --enable-unsafe-webgpu): the page says so.
{
  const { proc: server2, base: base2 } = await startServer();
  const plain = await launch(FLAGS.filter((f) => f !== '--enable-unsafe-webgpu').concat(['--disable-features=WebGPU']));
  try {
    const p = await plain.newPage();
    await p.goto(`${base2}/?model=${encodeURIComponent('/fixtures/llama_gqa/')}`);
    await p.waitForSelector('body[data-ready]', { timeout: 120_000 });
    const msg = (await p.textContent('#error')) || '';
    check((await p.getAttribute('body', 'data-ready')) === 'error' && /WebGPU/.test(msg), `without WebGPU the page says: ${JSON.stringify(msg.slice(0, 140))}`);
  } catch (e) {
    check(false, `no-WebGPU page: ${e.stack || e}`);
  } finally {
    await plain.close();
    server2.kill();
  }
}
console.log(`browser tests: ${failures() ? failures() + ' failure(s)' : 'all passed'} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failures() ? 1 : 0);
