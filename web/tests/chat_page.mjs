// The chat page in headless Chromium (Debian's, WebGPU on SwiftShader) through playwright-core:
//   node web/tests/chat_page.mjs        (after web/build.sh and `cargo build -p kestrel`)
// its catalogue against `target/debug/kestrel models --json`; the Markdown renderer (a code
// block with its copy button, lists, and raw HTML that must stay text); a message and its
// reply with tokens/s, context and GPU memory; Regenerate; two conversations, each with its
// messages, settings and KV cache in the engine; conversations surviving a reload; delete;
// an offline reload through the service worker. With SmolLM2 in Kestrel's cache, the picker
// loads it and checks its SHA-256. Screenshots in target/artifacts/web-chat-*.png. Prints
// an ok/FAIL line per check and exits non-zero on any failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { checker, launch, modelsDir, repo, startServer } from './harness.mjs';

// A tiny fixture with random weights (fast on SwiftShader) whose context, 256 tokens, holds
// three short turns of the fallback chat template (llama_gqa's 64 hold one).
const FIXTURE = '/fixtures/mixtral/';
const OFFLINE_FIXTURE = '/fixtures/llama_gqa/';
const SMOLLM2 = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const haveSmol = fs.existsSync(path.join(modelsDir, SMOLLM2));
const artifacts = path.join(repo, 'target/artifacts');
const LONG = 300_000;

const { check, failures } = checker();
const t0 = Date.now();

if (!fs.existsSync(path.join(repo, 'web/www/pkg/kestrel_web_bg.wasm'))) {
  console.error('web/www/pkg is missing: run web/build.sh first');
  process.exit(1);
}

// The catalogue: the page's module against the native one.
const { CATALOGUE } = await import(pathToFileURL(path.join(repo, 'web/www/catalogue.js')).href);
const kestrel = path.join(repo, 'target/debug/kestrel');
const listed = spawnSync(kestrel, ['models', '--json'], { encoding: 'utf8' });
let native = [];
try {
  native = JSON.parse(listed.stdout).models;
} catch {
  console.log(`     ${kestrel} models --json: ${listed.error || listed.stderr}`);
}
const FIELDS = ['name', 'label', 'file', 'size', 'sha256', 'licence'];
const differ = native.length === CATALOGUE.length ? native.flatMap((n, i) => FIELDS.filter((f) => n[f] !== CATALOGUE[i][f]).map((f) => `${n.name}.${f}`)) : ['the number of models'];
check(native.length > 0 && differ.length === 0 && CATALOGUE.every((m) => m.url === `models/${m.file}`),
  `the page's catalogue equals \`kestrel models --json\` (${native.map((n) => n.name).join(', ')})${differ.length ? `; differs in ${differ.join(', ')}` : ''}`);

const MARKDOWN = [
  '## Plan',
  '',
  'Some *emphasis*, **strong** and `inline <b>code</b>`.',
  '',
  '- one',
  '- two',
  '  - nested',
  '',
  '1. first',
  '2. second',
  '',
  '```js',
  'const s = "<script>alert(1)</script>";',
  'console.log(s);',
  '```',
  '',
  '<script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2">',
  '[bad](javascript:window.pwned=3) and [good](https://example.com/)',
].join('\n');
const CODE = 'const s = "<script>alert(1)</script>";\nconsole.log(s);';

const { proc: server, base } = await startServer();
const requests = async () => (await fetch(`${base}/__requests`)).json();
const browser = await launch();
const exceptions = [];
fs.mkdirSync(artifacts, { recursive: true });
const shot = async (page, name) => {
  const file = path.join(artifacts, `web-chat-${name}.png`);
  await page.screenshot({ path: file });
  console.log(`     screenshot: ${path.relative(repo, file)}`);
};

