// What the browser test scripts share: the repository's paths, Debian's Chromium with WebGPU
// on SwiftShader, the static server over web/www with the fixtures and the model cache, the
// ok/FAIL check lines, and .npy files and their comparison.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
// The SwiftShader Vulkan driver Debian's chromium ships: native Kestrel on it runs the engine
// the browser's WebGPU runs on.
export const SWIFTSHADER_ICD = process.env.KESTREL_SWIFTSHADER_ICD || '/usr/lib/chromium/vk_swiftshader_icd.json';
const CHROMIUM = process.env.KESTREL_CHROMIUM || '/usr/lib/chromium/chromium';
export const FLAGS = [
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-pings',
  '--gaia-url=http://127.0.0.1:9',
  '--component-updater=url-source=http://127.0.0.1:9/',
  '--no-sandbox',
  // Exact timestamp queries (Chromium rounds them to 100 us otherwise) for decodeProfile.
  '--enable-dawn-features=allow_unsafe_apis',
  '--disable-dawn-features=timestamp_quantization',
];
export const cacheDir = process.env.KESTREL_CACHE || (process.env.XDG_CACHE_HOME ? path.join(process.env.XDG_CACHE_HOME, 'kestrel') : path.join(os.homedir(), '.cache', 'kestrel'));
export const modelsDir = path.join(cacheDir, 'models');

/** Headless Chromium with `flags` (WebGPU on by default). */
export function launch(flags = FLAGS) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: flags });
}

/** The static server (web/serve.mjs) on a free port: web/www, /fixtures/, /models/. */
export function startServer() {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(repo, 'web/serve.mjs'), '--port', '0', '--fixtures', path.join(repo, 'tests/fixtures'), '--models', modelsDir], { stdio: ['ignore', 'pipe', 'inherit'] });
    p.stdout.on('data', (d) => {
      const m = String(d).match(/http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m) resolve({ proc: p, base: `http://127.0.0.1:${m[1]}` });
    });
    p.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

/** ok/FAIL lines; `failures()` counts the FAILs. */
export function checker() {
  let failed = 0;
  const check = (ok, what) => {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
    if (!ok) failed++;
  };
  return { check, failures: () => failed };
}

/** A float32 .npy (little-endian, C order): { shape, data }. */
export function readNpy(file) {
  const buf = fs.readFileSync(file);
  const hlen = buf.readUInt16LE(8);
  const header = buf.toString('latin1', 10, 10 + hlen);
  if (!header.includes("'<f4'") || header.includes("'fortran_order': True")) throw new Error(`${file}: not a C-order float32 .npy`);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const off = 10 + hlen;
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + off, buf.byteOffset + buf.length));
  return { shape, data };
}

/** ‖out − ref‖ / ‖ref‖; NaN when the lengths differ. */
export function relErr(out, ref) {
  if (out.length !== ref.length) return NaN;
  let d = 0, n = 0;
  for (let i = 0; i < ref.length; i++) {
    const x = out[i] - ref[i];
    d += x * x;
    n += ref[i] * ref[i];
  }
  return Math.sqrt(n ? d / n : d);
}

/** The share of rows whose argmax agrees. */
export function top1Agreement(out, ref, vocab) {
  let same = 0;
  const rows = ref.length / vocab;
  const argmax = (a, r) => {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (a[r * vocab + i] > a[r * vocab + best]) best = i;
    return best;
  };
  for (let r = 0; r < rows; r++) if (argmax(out, r) === argmax(ref, r)) same++;
  return same / rows;
}

/** Logits a page sent as base64 (page.evaluate carries strings, not typed arrays). */
export function f32FromB64(b64) {
  const buf = Buffer.from(b64, 'base64');
  return new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
}
