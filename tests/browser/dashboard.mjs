// Drives the sensorlink dashboard in Debian's headless Chromium (playwright-core, no browser
// download). Run by tests/it/dashboard.rs, which owns the server and the clients:
//
//   node tests/browser/dashboard.mjs live URL --sensors A,B [--rejection REASON] --out DIR
//     both sensors appear live; their values change without a reload; the table subscribes
//     to exactly their events (/api/events?sensor=A,B) and handles them (it counts them in
//     body[data-live-events]); the server strip has
//     figures (and lists a rejected line with REASON); each row shows the server-side TCP
//     srtt / retransmits ("… ms / N"); the filter narrows the
//     table; the sensor page shows a chart and raw readings; then it prints `STOP B` and
//     waits for `STOPPED` on stdin (the test kills B's client), and B must turn disconnected
//     (and be the one row the state filter "disconnected" leaves).
//   node tests/browser/dashboard.mjs many URL --total N --out DIR
//     the first page of N sensors renders (50 rows, "1–50 of N"), paging works, the events
//     subscription names exactly the 50 sensors shown on each page; prints
//     `PAINT fcp_ms=… rows_ms=…` (first contentful paint, first rows shown): reported, never
//     asserted against a clock.
//   node tests/browser/dashboard.mjs login URL --token READ --write-token WRITE --sensor S --out DIR
//     against a server that asks for tokens: the page shows the login form (focused, no
//     data); a wrong token and a write-only token are refused with an error text; the read
//     token shows S in the table; a reload keeps the session; "log out" returns to the form;
//     a token an older page kept in localStorage moves into the session (and out of
//     localStorage); no request URL ever holds a token.
//
// Prints `OK` and exits 0 when every check held; otherwise prints the reason on stderr,
// saves DIR/failure-*.png and exits 1. Waits are liveness bounds, not timing assertions.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const PATIENCE_MS = 30000;
const CHROMIUM = process.env.SENSORLINK_CHROMIUM || '/usr/bin/chromium';

function parseArgs(argv) {
  const [mode, url, ...rest] = argv;
  const opts = { mode, url, out: 'target/browser' };
  for (let i = 0; i < rest.length; i += 2) opts[rest[i].replace(/^--/, '')] = rest[i + 1];
  if (!['live', 'many', 'login'].includes(mode) || !url) {
    throw new Error('usage: dashboard.mjs live|many|login URL [--sensors A,B] [--total N] [--token T --write-token W --sensor S] [--out DIR]');
  }
  return opts;
}

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Ask the Rust test to do something, and wait for its one-line answer. */
async function ask(request, expected) {
  console.log(request);
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== expected) {
    throw new Error(`asked ${JSON.stringify(request)}, got ${done ? 'end of input' : JSON.stringify(value)}`);
  }
}

const started = Date.now();
function log(msg) { process.stderr.write(`[browser +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`); }

const rowSel = (name) => `#sensors tbody tr[data-sensor="${name.replace(/["\\]/g, '\\$&')}"]`;

/** What a row shows now: state attribute and text, value text, sparkline points. */
async function rowSnapshot(page, name) {
  return page.evaluate((sel) => {
    const tr = document.querySelector(sel);
    if (!tr) return null;
    return {
      state: tr.dataset.state,
      stateText: tr.querySelector('td.state').textContent.trim(),
      value: tr.querySelector('td.value .v').textContent,
      spark: (tr.querySelector('svg.spark polyline') || { getAttribute: () => '' }).getAttribute('points'),
    };
  }, rowSel(name));
}

/** A screenshot down to the end of the page's content (a short table leaves no blank band). */
async function screenshot(page, file) {
  const bottom = await page.evaluate(() => document.querySelector('main').getBoundingClientRect().bottom);
  const size = page.viewportSize();
  await page.screenshot({ path: file, clip: { x: 0, y: 0, width: size.width, height: Math.min(size.height, Math.ceil(bottom)) } });
}

/** Records the URL of every /api/events request the page makes, in order. */
function watchEvents(page) {
  const urls = [];
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === '/api/events') urls.push(req.url());
  });
  return urls;
}

