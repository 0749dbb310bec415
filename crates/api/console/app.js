// PulseStream console: no build step, no dependencies. API data is only ever rendered as
// text (text nodes, textContent, plain attributes through h()); nothing here parses HTML.
'use strict';
(() => {

const CRED_KEY = 'pulsestream.credential';
const DEFAULT_ROUTE = { tenant: '/tail', operator: '/tenants' };
const root = document.getElementById('app');

let cred = null;   // the credential in use
let view = null;   // 'tenant' | 'operator'
let S = null;      // the open screen: { ac, timers, cleanups }

// --- DOM

const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected']);

// h('tag', {attr: value, onclick: fn}, ...children): strings become text nodes.
function h(tag, attrs, ...kids) { return build(document.createElement(tag), attrs, kids); }
function svg(tag, attrs, ...kids) { return build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, kids); }

function build(el, attrs, kids) {
  add(el, kids); // children first, so a <select>'s value can be set below
  if (attrs) for (const k of Object.keys(attrs)) {
    const v = attrs[k];
    if (v == null || v === false) continue;
    if (k.startsWith('on')) { if (typeof v === 'function') el.addEventListener(k.slice(2), v); continue; }
    if (k === 'style' || k === 'srcdoc') continue;                 // never
    if (k === 'href' && !String(v).startsWith('#')) continue;      // only in-app links
    if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  return el;
}

function add(el, kids) {
  for (const c of kids) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) add(el, c);
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function set(el, ...kids) { el.replaceChildren(); return add(el, kids); }

const field = (label, control, hint) =>
  h('label', { class: 'field' }, h('span', { class: 'label' }, label), control, hint ? h('small', { class: 'hint' }, hint) : null);
const btn = (id, text, onclick, cls) => h('button', { id, type: 'button', class: cls, onclick }, text);
const table = (id, heads, tbody) => h('div', { class: 'table-wrap' },
  h('table', { id, class: 'data' }, h('thead', null, h('tr', null, heads.map(x => h('th', { scope: 'col' }, x)))), tbody));
const head = (t, ...extra) => { title(t); return h('div', { class: 'screen-head' }, h('h1', null, t), extra); };
const panel = (title, ...kids) => h('section', { class: 'panel' }, title ? h('h2', null, title) : null, kids);
const submitBar = (id, text) => h('div', { class: 'actions' }, h('button', { id, type: 'submit', class: 'primary' }, text));
const mkForm = (id, fn, ...kids) => h('form', { id, class: 'filters', novalidate: true, onsubmit: act(fn) }, kids);
const card = (key, label, value) => h('div', { class: 'card', 'data-stat': key }, h('div', { class: 'card-value' }, value), h('div', { class: 'card-label' }, label));
const select = (id, opts, value) => h('select', { id, value }, opts.map(([v, l]) => h('option', { value: v }, l || v)));
const pairsInput = (id, value) => field('Payload', h('textarea', { id, rows: 1, value, placeholder: 'user.id=42 & plan=pro', spellcheck: 'false' }), 'path=value, separated by & or new lines');
const plural = (n, w) => `${n.toLocaleString()} ${w}${n === 1 ? '' : 's'}`;
const muted = t => h('p', { class: 'muted' }, t);
const td = (v, cls) => h('td', { class: cls }, v);
const labelCells = (tr, heads) => { [...tr.cells].forEach((c, i) => { if (heads[i]) c.dataset.label = heads[i]; }); return tr; };
const emptyRow = (n, msg) => h('tr', { class: 'empty' }, h('td', { colspan: String(n) }, msg));
const to = (kind, id) => `#/${kind}/${enc(str(id))}`;
const dl = (id, pairs) => h('dl', { id, class: 'meta' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));

// "Previous page" / "Next page" over cursor pages. st = { cursor, next, stack } outlives the
// screen; load(cursor) fetches and shows a page and returns its next_cursor (or STALE).
const STALE = Symbol('stale');
function pager(prefix, st, load, after) {
  const prev = btn(prefix + '-prev', 'Previous page', act(() => go(st.stack[st.stack.length - 1] ?? null, () => st.stack.pop())));
  const next = btn(prefix + '-next', 'Next page', act(() => go(st.next, () => st.stack.push(st.cursor))));
  async function go(cursor, commit) {
    const n = await load(cursor);
    if (n === STALE) return; // a newer request took over
    if (commit) commit();
    st.cursor = cursor;
    st.next = typeof n === 'string' && n ? n : null;
    prev.disabled = !st.stack.length;
    next.disabled = !st.next;
    if (after) after();
  }
  prev.disabled = next.disabled = true;
  return [h('div', { class: 'pager' }, prev, next), go];
}

// A table row that opens `href` on click or Enter (clicks on controls inside are left alone).
function linkRow(tr, href) {
  tr.tabIndex = 0;
  tr.classList.add('link');
  tr.addEventListener('click', e => { if (!e.target.closest('a, button, input, select, label')) location.hash = href; });
  tr.addEventListener('keydown', e => { if (e.key === 'Enter' && e.target === tr) location.hash = href; });
  return tr;
}

// --- formatting

const str = v => v == null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
const arr = v => Array.isArray(v) ? v : [];
const obj = v => v && typeof v === 'object' && !Array.isArray(v) ? v : {};
const enc = encodeURIComponent;
const num = v => typeof v === 'number' && isFinite(v) ? v.toLocaleString() : v == null ? '–' : str(v);
const parseJson = t => { try { return JSON.parse(t); } catch { return undefined; } };
const pretty = v => { try { return JSON.stringify(v, null, 2) ?? ''; } catch { return String(v); } };

function toDate(iso) {
  if (typeof iso !== 'string') return null;
  const d = new Date(iso.replace(/(\.\d{3})\d+/, '$1'));
  return isNaN(d) ? null : d;
}
// Local time, with the ISO value in the title.
function time(iso) {
  if (iso == null || iso === '') return '–';
  const d = toDate(iso);
  return h('time', { datetime: str(iso), title: str(iso) }, d ? d.toLocaleString() : str(iso));
}
function bytes(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toLocaleString(undefined, { maximumFractionDigits: i ? 1 : 0 }) + ' ' + u[i];
}
function compact(v) {
  const f = (x, s) => x.toLocaleString(undefined, { maximumFractionDigits: 1 }) + s;
  return v >= 1e6 ? f(v / 1e6, 'M') : v >= 1e4 ? f(v / 1e3, 'k') : v.toLocaleString();
}
function preview(p) {
  let t;
  try { t = JSON.stringify(p) ?? ''; } catch { t = ''; }
  return t.length > 140 ? t.slice(0, 139) + '…' : t;
}
function successRate(d) {
  const ok = +d.delivered || 0, dead = +d.dead_lettered || 0;
  return ok + dead ? (ok / (ok + dead)).toLocaleString(undefined, { style: 'percent', maximumFractionDigits: 1 }) : '–';
}
const KNOWN = new Set(['delivered', 'failed', 'too_large', 'gone', 'active', 'paused', 'disabled',
  'closed', 'open', 'half_open', 'full', 'ingest']);
const badge = v => { const t = str(v) || '–'; return h('span', { class: KNOWN.has(t) ? 'badge b-' + t : 'badge' }, t); };

// "user.id=42 & plan=pro" (or one pair a line) -> [['user.id', '42'], ['plan', 'pro']]
function parsePairs(text) {
  const out = [];
  for (const part of String(text || '').split(/&|\r\n|\r|\n/)) {
    if (!part.trim()) continue;
    const i = part.indexOf('=');
    let path = i < 0 ? '' : part.slice(0, i).trim();
    if (path.startsWith('payload.')) path = path.slice(8);
    if (i < 0 || !path) {
      throw new Problem({ title: 'Invalid payload filter', detail: `“${part.trim()}” is not path=value (for example user.id=42).` });
    }
    out.push([path, part.slice(i + 1).trim()]);
  }
  return out;
}

// A datetime-local value (local time) as RFC 3339 UTC.
function isoOf(local, name) {
  if (!local) return null;
  const d = new Date(local);
  if (isNaN(d)) throw new Problem({ title: 'Invalid date', detail: `${name} is not a valid date and time.` });
  return d.toISOString().replace('.000Z', 'Z');
}

// An integer typed in a form, else the text (the server says what is wrong).
const intOr = t => /^\s*-?\d+\s*$/.test(t) ? parseInt(t, 10) : t.trim();

// --- API

// An RFC 9457 problem (or a network or input error shaped like one: status 0).
class Problem extends Error {
  constructor(p) {
    super(p.detail || p.title);
    Object.assign(this, { name: 'Problem', status: p.status || 0, title: p.title || 'Error', detail: p.detail || '', errors: p.errors || [] });
  }
}

function netError(e) {
  if (e && e.name === 'AbortError') return e;
  return new Problem({ title: 'Network error', detail: 'Could not reach the server' + (e && e.message ? ` (${e.message})` : '') + '.' });
}

function toProblem(res, data, text) {
  const p = obj(data);
  return new Problem({
    status: res.status,
    title: str(p.title) || res.statusText || 'Request failed',
    detail: str(p.detail) || (p.title ? '' : String(text || '').slice(0, 300)),
    errors: arr(p.errors),
  });
}

const authHeaders = extra => Object.assign({ Authorization: 'Bearer ' + cred }, extra);

// JSON in and out; throws a Problem for any non-2xx answer or network failure.
async function api(method, path, body, signal) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method, headers, credentials: 'omit', cache: 'no-store', signal: signal === undefined ? S && S.ac.signal : signal };
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
  let res, text;
  try { res = await fetch(path, init); text = await res.text(); } catch (e) { throw netError(e); }
  const data = text ? parseJson(text) : null;
  if (!res.ok) throw toProblem(res, data, text);
  return data;
}

