// The chat page: pick a model (the catalogue, a URL or files); talk in conversations kept in
// IndexedDB, each with its system prompt and sampling settings and its own KV cache in the
// engine (the request's `conversation`); replies stream in as Markdown; Stop, Regenerate;
// tokens/s, context and GPU memory shown; a service worker lets it open offline.
import { createEngine, webgpuAvailable } from './kestrel.js';
import { CATALOGUE, byUrl, megabytes, verify } from './catalogue.js';
import { isStored } from './model_store.js';
import { renderMarkdown } from './markdown.js';
import * as store from './store.js';

const $ = (id) => document.getElementById(id);
// localStorage keys: the model URL loaded last, the conversation shown last.
const LAST_MODEL = 'kestrel-model';
const LAST_CONVERSATION = 'kestrel-conversation';
// localStorage can refuse (storage turned off); what it keeps is only a convenience.
function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {}
}

let engine = null;
let info = null; // engine.info(), refreshed after each reply
let loading = false;
let replying = false;
let conversations = []; // the saved ones, the most recently updated first
let current = null; // the conversation shown (saved once it has something in it)

// ---- messages to people ----

function showError(message, warning = false) {
  const el = $('error');
  el.textContent = message;
  el.className = warning ? 'warning' : '';
  el.hidden = !message;
}

function status(text) {
  $('status').textContent = text;
}

const mb = (n) => (n / (1 << 20)).toFixed(1) + ' MiB';

function explain(e) {
  switch (e.name) {
    case 'KestrelNoWebGpuError':
      return `No WebGPU: ${e.message}. Use a browser with WebGPU enabled (Chrome/Edge 113+, or Chromium with --enable-unsafe-webgpu).`;
    case 'KestrelLimitsError':
      return `This GPU cannot run Kestrel: ${e.message}.`;
    case 'KestrelDownloadError':
      return `Download failed: ${e.message}.`;
    case 'KestrelModelError':
      return `The model could not be loaded: ${e.message}`;
    default:
      return `${e.name || 'Error'}: ${e.message || e}`;
  }
}

// Storage trouble (private browsing, a full quota) must not hide a message already shown.
function storageProblem(e) {
  console.warn('conversation storage:', e);
  if ($('error').hidden) showError(`Conversations cannot be saved in this browser: ${e.message || e}`, true);
}

function refreshControls() {
  const busy = loading || replying;
  $('send').disabled = busy || !engine;
  $('prompt').disabled = !engine;
  $('stop').disabled = !replying;
  $('regenerate').disabled = busy || !engine || !current?.messages.length;
  $('load').disabled = busy;
  // A reply belongs to the conversation shown: no switching while one streams in.
  for (const b of $('sidebar').querySelectorAll('button')) b.disabled = replying;
}

// ---- the conversation list ----

async function save(conv) {
  try {
    await store.saveConversation(conv);
  } catch (e) {
    storageProblem(e);
  }
  if (!conversations.includes(conv)) conversations.push(conv);
  conversations.sort((a, b) => b.updated - a.updated);
  renderList();
}

function renderList() {
  const shown = conversations.includes(current) ? conversations : [current, ...conversations];
  $('conversations').replaceChildren(...shown.map((c) => {
    const title = c.title || 'New conversation';
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'open';
    open.textContent = title;
    open.dataset.id = c.id;
    if (c === current) open.setAttribute('aria-current', 'true');
    open.addEventListener('click', () => switchTo(c));
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'delete';
    del.textContent = '×';
    del.setAttribute('aria-label', `Delete conversation: ${title}`);
    del.addEventListener('click', () => remove(c));
    const li = document.createElement('li');
    li.append(open, del);
    return li;
  }));
  refreshControls();
}

function switchTo(conv) {
  if (replying) return;
  current = conv;
  remember(LAST_CONVERSATION, conv.id);
  renderConversation();
  renderList();
}

function newChat() {
  if (current.messages.length) switchTo(store.newConversation(current));
  $('prompt').focus();
}

