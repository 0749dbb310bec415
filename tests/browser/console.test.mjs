// The PulseStream console in a real browser (Debian's chromium, driven by playwright-core).
// Started by crates/server/tests/api/console_browser.rs, which runs the server and passes
// PULSESTREAM_URL, PULSESTREAM_ADMIN_TOKEN and SCREENSHOT_DIR. This script never starts the
// server: it sets things up through the HTTP API and runs its own webhook receivers.
//
//   cd tests/browser && node --test --test-reporter=spec console.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const BASE = (process.env.PULSESTREAM_URL || '').replace(/\/$/, '');
const ADMIN = process.env.PULSESTREAM_ADMIN_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR;
assert.ok(BASE && ADMIN && SHOTS, 'set PULSESTREAM_URL, PULSESTREAM_ADMIN_TOKEN and SCREENSHOT_DIR');
mkdirSync(SHOTS, { recursive: true });

const RUN = Date.now().toString(36); // keeps names apart when run twice against one server
const WIDE = { width: 1280, height: 800 }, PHONE = { width: 390, height: 844 };

// --- the HTTP API

async function api(method, path, { key = tenantKey, body } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(BASE + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}
const ingest = event => api('POST', '/v1/events', { body: event }); // -> { id, event_id, status }
const createWebhook = (url, extra = {}) => api('POST', '/v1/destinations', { body: { kind: 'webhook', url, ...extra } });

// Polls fn until it returns something truthy; fails with `what` after `ms`.
async function until(what, fn, ms = 10_000, every = 50) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

// --- webhook receivers

// A receiver on 127.0.0.1: records the events of each request it accepts (2xx). With
// `fail` set it answers 500 and records nothing.
async function receiver(name) {
  const r = { name, fail: false, events: [], url: '' };
  r.server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', c => chunks.push(c));
    req.on('end', () => {
      if (r.fail) { res.writeHead(500, { 'Content-Type': 'text/plain' }); res.end('failing on purpose'); return; }
      try { r.events.push(...JSON.parse(Buffer.concat(chunks).toString('utf8')).events); } catch { /* not ours */ }
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
    });
  });
  await new Promise(ok => r.server.listen(0, '127.0.0.1', ok));
  r.url = `http://127.0.0.1:${r.server.address().port}/hook`;
  r.has = id => r.events.some(e => e.id === id);
  r.waitFor = (ids, ms = 10_000) => until(`${name} to receive ${ids.join(', ')}`, () => ids.every(r.has), ms);
  return r;
}

// --- the browser

let browser, tenantKey, tenantId, accepting, flippable;
let acceptingDest = null; // the destination test 4 creates through the console

before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  const t = await api('POST', '/admin/tenants', { key: ADMIN, body: { name: `browser-${RUN}`, rate_limit_per_minute: 1_000_000, burst: 100_000 } });
  tenantKey = t.api_key;
  tenantId = t.id;
  accepting = await receiver('the accepting receiver');
  flippable = await receiver('the flippable receiver');
});

after(async () => {
  await browser?.close();
  for (const r of [accepting, flippable]) if (r) { r.server.closeAllConnections(); r.server.close(); }
});