// --- banner

let bannerSource = null;

function problemNodes(e) {
  if (!(e instanceof Problem)) return [h('strong', null, 'Error'), ' ', String(e && e.message || e)];
  return [
    h('strong', null, e.status ? `${e.title} (${e.status})` : e.title),
    e.detail ? h('span', null, ' — ', e.detail) : null,
    e.errors.length ? h('ul', null, e.errors.map(x => {
      const o = obj(x);
      const loc = Array.isArray(o.loc) ? o.loc.map(str).join('.') : str(o.loc);
      return h('li', null, h('code', null, loc || '?'), ': ', str(o.msg) || str(o.type));
    })) : null,
  ];
}

// source: 'action' (user did something), 'refresh' (a timer), 'tail' (the stream)
function showError(e, source) {
  if (!e || e.name === 'AbortError') return;
  const el = document.getElementById('error');
  if (!el) return;
  bannerSource = source || 'action';
  set(el, problemNodes(e));
  el.hidden = false;
}

function clearError(source) {
  const el = document.getElementById('error');
  if (!el || (source && bannerSource !== source)) return;
  el.hidden = true;
  el.replaceChildren();
  bannerSource = null;
}

// Wraps a user action: prevents form submission, ignores a second click while the first
// runs, clears the banner, shows failures in it.
const busy = new WeakSet();
function act(fn) {
  return async ev => {
    if (ev && ev.type === 'submit') ev.preventDefault();
    const b = (ev && (ev.submitter || (ev.currentTarget instanceof HTMLButtonElement ? ev.currentTarget : null))) || null;
    if (b) { if (busy.has(b)) return; busy.add(b); b.setAttribute('aria-busy', 'true'); }
    clearError();
    try { await fn(ev); } catch (e) { showError(e); } finally { if (b) { busy.delete(b); b.removeAttribute('aria-busy'); } }
  };
}

async function copyText(text) {
  try { await navigator.clipboard.writeText(text); return true; } catch { /* fall back */ }
  const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
  ta.value = text;
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { /* nothing */ }
  ta.remove();
  return ok;
}

function copyButton(get, id, label = 'Copy') {
  const b = h('button', { type: 'button', id, class: 'copy' }, label);
  b.addEventListener('click', async () => {
    b.textContent = (await copyText(get())) ? 'Copied' : 'Copy failed';
    setTimeout(() => { b.textContent = label; }, 1500);
  });
  return b;
}

// A secret shown once: <code id=...> holds exactly the secret.
function onceBox(id, what, secret) {
  return h('div', { class: 'once', role: 'status' },
    h('p', { class: 'warn' }, `${what} is shown only once: copy it now, it cannot be retrieved later.`),
    h('div', { class: 'copyline' }, h('code', { id, class: 'secret' }, str(secret)), copyButton(() => str(secret), id + '-copy')));
}

// --- sign in

const stored = () => { try { return sessionStorage.getItem(CRED_KEY); } catch { return null; } };
function store(c) {
  try { if (c) sessionStorage.setItem(CRED_KEY, c); else sessionStorage.removeItem(CRED_KEY); } catch { /* private mode */ }
}

function renderSignIn() {
  leave();
  view = null;
  const input = h('input', { id: 'signin-credential', type: 'password', autocomplete: 'off', placeholder: 'ps_… or the admin token' });
  const err = h('div', { id: 'signin-error', class: 'error', role: 'alert', hidden: true });
  const note = h('p', { class: 'muted', role: 'status' });
  const submit = h('button', { id: 'signin-submit', type: 'submit', class: 'primary' }, 'Sign in');
  const ui = {
    error(msg) { set(err, msg); err.hidden = !msg; },
    busy(msg) { submit.disabled = input.disabled = !!msg; note.textContent = msg || ''; if (!msg) input.focus(); },
  };
  const form = h('form', {
    id: 'signin-form', class: 'signin', novalidate: true,
    onsubmit: e => {
      e.preventDefault();
      const c = input.value.trim();
      if (!c) return ui.error('Enter an API key or the admin token.');
      if (/[^\x21-\x7e]/.test(c)) return ui.error('The credential contains characters that cannot be sent in a header.');
      signIn(c, ui);
    },
  },
  h('h1', null, 'PulseStream'),
  muted('Sign in with a tenant API key (ps_…) or with the admin token.'),
  field('API key or admin token', input), err, note,
  h('div', { class: 'actions' }, submit),
  h('p', { class: 'muted small' }, 'It is kept in this tab only (sessionStorage).'));
  set(root, h('main', { class: 'signin-wrap' }, form));
  input.focus();
  return ui;
}

function signInMessage(e) {
  if (!(e instanceof Problem)) return String(e && e.message || e);
  const d = e.detail || e.title;
  if (e.status === 401) return `This key or token was not accepted (401): ${d}`;
  if (e.status === 403) return `This key may not open the console (403): ${d} — sign in with a full key or the admin token.`;
  if (!e.status) return `${e.title}: ${d}`;
  return `${e.title} (${e.status}): ${e.detail}`;
}

// Which view does this credential open? The admin API first, then the tenant API.
async function probe(c) {
  cred = c;
  let adminErr;
  try { await api('GET', '/admin/tenants?limit=1', undefined, null); return 'operator'; } catch (e) {
    if (!e.status) throw e;
    adminErr = e;
  }
  try { await api('GET', '/v1/destinations', undefined, null); return 'tenant'; } catch (e) {
    if (e.status === 401 && adminErr.status !== 401 && adminErr.status !== 403) throw adminErr;
    throw e;
  }
}

async function signIn(c, ui) {
  ui.error('');
  ui.busy('Checking…');
  let v;
  try { v = await probe(c); } catch (e) {
    cred = null;
    if (e.status) store(null); // a network failure keeps a saved credential for a reload
    ui.busy('');
    ui.error(signInMessage(e));
    return;
  }
  store(c);
  view = v;
  renderShell();
  route();
}

function signOut() {
  leave();
  store(null);
  cred = null;
  view = null;
  history.replaceState(null, '', location.pathname + location.search);
  renderSignIn();
}

// --- shell and routing

const NAV = {
  tenant: [['/overview', 'Overview'], ['/tail', 'Live tail'], ['/search', 'Search'], ['/destinations', 'Destinations']],
  operator: [['/tenants', 'Tenants']],
};

function renderShell() {
  set(root,
    h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: '#' + DEFAULT_ROUTE[view] }, 'PulseStream'),
      h('nav', { class: 'nav', 'aria-label': 'Main' },
        NAV[view].map(([path, label]) => h('a', { href: '#' + path, 'data-route': path }, label))),
      h('span', { class: 'who' },
        h('span', { id: 'view-kind', class: 'view-kind' }, view),
        h('button', { id: 'sign-out', type: 'button', onclick: signOut }, 'Sign out'))),
    h('div', { id: 'error', class: 'error', role: 'alert', hidden: true }),
    h('main', { id: 'view', class: 'view' }));
}