async function remove(conv) {
  if (replying) return;
  try {
    await store.deleteConversation(conv.id);
  } catch (e) {
    storageProblem(e);
  }
  // Free its KV cache in the engine (a conversation never replied to holds none).
  engine?.dropConversation(conv.id).catch(() => {});
  conversations = conversations.filter((c) => c !== conv);
  if (conv === current) switchTo(conversations[0] || store.newConversation(conv));
  else renderList();
}

// ---- one conversation ----

function renderConversation() {
  $('messages').replaceChildren();
  for (const m of current.messages) addMessage(m.role, m.content, m.stats);
  showSettings();
  showUsage();
}

/** A message in the page: { msg, text } (the .text element holds what it says). */
function addMessage(role, content, stats) {
  const msg = document.createElement('article');
  msg.className = `msg ${role}`;
  const label = document.createElement('span');
  label.className = 'role';
  label.textContent = role;
  const text = document.createElement('div');
  text.className = 'text';
  msg.append(label, text);
  const view = { msg, text, meta: null };
  show(view, role, content, stats);
  $('messages').append(msg);
  msg.scrollIntoView({ block: 'end' });
  return view;
}

// A user's words stay as typed; a reply is Markdown.
function show(view, role, content, stats) {
  if (role === 'assistant') view.text.replaceChildren(renderMarkdown(content));
  else view.text.textContent = content;
  if (stats) {
    view.meta ??= view.msg.appendChild(Object.assign(document.createElement('div'), { className: 'meta' }));
    view.meta.textContent = describe(stats);
  }
}

function describe(s) {
  return `${s.completion_tokens} tokens · first token ${s.ttft_ms != null ? (s.ttft_ms / 1000).toFixed(2) + ' s' : '–'} · ` +
    `${s.tokens_per_s != null ? s.tokens_per_s.toFixed(1) : '–'} tokens/s · prompt ${s.prompt_tokens} (${s.reused_tokens} cached)` +
    (s.finish_reason === 'abort' ? ' · stopped' : '');
}

// The system prompt and sampling settings of the conversation shown.
const SETTINGS = [
  // [input, key, parse, accept]
  ['temperature', 'temperature', Number, (v) => v >= 0 && v <= 2],
  ['top-p', 'top_p', Number, (v) => v > 0 && v <= 1],
  ['max-tokens', 'max_tokens', Number, (v) => Number.isInteger(v) && v >= 1],
];

function showSettings() {
  $('system').value = current.system;
  for (const [id, key] of SETTINGS) $(id).value = current.settings[key];
}

for (const [id, key, parse, accept] of SETTINGS) {
  $(id).addEventListener('change', () => {
    const v = parse($(id).value);
    if ($(id).value === '' || !accept(v)) {
      $(id).value = current.settings[key];
      return;
    }
    current.settings[key] = v;
    save(current);
  });
}
$('system').addEventListener('change', () => {
  current.system = $('system').value;
  save(current);
});

// Context use of the conversation shown and the engine's GPU memory.
function showUsage() {
  const ctx = info?.model?.context || 0;
  const used = current?.usage ? current.usage.prompt + current.usage.completion : 0;
  $('context-meter').max = ctx || 1;
  $('context-meter').value = used;
  $('context-text').textContent = ctx ? `${used} / ${ctx} tokens` : '–';
  if (!info?.model) {
    $('memory').textContent = 'GPU memory –';
    return;
  }
  const m = info.model;
  const held = info.conversations?.held ?? 1;
  const gpu = info.counters?.gpuBytes ?? m.weightBytes + m.stateBytes;
  $('memory').textContent = `GPU memory ${mb(gpu)} (weights ${mb(m.weightBytes)}, KV ${mb(m.stateBytes)} × ${held} conversation${held === 1 ? '' : 's'})`;
}

async function send(text) {
  const conv = current;
  conv.messages.push({ role: 'user', content: text });
  if (!conv.title) conv.title = text.replace(/\s+/g, ' ').slice(0, 48);
  addMessage('user', text);
  await save(conv);
  await reply(conv);
}