/** The latest /api/events request asked for exactly `names`, in the order shown. */
function expectEventsFor(urls, names) {
  const want = '?sensor=' + names.join(',') + '&every=250ms';
  const last = urls.length ? new URL(urls[urls.length - 1]).search : null;
  if (last !== want) {
    throw new Error(`the table subscribed with ${JSON.stringify(last)}, expected ${JSON.stringify(want)} (all: ${JSON.stringify(urls)})`);
  }
  log(`ok: /api/events${want.length > 80 ? want.slice(0, 80) + '…' : want}`);
}

/** Waits (liveness bound) for the page to subscribe to `names`, then checks it exactly. */
async function waitForEvents(page, urls, names) {
  const want = '?sensor=' + names.join(',') + '&every=250ms';
  const until = Date.now() + PATIENCE_MS;
  while (!(urls.length && new URL(urls[urls.length - 1]).search === want) && Date.now() < until) {
    await page.waitForTimeout(100);
  }
  expectEventsFor(urls, names);
}

async function waitFor(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: PATIENCE_MS, polling: 100 });
  } catch (err) {
    throw new Error(`gave up after ${PATIENCE_MS} ms waiting for ${what}`);
  }
  log(`ok: ${what}`);
}

async function live(page, opts) {
  const names = (opts.sensors || '').split(',').filter(Boolean);
  if (names.length !== 2) throw new Error('--sensors takes two names');
  const [a, b] = names;
  const events = watchEvents(page);
  const sensorFetches = [];
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === '/api/sensors') sensorFetches.push(req.url());
  });
  await page.goto(opts.url, { waitUntil: 'load' });

  await waitFor(page, `both sensors (${a}, ${b}) live in the table`, (sels) => sels.every((sel) => {
    const tr = document.querySelector(sel);
    return tr && tr.dataset.state === 'connected' && tr.querySelector('td.state').textContent.trim() === 'live';
  }), [rowSel(a), rowSel(b)]);

  // Values update without a reload: remember what each row shows, then wait for a change.
  const before = { [a]: await rowSnapshot(page, a), [b]: await rowSnapshot(page, b) };
  await page.evaluate(() => { window.__sensorlinkNoReload = true; });
  // Rows are built once and updated in place: mark the <tr> elements now, and they must
  // still be the ones in the table after new readings and a periodic refetch.
  await page.evaluate((sels) => sels.forEach((sel) => { document.querySelector(sel).__kept = true; }), [rowSel(a), rowSel(b)]);
  const refetchesBefore = sensorFetches.length;
  for (const name of names) {
    await waitFor(page, `${name}'s value or sparkline to change without a reload`, ([sel, old]) => {
      const tr = document.querySelector(sel);
      if (!tr || !window.__sensorlinkNoReload) return false;
      const spark = tr.querySelector('svg.spark polyline');
      return tr.querySelector('td.value .v').textContent !== old.value
        || (spark && spark.getAttribute('points') !== old.spark);
    }, [rowSel(name), before[name]]);
  }
  const still = await page.evaluate(() => window.__sensorlinkNoReload === true);
  if (!still) throw new Error('the page reloaded while waiting for updates');
  const until = Date.now() + PATIENCE_MS;
  while (sensorFetches.length <= refetchesBefore && Date.now() < until) await page.waitForTimeout(100);
  if (sensorFetches.length <= refetchesBefore) throw new Error('no periodic refetch of /api/sensors');
  await page.waitForTimeout(500); // let that refetch's answer be rendered
  const kept = await page.evaluate((sels) => sels.map((sel) => {
    const tr = document.querySelector(sel);
    return !!(tr && tr.__kept);
  }), [rowSel(a), rowSel(b)]);
  if (!kept.every(Boolean)) throw new Error(`table rows were rebuilt instead of updated in place: ${JSON.stringify(kept)}`);
  log('ok: rows updated in place across readings and a refetch');
  // The server's kernel view of each connection (TCP_INFO): a loopback srtt in ms, and the
  // segments retransmitted (normally 0 on loopback; a busy machine may need a probe).
  await waitFor(page, 'both rows to show the server-side TCP srtt / retransmits', (sels) => sels.every((sel) => {
    const cell = document.querySelector(`${sel} td.tcp`);
    return cell && /^\d[\d.e-]* ms \/ \d+$/.test(cell.textContent);
  }), [rowSel(a), rowSel(b)]);
  // The table is fed by SSE: subscribed to exactly the two rows shown, and handling events
  // (counted by the page), not only refetched every few seconds.
  expectEventsFor(events, [a, b]);
  const handled = await page.evaluate(() => Number(document.body.dataset.liveEvents || 0));
  await waitFor(page, `the table to handle more live events than ${handled}`, (n) =>
    Number(document.body.dataset.liveEvents || 0) > n, handled);
  // The server strip has figures (from /api/server and the SSE `server` event), and the
  // line the test had rejected, with its reason.
  await waitFor(page, 'the server strip to show open connections', () =>
    /^\d+$/.test(document.getElementById('srv-conns').textContent), null);
  if (opts.rejection) {
    await waitFor(page, `the strip to list a rejected line (${opts.rejection})`, (reason) =>
      Number(document.getElementById('srv-rejected').textContent) >= 1
      && [...document.querySelectorAll('#srv-rejections .reason')].some((r) => r.textContent === reason),
    opts.rejection);
  }
  await screenshot(page, path.join(opts.out, 'dashboard.png'));

  // The filter narrows the table to the one sensor whose name matches, then widens again.
  await page.fill('#q', a);
  await waitFor(page, `the filter "${a}" to leave only ${a}`, ([selA, selB]) => {
    const rows = document.querySelectorAll('#sensors tbody tr');
    return rows.length === 1 && document.querySelector(selA) && !document.querySelector(selB);
  }, [rowSel(a), rowSel(b)]);
  if (!(await page.evaluate(() => location.hash)).includes('q=')) throw new Error('the filter is not kept in the URL');
  await page.fill('#q', '');
  await waitFor(page, 'both sensors back once the filter is cleared', (sels) =>
    sels.every((sel) => document.querySelector(sel)), [rowSel(a), rowSel(b)]);

  // The sensor page: a chart of its values, link health, raw readings, updated live.
  await page.click(`${rowSel(a)} td.name a`);
  await waitFor(page, `${a}'s page to show a value chart with points`, () => {
    const box = document.getElementById('value-chart');
    return box && Number(box.dataset.points) >= 2 && box.querySelector('svg polyline');
  }, null);
  await waitFor(page, `${a}'s page to list raw readings`, () =>
    document.querySelectorAll('#raw tbody tr').length >= 2, null);
  const firstRaw = await page.evaluate(() => document.querySelector('#raw tbody tr').textContent);
  await waitFor(page, `${a}'s raw readings to update live`, (old) =>
    document.querySelector('#raw tbody tr').textContent !== old, firstRaw);
  await waitFor(page, `${a}'s link-health chart to have data`, () =>
    document.querySelector('#rtt-chart svg polyline') !== null, null);
  await page.setViewportSize({ width: 1280, height: 1000 });
  await page.screenshot({ path: path.join(opts.out, 'dashboard-sensor.png') });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.click('.crumbs a');
  await waitFor(page, 'the table again after going back', (sels) =>
    sels.every((sel) => document.querySelector(sel)), [rowSel(a), rowSel(b)]);

  // A stopped client turns to disconnected (no reload; SSE `sensor` event or the refetch).
  await ask(`STOP ${b}`, 'STOPPED');
  await waitFor(page, `${b} to turn disconnected`, (sel) => {
    const tr = document.querySelector(sel);
    return tr && tr.dataset.state === 'disconnected' && tr.querySelector('td.state').textContent.trim() === 'disconnected';
  }, rowSel(b));
  const stillA = await rowSnapshot(page, a);
  if (!stillA || stillA.state !== 'connected') throw new Error(`${a} should still be live: ${JSON.stringify(stillA)}`);
  await screenshot(page, path.join(opts.out, 'dashboard-stopped.png'));

  // The state filter: only the disconnected one, then all again.
  await page.selectOption('#state', 'disconnected');
  await waitFor(page, `the state filter "disconnected" to leave only ${b}`, ([selA, selB]) =>
    document.querySelectorAll('#sensors tbody tr').length === 1
    && document.querySelector(selB) && !document.querySelector(selA), [rowSel(a), rowSel(b)]);
  await page.selectOption('#state', '');
  await waitFor(page, 'both sensors back with the state filter off', (sels) =>
    sels.every((sel) => document.querySelector(sel)), [rowSel(a), rowSel(b)]);
}