const ROUTES = {
  tenant: [
    [/^\/overview$/, overviewScreen], [/^\/tail$/, tailScreen], [/^\/search$/, searchScreen],
    [/^\/events\/([^/]+)$/, eventScreen], [/^\/destinations$/, destinationsScreen],
    [/^\/destinations\/([^/]+)$/, destinationScreen],
  ],
  operator: [[/^\/tenants$/, tenantsScreen], [/^\/tenants\/([^/]+)$/, tenantScreen]],
};

const decode = s => { try { return decodeURIComponent(s); } catch { return s; } };

function route() {
  if (!view) return;
  const path = location.hash.replace(/^#/, '');
  for (const [re, screen] of ROUTES[view]) {
    const m = re.exec(path);
    if (!m) continue;
    leave();
    S = { ac: new AbortController(), timers: [], cleanups: [] };
    clearError();
    for (const a of root.querySelectorAll('.nav a')) {
      const r = a.dataset.route;
      if (path === r || path.startsWith(r + '/') || (r === '/search' && path.startsWith('/events/'))) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const main = document.getElementById('view');
    main.replaceChildren();
    const p = screen(main, ...m.slice(1).map(decode));
    if (p && p.catch) p.catch(e => showError(e));
    return;
  }
  location.replace('#' + DEFAULT_ROUTE[view]);
}

function leave() {
  if (!S) return;
  S.ac.abort();
  S.timers.forEach(clearInterval);
  for (const f of S.cleanups) { try { f(); } catch { /* keep going */ } }
  S = null;
}

// Runs fn every ms while the screen is open; failures go to the banner.
function every(ms, fn) {
  let busy = false;
  S.timers.push(setInterval(async () => {
    if (busy) return;
    busy = true;
    try { await fn(); clearError('refresh'); } catch (e) { showError(e, 'refresh'); } finally { busy = false; }
  }, ms));
}

const title = t => { document.title = `${t} · PulseStream console`; };

// --- SSE parser

// Feeds text chunks; calls onMessage({event, data, id}) for each dispatched event.
function sseParser(onMessage) {
  let rest = [], cr = false, data = [], event = '', lastId = '', first = true;
  const eol = /\r\n|\r|\n/g;
  function line(l) {
    if (l === '') {
      if (data.length) onMessage({ event: event || 'message', data: data.join('\n'), id: lastId });
      data = []; event = '';
      return;
    }
    if (l[0] === ':') return;
    const c = l.indexOf(':');
    const name = c < 0 ? l : l.slice(0, c);
    let value = c < 0 ? '' : l.slice(c + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (name === 'data') data.push(value);
    else if (name === 'event') event = value;
    else if (name === 'id' && !value.includes('\0')) lastId = value;
  }
  return {
    push(chunk) {
      if (!chunk) return;
      if (first) { if (chunk[0] === '\uFEFF') chunk = chunk.slice(1); first = false; }
      let start = 0, m;
      if (cr) { cr = false; if (chunk[0] === '\n') start = 1; } // the "\n" of a "\r\n" cut in two
      eol.lastIndex = start;
      while ((m = eol.exec(chunk))) {
        const piece = chunk.slice(start, m.index);
        line(rest.length ? rest.join('') + piece : piece);
        rest = [];
        start = eol.lastIndex;
        if (m[0] === '\r' && start === chunk.length) cr = true;
      }
      if (start < chunk.length) rest.push(chunk.slice(start)); // an unfinished line
    },
  };
}

// --- live tail

const tailFilters = { event_type: '', source: '', q: '', payload: '' };
const MAX_ROWS = 500, MAX_WAITING = 1000;

function tailScreen(main) {
  const f = tailFilters;
  const inType = h('input', { id: 'tail-event-type', value: f.event_type, placeholder: 'order.created' });
  const inSource = h('input', { id: 'tail-source', value: f.source, placeholder: 'checkout' });
  const inQ = h('input', { id: 'tail-q', value: f.q, placeholder: 'words in the payload' });
  const payloadField = pairsInput('tail-payload', f.payload), inPayload = payloadField.querySelector('textarea');
  const status = h('span', { id: 'tail-status', class: 'status', role: 'status' }, 'connecting…');
  const waiting = h('span', { id: 'tail-waiting', class: 'waiting', hidden: true });
  const count = h('span', { id: 'tail-count', class: 'muted' }, 'No events yet');
  const note = h('p', { id: 'tail-note', class: 'note', hidden: true });
  const list = h('ul', { id: 'tail-list', class: 'tail-list' });
  const pauseBtn = btn('tail-pause', 'Pause', togglePause);
  pauseBtn.setAttribute('aria-pressed', 'false');
  const evOf = new WeakMap();

  let params = new URLSearchParams(), ac = null, lastId = null, conn = '', connKind = '', paused = false;
  let buffer = [], pending = [], flushT = 0, retryT = 0, lastSeen = Date.now(), seen = new Set();
  const retries = new WeakSet(); // events that came as `event: duplicate`

  main.append(
    head('Live tail', status),
    panel(null,
      mkForm('tail-form', apply,
        field('Event type', inType), field('Source', inSource), field('Text', inQ),
        payloadField,
        submitBar('tail-apply', 'Apply'))),
    h('div', { class: 'toolbar' }, pauseBtn, btn('tail-clear', 'Clear', clearRows), waiting, count),
    note, list);

  function setConn(kind, text) { conn = text || (/connecting$/.test(kind) ? kind + '…' : kind); connKind = kind; showStatus(); }
  function showStatus() {
    const p = paused && connKind === 'live';
    status.textContent = p ? 'paused' : conn;
    status.className = 'status st-' + (p ? 'paused' : connKind);
  }
  function showWaiting() {
    waiting.hidden = !paused && !buffer.length;
    waiting.textContent = `${buffer.length.toLocaleString()} waiting`;
  }
  function showCount() {
    const n = list.childElementCount;
    count.textContent = n ? plural(n, 'event') + (n >= MAX_ROWS ? ` (newest ${MAX_ROWS})` : '') : 'No events yet';
  }

  function apply() {
    const pairs = parsePairs(inPayload.value);
    const p = new URLSearchParams();
    const put = (k, v) => { v = v.trim(); if (v) p.append(k, v); };
    put('event_type', inType.value); put('source', inSource.value); put('q', inQ.value);
    for (const [k, v] of pairs) p.append('payload.' + k, v);
    Object.assign(f, { event_type: inType.value, source: inSource.value, q: inQ.value, payload: inPayload.value });
    params = p;
    lastId = null;
    seen = new Set();
    clearRows();
    note.hidden = true;
    connect(false);
  }

  function connect(again) {
    clearTimeout(retryT);
    if (ac) ac.abort();
    const mine = ac = new AbortController();
    lastSeen = Date.now();
    setConn(again ? 'reconnecting' : 'connecting');
    run(mine).then(r => {
      if (!r || mine.signal.aborted || r.final) return;
      if (!r.cut) setConn('reconnecting');
      retryT = setTimeout(() => connect(true), r.delay || 1000);
    });
  }

  async function run(mine) {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (lastId) headers['Last-Event-ID'] = lastId;
    const qs = params.toString();
    let res;
    try {
      res = await fetch('/v1/events/stream' + (qs ? '?' + qs : ''), { headers, signal: mine.signal, credentials: 'omit', cache: 'no-store' });
    } catch { return mine.signal.aborted ? null : {}; }
    if (!res.ok) {
      const text = await res.text().catch(() => ''), p = toProblem(res, parseJson(text), text);
      if (mine.signal.aborted) return null;
      showError(p, 'tail');
      if (res.status === 408 || res.status === 429 || res.status >= 500) {
        return { delay: Math.max(1, +res.headers.get('Retry-After') || 1) * 1000 };
      }
      setConn('stopped');
      return { final: true };
    }
    clearError('tail');
    let cut = null;
    const parser = sseParser(m => {
      if (m.id) lastId = m.id;
      if (m.event === 'ready') {
        const d = obj(parseJson(m.data));
        if (!lastId && typeof d.last_event_id === 'string' && d.last_event_id) lastId = d.last_event_id;
        setConn('live');
      } else if (m.event === 'event' || m.event === 'duplicate') {
        const ev = parseJson(m.data);
        if (!ev || typeof ev !== 'object') return;
        if (connKind !== 'live') setConn('live');
        if (m.event === 'duplicate') retries.add(ev); // a client's retry of a stored event
        incoming(ev, m.id);
      } else if (m.event === 'cut') {
        cut = obj(parseJson(m.data));
        if (!lastId && typeof cut.last_event_id === 'string' && cut.last_event_id) lastId = cut.last_event_id;
        const reason = str(cut.reason) || 'cut';
        setConn('cut', reason);
        set(note, `The server cut the stream at ${new Date().toLocaleTimeString()}: ${reason}`,
          cut.detail ? ` (${str(cut.detail)})` : '', '. Reconnecting from the last event received.');
        note.hidden = false;
      }
    });
    const reader = res.body.getReader(), dec = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastSeen = Date.now();
        parser.push(dec.decode(value, { stream: true }));
      }
    } catch { /* a network error: reconnect below */ }
    if (mine.signal.aborted) return null;
    return { cut: !!cut };
  }

  function incoming(ev, position) {
    const id = position ? str(position) : str(ev.id);
    if (id) {
      if (seen.has(id)) return;
      seen.add(id);
      if (seen.size > 5000) seen = new Set([...seen].slice(-2500));
    }
    if (paused) {
      buffer.push(ev);
      if (buffer.length > MAX_WAITING) buffer.splice(0, buffer.length - MAX_WAITING);
      showWaiting();
      return;
    }
    pending.push(ev);
    if (pending.length > MAX_ROWS * 2) pending.splice(0, pending.length - MAX_ROWS);
    if (!flushT) flushT = setTimeout(flush, 40);
  }

  function flush() {
    clearTimeout(flushT);
    flushT = 0;
    const items = pending.length > MAX_ROWS ? pending.slice(-MAX_ROWS) : pending;
    pending = [];
    const frag = document.createDocumentFragment();
    for (let i = items.length - 1; i >= 0; i--) frag.appendChild(row(items[i])); // newest first
    list.insertBefore(frag, list.firstChild);
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
    showCount();
  }

  function row(ev) {
    const id = str(ev.id);
    const retry = retries.has(ev);
    const li = h('li', { class: retry ? 'tail-row duplicate' : 'tail-row', 'data-id': id },
      h('div', { class: 'tail-sum', role: 'button', tabindex: '0', 'aria-expanded': 'false' },
        h('span', { class: 'c-time' }, time(ev.timestamp)),
        h('span', { class: 'c-type' }, h('span', { class: 'name' }, str(ev.event_type)),
          retry ? h('span', { class: 'tag dup', title: 'A retry of this stored event: answered duplicate, not stored again' }, 'duplicate') : null),
        h('span', { class: 'c-source' }, ev.source == null ? '—' : str(ev.source)),
        h('span', { class: 'c-eid mono' }, str(ev.event_id)),
        h('span', { class: 'c-preview mono' }, preview(ev.payload))),
      h('a', { class: 'open', href: to('events', id) }, 'open'));
    evOf.set(li, ev);
    return li;
  }

  function toggleRaw(li) {
    const sum = li.querySelector('.tail-sum');
    const pre = li.querySelector('pre.raw');
    if (pre) { pre.remove(); sum.setAttribute('aria-expanded', 'false'); return; }
    li.appendChild(h('pre', { class: 'raw' }, pretty(evOf.get(li))));
    sum.setAttribute('aria-expanded', 'true');
  }
  list.addEventListener('click', e => {
    if (e.target.closest('a, pre')) return;
    const li = e.target.closest('li.tail-row');
    if (li) toggleRaw(li);
  });
  list.addEventListener('keydown', e => {
    if ((e.key === 'Enter' || e.key === ' ') && e.target.classList.contains('tail-sum')) {
      e.preventDefault();
      toggleRaw(e.target.parentNode);
    }
  });

  function togglePause() {
    paused = !paused;
    pauseBtn.textContent = paused ? 'Resume' : 'Pause';
    pauseBtn.setAttribute('aria-pressed', String(paused));
    if (!paused && buffer.length) { pending.push(...buffer); buffer = []; flush(); }
    showWaiting();
    showStatus();
  }

  function clearRows() {
    list.replaceChildren();
    pending = [];
    buffer = [];
    showWaiting();
    showCount();
  }

  // A stream that says nothing for 45 s (heartbeats come every 15 s) is dead: reconnect.
  S.timers.push(setInterval(() => {
    if (ac && connKind !== 'stopped' && connKind !== 'cut' && Date.now() - lastSeen > 45000) connect(true);
  }, 5000));
  S.cleanups.push(() => { clearTimeout(retryT); clearTimeout(flushT); if (ac) ac.abort(); ac = null; });

  try { apply(); } catch (e) { showError(e); connect(false); }
}

// --- search

const searchState = {
  form: { event_type: '', source: '', event_id: '', q: '', payload: '', since: '', until: '', order: 'desc', limit: '50' },
  params: null, cursor: null, next: null, stack: [],
};

function searchScreen(main) {
  const st = searchState, v = st.form, el = {};
  const inp = (key, id, label, attrs, hint) => field(label, el[key] = h('input', Object.assign({ id, value: v[key] }, attrs)), hint);
  const payloadField = pairsInput('search-payload', v.payload);
  el.payload = payloadField.querySelector('textarea');
  el.order = select('search-order', [['desc', 'Newest first'], ['asc', 'Oldest first']], v.order);
  const summary = h('p', { id: 'search-summary', class: 'muted', role: 'status' });
  const tbody = h('tbody');
  let shown = 0, seq = 0, inflight = null;
  const [pagerEl, run] = pager('search', st, page, () => {
    summary.textContent = `Page ${st.stack.length + 1} · ${plural(shown, 'event')}${st.next ? ', more on the next page' : ''}`;
  });

  main.append(
    head('Search'),
    panel(null, mkForm('search-form', submit,
      inp('event_type', 'search-event-type', 'Event type', { placeholder: 'order.created' }),
      inp('source', 'search-source', 'Source'),
      inp('event_id', 'search-event-id', 'Event ID'),
      inp('q', 'search-q', 'Text', { placeholder: 'words in the payload' }),
      payloadField,
      inp('since', 'search-since', 'Since (local time)', { type: 'datetime-local', step: '1' }),
      inp('until', 'search-until', 'Until (local time)', { type: 'datetime-local', step: '1' }),
      field('Order', el.order),
      inp('limit', 'search-limit', 'Limit', { type: 'number' }),
      submitBar('search-submit', 'Search'))),
    summary,
    table('search-results', ['Timestamp', 'Event type', 'Source', 'Event ID'], tbody),
    pagerEl);

  async function submit() {
    for (const k of Object.keys(v)) v[k] = el[k].value;
    const p = new URLSearchParams();
    const put = (k, x) => { if (x != null && String(x).trim()) p.append(k, String(x).trim()); };
    put('event_type', v.event_type); put('source', v.source); put('event_id', v.event_id); put('q', v.q);
    for (const [k, x] of parsePairs(v.payload)) p.append('payload.' + k, x);
    put('since', isoOf(v.since, 'Since'));
    put('until', isoOf(v.until, 'Until'));
    put('order', v.order);
    put('limit', v.limit);
    st.params = p;
    await run(null, () => { st.stack = []; });
  }

  async function page(cursor) {
    const p = new URLSearchParams(st.params);
    if (cursor) p.set('cursor', cursor);
    summary.textContent = 'Searching…';
    // Only the newest request may show its answer: an older one is aborted, and one that
    // answers anyway (or fails) is dropped.
    const mine = ++seq;
    if (inflight) inflight.abort();
    const ac = inflight = new AbortController();
    let data;
    try { data = obj(await api('GET', '/v1/events?' + p, undefined, AbortSignal.any([S.ac.signal, ac.signal]))); } catch (e) {
      if (mine !== seq) return STALE;
      summary.textContent = '';
      throw e;
    }
    if (mine !== seq) return STALE;
    const events = arr(data.events);
    set(tbody, events.length ? events.map(ev => linkRow(h('tr', { class: 'event-row', 'data-id': str(ev.id) },
      td(time(ev.timestamp)),
      td(str(ev.event_type)),
      td(ev.source == null ? '—' : str(ev.source)),
      td(str(ev.event_id), 'mono')), to('events', ev.id)))
      : emptyRow(4, 'No events match.'));
    shown = events.length;
    return data.next_cursor;
  }

  if (st.params) return run(st.cursor);
  return submit();
}

// --- event detail

function targetText(d) {
  switch (d.kind) {
    case 'nats': return str(d.subject);
    case 'mqtt': return str(d.topic);
    case 'postgres': return str(d.table);
    default: return str(d.url);
  }
}
function targetCell(d) {
  const extra = d.kind === 'amqp' ? `exchange “${str(d.exchange)}”, routing key ${str(d.routing_key)}`
    : d.kind === 'mqtt' || d.kind === 'postgres' ? str(d.url) : '';
  return [h('span', { class: 'mono' }, targetText(d) || '–'), extra ? h('div', { class: 'sub' }, extra) : null];
}
const typesOf = d => arr(d.event_types).length ? arr(d.event_types).map(str).join(', ') : 'all';
const DEST_FIELDS = { id: 'ID', url: 'URL', subject: 'Subject', exchange: 'Exchange', routing_key: 'Routing key', topic: 'Topic',
  table: 'Table', columns: 'Columns', create_table: 'Create table', filter: 'Filter', ordering: 'Ordering' };
const destStatus = d => d.disabled ? 'disabled' : d.paused ? 'paused' : 'active';

const ATTEMPT_HEADS = ['Time', 'Outcome', 'Status', 'Events', 'Latency', 'Error', 'Next retry', 'Dead-lettered'];
function attemptRow(a) {
  a = obj(a);
  return h('tr', { class: 'attempt-row', 'data-id': str(a.id) },
    td(time(a.at)),
    td([badge(a.outcome), a.test ? h('span', { class: 'tag' }, 'test') : null]),
    td(a.status == null ? '–' : str(a.status), 'num'),
    td(!a.test && Array.isArray(a.events) ? num(a.events.length) : '–', 'num'),
    td(a.latency_ms == null ? '–' : num(a.latency_ms) + ' ms', 'num'),
    td(a.error ? str(a.error) : '–', 'err'),
    td(a.next_retry_at ? time(a.next_retry_at) : '–'),
    td(num(a.dead_lettered ?? 0), 'num'));
}

async function eventScreen(main, id) {
  main.append(head('Event', h('a', { href: '#/search', class: 'back' }, '← Search')));
  const ev = obj(await api('GET', '/v1/events/' + enc(id)));
  main.append(
    panel(null,
      dl('event-meta', [
        ['ID', h('code', null, str(ev.id))], ['Event ID', h('code', null, str(ev.event_id))],
        ['Event type', str(ev.event_type)], ['Source', ev.source == null ? '—' : str(ev.source)],
        ['Timestamp', time(ev.timestamp)], ['Received at', time(ev.received_at)]]),
      h('div', { class: 'subhead' }, h('h2', null, 'Payload'), copyButton(() => pretty(ev), 'event-copy', 'Copy JSON')),
      h('pre', { id: 'event-payload', class: 'code' }, pretty(ev.payload))));
  const [att, dests] = await Promise.all([
    api('GET', '/v1/events/' + enc(id) + '/attempts'),
    api('GET', '/v1/destinations').catch(e => { if (e.name === 'AbortError') throw e; return null; }),
  ]);
  const names = new Map(arr(obj(dests).destinations).map(d => [str(d.id), d]));
  const groups = new Map();
  for (const a of arr(obj(att).attempts)) {
    const k = str(obj(a).destination_id);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(a);
  }
  const bodies = [...groups].map(([did, list]) => {
    const d = names.get(did);
    list.sort((x, y) => String(x.at).localeCompare(String(y.at)));
    return h('tbody', { class: 'attempt-group', 'data-destination-id': did },
      h('tr', { class: 'group-head' }, h('th', { colspan: String(ATTEMPT_HEADS.length), scope: 'rowgroup' },
        h('a', { href: to('destinations', did) }, d ? `${str(d.kind)} · ${targetText(d)}` : `Destination ${did}`),
        ' — ' + plural(list.length, 'attempt'))),
      list.map(attemptRow));
  });
  const t = table('event-attempts', ATTEMPT_HEADS, null);
  add(t.firstChild, bodies);
  t.hidden = !bodies.length;
  main.append(panel('Delivery attempts', bodies.length ? null : muted('No delivery attempts for this event.'), t));
}

// --- destinations

const DEST_HEADS = ['Kind', 'Target', 'Event types', 'Status', 'Circuit', 'Pending', 'Delivered', 'Dead-lettered', 'Success rate'];
const KINDS = [['webhook', 'Webhook'], ['nats', 'NATS'], ['amqp', 'RabbitMQ'], ['mqtt', 'MQTT'], ['postgres', 'PostgreSQL']];

async function destinationsScreen(main) {
  const tbody = h('tbody');
  const slot = h('div', { class: 'once-slot' });
  const el = {};
  const kindField = (kinds, label, node, hint) => { const w = field(label, node, hint); w.dataset.kinds = kinds; return w; };
  el.kind = select('destination-kind', KINDS);
  const input = (key, id, ph) => el[key] = h('input', { id, placeholder: ph });
  el.createTable = h('input', { id: 'destination-create-table', type: 'checkbox' });
  const wrapped = [
    kindField('webhook amqp mqtt postgres', 'URL', input('url', 'destination-url', 'https://example.com/hooks/pulsestream')),
    kindField('nats', 'Subject', input('subject', 'destination-subject', 'events.orders')),
    kindField('amqp', 'Exchange', input('exchange', 'destination-exchange', '(default exchange)')),
    kindField('amqp', 'Routing key', input('routingKey', 'destination-routing-key', '{event_type}')),
    kindField('mqtt', 'Topic', input('topic', 'destination-topic', 'events/{event_type}')),
    kindField('postgres', 'Table', input('table', 'destination-table', 'raw.events')),
  ];
  const ct = h('label', { class: 'field check' }, el.createTable, h('span', null, 'Create the table if missing'));
  ct.dataset.kinds = 'postgres';
  wrapped.push(ct);
  const sync = () => { for (const w of wrapped) w.hidden = !w.dataset.kinds.split(' ').includes(el.kind.value); };
  el.kind.addEventListener('change', sync);
  sync();
  const form = mkForm('destination-form', create,
    field('Kind', el.kind), wrapped,
    field('Event types', input('types', 'destination-event-types', 'order.*, user.signup'), 'comma-separated patterns; empty = every event'),
    field('Max attempts', el.max = h('input', { id: 'destination-max-attempts', type: 'number', placeholder: '10' })),
    submitBar('destination-create', 'Create destination'));

  main.append(
    head('Destinations', btn('destinations-refresh', 'Refresh', act(load))),
    h('div', { class: 'stack' }, table('destinations-table', DEST_HEADS, tbody)),
    panel('New destination', slot, form));

  async function create() {
    const k = el.kind.value, body = { kind: k };
    const val = x => x.value.trim();
    const put = (name, x) => { if (val(x)) body[name] = val(x); };
    if (k !== 'nats') put('url', el.url);
    if (k === 'nats') put('subject', el.subject);
    if (k === 'amqp') { put('exchange', el.exchange); put('routing_key', el.routingKey); }
    if (k === 'mqtt') put('topic', el.topic);
    if (k === 'postgres') { put('table', el.table); if (el.createTable.checked) body.create_table = true; }
    const types = el.types.value.split(',').map(s => s.trim()).filter(Boolean);
    if (types.length) body.event_types = types;
    if (val(el.max)) body.max_attempts = intOr(el.max.value);
    const d = obj(await api('POST', '/v1/destinations', body));
    set(slot, d.secret ? onceBox('destination-secret', `The signing secret of ${str(d.kind)} destination ${targetText(d)}`, d.secret)
      : h('p', { class: 'ok', role: 'status' }, 'Destination created.'));
    form.reset();
    sync();
    await load();
  }

  async function load() {
    const list = arr(obj(await api('GET', '/v1/destinations')).destinations);
    const full = await Promise.all(list.map(d => api('GET', '/v1/destinations/' + enc(str(d.id)))
      .then(x => Object.assign({}, d, obj(x)))
      .catch(e => { if (e.name === 'AbortError') throw e; return d; })));
    set(tbody, full.length ? full.map(d => linkRow(labelCells(h('tr', { class: 'destination-row', 'data-id': str(d.id) },
      td(str(d.kind)),
      td(h('a', { href: to('destinations', d.id) }, targetCell(d))),
      td(typesOf(d)),
      td(badge(destStatus(d))),
      td(d.circuit == null ? '–' : badge(d.circuit)),
      td(num(d.pending), 'num'),
      td(num(d.delivered), 'num'),
      td(num(d.dead_lettered), 'num'),
      td(successRate(d), 'num')), DEST_HEADS), to('destinations', d.id)))
      : emptyRow(9, 'No destinations yet.'));
  }

  await load();
}

async function destinationScreen(main, id) {
  const base = '/v1/destinations/' + enc(id);
  const meta = h('div');
  const cards = h('div', { id: 'destination-counters', class: 'cards' });
  const lastError = h('p', { id: 'destination-last-error', class: 'last-error', hidden: true });
  const testResult = h('div', { id: 'destination-test-result', class: 'test-result', role: 'status' });
  const pauseB = btn('destination-pause', 'Pause', act(() => setPaused('pause')));
  const resumeB = btn('destination-resume', 'Resume', act(() => setPaused('resume')));
  const attBody = h('tbody');
  const attWrap = table('destination-attempts', ATTEMPT_HEADS, attBody);
  const attEmpty = muted('No delivery attempts yet.');
  const more = btn('attempts-more', 'More', act(loadMore));
  const dlBody = h('tbody');
  const dlWrap = table('dead-letters-table', ['', 'Event', 'Attempts', 'Last error', 'Failed at', ''], dlBody);
  const dlEmpty = muted('No dead letters.');
  const dlMsg = h('p', { id: 'dead-letters-message', class: 'msg', role: 'status' });
  let d = null, attCursor = null, attIds = new Set(), dlKey = null, metaKey = null;

  main.append(
    head('Destination', h('a', { href: '#/destinations', class: 'back' }, '← Destinations')),
    panel(null, cards, lastError,
      h('div', { class: 'toolbar' }, pauseB, resumeB,
        btn('destination-test', 'Send test event', act(sendTest)),
        btn('destination-refresh', 'Refresh', act(refresh)),
        btn('destination-delete', 'Delete destination', act(remove), 'danger end')),
      testResult, meta),
    panel('Delivery attempts', attWrap, attEmpty, h('div', { class: 'pager' }, more)),
    h('section', { id: 'dead-letters', class: 'panel' }, h('h2', null, 'Dead letters'),
      h('div', { class: 'toolbar' },
        btn('dead-letters-replay-selected', 'Replay selected', act(() => {
          const ids = [...dlBody.querySelectorAll('input.dead-letter-select:checked')].map(i => i.value);
          if (!ids.length) { dlMsg.textContent = 'Select dead letters first.'; return; }
          return replay(ids);
        })),
        btn('dead-letters-replay-all', 'Replay all', act(() => replay(null))),
        btn('dead-letters-purge', 'Purge all', act(purge), 'danger end')),
      dlMsg,
      dlWrap, dlEmpty));
  more.hidden = attWrap.hidden = dlWrap.hidden = true;

  async function loadDest() {
    d = obj(await api('GET', base));
    const status = destStatus(d);
    set(cards,
      card('status', 'Status', badge(status)), card('circuit', 'Circuit', d.circuit == null ? '–' : badge(d.circuit)),
      card('pending', 'Pending', num(d.pending)), card('delivered', 'Delivered', num(d.delivered)),
      card('dead_lettered', 'Dead-lettered', num(d.dead_lettered)), card('success', 'Success rate', successRate(d)));
    lastError.hidden = !d.last_error;
    set(lastError, h('strong', null, 'Last error: '), str(d.last_error));
    pauseB.hidden = !!d.paused || !!d.disabled;
    resumeB.hidden = !d.paused || !!d.disabled;
    const { pending, delivered, dead_lettered, circuit, last_error, paused, ...rest } = d;
    const key = JSON.stringify(rest);
    if (key === metaKey) return; // the settings did not change: leave them alone
    metaKey = key;
    const mono = k => d[k] != null && [DEST_FIELDS[k], h('code', null, str(d[k]))];
    set(meta, dl('destination-meta', [
      mono('id'), ['Kind', str(d.kind)], ...['url', 'subject', 'exchange', 'routing_key', 'topic', 'table', 'columns', 'create_table'].map(mono),
      ['Event types', typesOf(d)], mono('filter'), mono('ordering'), ['Max attempts', num(d.max_attempts)],
      d.max_batch_bytes != null && ['Max batch', bytes(d.max_batch_bytes)], ['Created', time(d.created_at)]]));
  }

  async function setPaused(what) {
    await api('POST', `${base}/${what}`);
    await loadDest();
  }

  async function sendTest() {
    set(testResult, 'Sending…');
    let a;
    try { a = obj(await api('POST', base + '/test')); } catch (e) { testResult.replaceChildren(); throw e; }
    set(testResult, h('strong', null, 'Test: '), badge(a.outcome),
      ` · ${a.status != null ? 'HTTP ' + str(a.status) + ' · ' : a.outcome === 'delivered' ? '' : 'no HTTP answer · '}${a.latency_ms == null ? '–' : num(a.latency_ms) + ' ms'}`,
      a.error ? h('div', { class: 'err' }, str(a.error)) : null);
    testResult.dataset.outcome = KNOWN.has(a.outcome) ? a.outcome : 'other';
    await refreshAttempts();
  }

  async function remove() {
    if (!window.confirm(`Delete this destination (${d ? targetText(d) : id}) with its queue and dead letters?`)) return;
    await api('DELETE', base);
    location.hash = '#/destinations';
  }

  function addAttempts(list, atTop) {
    const fresh = list.filter(a => !attIds.has(str(obj(a).id)));
    fresh.forEach(a => attIds.add(str(obj(a).id)));
    const rows = fresh.map(attemptRow);
    if (atTop) attBody.prepend(...rows); else attBody.append(...rows);
    attEmpty.hidden = attIds.size > 0;
    attWrap.hidden = !attIds.size;
  }

  async function refreshAttempts() {
    const data = obj(await api('GET', base + '/attempts?limit=50'));
    const list = arr(data.attempts);
    if (!attIds.size || !list.some(a => attIds.has(str(obj(a).id)))) { // first page, or a gap: start over
      attBody.replaceChildren();
      attIds = new Set();
      attCursor = data.next_cursor || null;
      addAttempts(list, false);
    } else addAttempts(list, true);
    more.hidden = !attCursor;
  }

  async function loadMore() {
    if (!attCursor) return;
    const data = obj(await api('GET', `${base}/attempts?limit=50&cursor=${enc(attCursor)}`));
    attCursor = data.next_cursor || null;
    addAttempts(arr(data.attempts), false);
    more.hidden = !attCursor;
  }

  async function refreshDead(force) {
    const list = arr(obj(await api('GET', base + '/dead-letters?limit=100')).dead_letters);
    const key = JSON.stringify(list);
    if (!force && key === dlKey) return;
    dlKey = key;
    const checked = new Set([...dlBody.querySelectorAll('input.dead-letter-select:checked')].map(i => i.value));
    set(dlBody, list.map(x => {
      const eid = str(obj(x).id);
      return h('tr', { class: 'dead-letter-row', 'data-id': eid },
        td(h('input', { type: 'checkbox', class: 'dead-letter-select', value: eid, checked: checked.has(eid), 'aria-label': 'Select ' + eid })),
        td(h('a', { href: to('events', eid) }, eid), 'mono'),
        td(num(x.attempts), 'num'),
        td(str(x.last_error) || '–', 'err'),
        td(time(x.failed_at)),
        td(h('button', { type: 'button', class: 'dead-letter-replay', onclick: act(() => replay([eid])) }, 'Replay')));
    }));
    dlEmpty.hidden = list.length > 0;
    dlWrap.hidden = !list.length;
  }

  async function replay(ids) {
    const r = obj(await api('POST', base + '/dead-letters/replay', ids ? { ids } : {}));
    dlMsg.textContent = `Replayed ${num(r.replayed ?? 0)}`;
    await Promise.all([refreshDead(true), loadDest()]);
  }

  async function purge() {
    if (!window.confirm('Delete every dead letter of this destination? This cannot be undone.')) return;
    const r = obj(await api('DELETE', base + '/dead-letters'));
    dlMsg.textContent = `Purged ${num(r.purged ?? 0)}`;
    await Promise.all([refreshDead(true), loadDest()]);
  }

  async function refresh() { await Promise.all([loadDest(), refreshAttempts(), refreshDead(false)]); }

  await loadDest();
  every(3000, refresh);
  await Promise.all([refreshAttempts(), refreshDead(true)]);
}

// --- overview

const SERIES = [['accepted', 'Accepted'], ['duplicates', 'Duplicates'], ['rejected', 'Rejected'], ['rate_limited', 'Rate-limited']];
const TOTALS = SERIES.concat([['delivered', 'Delivered'], ['dead_lettered', 'Dead-lettered']]);
const overviewState = { minutes: '60', showKey: false };

function scale(max) {
  const raw = Math.max(max, 1) / 4, p = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 5, 10].map(f => f * p).find(s => s >= raw));
  return { step, top: Math.max(step, step * Math.ceil(max / step)) };
}

