// A small Markdown renderer for model replies: headings, paragraphs, lists (nested by
// indentation), block quotes, rules, emphasis, strike-through, inline code, links and fenced
// code blocks with a copy button. It builds DOM nodes and puts the text in text nodes only
// (never innerHTML), so nothing a model writes can become markup: `<script>` stays text.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BLANK = /^\s*$/;

/** `text` as Markdown: a DocumentFragment. */
export function renderMarkdown(text, doc = document) {
  const out = doc.createDocumentFragment();
  blocks(String(text).replace(/\r\n?/g, '\n').split('\n'), out, doc);
  return out;
}

const el = (doc, tag, ...children) => {
  const e = doc.createElement(tag);
  e.append(...children);
  return e;
};

// Block structure, line by line.
function blocks(lines, parent, doc) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (BLANK.test(line)) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      // Up to the closing fence, or the end (a reply still streaming).
      const [, fence, lang] = m;
      const body = [];
      i++;
      while (i < lines.length && !closes(lines[i], fence)) body.push(lines[i++]);
      i++;
      parent.append(codeBlock(body.join('\n'), lang, doc));
    } else if ((m = HEADING.exec(line))) {
      parent.append(el(doc, `h${m[1].length}`, ...inline(m[2], doc)));
      i++;
    } else if (RULE.test(line)) {
      parent.append(doc.createElement('hr'));
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        body.push(m[1]);
        i++;
      }
      const q = doc.createElement('blockquote');
      blocks(body, q, doc);
      parent.append(q);
    } else if ((m = ITEM.exec(line))) {
      const start = i;
      const indent = m[1].length;
      const kind = ordered(m[2]);
      // A list runs on through its items (of its kind), more indented lines and single blank
      // lines between them.
      const goesOn = (l) => {
        const it = ITEM.exec(l);
        if (it && it[1].length <= indent) return ordered(it[2]) === kind;
        return l.search(/\S/) > indent;
      };
      i++;
      while (i < lines.length) {
        if (goesOn(lines[i])) i++;
        else if (BLANK.test(lines[i]) && i + 1 < lines.length && goesOn(lines[i + 1])) i++;
        else break;
      }
      list(lines.slice(start, i), parent, doc);
    } else {
      const para = [];
      while (i < lines.length && !BLANK.test(lines[i]) && !startsBlock(lines[i])) para.push(lines[i++].trim());
      // Models break lines on purpose: a line break stays one.
      const p = doc.createElement('p');
      para.forEach((l, k) => {
        if (k) p.append(doc.createElement('br'));
        p.append(...inline(l, doc));
      });
      parent.append(p);
    }
  }
}

const ordered = (marker) => /\d/.test(marker);

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function closes(line, fence) {
  const t = line.trim();
  return t.length >= fence.length && t[0] === fence[0] && new RegExp(`^\\${fence[0]}+$`).test(t);
}

// A list: its items at the first item's indentation; deeper lines belong to the item above
// (a nested list, or more of its text).
function list(lines, parent, doc) {
  const first = ITEM.exec(lines[0]);
  const indent = first[1].length;
  const l = doc.createElement(ordered(first[2]) ? 'ol' : 'ul');
  if (ordered(first[2]) && parseInt(first[2], 10) !== 1) l.start = parseInt(first[2], 10);
  const items = [];
  for (const line of lines) {
    const m = ITEM.exec(line);
    if (m && m[1].length <= indent) items.push({ text: m[3], rest: [] });
    else items.at(-1).rest.push(line.slice(Math.min(indent + 2, line.search(/\S|$/))));
  }
  for (const item of items) {
    const li = el(doc, 'li', ...inline(item.text, doc));
    while (item.rest.length && BLANK.test(item.rest.at(-1))) item.rest.pop();
    if (item.rest.length) blocks(item.rest, li, doc);
    l.append(li);
  }
  parent.append(l);
}

function codeBlock(code, lang, doc) {
  const wrap = doc.createElement('div');
  wrap.className = 'code-block';
  const head = doc.createElement('div');
  head.className = 'code-head';
  const name = doc.createElement('span');
  name.className = 'lang';
  name.textContent = lang;
  const copy = doc.createElement('button');
  copy.type = 'button';
  copy.className = 'copy';
  // The label is CSS content, so a message's textContent stays the model's text.
  copy.setAttribute('aria-label', 'Copy code');
  copy.addEventListener('click', () => copyText(code, copy));
  head.append(name, copy);
  const c = doc.createElement('code');
  if (lang) c.dataset.lang = lang;
  c.textContent = code;
  wrap.append(head, el(doc, 'pre', c));
  return wrap;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.classList.add('copied');
    button.setAttribute('aria-label', 'Copied');
    setTimeout(() => {
      button.classList.remove('copied');
      button.setAttribute('aria-label', 'Copy code');
    }, 1500);
  } catch {
    button.classList.add('failed');
  }
}

// Inline: code spans, strong, emphasis, strike-through and links; everything else is text.
const INLINE = new RegExp([
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1, 2: code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3: strong
  /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/.source, // 4: strong
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 5: emphasis
  /(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/.source, // 6: emphasis
  /~~(?=\S)([\s\S]*?\S)~~/.source, // 7: strike-through
  /\[([^\]\n]+)\]\(([^)\s]+)\)/.source, // 8, 9: link
].join('|'));

function inline(text, doc) {
  const nodes = [];
  let rest = text;
  for (;;) {
    const m = INLINE.exec(rest);
    if (!m) break;
    if (m.index) nodes.push(doc.createTextNode(rest.slice(0, m.index)));
    if (m[2] !== undefined) {
      // A code span's text is as written, its edge spaces trimmed.
      nodes.push(el(doc, 'code', m[2].replace(/^ (.*) $/s, '$1')));
    } else if (m[3] !== undefined || m[4] !== undefined) {
      nodes.push(el(doc, 'strong', ...inline(m[3] ?? m[4], doc)));
    } else if (m[5] !== undefined || m[6] !== undefined) {
      nodes.push(el(doc, 'em', ...inline(m[5] ?? m[6], doc)));
    } else if (m[7] !== undefined) {
      nodes.push(el(doc, 's', ...inline(m[7], doc)));
    } else {
      nodes.push(link(m[8], m[9], doc));
    }
    rest = rest.slice(m.index + m[0].length);
  }
  if (rest) nodes.push(doc.createTextNode(rest));
  return nodes;
}

// Only web and mail links become links; any other scheme (javascript:, data:) stays text.
function link(label, href, doc) {
  if (!/^(https?:|mailto:)/i.test(href)) return doc.createTextNode(`[${label}](${href})`);
  const a = el(doc, 'a', ...inline(label, doc));
  a.href = href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  return a;
}