try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await context.newPage();
  page.on('pageerror', (e) => exceptions.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`     [page error] ${m.text()}`);
  });

  const ready = async () => {
    await page.waitForSelector('body[data-ready]', { timeout: LONG });
    return page.getAttribute('body', 'data-ready');
  };
  // Wait until `n` replies are shown, finished (each has its stats line), none streaming,
  // or an error is.
  const replies = (n) => page.waitForFunction((n) => document.body.dataset.replying === 'false' &&
    ((document.querySelectorAll('.msg.assistant .meta').length === n && document.querySelectorAll('.msg.assistant').length === n) ||
      !document.getElementById('error').hidden), n, { timeout: LONG });
  const say = async (text, n) => {
    await page.fill('#prompt', text);
    await page.press('#prompt', 'Enter');
    await replies(n);
  };
  // A setting, typed in (the settings panel opened first).
  const setField = async (sel, value) => {
    await page.evaluate(() => (document.getElementById('settings').open = true));
    await page.fill(sel, value);
    await page.dispatchEvent(sel, 'change');
  };
  const shown = () => page.$$eval('.msg', (ms) => ms.map((m) => ({ role: m.classList.contains('user') ? 'user' : 'assistant', text: m.querySelector('.text').textContent })));
  const titles = () => page.$$eval('#conversations .open', (bs) => bs.map((b) => b.textContent));
  const stored = () => page.evaluate(async () => (await import('/store.js')).listConversations());
  // What a reply's Markdown shows as text (the page's own rendering of it).
  const rendered = (content) => page.evaluate(async (c) => {
    const div = document.createElement('div');
    div.append((await import('/markdown.js')).renderMarkdown(c));
    return div.textContent;
  }, content ?? '');
  const statsOf = (s) => {
    const m = /prompt (\d+) \((\d+) cached\)/.exec(s);
    return m ? { prompt: +m[1], reused: +m[2] } : null;
  };

  await page.goto(`${base}/?model=${encodeURIComponent(FIXTURE)}`);
  check((await ready()) === 'true', `the page loaded ${FIXTURE}: ${await page.textContent('#status')}`);

  // The picker: each catalogue model with its size and licence.
  const options = await page.$$eval('#catalogue option', (os) => os.map((o) => ({ value: o.value, text: o.textContent })));
  const missing = native.filter((n) => !options.some((o) => o.value === `models/${n.file}` && o.text.includes(n.name) &&
    o.text.includes(`${Math.round(n.size / 1e6)} MB`) && o.text.includes(n.licence)));
  check(native.length > 0 && missing.length === 0 && options.some((o) => o.value === ''),
    `the picker lists every catalogue model with its size and licence, and a custom choice: ${options.map((o) => o.text).join(' | ')}`);

  // The Markdown renderer on a fixed string.
  const md = await page.evaluate(async (text) => {
    const { renderMarkdown } = await import('/markdown.js');
    const box = document.createElement('div');
    box.id = 'md-test';
    box.append(renderMarkdown(text));
    document.body.append(box);
    await new Promise((r) => setTimeout(r, 100));
    const q = (s) => [...box.querySelectorAll(s)];
    return {
      h2: q('h2').map((e) => e.textContent),
      em: q('em').map((e) => e.textContent),
      strong: q('strong').map((e) => e.textContent),
      inlineCode: q('p code').map((e) => e.textContent),
      topItems: q(':scope > ul > li').length,
      nested: q('ul > li > ul > li').map((e) => e.textContent),
      ordered: q('ol > li').map((e) => e.textContent),
      code: q('pre > code').map((e) => e.textContent),
      lang: q('.code-block .lang').map((e) => e.textContent),
      copyButtons: q('.code-block button.copy').length,
      elements: q('script, img, iframe, [onerror]').length,
      links: q('a').map((a) => a.href),
      text: box.textContent,
      pwned: window.pwned ?? null,
    };
  }, MARKDOWN);
  check(md.h2[0] === 'Plan' && md.em[0] === 'emphasis' && md.strong[0] === 'strong' && md.inlineCode[0] === 'inline <b>code</b>' &&
    md.topItems === 2 && md.nested[0] === 'nested' && md.ordered.join() === 'first,second',
  `Markdown: heading, emphasis, inline code and lists: ${JSON.stringify({ h2: md.h2, em: md.em, strong: md.strong, inlineCode: md.inlineCode, topItems: md.topItems, nested: md.nested, ordered: md.ordered })}`);
  check(md.code.length === 1 && md.code[0] === CODE && md.lang[0] === 'js' && md.copyButtons === 1,
    `Markdown: a fenced code block with its language and a copy button: ${JSON.stringify(md.code)}`);
  check(md.elements === 0 && md.pwned === null && md.text.includes('<script>window.pwned = 1</script>') && md.text.includes('onerror=') &&
    md.links.join() === 'https://example.com/' && md.text.includes('[bad](javascript:'),
  `Markdown: raw HTML stays text (no script/img elements, nothing ran), only http(s) links: ${JSON.stringify({ elements: md.elements, pwned: md.pwned, links: md.links })}`);
  await page.click('#md-test button.copy');
  await page.waitForSelector('#md-test button.copy.copied, #md-test button.copy.failed', { timeout: 10_000 }).catch(() => {});
  const copied = await page.evaluate(() => navigator.clipboard.readText().catch((e) => `(${e.message})`));
  check(copied === CODE, `the copy button puts the code on the clipboard: ${JSON.stringify(copied)}`);
  await page.evaluate(() => document.getElementById('md-test').remove());

  // A conversation: system prompt and settings, a message, its reply and the numbers.
  await setField('#system', 'You are a test.');
  await setField('#max-tokens', '8');
  await say('Hello there', 1);
  let msgs = await shown();
  const stats = await page.textContent('#stats');
  const first = statsOf(stats);
  const contextText = await page.textContent('#context-text');
  const memory = await page.textContent('#memory');
  check(msgs.length === 2 && msgs[0].text === 'Hello there' && msgs[1].role === 'assistant' && msgs[1].text.trim().length > 0,
    `a message and its reply are shown: ${JSON.stringify(msgs)}`);
  const [used, ctx] = (/^(\d+) \/ (\d+) tokens$/.exec(contextText) || []).slice(1).map(Number);
  check(/\d+ tokens · first token [\d.]+ s · ([\d.]+|–) tokens\/s/.test(stats) && first && used > first.prompt && ctx >= used &&
    /^GPU memory \d+\.\d MiB \(weights .* MiB, KV .* MiB × \d+ conversations?\)$/.test(memory),
  `tokens/s, first token, context use and GPU memory shown: ${stats} | context ${contextText} | ${memory}`);
  check(JSON.stringify(await titles()) === '["Hello there"]', `the conversation is listed: ${JSON.stringify(await titles())}`);
  await shot(page, 'reply');

  // Regenerate: the last reply replaced, not added to.
  await page.evaluate(() => (document.querySelector('.msg.assistant').dataset.old = 'yes'));
  await page.click('#regenerate');
  await page.waitForFunction(() => !document.querySelector('.msg.assistant[data-old]'), null, { timeout: LONG });
  await replies(1);
  msgs = await shown();
  let saved = await stored();
  const again = statsOf(await page.textContent('#stats'));
  check(msgs.length === 2 && msgs[0].text === 'Hello there' && saved.length === 1 && saved[0].messages.length === 2 &&
    (await rendered(saved[0].messages[1].content)) === msgs[1].text && again && again.prompt === first.prompt && again.reused > 0,
  `Regenerate replaces the last reply (prompt ${again?.prompt} tokens, ${again?.reused} from the conversation's cache): ${JSON.stringify(saved[0]?.messages.map((m) => m.role))}`);

  // A second conversation with its own settings; switching shows each one's messages.
  await page.click('#new-chat');
  check((await shown()).length === 0 && (await page.inputValue('#system')) === 'You are a test.',
    'New conversation: no messages, the settings carried over');
  await setField('#system', 'You are the second test.');
  await setField('#max-tokens', '6');
  await say('Second chat', 1);
  const firstPrompt = saved[0].usage.prompt;
  check(JSON.stringify(await titles()) === '["Second chat","Hello there"]', `both conversations are listed: ${JSON.stringify(await titles())}`);
  await page.click('#conversations .open >> text=Hello there');
  msgs = await shown();
  check(msgs.length === 2 && msgs[0].text === 'Hello there' && (await page.inputValue('#system')) === 'You are a test.' &&
    (await page.inputValue('#max-tokens')) === '8', `switching back shows the first conversation and its settings: ${JSON.stringify(msgs.map((m) => m.text))}`);
  await say('And again', 2);
  const third = statsOf(await page.textContent('#stats'));
  check(third && third.reused >= firstPrompt, `its next turn reuses its KV cache after the other conversation's reply: ${third?.reused} of ${third?.prompt} prompt tokens cached (its previous prompt: ${firstPrompt})`);
  await page.click('#conversations .open >> text=Second chat');
  msgs = await shown();
  check(msgs.length === 2 && msgs[0].text === 'Second chat' && (await page.inputValue('#system')) === 'You are the second test.',
    `switching shows the second conversation: ${JSON.stringify(msgs.map((m) => m.text))}`);
  await page.click('#conversations .open >> text=Hello there');
  const before = await shown();

  // A reload: the conversations and the one shown come back.
  await page.reload();
  check((await ready()) === 'true', 'the page loads again after a reload');
  const after = await shown();
  check(JSON.stringify(after) === JSON.stringify(before) && after.length === 4 && JSON.stringify(await titles()) === '["Hello there","Second chat"]',
    `the conversation survives a reload (list ${JSON.stringify(await titles())}, ${after.length} messages)`);
  await shot(page, 'reload');

  // Stop: a long reply ended after its first words, kept as far as it went.
  await page.click('#new-chat');
  await setField('#system', '');
  await setField('#max-tokens', '150');
  // Pressed from the page as the first words show: the fixture's reply could end on its own
  // within the time a click from here takes.
  await page.evaluate(() => {
    const seen = new MutationObserver(() => {
      if (document.querySelector('.msg.assistant .text')?.textContent && !document.getElementById('stop').disabled) {
        seen.disconnect();
        document.getElementById('stop').click();
      }
    });
    seen.observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
  });
  await page.fill('#prompt', 'Count');
  await page.press('#prompt', 'Enter');
  await replies(1);
  const stopped = (await stored()).find((c) => c.title === 'Count')?.messages[1];
  check(/stopped/.test(await page.textContent('#stats')) && stopped?.stats?.finish_reason === 'abort' && stopped.stats.completion_tokens < 150 &&
    (await rendered(stopped.content)) === (await shown())[1]?.text,
  `Stop ends the reply, which is kept: ${await page.textContent('#stats')}`);
  await page.click('#conversations li:has(.open:text-is("Count")) .delete');
  await page.click('#conversations .open >> text=Hello there');

  // A stored reply in Markdown, shown in the page.
  await page.evaluate(async (md) => {
    const s = await import('/store.js');
    const c = s.newConversation();
    c.title = 'Markdown';
    c.messages = [{ role: 'user', content: 'Show me some code' }, { role: 'assistant', content: md, stats: null }];
    await s.saveConversation(c);
  }, MARKDOWN);
  await page.reload();
  await ready();
  await page.click('#conversations .open >> text=Markdown');
  const view = await page.evaluate(() => {
    const t = document.querySelector('.msg.assistant .text');
    return { code: t.querySelector('pre code')?.textContent, copy: !!t.querySelector('button.copy'), items: t.querySelectorAll('li').length, elements: t.querySelectorAll('script, img').length, text: t.textContent };
  });
  check(view.code === CODE && view.copy && view.items === 5 && view.elements === 0 && view.text.includes('<script>window.pwned = 1</script>'),
    `a reply is shown as Markdown: a code block with a copy button, lists, HTML as text: ${JSON.stringify({ ...view, text: undefined })}`);
  await shot(page, 'markdown');

  // Delete.
  await page.click('#conversations li:has(.open:text-is("Markdown")) .delete');
  saved = await stored();
  check(JSON.stringify(await titles()) === '["Hello there","Second chat"]' && saved.length === 2 && !saved.some((c) => c.title === 'Markdown'),
    `deleting a conversation removes it from the list and the store: ${JSON.stringify(await titles())}`);

  // Offline: the service worker serves the page, worker.js's cache the weights. (On
  // llama_gqa, whose folder has every file worker.js asks for: offline, a file it found
  // missing online, as mixtral's model.safetensors.index.json, fails to download.)
  await page.goto(`${base}/?model=${encodeURIComponent(OFFLINE_FIXTURE)}`);
  check((await ready()) === 'true', `the page loaded ${OFFLINE_FIXTURE} online`);
  const controlled = await page.evaluate(async () => {
    const registered = await Promise.race([navigator.serviceWorker.ready, new Promise((r) => setTimeout(r, 20_000))]);
    return !!registered && !!navigator.serviceWorker.controller;
  });
  check(controlled, 'a service worker controls the page');
  const counts = await requests();
  await context.setOffline(true);
  let offlineReady = null;
  try {
    await page.reload();
    offlineReady = await ready();
  } catch (e) {
    console.log(`     offline reload: ${e.message.split('\n')[0]}`);
  }
  const countsAfter = await requests();
  // Chromium's offline emulation does not cover the browser's own update check of the service
  // worker's script (a browser really offline fails it and keeps the installed worker).
  const reached = Object.keys(countsAfter).filter((p) => countsAfter[p] !== counts[p] && p !== '/sw.js');
  const said = offlineReady ? await page.evaluate(() => document.getElementById('error').textContent || document.getElementById('status').textContent).catch(() => '') : '(no page)';
  check(offlineReady === 'true' && reached.length === 0 && (await shown()).length === 4 && (await titles()).length === 2,
    `offline, a reload opens the page with its conversations and loads the model from the cache (${offlineReady}: ` +
    `${said}; requests that reached the server: ${JSON.stringify(reached)})`);
  if (offlineReady === 'true') {
    // A new conversation: the fixture's 64-token context holds one short turn.
    await page.click('#new-chat');
    await setField('#system', '');
    await say('Hi', 1);
    const r = await shown();
    check(r.length === 2 && r[0].text === 'Hi' && r[1].text.length > 0 && (await stored()).some((c) => c.title === 'Hi' && c.messages.length === 2),
      `a reply offline, saved: ${JSON.stringify(r.map((m) => m.text))}`);
  }
  await shot(page, 'offline');
  await context.setOffline(false);

  // SmolLM2 through the picker, its download checked against the catalogue's SHA-256.
  if (haveSmol) {
    await page.goto(`${base}/?model=`);
    await page.selectOption('#catalogue', `models/${SMOLLM2}`);
    check((await page.inputValue('#model-url')) === `models/${SMOLLM2}`, 'picking a catalogue model fills in its URL');
    await page.click('#load');
    check((await ready()) === 'true', `SmolLM2 loads from the picker: ${await page.textContent('#status')}`);
    const verified = await page.waitForFunction(() => /SHA-256 verified/.test(document.getElementById('status').textContent), null, { timeout: 120_000 }).then(() => true, () => false);
    check(verified, `SmolLM2's download matches the catalogue's SHA-256: ${await page.textContent('#status')}`);
    await page.click('#new-chat');
    await setField('#max-tokens', '4');
    await say('Write hello world in Python.', 1);
    const r = await shown();
    check(r.length === 2 && r[1].text.trim().length > 0, `SmolLM2 replies in the page: ${JSON.stringify(r[1]?.text)}`);
    await shot(page, 'smollm2');
  } else {
    console.log(`note: ${path.join(modelsDir, SMOLLM2)} is absent; the picker's SmolLM2 load is not checked`);
  }
  check(exceptions.length === 0, `no exceptions in the page${exceptions.length ? ': ' + exceptions.join('; ') : ''}`);
} catch (e) {
  check(false, `chat page test: ${e.stack || e}`);
} finally {
  await browser.close();
  server.kill();
}
console.log(`chat page tests: ${failures() ? failures() + ' failure(s)' : 'all passed'} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failures() ? 1 : 0);