// Drop the last reply and ask again.
async function regenerate() {
  const conv = current;
  if (loading || replying || !engine || !conv.messages.length) return;
  if (conv.messages.at(-1).role === 'assistant') {
    conv.messages.pop();
    [...$('messages').querySelectorAll('.msg.assistant')].at(-1)?.remove();
  }
  await reply(conv);
}

async function reply(conv) {
  // The last reply's error goes; a warning (a full quota) stays.
  if ($('error').className !== 'warning') showError('');
  replying = true;
  document.body.dataset.replying = 'true';
  refreshControls();
  const view = addMessage('assistant', '');
  let text = '';
  let end = null;
  let drawn = true;
  const draw = () => {
    drawn = true;
    show(view, 'assistant', text);
    view.msg.scrollIntoView({ block: 'end' });
  };
  try {
    const messages = conv.messages.map(({ role, content }) => ({ role, content }));
    if (conv.system.trim()) messages.unshift({ role: 'system', content: conv.system });
    const stream = await engine.chat.completions.create({ messages, stream: true, conversation: conv.id, ...conv.settings });
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (c.delta.content) {
        text += c.delta.content;
        // Markdown is drawn again whole, at most once a frame.
        if (drawn) {
          drawn = false;
          requestAnimationFrame(draw);
        }
      }
      if (c.finish_reason) end = { finish_reason: c.finish_reason, usage: chunk.usage, timings: chunk.timings || {} };
    }
  } catch (e) {
    showError(explain(e));
  }
  let stats = null;
  if (end) {
    const { usage, timings: t } = end;
    stats = {
      finish_reason: end.finish_reason,
      prompt_tokens: usage.prompt_tokens,
      completion_tokens: usage.completion_tokens,
      reused_tokens: t.reused_tokens,
      ttft_ms: t.ttft_ms ?? null,
      tokens_per_s: t.decode_tokens_per_s ?? null,
    };
    conv.usage = { prompt: usage.prompt_tokens, completion: usage.completion_tokens };
    $('stats').textContent = describe(stats);
  }
  // A reply is kept, stopped or cut short by an error, once it has something.
  if (end || text) {
    conv.messages.push({ role: 'assistant', content: text, stats });
    show(view, 'assistant', text, stats);
    await save(conv);
  } else {
    view.msg.remove();
  }
  try {
    info = await engine.info();
  } catch {}
  replying = false;
  showUsage();
  refreshControls();
  document.body.dataset.replying = 'false';
}

// ---- the model ----

function fillCatalogue() {
  for (const m of CATALOGUE) {
    const o = document.createElement('option');
    o.value = m.url;
    o.textContent = `${m.name} · ${megabytes(m.size)} · ${m.licence}`;
    o.title = m.label;
    o.dataset.name = m.name;
    $('catalogue').append(o);
  }
}

// The picker shows the catalogue's model when the URL field holds one.
function syncPicker() {
  const m = byUrl($('model-url').value.trim() || 'about:blank');
  $('catalogue').value = m ? m.url : '';
}

async function load(model) {
  showError('');
  delete document.body.dataset.ready;
  loading = true;
  refreshControls();
  if (engine) {
    await engine.dispose().catch(() => {});
    engine = null;
    info = null;
  }
  status('loading…');
  try {
    engine = await createEngine({
      model,
      onProgress: (p) => {
        if (p.phase === 'download') status(`downloading ${mb(p.loaded)}${p.total ? ' of ' + mb(p.total) : ''}`);
        else if (p.phase === 'cache') status(`from the browser cache: ${mb(p.loaded)}`);
        else if (p.phase === 'warning') showError(p.message, true);
        else if (p.message) status(p.message);
      },
    });
    info = await engine.info();
    const m = info.model;
    const line = `${m.name} (${m.architecture}) on ${info.adapter} · context ${m.context} · ` +
      `f16 ${info.features['shader-f16'] ? 'yes' : 'no (f32 path)'} · ` +
      (info.pipelinesAhead?.keys ? `${info.pipelinesAhead.keys} pipelines compiling ahead` : `pipelines ${(info.timings.pipelineMs / 1000).toFixed(2)} s`);
    status(line);
    if (typeof model === 'string') {
      remember(LAST_MODEL, model);
      const entry = byUrl(model);
      if (entry) checkCatalogue(entry, line);
    }
    document.body.dataset.ready = 'true';
  } catch (e) {
    engine = null;
    status('no model loaded');
    showError(explain(e));
    document.body.dataset.ready = 'error';
  } finally {
    loading = false;
    showUsage();
    refreshControls();
  }
}

