// A tiny static server for the chat page and the browser tests (Node, no dependencies).
//   node web/serve.mjs [--port 8000] [--host 127.0.0.1] [--models DIR] [--fixtures DIR]
// Serves web/www at /, DIR (default: Kestrel's model cache, ~/.cache/kestrel/models) at
// /models/, and, when given, the test fixtures at /fixtures/. GET /__requests returns how
// many GET requests each path received (the tests use it to check the browser cache).
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : dflt;
};
const cacheDir =
  process.env.KESTREL_CACHE ||
  (process.env.XDG_CACHE_HOME ? path.join(process.env.XDG_CACHE_HOME, 'kestrel') : path.join(os.homedir(), '.cache', 'kestrel'));
const roots = [
  ['/models/', path.resolve(opt('--models', path.join(cacheDir, 'models')))],
  ...(opt('--fixtures') ? [['/fixtures/', path.resolve(opt('--fixtures'))]] : []),
  ['/', path.join(here, 'www')],
];
const port = Number(opt('--port', '8000'));
const host = opt('--host', '127.0.0.1');

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.ts': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};
const requests = {};

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  let p;
  try {
    p = decodeURIComponent(url.pathname);
  } catch {
    res.writeHead(400).end('bad path');
    return;
  }
  if (p === '/__requests') {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(requests));
    return;
  }
  if (p === '/favicon.ico') {
    res.writeHead(204).end();
    return;
  }
  if (req.method === 'GET') requests[p] = (requests[p] || 0) + 1;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405).end();
    return;
  }
  const [prefix, root] = roots.find(([pre]) => p.startsWith(pre));
  let file = path.join(root, p.slice(prefix.length));
  if (!file.startsWith(root)) {
    res.writeHead(403).end();
    return;
  }
  fs.stat(file, (err, st) => {
    if (!err && st.isDirectory()) {
      file = path.join(file, 'index.html');
      try {
        st = fs.statSync(file);
      } catch (e) {
        err = e;
      }
    }
    if (err) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': MIME[path.extname(file)] || 'application/octet-stream',
      'content-length': st.size,
      'cache-control': 'no-cache',
    });
    if (req.method === 'HEAD') res.end();
    else fs.createReadStream(file).pipe(res);
  });
});
server.listen(port, host, () => {
  const addr = server.address();
  console.log(`Kestrel chat: http://${host}:${addr.port}/  (models from ${roots[0][1]})`);
});
