// Every model family in the browser, against native Kestrel, in headless Chromium on
// SwiftShader WebGPU. Run by tests/run.sh after web/build.sh:
//   node web/tests/families.mjs --native-bin target/debug/kestrel
// (a) logits: every fixture model of tests/fixtures — each Hugging Face folder (config.json,
//     safetensors), BlinkDL's RWKV-7 folder and .pth, and every GGUF file — loaded by URL
//     in the browser; its prefill logits against `kestrel logits` on the same tokens
//     (relative error ≤ 1e-4: the same kernels in f32 on two drivers, which differ only in
//     the order of float sums);
// (b) a short greedy chat on one model of each kind — attention, recurrent, MoE, hybrid,
//     diffusion — whose reply equals `kestrel chat`'s for the same message;
// (c) attention options (StreamingLLM sinks + window, block-sparse) through createEngine,
//     against native logits with the same flags, and bad options refused by name.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checker, f32FromB64, launch, readNpy, relErr, repo, startServer } from './harness.mjs';

const args = process.argv.slice(2);
const nativeBin = args.includes('--native-bin') ? path.resolve(args[args.indexOf('--native-bin') + 1]) : null;
if (!nativeBin) {
  console.error('usage: node web/tests/families.mjs --native-bin target/debug/kestrel');
  process.exit(2);
}
const LOGITS_TOL = 1e-4;
const fixtures = path.join(repo, 'tests/fixtures');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'kestrel-families-'));
const { check, failures } = checker();
const t0 = Date.now();

// Files made to be refused (tests/tests/gguf_recurrent.rs): both must refuse them alike.
const REFUSED = ['gguf_recurrent/jamba_irregular.gguf'];

const tokensOf = (dir) => {
  const f = path.join(fixtures, dir, 'tokens.json');
  // Ids below every fixture's vocabulary where a file has no tokens of its own.
  return fs.existsSync(f) ? JSON.parse(fs.readFileSync(f)).tokens : [1, 7, 3, 12, 5, 9, 2, 11, 4, 8, 6, 10];
};

// The fixture models: [what, URL the browser loads, path native Kestrel loads, tokens].
function fixtureModels() {
  const cases = [];
  for (const dir of fs.readdirSync(fixtures).sort()) {
    const d = path.join(fixtures, dir);
    if (!fs.statSync(d).isDirectory()) continue;
    const files = fs.readdirSync(d);
    const weights = files.includes('model.safetensors') || files.includes('model.safetensors.index.json');
    // A Hugging Face folder, or BlinkDL's RWKV-7 folder (no config.json, told by its tensors).
    if (weights && (files.includes('config.json') || files.includes('model.pth'))) {
      cases.push([`${dir} (folder)`, `/fixtures/${dir}/`, d, tokensOf(dir)]);
    }
    for (const f of files.filter((f) => /\.(gguf|pth)$/.test(f)).sort()) {
      if (dir === 'pth_hostile') continue; // files made to be refused (tests/tests/pth.rs)
      const stem = f.replace(/\.(gguf|pth)$/, '');
      const own = fs.existsSync(path.join(fixtures, stem, 'tokens.json')) ? stem : dir;
      cases.push([`${dir}/${f}`, `/fixtures/${dir}/${f}`, path.join(d, f), tokensOf(own)]);
    }
  }
  return cases;
}