async function many(page, opts) {
  const total = Number(opts.total);
  if (!(total > 50)) throw new Error('--total takes the number of sensors (more than one page)');
  const events = watchEvents(page);
  await page.goto(opts.url, { waitUntil: 'load' });
  await waitFor(page, `the first page of ${total} sensors`, (n) => {
    const info = document.getElementById('page-info');
    return document.querySelectorAll('#sensors tbody tr').length === 50 && info
      && info.textContent === `1–50 of ${n}`;
  }, total);
  const paint = await page.evaluate(() => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const rows = performance.getEntriesByName('sensorlink:rows')[0];
    return { fcp: fcp ? fcp.startTime : null, rows: rows ? rows.startTime : null };
  });
  if (paint.rows == null) throw new Error('no sensorlink:rows mark: the table never rendered rows');
  console.log(`PAINT fcp_ms=${paint.fcp == null ? 'none' : paint.fcp.toFixed(1)} rows_ms=${paint.rows.toFixed(1)}`);
  await page.screenshot({ path: path.join(opts.out, 'dashboard-1000.png') });

  const firstPage = await page.evaluate(() =>
    [...document.querySelectorAll('#sensors tbody tr')].map((tr) => tr.dataset.sensor));
  await waitForEvents(page, events, firstPage);
  await page.click('#next');
  await waitFor(page, 'the second page', (n) =>
    document.getElementById('page-info').textContent === `51–100 of ${n}`
    && document.querySelectorAll('#sensors tbody tr').length === 50, total);
  const secondPage = await page.evaluate(() =>
    [...document.querySelectorAll('#sensors tbody tr')].map((tr) => tr.dataset.sensor));
  if (secondPage.some((name) => firstPage.includes(name))) throw new Error('pages 1 and 2 overlap');
  await waitForEvents(page, events, secondPage);
  // Only the page shown is rendered, whatever the number of sensors.
  const rendered = await page.evaluate(() => document.querySelectorAll('tr[data-sensor]').length);
  if (rendered !== 50) throw new Error(`${rendered} rows rendered, expected one page of 50`);
}