// A full-page screenshot, with the mouse moved off the page's rows (no hover highlights).
async function shot(page, name) {
  await page.mouse.move(0, 0);
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// A test with a fresh page at 1280x800. It fails on any uncaught page error, CSP violation,
// dialog or console error, except the "Failed to load resource" of a 4xx (which tests cause).
const EXPECTED_CONSOLE_ERROR = /^Failed to load resource: the server responded with a status of 4\d\d/;
function browserTest(name, fn, timeout = 60_000) {
  test(name, { timeout }, async () => {
    const context = await browser.newContext({ viewport: WIDE });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', e => problems.push(`page error: ${e.message}`));
    page.on('console', m => {
      if (/Content Security Policy/i.test(m.text())) problems.push(`CSP violation: ${m.text()}`);
      else if (m.type() === 'error' && !EXPECTED_CONSOLE_ERROR.test(m.text())) problems.push(`console error: ${m.text()}`);
    });
    page.on('dialog', d => { problems.push(`a ${d.type()} dialog opened: ${d.message()}`); d.dismiss().catch(() => {}); });
    try {
      await fn(page);
    } catch (e) {
      await shot(page, `failed-${name.replace(/\W+/g, '-')}`).catch(() => {});
      if (problems.length) e.message += `\nalso: ${problems.join('\n')}`;
      throw e;
    } finally {
      await context.close();
    }
    assert.deepEqual(problems, [], 'no page errors, CSP violations or dialogs');
  });
}

// Opens the console at `hash` and signs in with `credential`.
async function open(page, credential, hash = '', kind = 'tenant') {
  await page.goto(`${BASE}/console${hash}`);
  await page.locator('#signin-credential').fill(credential);
  await page.locator('#signin-submit').click();
  await page.locator('#view-kind', { hasText: kind }).waitFor({ timeout: 5_000 });
}
const go = (page, hash) => page.evaluate(h => { location.hash = h; }, hash);
const text = (page, sel) => page.locator(sel).textContent();
const count = (page, sel) => page.locator(sel).count();

async function tailLive(page) {
  await open(page, tenantKey, '#/tail');
  await page.locator('#tail-status', { hasText: /^live$/ }).waitFor({ timeout: 5_000 });
}
// The tail's rows of the stored event `id` (its row, and one per retry answered "duplicate"):
// found by their link to the event's page.
const tailRow = (page, id) => page.locator('#tail-list li.tail-row')
  .filter({ has: page.locator(`a.open[href="#/events/${encodeURIComponent(id)}"]`) });

// Searches by event type once the screen's first (unfiltered) search is shown, and waits
// for exactly the events `ids` (newest first) in the results.
async function searchType(page, type, ids) {
  await page.locator('#search-summary', { hasText: /^Page/ }).waitFor({ timeout: 5_000 });
  await page.locator('#search-event-type').fill(type);
  await page.locator('#search-submit').click();
  const shown = () => page.locator('#search-results tr.event-row').evaluateAll(rs => rs.map(r => r.dataset.id));
  await until(`the search for ${type} to show ${ids}`, async () => String(await shown()) === String(ids), 5_000)
    .catch(async e => { e.message += ` (it shows ${await shown()})`; throw e; });
  return page.locator(`#search-results tr.event-row[data-id="${ids[0]}"]`);
}

// --- the tests

browserTest('1. sign in: a wrong key is refused, the API key opens the tenant view', async page => {
  await page.goto(`${BASE}/console`);
  await page.locator('#signin-form').waitFor({ timeout: 5_000 });
  await shot(page, 'signin');

  await page.locator('#signin-credential').fill('ps_not_a_real_key_0000000000000000');
  await page.locator('#signin-submit').click();
  const error = page.locator('#signin-error');
  await error.waitFor({ state: 'visible', timeout: 5_000 });
  assert.match(await error.textContent(), /401|not accepted/);
  assert.ok(await page.locator('#signin-form').isVisible(), 'still on the sign-in form');
  assert.equal(await count(page, '#view-kind'), 0, 'no tenant view');
  await shot(page, 'signin-error');

  await page.locator('#signin-credential').fill(tenantKey);
  await page.locator('#signin-submit').click();
  await page.locator('#view-kind', { hasText: 'tenant' }).waitFor({ timeout: 5_000 });
  assert.equal(await count(page, '#signin-form'), 0, 'the sign-in form is gone');
  for (const label of ['Overview', 'Live tail', 'Search', 'Destinations']) {
    assert.ok(await page.locator('nav.nav a', { hasText: label }).isVisible(), `the nav shows ${label}`);
  }
});

browserTest('2. live tail: an event shows within a second; pause holds events back', async page => {
  await tailLive(page);

  // The requirement: a row within 1 s of the ingest's 2xx (one retry for machine load).
  let ms;
  for (let attempt = 1; attempt <= 2; attempt++) {
    const { id } = await ingest({ event_type: `tail.${RUN}`, source: 'browser-test', payload: { attempt, n: 42 } });
    const t0 = performance.now();
    await tailRow(page, id).waitFor({ state: 'visible', timeout: 5_000 });
    ms = Math.round(performance.now() - t0);
    console.log(`# live tail latency (attempt ${attempt}): ${ms} ms`);
    if (ms < 1000) break;
  }
  assert.ok(ms < 1000, `the event showed ${ms} ms after its 2xx (limit 1000 ms)`);
  await shot(page, 'tail');
  await page.setViewportSize(PHONE);
  await shot(page, 'tail-phone');
  await page.setViewportSize(WIDE);

  await page.locator('#tail-pause').click();
  await page.locator('#tail-status', { hasText: 'paused' }).waitFor({ timeout: 2_000 });
  const held = await ingest({ event_type: `tail.${RUN}`, payload: { held: true } });
  await page.locator('#tail-waiting', { hasText: /^1 waiting$/ }).waitFor({ timeout: 5_000 });
  assert.equal(await tailRow(page, held.id).count(), 0, 'a paused tail does not show the new event');
  const held2 = await ingest({ event_type: `tail.${RUN}`, payload: { held: 2 } });
  await page.locator('#tail-waiting', { hasText: /^2 waiting$/ }).waitFor({ timeout: 5_000 });
  assert.equal(await tailRow(page, held2.id).count(), 0);

  await page.locator('#tail-pause', { hasText: 'Resume' }).click();
  await tailRow(page, held.id).waitFor({ timeout: 2_000 });
  await tailRow(page, held2.id).waitFor({ timeout: 2_000 });
  await page.locator('#tail-status', { hasText: /^live$/ }).waitFor({ timeout: 2_000 });
  assert.ok(await page.locator('#tail-waiting').isHidden(), 'nothing waits any more');
});

browserTest('2b. live tail: a client\'s retry of a stored event shows as a duplicate row', async page => {
  await tailLive(page);
  const event = { event_type: `retry.${RUN}`, source: 'browser-test', payload: { order: 7, lines: [1, 2] } };
  const first = await ingest(event);
  assert.equal(first.status, 'accepted');
  const rows = tailRow(page, first.id);
  await rows.first().waitFor({ timeout: 5_000 });
  assert.equal(await rows.count(), 1);

  // The very same event again (same event_id, same content): 200 duplicate, not stored again.
  const res = await fetch(BASE + '/v1/events', {
    method: 'POST', headers: { Authorization: `Bearer ${tenantKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...event, event_id: first.event_id }),
  });
  assert.equal(res.status, 200);
  const again = await res.json();
  assert.deepEqual([again.status, again.id, again.event_id], ['duplicate', first.id, first.event_id]);

  await until('a second row for the retried event', async () => (await rows.count()) === 2, 5_000);
  const dup = rows.and(page.locator('.duplicate'));
  assert.equal(await dup.count(), 1, 'one row is marked duplicate');
  const tag = dup.locator('span.tag.dup');
  // shown whole: not cut off by the event type's column (isVisible alone does not see clipping)
  const unclipped = () => tag.evaluate(t => {
    const r = t.getBoundingClientRect(), c = t.closest('.c-type').getBoundingClientRect();
    return r.width > 0 && r.left >= c.left - 0.5 && r.right <= c.right + 0.5;
  });
  assert.ok(await tag.isVisible() && await unclipped(), 'the duplicate row shows its tag');
  assert.equal((await tag.textContent()).trim(), 'duplicate');
  assert.equal(await page.locator('#tail-list li.tail-row').first().evaluate(
    (li, href) => li.classList.contains('duplicate') && !!li.querySelector(`a.open[href="${href}"]`),
    `#/events/${encodeURIComponent(first.id)}`), true, 'the retry is the newest row');
  const original = rows.and(page.locator(':not(.duplicate)'));
  assert.equal(await original.count(), 1);
  assert.equal(await original.locator('.tag.dup').count(), 0, 'the original row has no duplicate tag');
  assert.equal(await dup.locator('.c-eid').textContent(), first.event_id);
  await shot(page, 'tail-duplicate');
  await page.setViewportSize(PHONE);
  assert.ok(await unclipped(), 'the duplicate tag shows whole on a phone');
  await shot(page, 'tail-duplicate-phone');
});

browserTest('3. search by event type finds the event and opens its payload', async page => {
  const type = `search.${RUN}`;
  const payload = { order: { id: 1234, lines: [{ sku: 'A-1', qty: 2 }] }, note: 'hello' };
  const { id } = await ingest({ event_type: type, source: 'checkout', payload });
  await ingest({ event_type: `other.${RUN}`, payload: {} }); // must not match

  await open(page, tenantKey, '#/search');
  const row = await searchType(page, type, [id]);
  assert.match(await row.textContent(), new RegExp(type.replace('.', '\\.')));
  await shot(page, 'search');

  await row.click();
  await page.waitForFunction(i => location.hash === `#/events/${i}`, id, { timeout: 5_000 });
  await page.locator('#event-payload').waitFor({ timeout: 5_000 });
  assert.equal(await text(page, '#event-payload'), JSON.stringify(payload, null, 2));
  await page.locator('#event-attempts').waitFor({ state: 'attached', timeout: 5_000 });
  await shot(page, 'event-detail');
});

browserTest('3b. search: a late answer to an earlier search does not replace newer results', async page => {
  const type = `late.${RUN}`;
  const { id } = await ingest({ event_type: type, payload: { late: true } });
  await ingest({ event_type: `other.${RUN}`, payload: {} });
  // Holds back the screen's first (unfiltered) search, so it answers after the filtered one.
  let held = 0;
  await page.route(u => new URL(u).pathname === '/v1/events', async route => {
    if (!held++) await sleep(1_500);
    await route.continue().catch(() => {}); // the console may have given up on it
  });
  await open(page, tenantKey, '#/search');
  await page.locator('#search-event-type').fill(type);
  await page.locator('#search-submit').click();
  const shown = () => page.locator('#search-results tr.event-row').evaluateAll(rs => rs.map(r => r.dataset.id));
  await until(`the search for ${type}`, async () => String(await shown()) === id, 5_000);
  await sleep(2_000); // past the held answer
  assert.deepEqual(await shown(), [id], 'still the filtered results');
  assert.match(await text(page, '#search-summary'), /^Page 1 · 1 event$/);
  assert.ok(held >= 2, 'the first search was held back');
});

browserTest('4. a webhook destination made in the console gets events and test sends', async page => {
  await open(page, tenantKey, '#/destinations');
  await page.locator('#destination-kind').selectOption('webhook');
  await page.locator('#destination-url').fill(accepting.url);
  await page.locator('#destination-max-attempts').fill('5');
  await page.locator('#destination-create').click();
  const secret = page.locator('#destination-secret');
  await secret.waitFor({ timeout: 5_000 });
  assert.match(await secret.textContent(), /^whsec_[A-Za-z0-9+/=]+$/);
  const row = page.locator('#destinations-table tr.destination-row', { hasText: accepting.url });
  await row.waitFor({ timeout: 5_000 });
  acceptingDest = await row.getAttribute('data-id');
  assert.ok(acceptingDest, 'the new destination is listed');
  await shot(page, 'destinations');
  await page.setViewportSize(PHONE);
  await shot(page, 'destinations-phone');
  await page.setViewportSize(WIDE);

  const { id } = await ingest({ event_type: `delivery.${RUN}`, payload: { to: 'webhook' } });
  await accepting.waitFor([id]);

  await row.click();
  await page.waitForFunction(d => location.hash === `#/destinations/${d}`, acceptingDest, { timeout: 5_000 });
  await page.locator('#destination-attempts tr.attempt-row', { has: page.locator('.badge.b-delivered') })
    .first().waitFor({ timeout: 10_000 });

  const tests = accepting.events.filter(e => e.event_type === 'pulsestream.test').length;
  await page.locator('#destination-test').click();
  const result = page.locator('#destination-test-result[data-outcome="delivered"]');
  await result.waitFor({ timeout: 10_000 });
  assert.match(await result.textContent(), /delivered/);
  await until('a pulsestream.test event at the receiver',
    () => accepting.events.filter(e => e.event_type === 'pulsestream.test').length > tests);
  await page.locator('#destination-attempts tr.attempt-row .tag', { hasText: 'test' }).first().waitFor({ timeout: 5_000 });
  await shot(page, 'destination-detail');
});

browserTest('5. dead letters show and are replayed from the console', async page => {
  flippable.fail = true;
  const dest = await createWebhook(flippable.url, { max_attempts: 1, event_types: ['dead.*'] });
  const a = await ingest({ event_type: 'dead.letter', payload: { n: 1 } });
  const b = await ingest({ event_type: 'dead.letter', payload: { n: 2 } });

  await open(page, tenantKey, `#/destinations/${dest.id}`);
  const rows = page.locator('#dead-letters tr.dead-letter-row');
  await until('2 dead-letter rows', async () => (await rows.count()) === 2, 15_000, 200);
  for (const id of [a.id, b.id]) assert.equal(await rows.and(page.locator(`[data-id="${id}"]`)).count(), 1);
  assert.equal(flippable.events.length, 0, 'the failing receiver recorded nothing');
  await shot(page, 'dead-letters');

  flippable.fail = false;
  await page.locator('#dead-letters-replay-all').click();
  await page.locator('#dead-letters-message', { hasText: /Replayed 2\b/ }).waitFor({ timeout: 5_000 });
  await flippable.waitFor([a.id, b.id]);
  await page.locator('#destination-refresh').click();
  await until('the dead-letter rows to go', async () => (await rows.count()) === 0, 5_000, 100);
});

browserTest('6. a paused destination holds events until it is resumed', async page => {
  const id = acceptingDest ?? (await createWebhook(accepting.url)).id;
  await open(page, tenantKey, `#/destinations/${id}`);
  await page.locator('#destination-pause').click();
  await page.locator('#destination-resume').waitFor({ timeout: 5_000 });
  await page.locator('#destination-counters [data-stat="status"]', { hasText: 'paused' }).waitFor({ timeout: 5_000 });
  await sleep(3_000); // pause takes effect within 2 s

  const ids = [];
  for (let n = 1; n <= 3; n++) ids.push((await ingest({ event_type: `paused.${RUN}`, payload: { n } })).id);
  await sleep(3_000);
  assert.deepEqual(ids.filter(accepting.has), [], 'a paused destination sends nothing');

  await page.locator('#destination-resume').click();
  await page.locator('#destination-pause').waitFor({ timeout: 5_000 });
  await accepting.waitFor(ids, 10_000);
});

browserTest('7. event data is shown as text, never run as HTML', async page => {
  const script = '<script>window.__pwned=1</script>';
  const payload = { html: script, img: '"><img src=x onerror=window.__pwned=2>' };
  const safe = async where => {
    const r = await page.evaluate(() => ({
      pwned: typeof window.__pwned, imgs: document.querySelectorAll('img[src="x"]').length,
      bold: document.querySelectorAll('#view b').length,
    }));
    assert.deepEqual(r, { pwned: 'undefined', imgs: 0, bold: 0 }, `nothing injected in ${where}`);
  };

  await tailLive(page);
  const { id } = await ingest({ event_type: 'xss.test', source: '<b>src</b>', payload });
  const row = tailRow(page, id);
  await row.waitFor({ timeout: 5_000 });
  assert.equal(await row.locator('.c-source').textContent(), '<b>src</b>');
  await row.locator('.tail-sum').click();
  const raw = row.locator('pre.raw');
  await raw.waitFor({ timeout: 2_000 });
  assert.ok((await raw.textContent()).includes(JSON.stringify(script)), 'the raw event shows the script as text');
  await safe('the live tail');

  await go(page, '#/search');
  const result = await searchType(page, 'xss.test', [id]);
  assert.match(await result.textContent(), /<b>src<\/b>/);
  await safe('the search results');

  await result.click();
  const pre = page.locator('#event-payload');
  await pre.waitFor({ timeout: 5_000 });
  await page.locator('#event-payload', { hasText: script }).waitFor({ timeout: 2_000 });
  assert.ok(await page.getByText(script, { exact: false }).first().isVisible(), 'the script text is visible');
  assert.equal(JSON.parse(await pre.textContent()).img, payload.img);
  await sleep(200); // give an onerror handler, if any got in, time to run
  await safe('the event page');
  await shot(page, 'xss');
});

browserTest('8. the overview charts the stats', async page => {
  // Stats are written every 2 s; wait until the API has some, then check the page shows them.
  await until('stats with accepted events',
    async () => (await api('GET', '/v1/stats?minutes=60')).totals?.accepted > 0, 15_000, 500);
  await open(page, tenantKey, '#/overview');
  await page.locator('#stats-chart rect.bar').first().waitFor({ timeout: 15_000 });
  const accepted = await text(page, '#stats-totals [data-stat="accepted"] .card-value');
  assert.ok(Number(accepted.replace(/[^\d]/g, '')) > 0, `accepted is ${accepted}`);
  await shot(page, 'overview');
});

browserTest('9. the operator view lists tenants and creates one', async page => {
  await open(page, ADMIN, '#/tenants', 'operator');
  const row = page.locator(`#tenants-table tr.tenant-row[data-id="${tenantId}"]`);
  await row.waitFor({ timeout: 5_000 });
  assert.match(await row.textContent(), new RegExp(`browser-${RUN}`));

  const name = `made-in-console-${RUN}`;
  await page.locator('#tenant-name').fill(name);
  await page.locator('#tenant-create').click();
  const key = page.locator('#tenant-api-key');
  await key.waitFor({ timeout: 5_000 });
  assert.match(await key.textContent(), /^ps_\S+$/);
  await page.locator('#tenants-table tr.tenant-row', { hasText: name }).waitFor({ timeout: 5_000 });
  await shot(page, 'tenants');

  // Change its limits and retention from the tenant's page.
  await page.locator('#tenants-table tr.tenant-row', { hasText: name }).locator('a').first().click();
  await page.locator('#tenant-edit-retention').waitFor({ timeout: 5_000 });
  await page.locator('#tenant-edit-rate').fill('1200');
  await page.locator('#tenant-edit-retention').fill('30');
  await page.locator('#tenant-save').click();
  await page.locator('#tenant-meta', { hasText: '30 days' }).waitFor({ timeout: 5_000 });
  assert.match(await page.locator('#tenant-meta').textContent(), /1,200 events \/ minute/);
  await shot(page, 'tenant-detail');
});