// `kestrel logits` for `tokens` with extra flags; the logits or the error.
function nativeLogits(model, tokens, flags = []) {
  const out = path.join(scratch, `n${Math.random().toString(36).slice(2)}.npy`);
  const r = spawnSync(nativeBin, ['logits', '--model', model, '--tokens', tokens.join(','), '--out', out, ...flags], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  return { data: readNpy(out).data };
}

// `kestrel chat` answering one message greedily: the reply's text.
function nativeChat(model, message, flags) {
  const r = spawnSync(nativeBin, ['chat', '--model', model, '--temperature', '0', ...flags], { input: message + '\n', encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  return { text: r.stdout };
}

const { proc: server, base } = await startServer();
const browser = await launch();
try {
  const page = await (await browser.newContext()).newPage();
  page.on('pageerror', (e) => console.log(`[page exception] ${e.message}`));
  await page.goto(`${base}/kestrel.d.ts`);
  // Load `model` with `options`, take the logits of `tokens` (base64) and info(), or the
  // error's name and message.
  const browserLogits = (model, tokens, options = {}) => page.evaluate(async ({ model, tokens, options }) => {
    const k = await import('/kestrel.js');
    let e;
    try {
      e = await k.createEngine({ model, ...options });
      const l = await e.logits(tokens);
      const bytes = new Uint8Array(l.buffer, l.byteOffset, l.byteLength);
      let s = '';
      for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { b64: btoa(s), info: await e.info() };
    } catch (err) {
      return { error: `${err.name}: ${err.message}` };
    } finally {
      await e?.dispose();
    }
  }, { model, tokens, options });

  // (a) every fixture model's logits.
  const families = new Set();
  for (const [what, url, file, tokens] of fixtureModels()) {
    const t = Date.now();
    const native = nativeLogits(file, tokens);
    const b = await browserLogits(url, tokens);
    if (REFUSED.includes(what)) {
      // Refused alike, for the same reason.
      const why = (native.error || '').split(': ').pop();
      check(native.error && b.error && why && b.error.endsWith(why), `${what} is refused in the browser as natively: ${b.error}`);
      continue;
    }
    if (native.error || b.error) {
      check(false, `${what}: ${native.error ? 'native: ' + native.error : ''} ${b.error ? 'browser: ' + b.error : ''}`);
      continue;
    }
    families.add(b.info.model.architecture);
    const e = relErr(f32FromB64(b.b64), native.data);
    check(e <= LOGITS_TOL, `${what} (${b.info.model.architecture}) logits [${tokens.length}x${b.info.model.vocab}] browser vs native: rel error ${e.toExponential(2)} (tol ${LOGITS_TOL}; ${((Date.now() - t) / 1000).toFixed(1)} s)`);
  }
  console.log(`architectures checked in the browser: ${families.size} (${[...families].sort().join(', ')})`);

  // (b) a short greedy chat of each kind, the reply equal to native's.
  const kinds = [
    ['attention', 'gemma3', {}],
    ['recurrent', 'rwkv7', {}],
    ['MoE', 'mixtral', {}],
    ['hybrid', 'jamba', {}],
    ['diffusion', 'llada', { diffusion: { block_length: 2 } }],
  ];
  const MESSAGE = 'Hello there, who are you?';
  for (const [kind, dir, extra] of kinds) {
    const flags = ['--max-tokens', '8', ...(extra.diffusion ? ['--block-length', '2'] : [])];
    const native = nativeChat(path.join(fixtures, dir), MESSAGE, flags);
    const b = await page.evaluate(async ({ model, MESSAGE, extra }) => {
      const k = await import('/kestrel.js');
      const e = await k.createEngine({ model });
      try {
        let text = '', pieces = 0, end = null;
        const stream = await e.chat.completions.create({ messages: [{ role: 'user', content: MESSAGE }], max_tokens: 8, temperature: 0, seed: 0, stream: true, ...extra });
        for await (const c of stream) {
          if (c.choices[0].delta.content) {
            text += c.choices[0].delta.content;
            pieces++;
          }
          if (c.choices[0].finish_reason) end = { finish: c.choices[0].finish_reason, usage: c.usage };
        }
        return { text, pieces, end, info: await e.info() };
      } catch (err) {
        return { error: `${err.name}: ${err.message}` };
      } finally {
        await e.dispose();
      }
    }, { model: `/fixtures/${dir}/`, MESSAGE, extra });
    if (native.error || b.error) {
      check(false, `${kind} chat (${dir}): ${native.error ? 'native: ' + native.error : ''} ${b.error ? 'browser: ' + b.error : ''}`);
      continue;
    }
    // Native chat ends its reply with a newline.
    const same = b.text === native.text.replace(/\n$/, '');
    check(same && b.end && b.end.usage.completion_tokens > 0, `${kind} chat (${dir}, ${b.info.model.architecture}): ${b.end?.usage.completion_tokens} tokens in ${b.pieces} pieces, ${b.end?.finish}; ` +
      `${same ? 'equal to native' : `browser ${JSON.stringify(b.text)} vs native ${JSON.stringify(native.text)}`}`);
    if (kind === 'diffusion') {
      // Four blocks of two tokens: a piece as each block fills (the streaming detokenizer may
      // hold a block's text back to the next piece, and flush the last at the end), not
      // token by token nor all at the end.
      check(b.info.model.diffusion === true && b.pieces >= 3 && b.pieces <= 5, `the diffusion reply streamed by blocks: ${b.pieces} pieces for 4 blocks of 2 tokens`);
    }
  }

  // (c) attention options through createEngine, against native logits with the same flags:
  // sinks with a ring that wraps inside the prompt; a block-sparse mask over 64x64 blocks
  // that drops the middle block for the last queries (150 tokens of mixtral's 256).
  const gqa = tokensOf('llama_gqa');
  const long = Array.from({ length: 150 }, (_, i) => (i * 37 + 11) % 288);
  const options = [
    ['llama_gqa', gqa, { attentionSinks: 2, kvWindow: 6 }, ['--attention-sinks', '2', '--kv-window', '6']],
    ['mixtral', long, { blockSparse: 'local=1,global=1' }, ['--block-sparse', 'local=1,global=1']],
  ];
  for (const [dir, tokens, opts, flags] of options) {
    const native = nativeLogits(path.join(fixtures, dir), tokens, flags);
    const plain = nativeLogits(path.join(fixtures, dir), tokens);
    const b = await browserLogits(`/fixtures/${dir}/`, tokens, opts);
    if (native.error || b.error) {
      check(false, `${JSON.stringify(opts)}: ${native.error || ''} ${b.error || ''}`);
      continue;
    }
    const e = relErr(f32FromB64(b.b64), native.data);
    // The option must change the logits, or the comparison proves nothing.
    const changed = relErr(native.data, plain.data);
    check(e <= LOGITS_TOL && changed > 1e-3, `${dir}: createEngine(${JSON.stringify(opts)}) logits vs native ${flags.join(' ')}: rel error ${e.toExponential(2)} (tol ${LOGITS_TOL}); the option changes them by ${changed.toExponential(2)}`);
  }
  const refused = [
    [{ attentionSinks: 2 }, /attentionSinks and kvWindow/],
    [{ blockSparse: 'local=0' }, /blockSparse/],
    [{ attentionSinks: 4000, kvWindow: 4000 }, /attentionSinks|kvWindow/],
    [{ kvWindows: 4 }, /kvWindows/],
  ];
  for (const [opts, want] of refused) {
    const b = await browserLogits('/fixtures/llama_gqa/', gqa, opts);
    check(b.error && /^KestrelRequestError/.test(b.error) && want.test(b.error), `createEngine(${JSON.stringify(opts)}) is refused: ${b.error}`);
  }
  const mamba = await browserLogits('/fixtures/mamba/', tokensOf('mamba'), { attentionSinks: 2, kvWindow: 6 });
  check(mamba.error && /attention/.test(mamba.error), `attention options on a model without attention are refused: ${mamba.error}`);
  const autoregressive = await page.evaluate(async () => {
    const k = await import('/kestrel.js');
    const e = await k.createEngine({ model: '/fixtures/llama_gqa/' });
    try {
      await e.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, diffusion: {} });
      return null;
    } catch (err) {
      return `${err.name}: ${err.message}`;
    } finally {
      await e.dispose();
    }
  });
  check(/^KestrelRequestError: .*diffusion/.test(autoregressive || ''), `diffusion settings for an autoregressive model are refused: ${autoregressive}`);
} catch (e) {
  check(false, `families test: ${e.stack || e}`);
} finally {
  await browser.close();
  server.kill();
  fs.rmSync(scratch, { recursive: true, force: true });
}
console.log(`browser family tests: ${failures() ? failures() + ' failure(s)' : 'all passed'} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failures() ? 1 : 0);