// A catalogue model's download against its pinned size and SHA-256 (once per download).
async function checkCatalogue(entry, line) {
  try {
    const v = await verify(entry);
    if (v.result === 'verified') status(`${line} · ${entry.name}: SHA-256 verified`);
    else if (v.result === 'mismatch') showError(`${entry.file} is not the catalogue's file: ${v.reason}`, true);
  } catch (e) {
    console.warn('catalogue check:', e);
  }
}

// The model to open without ?model=: the one loaded last, else the first catalogue model
// that is in the browser cache or served alongside the page.
async function defaultModel() {
  const tried = [localStorage.getItem(LAST_MODEL), ...CATALOGUE.map((m) => m.url)].filter(Boolean);
  for (const url of [...new Set(tried)]) {
    // A Hugging Face folder is there when its config.json is.
    const probe = new URL(url.endsWith('/') ? url + 'config.json' : url, location.href).href;
    if (await isStored(probe)) return url;
    try {
      if ((await fetch(probe, { method: 'HEAD' })).ok) return url;
    } catch {}
  }
  return null;
}

// ---- wiring ----

$('catalogue').addEventListener('change', () => {
  if ($('catalogue').value) {
    $('model-url').value = $('catalogue').value;
    $('model-files').value = '';
  }
});
$('model-url').addEventListener('input', syncPicker);
$('model-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const files = $('model-files').files;
  const url = $('model-url').value.trim();
  if (files.length) load(files);
  else if (url) load(url);
  else showError('Give a model URL or choose files.');
});
$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || !engine || loading || replying) return;
  $('prompt').value = '';
  send(text);
});
$('prompt').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    $('chat-form').requestSubmit();
  } else if (ev.key === 'Escape' && replying) {
    engine?.interrupt();
  }
});
$('stop').addEventListener('click', () => engine?.interrupt());
$('regenerate').addEventListener('click', regenerate);
$('new-chat').addEventListener('click', newChat);

async function openConversations() {
  try {
    conversations = await store.listConversations();
  } catch (e) {
    storageProblem(e);
  }
  const last = localStorage.getItem(LAST_CONVERSATION);
  current = conversations.find((c) => c.id === last) || conversations[0] || store.newConversation();
  renderConversation();
  renderList();
}

// ?model=URL loads at once; ?model= (empty) loads nothing; otherwise defaultModel().
async function start() {
  fillCatalogue();
  document.body.dataset.replying = 'false';
  // The app shell for offline use; best effort (a full quota, a browser without them).
  navigator.serviceWorker?.register('sw.js').catch((e) => console.warn('service worker:', e));
  await openConversations();
  if (!webgpuAvailable()) {
    showError(explain({ name: 'KestrelNoWebGpuError', message: 'navigator.gpu is missing' }));
    document.body.dataset.ready = 'error';
    return;
  }
  const params = new URLSearchParams(location.search);
  const asked = params.get('model');
  const idle = 'no model loaded: pick one, give a URL or choose a .gguf file (or a Hugging Face folder\'s files)';
  if (params.has('model') && !asked) return status(idle);
  const model = asked || (await defaultModel());
  if (!model) return status(idle);
  $('model-url').value = model;
  syncPicker();
  return load(model);
}
start();