// Stacked bars of SERIES per minute (or per bucket of minutes on wide windows).
function drawChart(rows, span, width) {
  const H = width < 500 ? 210 : 250;
  // the legend first: it may wrap on a narrow screen
  const legend = [];
  let lx = 44, ly = 14;
  for (const [key, label] of SERIES) {
    const w = 16 + label.length * 6.6 + 14;
    if (lx + w > width && lx > 44) { lx = 44; ly += 16; }
    legend.push(svg('rect', { class: 'swatch s-' + key, x: lx, y: ly - 9, width: 10, height: 10, rx: 2 }),
      svg('text', { class: 'legend', x: lx + 14, y: ly }, label));
    lx += w;
  }
  const M = { l: 44, r: 8, t: ly + 14, b: 34 };
  const pw = Math.max(40, width - M.l - M.r), ph = H - M.t - M.b;
  const byMin = new Map();
  let last = Math.floor(Date.now() / 60000);
  for (const r of rows) {
    const t = Date.parse(obj(r).minute);
    if (!isFinite(t)) continue;
    const k = Math.floor(t / 60000);
    byMin.set(k, r);
    if (k > last) last = k;
  }
  let bucket = 1;
  for (const b of [1, 2, 5, 10, 15, 30, 60]) { bucket = b; if (span / b <= pw / 4) break; }
  const first = Math.floor((last - span + 1) / bucket) * bucket; // bins on round minutes
  const n = Math.floor((last - first) / bucket) + 1;
  const bins = Array.from({ length: n }, (_, i) => ({ t: first + i * bucket, v: [0, 0, 0, 0] }));
  for (const [k, r] of byMin) {
    if (k < first || k > last) continue;
    const b = bins[Math.floor((k - first) / bucket)];
    SERIES.forEach(([key], j) => { b.v[j] += Math.max(0, +r[key] || 0); });
  }
  const max = bins.reduce((m, b) => Math.max(m, b.v[0] + b.v[1] + b.v[2] + b.v[3]), 0);
  const { step, top } = scale(max);
  const y = v => M.t + ph - (v / top) * ph;
  const bw = pw / n;
  const per = bucket === 1 ? 'minute' : `${bucket} minutes`;
  const hm = t => new Date(t * 60000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const g = [legend];
  for (let v = 0; v <= top; v += step) {
    g.push(svg('line', { class: v ? 'grid' : 'axis', x1: M.l, x2: M.l + pw, y1: y(v), y2: y(v) }),
      svg('text', { class: 'tick', x: M.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, compact(v)));
  }
  g.push(svg('text', { class: 'axis-title', x: -(M.t + ph / 2), y: 11, transform: 'rotate(-90)', 'text-anchor': 'middle' }, `events / ${bucket === 1 ? 'min' : bucket + ' min'}`));
  const labelEvery = Math.max(1, Math.ceil(70 / bw));
  for (let i = 0; i < n; i++) {
    const b = bins[i], x = M.l + i * bw, w = Math.max(1, bw - (bw > 4 ? 1 : 0));
    const parts = [];
    let acc = 0;
    SERIES.forEach(([key], j) => {
      const v = b.v[j];
      if (!v) return;
      const y0 = y(acc), y1 = y(acc + v);
      acc += v;
      parts.push(svg('rect', { class: 'bar s-' + key, x: x.toFixed(1), y: y1.toFixed(1), width: w.toFixed(1), height: Math.max(0.5, y0 - y1).toFixed(1) }));
    });
    const tip = `${new Date(b.t * 60000).toLocaleString()} (${per}): ` + SERIES.map(([, label], j) => `${label} ${b.v[j].toLocaleString()}`).join(', ');
    g.push(svg('g', { class: 'bin' }, svg('title', null, tip),
      svg('rect', { class: 'hit', x: x.toFixed(1), y: M.t, width: bw.toFixed(1), height: ph }), parts));
    if (i % labelEvery === 0) g.push(svg('text', { class: 'tick', x: (x + bw / 2).toFixed(1), y: M.t + ph + 16, 'text-anchor': 'middle' }, hm(b.t)));
  }
  g.push(svg('text', { class: 'axis-title', x: M.l + pw, y: H - 3, 'text-anchor': 'end' }, 'local time'));
  if (!max) g.push(svg('text', { class: 'empty-note', x: M.l + pw / 2, y: M.t + ph / 2, 'text-anchor': 'middle' }, 'No events in this window'));
  return svg('svg', {
    id: 'stats-chart', class: 'chart', width, height: H, viewBox: `0 0 ${width} ${H}`, role: 'img',
    'aria-label': `Events per ${per} by outcome`,
  }, g);
}

function snippets(key) {
  const o = location.origin;
  return [
    ['curl', `curl -X POST '${o}/v1/events' \\\n  -H 'Authorization: Bearer ${key}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{"event_type": "order.created", "source": "checkout", "payload": {"order_id": 1234, "total": 99.5}}'`],
    ['Segment (analytics-node)', `// npm install @segment/analytics-node\nconst { Analytics } = require('@segment/analytics-node');\n\nconst analytics = new Analytics({ writeKey: '${key}', host: '${o}' });\nanalytics.track({ userId: 'u-1', event: 'Order Completed', properties: { total: 10 } });`],
    ['PostHog (posthog-node)', `// npm install posthog-node\nconst { PostHog } = require('posthog-node');\n\nconst posthog = new PostHog('${key}', { host: '${o}' });\nposthog.capture({ distinctId: 'd-1', event: 'signed up', properties: { plan: 'pro' } });\nawait posthog.shutdown();`],
  ];
}

async function overviewScreen(main) {
  const st = overviewState;
  const range = select('stats-range', [['60', 'Last hour'], ['360', 'Last 6 hours'], ['1440', 'Last 24 hours']], st.minutes);
  const totals = h('div', { id: 'stats-totals', class: 'cards' });
  const wrap = h('div', { class: 'chart-wrap' });
  const storage = h('p', { id: 'stats-storage', class: 'storage' });
  const keyCode = h('code', { id: 'sdk-key' });
  const toggle = btn('key-toggle', '', () => { st.showKey = !st.showKey; renderSnippets(); });
  const snipBox = h('div', { id: 'sdk-snippets', class: 'snippets' });
  let data = null, drawnWidth = 0;

  main.append(
    head('Overview', field('Window', range)),
    totals,
    panel('Events per minute', wrap, storage),
    panel('Send events from an SDK',
      h('p', null, 'Your key: ', keyCode, ' ', toggle),
      h('p', { class: 'muted small' }, 'For SDKs in browsers or mobile apps, ask an operator for an ingest-only key.'),
      snipBox));

  function renderSnippets() {
    const masked = cred.slice(0, 10) + '…';
    keyCode.textContent = st.showKey ? cred : masked;
    toggle.textContent = st.showKey ? 'hide' : 'show';
    toggle.setAttribute('aria-pressed', String(st.showKey));
    const shown = snippets(st.showKey ? cred : masked), real = snippets(cred);
    set(snipBox, shown.map(([name, text], i) => h('div', { class: 'snippet' },
      h('div', { class: 'subhead' }, h('h3', null, name), copyButton(() => real[i][1], null)),
      h('pre', { class: 'code' }, text))));
  }

  function draw() {
    if (!data) return;
    drawnWidth = Math.max(280, Math.floor(wrap.clientWidth || 600));
    wrap.replaceChildren(drawChart(arr(data.minutes), +st.minutes, drawnWidth));
  }

  async function load() {
    const minutes = range.value;
    const d = obj(await api('GET', '/v1/stats?minutes=' + enc(minutes)));
    if (minutes !== range.value) return;
    data = d;
    const t = obj(d.totals);
    set(totals, TOTALS.map(([key, label]) => card(key, label, num(+t[key] || 0))));
    const s = obj(d.storage);
    set(storage, 'Storage used: ', h('strong', null, `${num(+s.events || 0)} events`), ', ', h('strong', { title: `${num(+s.bytes || 0)} bytes` }, bytes(+s.bytes || 0)));
    draw();
  }

  range.addEventListener('change', act(() => { st.minutes = range.value; return load(); }));
  const onResize = () => { if (Math.floor(wrap.clientWidth) !== drawnWidth) draw(); };
  addEventListener('resize', onResize);
  S.cleanups.push(() => removeEventListener('resize', onResize));
  renderSnippets();
  every(10000, load);
  await load();
}

// --- operator

const tenantsState = { cursor: null, next: null, stack: [] };
const scopeOf = k => str(obj(k).scope) || 'full';

async function tenantsScreen(main) {
  const st = tenantsState;
  const tbody = h('tbody');
  const slot = h('div', { class: 'once-slot' });
  const name = h('input', { id: 'tenant-name', placeholder: 'acme' });
  const rate = h('input', { id: 'tenant-rate', type: 'number', placeholder: '6000' });
  const burst = h('input', { id: 'tenant-burst', type: 'number', placeholder: 'same as the rate' });
  const [pagerEl, load] = pager('tenants', st, page);
  const form = mkForm('tenant-form', create,
    field('Name', name), field('Rate limit (events / minute)', rate), field('Burst', burst),
    submitBar('tenant-create', 'Create tenant'));

  main.append(
    head('Tenants', btn('tenants-refresh', 'Refresh', act(() => load(st.cursor)))),
    table('tenants-table', ['Name', 'ID', 'Rate / min', 'Burst', 'Keys', 'Created'], tbody),
    pagerEl,
    panel('New tenant', slot, form));

  async function page(cursor) {
    const q = new URLSearchParams({ limit: '100' });
    if (cursor) q.set('cursor', cursor);
    const data = obj(await api('GET', '/admin/tenants?' + q));
    const list = arr(data.tenants);
    set(tbody, list.length ? list.map(t => linkRow(h('tr', { class: 'tenant-row', 'data-id': str(t.id) },
      td(h('a', { href: to('tenants', t.id) }, str(t.name) || '(no name)')),
      td(str(t.id), 'mono'),
      td(num(t.rate_limit_per_minute), 'num'),
      td(num(t.burst), 'num'),
      td(num(arr(t.keys).length), 'num'),
      td(time(t.created_at))), to('tenants', t.id)))
      : emptyRow(6, 'No tenants yet.'));
    return data.next_cursor;
  }

  async function create() {
    const body = { name: name.value };
    if (rate.value.trim()) body.rate_limit_per_minute = intOr(rate.value);
    if (burst.value.trim()) body.burst = intOr(burst.value);
    const t = obj(await api('POST', '/admin/tenants', body));
    set(slot, onceBox('tenant-api-key', `The API key of tenant “${str(t.name)}”`, t.api_key));
    form.reset();
    await load(st.cursor);
  }

  await load(st.cursor);
}

async function tenantScreen(main, id) {
  const base = '/admin/tenants/' + enc(id);
  const meta = h('div');
  const name = h('input', { id: 'tenant-edit-name' });
  const rate = h('input', { id: 'tenant-edit-rate', type: 'number' });
  const burst = h('input', { id: 'tenant-edit-burst', type: 'number' });
  const retention = h('input', { id: 'tenant-edit-retention', type: 'number', placeholder: "the server's default" });
  const editMsg = h('p', { id: 'tenant-edit-message', class: 'msg', role: 'status' });
  const keysBody = h('tbody');
  const scope = select('key-scope', [['full'], ['ingest', 'ingest (send events only)']]);
  const slot = h('div', { class: 'once-slot' });
  let t = null;

  main.append(
    head('Tenant', h('a', { href: '#/tenants', class: 'back' }, '← Tenants')),
    panel(null, meta),
    panel('Name, limits and retention', mkForm('tenant-edit-form', save,
      field('Name', name), field('Rate limit (events / minute)', rate), field('Burst', burst),
      field('Retention (days, 0 = forever)', retention),
      submitBar('tenant-save', 'Save')), editMsg),
    panel('API keys',
      table('tenant-keys', ['Prefix', 'Scope', 'Created', 'ID', ''], keysBody),
      h('div', { class: 'toolbar' }, field('Scope', scope), btn('key-issue', 'Issue key', act(issue), 'primary')),
      slot));

  function render() {
    set(meta, dl('tenant-meta', [['Name', str(t.name)], ['ID', h('code', null, str(t.id))],
      ['Rate limit', `${num(t.rate_limit_per_minute)} events / minute`], ['Burst', num(t.burst)],
      ['Retention', t.retention_days == null ? "the server's default" : t.retention_days === 0 ? 'forever' : `${num(t.retention_days)} days`],
      ['Created', time(t.created_at)]]));
    title(`Tenant ${str(t.name)}`);
    name.value = str(t.name);
    rate.value = t.rate_limit_per_minute == null ? '' : str(t.rate_limit_per_minute);
    burst.value = t.burst == null ? '' : str(t.burst);
    retention.value = t.retention_days == null ? '' : str(t.retention_days);
    const keys = arr(t.keys);
    set(keysBody, keys.length ? keys.map(k => {
      const kid = str(obj(k).id);
      return h('tr', { class: 'key-row', 'data-id': kid },
        td(str(k.prefix) + '…', 'mono'),
        td(badge(scopeOf(k))),
        td(time(k.created_at)),
        td(kid, 'mono'),
        td(h('button', { type: 'button', class: 'key-revoke danger', 'data-id': kid, onclick: act(() => revoke(k)) }, 'Revoke')));
    }) : emptyRow(5, 'No working keys.'));
  }

  async function load() { t = obj(await api('GET', base)); render(); }

  async function save() {
    const body = {};
    const changed = (input, old) => input.value.trim() !== '' && input.value.trim() !== str(old);
    if (changed(name, t.name)) body.name = name.value;
    if (changed(rate, t.rate_limit_per_minute)) body.rate_limit_per_minute = intOr(rate.value);
    if (changed(burst, t.burst)) body.burst = intOr(burst.value);
    if (changed(retention, t.retention_days)) body.retention_days = intOr(retention.value);
    if (!Object.keys(body).length) { editMsg.textContent = 'Nothing changed.'; return; }
    editMsg.textContent = '';
    t = obj(await api('PATCH', base, body));
    render();
    editMsg.textContent = `Saved (${Object.keys(body).join(', ')}).`;
  }

  async function revoke(k) {
    if (!window.confirm(`Revoke key ${str(k.prefix)}…? Clients using it stop working at once.`)) return;
    await api('DELETE', `${base}/keys/${enc(str(k.id))}`);
    await load();
  }

  async function issue() {
    const k = obj(await api('POST', base + '/keys', { scope: scope.value }));
    await load();
    set(slot, onceBox('new-api-key', `The new ${scopeOf(k)} key (${str(k.prefix)}…)`, k.api_key));
  }

  await load();
}

// --- boot

window.addEventListener('hashchange', route);
const saved = stored();
const ui = renderSignIn();
if (saved) signIn(saved, ui);

})();
