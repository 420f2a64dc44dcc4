// Where the browser keeps model files, shared by the worker and the page. Weights — a GGUF
// file, a folder's safetensors shards, a .pth — go to the Origin Private File System, written
// there a chunk at a time as they download and read back a range at a time by the engine, so
// they are never held whole in memory (and files of gigabytes fit, where the Cache API is
// uncomfortable). A folder's small files (config, tokenizer), which the engine takes whole,
// go to the Cache API ('kestrel-models-v1').

export const CACHE = 'kestrel-models-v1';
const DIR = 'kestrel-models';

// Kestrel's OPFS folder; null where the browser has no OPFS. Rejects when it cannot be
// opened (a full quota, say).
async function directory() {
  if (!navigator.storage?.getDirectory) return null;
  const root = await navigator.storage.getDirectory();
  return await root.getDirectoryHandle(DIR, { create: true });
}

// The OPFS name of `url`'s download: a hash of the URL (names are short and have no '/'),
// then the file's own name, for people looking at the storage.
async function nameOf(url) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url)));
  const hex = [...digest.subarray(0, 12)].map((b) => b.toString(16).padStart(2, '0')).join('');
  const file = (url.split('?')[0].split('/').filter(Boolean).pop() || 'model').replace(/[^\w.-]/g, '_').slice(-80);
  return `${hex}-${file}`;
}

/** The whole stored download of `url` (absolute) as a File, or null. */
export async function storedFile(url) {
  try {
    const dir = await directory();
    if (!dir) return null;
    const name = await nameOf(url);
    // The marker is written once the file is whole: a download cut short is not a model.
    await dir.getFileHandle(name + '.done');
    return await (await dir.getFileHandle(name)).getFile();
  } catch {
    return null;
  }
}

/** Whether `url` (absolute) is kept, in either store. */
export async function isStored(url) {
  if (await storedFile(url)) return true;
  try {
    return !!(await (await caches.open(CACHE)).match(url));
  } catch {
    return false;
  }
}

/**
 * A writer for `url`'s (absolute) download into OPFS: `write(chunk)` (rejects with a
 * QuotaExceededError when storage runs short), `done()` (the file is whole), `abort()` (what
 * was written is removed); null where the browser has no OPFS. Rejects when the file cannot
 * be created (a full quota, say).
 */
export async function storeWriter(url) {
  const dir = await directory();
  if (!dir) return null;
  const name = await nameOf(url);
  const h = await dir.getFileHandle(name, { create: true });
  const w = await h.createWritable();
  return {
    write: (chunk) => w.write(chunk),
    async done() {
      await w.close();
      await dir.getFileHandle(name + '.done', { create: true });
    },
    async abort() {
      try {
        await w.abort();
      } catch {}
      try {
        await dir.removeEntry(name);
      } catch {}
    },
  };
}
