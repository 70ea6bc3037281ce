// The frame codec of the Lifeline browser client: XML escaping, the text of
// server frames, one server frame parsed, and the client frames written. Pure
// functions over strings; the frame protocol is PROTOCOL.md.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
const ENTITIES = { lt: '<', gt: '>', amp: '&', apos: "'", quot: '"' };
/** Characters XML 1.0 cannot carry even escaped; the server closes on them with bad-frame. */
const NOT_XML_CHAR = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/;

/** Escapes text for XML content or a quoted attribute value. */
export function escapeXml(text) {
  let out = '';
  for (const ch of String(text)) out += ESCAPES[ch] ?? ch;
  return out;
}

/** True when XML can carry `text` once escaped: no control character, no lone surrogate. */
export function isXmlText(text) {
  return !NOT_XML_CHAR.test(text) && !(text.isWellFormed && !text.isWellFormed());
}

/**
 * The text of XML content: entity and character references resolved,
 * CDATA kept verbatim, comments and nested tags dropped (like DOM textContent).
 */
export function unescapeXml(raw) {
  let out = '';
  let i = 0;
  while (i < raw.length) {
    const ch = raw[i];
    if (ch === '&') {
      const end = raw.indexOf(';', i);
      const name = end < 0 ? '' : raw.slice(i + 1, end);
      const resolved = resolveEntity(name);
      if (resolved === undefined) {
        out += ch; // not a reference the server would pass: keep it literally
        i += 1;
      } else {
        out += resolved;
        i = end + 1;
      }
    } else if (raw.startsWith('<![CDATA[', i)) {
      const end = raw.indexOf(']]>', i);
      const stop = end < 0 ? raw.length : end;
      out += raw.slice(i + 9, stop);
      i = stop + 3;
    } else if (raw.startsWith('<!--', i)) {
      const end = raw.indexOf('-->', i);
      i = end < 0 ? raw.length : end + 3;
    } else if (ch === '<') {
      const end = raw.indexOf('>', i);
      i = end < 0 ? raw.length : end + 1;
    } else {
      out += ch;
      i += 1;
    }
  }
  return out;
}

function resolveEntity(name) {
  if (name in ENTITIES) return ENTITIES[name];
  if (name.startsWith('#')) {
    const hex = name[1] === 'x';
    const digits = name.slice(hex ? 2 : 1);
    const code = Number.parseInt(digits, hex ? 16 : 10);
    if (digits !== '' && Number.isInteger(code) && code >= 0 && code <= 0x10ffff) {
      return String.fromCodePoint(code);
    }
  }
  return undefined;
}

const isSpace = (ch) => ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r';

/**
 * Parses one server frame (one whole top-level element) into
 * `{ name, attrs, text }`. Throws on text that is not an element; the server
 * only ever sends well-formed frames, so this stays small and regex-free.
 */
export function parseFrame(xml) {
  let i = 0;
  const skipSpace = () => {
    while (i < xml.length && isSpace(xml[i])) i += 1;
  };
  const readUntil = (stop) => {
    const start = i;
    while (i < xml.length && !stop(xml[i])) i += 1;
    return xml.slice(start, i);
  };
  skipSpace();
  if (xml[i] !== '<') throw new Error('frame does not start with <');
  i += 1;
  const name = readUntil((ch) => isSpace(ch) || ch === '/' || ch === '>');
  if (name === '') throw new Error('frame has no element name');
  const attrs = {};
  for (;;) {
    skipSpace();
    if (xml.startsWith('/>', i)) return { name, attrs, text: '' };
    if (xml[i] === '>') break;
    const key = readUntil((ch) => isSpace(ch) || ch === '=' || ch === '>' || ch === '/');
    skipSpace();
    if (key === '' || xml[i] !== '=') throw new Error(`malformed attribute in <${name}>`);
    i += 1;
    skipSpace();
    const quote = xml[i];
    if (quote !== '"' && quote !== "'") throw new Error(`unquoted attribute ${key}`);
    i += 1;
    const value = readUntil((ch) => ch === quote);
    if (i >= xml.length) throw new Error(`unterminated attribute ${key}`);
    i += 1;
    attrs[key] = unescapeXml(value);
  }
  const close = xml.lastIndexOf(`</${name}`);
  if (close < i) throw new Error(`<${name}> is not closed`);
  return { name, attrs, text: unescapeXml(xml.slice(i + 1, close)) };
}

const attr = (name, value) => (value == null ? '' : ` ${name}="${escapeXml(value)}"`);

/** The client frames of the protocol, escaped. */
export const frames = {
  /** `exp` (Unix seconds) and `interval` (ms) are protocol 1.2; each only when given. */
  login: (id, token, exp = null, interval = null) =>
    `<login${attr('id', id)}${attr('token', token || null)}${attr('exp', exp)}${attr('interval', interval)}/>`,
  msg: (to, text, id) => `<msg${attr('to', to)}${attr('id', id)}>${escapeXml(text)}</msg>`,
  ack: (id) => `<ack${attr('id', id)}/>`,
  ping: (seq) => `<heartbeat mode="ping"${attr('seq', seq)}/>`,
  pong: (seq) => `<heartbeat mode="pong"${attr('seq', seq)}/>`,
  bye: () => '<bye/>',
};