/** What the login form and the data show now. */
async function loginState(page) {
  return page.evaluate(() => ({
    form: !document.getElementById('login').hidden,
    data: !document.getElementById('server').hidden && !document.getElementById('view').hidden,
    error: document.getElementById('login-error').hidden ? '' : document.getElementById('login-error').textContent,
    logout: !document.getElementById('logout').hidden,
    focused: document.activeElement ? document.activeElement.id : '',
    session: sessionStorage.getItem('sensorlink.token'),
    local: localStorage.getItem('sensorlink.token'),
  }));
}

async function login(page, opts) {
  const { token, sensor } = opts;
  const writeToken = opts['write-token'];
  if (!token || !writeToken || !sensor) throw new Error('login takes --token, --write-token and --sensor');
  const urls = [];
  page.on('request', (req) => urls.push(req.url()));
  const showsForm = () => {
    const form = document.getElementById('login');
    return form && !form.hidden && document.getElementById('server').hidden;
  };
  await page.goto(opts.url, { waitUntil: 'load' });
  await waitFor(page, 'the login form instead of data', showsForm, null);
  let state = await loginState(page);
  if (state.focused !== 'login-token') throw new Error(`the token field is not focused: ${JSON.stringify(state)}`);
  if (state.error || state.logout) throw new Error(`a first visit shows no error and no log out: ${JSON.stringify(state)}`);
  const label = await page.evaluate(() => document.querySelector('label[for="login-token"]').textContent);
  if (!/token/i.test(label)) throw new Error(`the token field's label: ${JSON.stringify(label)}`);
  await page.screenshot({ path: path.join(opts.out, 'dashboard-login.png') });

  // Refused tokens: an error text, still the form, nothing kept.
  const wrong = token.slice(0, -1) + (token.endsWith('a') ? 'b' : 'a');
  for (const [what, candidate, pattern] of [['a wrong token', wrong, /not accept/], ['a write-only token', writeToken, /read scope/]]) {
    await page.fill('#login-token', candidate);
    await page.click('#login button[type="submit"]');
    await waitFor(page, `an error for ${what}`, (re) => {
      const node = document.getElementById('login-error');
      return !node.hidden && new RegExp(re).test(node.textContent);
    }, pattern.source);
    state = await loginState(page);
    if (!state.form || state.data || state.session !== null) throw new Error(`after ${what}: ${JSON.stringify(state)}`);
    const invalid = await page.evaluate(() => document.getElementById('login-token').getAttribute('aria-invalid'));
    if (invalid !== 'true') throw new Error(`the field is not marked invalid after ${what}`);
  }
  await page.screenshot({ path: path.join(opts.out, 'dashboard-login-error.png') });

  // The read token: the table shows the sensor, and "log out" is offered.
  const showsSensor = (sel) => !!document.querySelector(sel) && document.getElementById('login').hidden;
  await page.fill('#login-token', token);
  await page.click('#login button[type="submit"]');
  await waitFor(page, `${sensor} in the table after logging in`, showsSensor, rowSel(sensor));
  state = await loginState(page);
  if (!state.logout || state.session !== token || state.local !== null) throw new Error(`after logging in: ${JSON.stringify({ ...state, session: state.session && 'set' })}`);

  // A reload keeps the session.
  await page.reload({ waitUntil: 'load' });
  await waitFor(page, `${sensor} in the table after a reload, without logging in again`, showsSensor, rowSel(sensor));

  // Log out: back to the form, the token forgotten.
  await page.click('#logout');
  await waitFor(page, 'the login form after logging out', showsForm, null);
  state = await loginState(page);
  if (state.session !== null || state.logout || state.error) throw new Error(`after logging out: ${JSON.stringify(state)}`);

  // A token an earlier page kept in localStorage moves into the session.
  await page.evaluate((t) => localStorage.setItem('sensorlink.token', t), token);
  await page.reload({ waitUntil: 'load' });
  await waitFor(page, `${sensor} in the table with the token moved from localStorage`, showsSensor, rowSel(sensor));
  state = await loginState(page);
  if (state.local !== null || state.session !== token) throw new Error(`the localStorage token was not moved: ${JSON.stringify({ local: state.local && 'set', session: state.session && 'set' })}`);
  log('ok: the localStorage token moved into the session');

  const leaked = urls.filter((u) => [token, writeToken, wrong].some((t) => u.includes(t)));
  if (leaked.length) throw new Error(`a token in a request URL: ${leaked.length} requests`);
  log(`ok: no token in any of ${urls.length} request URLs`);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  fs.mkdirSync(opts.out, { recursive: true });
  let browser;
  let page;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // No background traffic: the test machines' network is closed. launch() itself gives
      // Chromium a fresh temporary profile (--user-data-dir) and removes it on close.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: PATIENCE_MS,
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('pageerror', (err) => log(`page error: ${err.message}`));
    page.on('console', (msg) => { if (msg.type() === 'error') log(`console: ${msg.text()}`); });
    if (opts.mode === 'live') await live(page, opts);
    else if (opts.mode === 'login') await login(page, opts);
    else await many(page, opts);
    console.log('OK');
  } catch (err) {
    process.stderr.write(`FAIL ${err.message}\n`);
    if (page) {
      await page.screenshot({ path: path.join(opts.out, `failure-${opts.mode}.png`), fullPage: true })
        .catch(() => {});
    }
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    process.stdin.destroy();
  }
}

main();
