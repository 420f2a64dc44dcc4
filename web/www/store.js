// Conversations kept in IndexedDB (database 'kestrel-chat', store 'conversations'), one
// record each: { id, title, created, updated, system, settings: { temperature, top_p,
// max_tokens }, messages: [{ role, content, stats? }], usage: { prompt, completion } }.

const DB = 'kestrel-chat';
const STORE = 'conversations';
let opened = null;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: 'id' });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return opened;
}

// One request in a transaction of its own; resolves when the transaction is done.
async function run(mode, f) {
  const tx = (await db()).transaction(STORE, mode);
  const req = f(tx.objectStore(STORE));
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('the IndexedDB transaction was aborted'));
  });
}

/** Every conversation, the most recently updated first. */
export async function listConversations() {
  const all = await run('readonly', (s) => s.getAll());
  return all.sort((a, b) => b.updated - a.updated);
}

export const getConversation = (id) => run('readonly', (s) => s.get(id));

export async function saveConversation(c) {
  c.updated = Date.now();
  // A plain copy: IndexedDB clones the record, and the page's object may hold more.
  await run('readwrite', (s) => s.put(JSON.parse(JSON.stringify(c))));
}

export const deleteConversation = (id) => run('readwrite', (s) => s.delete(id));

export const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 0.9, max_tokens: 512 };

/** A new, empty conversation (not saved yet), with `like`'s system prompt and settings. */
export function newConversation(like) {
  const id = crypto.randomUUID ? crypto.randomUUID() : `c${Date.now()}-${Math.random().toString(36).slice(2)}`;
  return {
    id,
    title: '',
    created: Date.now(),
    updated: Date.now(),
    system: like?.system ?? '',
    settings: { ...DEFAULT_SETTINGS, ...like?.settings },
    messages: [],
    usage: null,
  };
}
