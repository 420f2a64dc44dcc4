// The chat page's service worker: keeps the app shell (the page, its modules, the worker and
// the wasm engine) in the Cache API so the page opens offline. It asks the network first (so
// a new build shows at once) and answers from the cache when the network fails. Model files
// are not its business: worker.js keeps them (model_store.js).

const CACHE = 'kestrel-shell-v1';
const SHELL = [
  './',
  'index.html',
  'style.css',
  'app.js',
  'markdown.js',
  'store.js',
  'catalogue.js',
  'model_store.js',
  'kestrel.js',
  'worker.js',
  'pkg/kestrel_web.js',
  'pkg/kestrel_web_bg.wasm',
];
const shellUrls = new Set(SHELL.map((p) => new URL(p, self.registration.scope).href));

self.addEventListener('install', (ev) => {
  ev.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL);
    await self.skipWaiting();
  })());
});

// Take the open pages at once: the first visit works offline afterwards without a reload.
self.addEventListener('activate', (ev) => ev.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (ev) => {
  const req = ev.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  url.search = '';
  // The page itself under any query (?model=...), and the shell's files; nothing else.
  const isPage = req.mode === 'navigate' && url.href === new URL('./', self.registration.scope).href;
  if (!isPage && !shellUrls.has(url.href)) return;
  ev.respondWith(networkFirst(req, isPage ? new URL('./', self.registration.scope).href : url.href));
});

async function networkFirst(req, key) {
  const cache = await caches.open(CACHE);
  try {
    const resp = await fetch(req);
    if (resp.ok) {
      // Best effort: a full quota leaves the older copy in place.
      cache.put(key, resp.clone()).catch(() => {});
    }
    return resp;
  } catch (e) {
    const hit = await cache.match(key);
    if (hit) return hit;
    throw e;
  }
}
