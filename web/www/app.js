// The chat page: choose a model, send messages, watch the reply stream in, stop it.
import { createEngine, webgpuAvailable } from './kestrel.js';

const $ = (id) => document.getElementById(id);
const DEFAULT_MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
let engine = null;
const history = [];

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

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  const label = document.createElement('span');
  label.className = 'role';
  label.textContent = role;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  div.append(label, body);
  $('messages').append(div);
  div.scrollIntoView({ block: 'end' });
  return body;
}

function setBusy(busy) {
  $('send').disabled = busy || !engine;
  $('prompt').disabled = !engine;
  $('stop').disabled = !busy;
  $('load').disabled = busy;
}

async function load(model) {
  showError('');
  if (engine) {
    await engine.dispose();
    engine = null;
  }
  history.length = 0;
  $('messages').replaceChildren();
  setBusy(true);
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
    const info = await engine.info();
    const m = info.model;
    status(`${m.name} (${m.architecture}) on ${info.adapter} · context ${m.context} · ` +
      `GPU memory ${mb(m.weightBytes + m.stateBytes)} (weights ${mb(m.weightBytes)}, KV ${mb(m.stateBytes)}) · ` +
      `f16 ${info.features['shader-f16'] ? 'yes' : 'no (f32 path)'} · pipelines ${(info.timings.pipelineMs / 1000).toFixed(2)} s`);
    document.body.dataset.ready = 'true';
  } catch (e) {
    engine = null;
    status('no model loaded');
    showError(explain(e));
    document.body.dataset.ready = 'error';
  } finally {
    setBusy(false);
  }
}

async function send(text) {
  history.push({ role: 'user', content: text });
  addMessage('user', text);
  const out = addMessage('assistant', '');
  setBusy(true);
  document.body.dataset.replying = 'true';
  let reply = '';
  try {
    const stream = await engine.chat.completions.create({ messages: history, stream: true, max_tokens: 256, temperature: 0.7, top_p: 0.9 });
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (c.delta.content) {
        reply += c.delta.content;
        out.textContent = reply;
        out.parentElement.scrollIntoView({ block: 'end' });
      }
      if (c.finish_reason) {
        const t = chunk.timings || {};
        $('stats').textContent = `${chunk.usage.completion_tokens} tokens · first token ${t.ttft_ms ? (t.ttft_ms / 1000).toFixed(2) + ' s' : '–'} · ` +
          `${t.decode_tokens_per_s ? t.decode_tokens_per_s.toFixed(1) : '–'} tokens/s · prompt ${chunk.usage.prompt_tokens} (${t.reused_tokens} cached)` +
          (c.finish_reason === 'abort' ? ' · stopped' : '');
      }
    }
    history.push({ role: 'assistant', content: reply });
  } catch (e) {
    showError(explain(e));
  } finally {
    setBusy(false);
    document.body.dataset.replying = 'false';
  }
}

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
  if (!text || !engine) return;
  $('prompt').value = '';
  send(text);
});
$('prompt').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    $('chat-form').requestSubmit();
  }
});
$('stop').addEventListener('click', () => engine?.interrupt());

// ?model=URL loads at once; otherwise the default model when it is served alongside.
async function start() {
  if (!webgpuAvailable()) {
    showError(explain({ name: 'KestrelNoWebGpuError', message: 'navigator.gpu is missing' }));
    document.body.dataset.ready = 'error';
    return;
  }
  const params = new URLSearchParams(location.search);
  const asked = params.get('model');
  if (params.has('model') && !asked) {
    status('no model loaded: give a URL or choose a .gguf file (or a Hugging Face folder\'s files)');
    return;
  }
  if (asked) {
    $('model-url').value = asked;
    return load(asked);
  }
  try {
    const head = await fetch(DEFAULT_MODEL, { method: 'HEAD' });
    if (head.ok) {
      $('model-url').value = DEFAULT_MODEL;
      return load(DEFAULT_MODEL);
    }
  } catch {}
  status('no model loaded: give a URL or choose a .gguf file (or a Hugging Face folder\'s files)');
}
start();
