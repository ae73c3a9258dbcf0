// sensorlink dashboard: plain JS and inline SVG, served by the binary; nothing is fetched
// from outside. Two views under hash routing: the sensor table (#/?q=&state=&offset=) and
// one sensor (#/sensor/NAME). Data comes from /api/* (docs/http-api.md); live updates from
// the SSE stream /api/events, read with fetch() so that it can carry the same
// `Authorization: Bearer` header as every other request (EventSource cannot send headers).
// A server that asks for a token (401/403) gets the login form instead of data; the token is
// kept in sessionStorage (this tab's session) and only ever sent in that header, never in a URL.
// Everything from the API reaches the DOM through textContent or attributes, never as HTML:
// sensor names come from the network.
'use strict';

(() => {
  const PAGE_SIZE = 50;
  // Safety net beside SSE: states change without readings (a stopped client), and a
  // dropped event must not leave the page wrong for long.
  const REFRESH_MS = 3000;
  const SPARK_POINTS = 60;
  const LINK = 'sensorlink_link';
  const STATE_TEXT = { connected: 'live', stale: 'stale', disconnected: 'disconnected' };
  const TOKEN_KEY = 'sensorlink.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const MAX_SSE_BUFFER = 1 << 20;
  // The sensor page redraws at most this often, however fast readings arrive.
  const DRAW_MS = 250;
  // The sensor list shows each sensor's newest value: its stream folds readings to the
  // newest per sensor and measurement this often (`?every=`), so a fast fleet costs the
  // server and the browser a few events a second per sensor, not one per reading.
  const LIST_EVERY = '250ms';

  // ---- fetching -------------------------------------------------------------------------

  // ---- the access token ------------------------------------------------------------------

  // True while the login form stands in for the data: nothing is fetched, nothing drawn.
  let locked = false;

  // Where the token lives when storage is disabled: this page only.
  let memoryToken = null;

  /** The token of this session (sessionStorage: it ends with the tab), or null. */
  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return memoryToken; }
  }

  function setToken(token) {
    memoryToken = token;
    try {
      if (token === null) sessionStorage.removeItem(TOKEN_KEY);
      else sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) { /* storage disabled: memoryToken serves */ }
  }

  /**
   * Earlier pages kept the token in localStorage, where it outlived the session: move it into
   * the session once, and remove it from there.
   */
  function migrateToken() {
    try {
      const old = localStorage.getItem(TOKEN_KEY);
      if (old === null) return;
      if (getToken() === null) setToken(old);
      localStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: nothing was kept */ }
  }

  /** Headers for every API request: the bearer token once one is set. */
  function authHeaders() {
    const token = getToken();
    return token ? { Authorization: 'Bearer ' + token } : {};
  }

  /** 401: no usable token; 403: a token that may not read. Either way: the login form. */
  const isRefusal = (status) => status === 401 || status === 403;

  async function getJSON(path) {
    const resp = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
    if (isRefusal(resp.status)) lock(resp.status);
    if (!resp.ok) {
      let detail = '';
      try { detail = (await resp.json()).error || ''; } catch (_) { /* not JSON */ }
      const err = new Error(`${path}: HTTP ${resp.status}${detail ? ': ' + detail : ''}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  /**
   * A Server-Sent Events subscription over fetch(). Reconnects with jittered backoff when the
   * stream ends or fails; `onOpen` runs on every (re)connect so the caller can refetch what it
   * may have missed in between. After `lagged` the server ends the stream: that is no error,
   * and the reconnect's `onOpen` does the one refetch.
   */
  class EventStream {
    constructor(url, handlers) {
      this.url = url;
      this.handlers = handlers;
      this.abort = new AbortController();
      this.closed = false;
      this.lagged = false;
      this.run();
    }

    close() {
      this.closed = true;
      this.abort.abort();
    }

    async run() {
      let backoffMs = 500;
      while (!this.closed) {
        try {
          const resp = await fetch(this.url, {
            headers: Object.assign({ Accept: 'text/event-stream' }, authHeaders()),
            cache: 'no-store',
            signal: this.abort.signal,
          });
          if (isRefusal(resp.status)) {
            // No retrying with a token the server refuses: the login form takes over.
            this.close();
            lock(resp.status);
            return;
          }
          if (!resp.ok || !resp.body) throw new Error(`events: HTTP ${resp.status}`);
          backoffMs = 500;
          this.lagged = false;
          this.handlers.onOpen();
          await this.read(resp.body.pipeThrough(new TextDecoderStream()).getReader());
          if (!this.closed && !this.lagged) this.handlers.onError(new Error('event stream ended'));
        } catch (err) {
          if (this.closed) return;
          this.handlers.onError(err);
        }
        if (this.closed) return;
        // Jittered, so that many pages cut off together do not come back in one burst.
        await sleep(this.lagged ? 100 : backoffMs * (0.5 + Math.random()));
        if (!this.lagged) backoffMs = Math.min(backoffMs * 2, 10000);
      }
    }

    async read(reader) {
      let buf = '';
      let event = '';
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) return;
        buf += value;
        // Walk the lines with a cursor and cut the buffer once per chunk.
        let start = 0;
        let nl;
        while ((nl = buf.indexOf('\n', start)) >= 0) {
          let line = buf.slice(start, nl);
          start = nl + 1;
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) this.dispatch(event || 'message', data.join('\n'));
            event = '';
            data = [];
          } else if (line[0] !== ':') {
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? '' : line.slice(colon + 1);
            if (val[0] === ' ') val = val.slice(1);
            if (field === 'event') event = val;
            else if (field === 'data') data.push(val);
          }
        }
        buf = buf.slice(start);
        // A line that never ends is not an event stream: drop it (the reconnect starts clean).
        if (buf.length > MAX_SSE_BUFFER) {
          reader.cancel().catch(() => {});
          throw new Error('event stream line over 1 MB');
        }
      }
    }

    dispatch(event, text) {
      if (event === 'lagged') this.lagged = true;
      let payload;
      try { payload = JSON.parse(text); } catch (_) { return; }
      const handler = this.handlers[event];
      if (handler) handler(payload);
    }
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // ---- DOM and formatting helpers -------------------------------------------------------

  /**
   * An element (`ns` null: HTML) with attributes (`onX` → listener) and children; strings
   * become text nodes, never parsed as markup.
   */
  function make(ns, tag, attrs, children) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children.flat()) {
      if (child != null) node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }
  const el = (tag, attrs, ...children) => make(null, tag, attrs, children);
  const svg = (tag, attrs, ...children) => make(SVG_NS, tag, attrs, children);

  function num(v) {
    if (typeof v !== 'number' || !isFinite(v)) return '—';
    if (Number.isInteger(v)) return String(v);
    const abs = Math.abs(v);
    return abs >= 1000 ? v.toFixed(0) : abs >= 100 ? v.toFixed(1) : abs >= 1 ? v.toFixed(2) : v.toPrecision(2);
  }
  const value = (v) => (typeof v === 'number' ? num(v) : v == null ? '—' : String(v));
  const ms = (v) => (v == null ? '—' : num(v) + ' ms');
  const pair = (p) => (p ? `${ms(p.p50)} / ${ms(p.p99)}` : '—');
  const rtt = (link) => (link ? `${ms(link.rtt_p50_ms)} / ${ms(link.rtt_p99_ms)}` : '—');
  /** The server's kernel view of the sensor's connection (TCP_INFO): srtt / retransmits. */
  const tcpText = (tcp) => (tcp ? `${ms(tcp.srtt_ms)} / ${num(tcp.retransmits)}` : '—');
  const tcpTitle = (tcp) => (tcp
    ? `server-side TCP_INFO: srtt ${ms(tcp.srtt_ms)} ± ${ms(tcp.rttvar_ms)}, min ${ms(tcp.min_rtt_ms)}, ${tcp.retransmits} segments retransmitted; sampled ${clock(tcp.sampled_at / 1e6)}`
    : 'no TCP_INFO sample (off, or not Linux)');
  /** Readings lost of those sent in one link report, in %. */
  const lossPercent = (link) => (link && link.sent ? (100 * (link.lost || 0)) / link.sent : null);

  function clock(timeMs) {
    if (timeMs == null || !isFinite(timeMs)) return '—';
    const d = new Date(timeMs);
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  /** The local date of a time, as YYYY-MM-DD. */
  function day(timeMs) {
    const d = new Date(timeMs);
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
  }

  function ago(timeMs) {
    const s = Math.max(0, (Date.now() - timeMs) / 1000);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  }

  function stateBadge(state) {
    const known = STATE_TEXT[state] ? state : 'unknown';
    return el('span', { class: `badge state-${known}` }, STATE_TEXT[state] || String(state));
  }

  function setStatus(text, isError) {
    // The status line speaks of the data; behind the login form there is none.
    if (locked) return;
    const node = document.getElementById('status');
    // Written only when it changes: the status is a live region, read out on each change.
    if (node.textContent !== text) node.textContent = text;
    node.classList.toggle('error', !!isError);
  }

  const sensorHref = (name) => '#/sensor/' + encodeURIComponent(name);
  const timeMs = (r) => r.time_ns / 1e6;

  // ---- charts (inline SVG) --------------------------------------------------------------

  const SPARK_W = 120;
  const SPARK_H = 28;

  /** A sparkline of `[time_ms, value]` points, oldest first. */
  function sparkline(points) {
    const node = svg('svg', {
      class: 'spark', viewBox: `0 0 ${SPARK_W} ${SPARK_H}`, width: SPARK_W, height: SPARK_H, role: 'img',
    });
    drawSpark(node, points);
    return node;
  }

  /** (Re)draws a sparkline's content in place: the <svg> itself stays in the page. */
  function drawSpark(node, points) {
    const w = SPARK_W;
    const h = SPARK_H;
    node.setAttribute('data-points', points.length);
    node.replaceChildren();
    const nums = points.filter((p) => typeof p[1] === 'number');
    if (!nums.length) {
      node.setAttribute('aria-label', 'no values yet');
      return;
    }
    const vs = nums.map((p) => p[1]);
    const lo = Math.min(...vs);
    const hi = Math.max(...vs);
    // Evenly spaced by index, not by time: readings of one batch may share a millisecond.
    const n = nums.length;
    const x = (i) => (n > 1 ? (i / (n - 1)) * (w - 4) + 2 : w - 2);
    const y = (v) => (hi > lo ? h - 3 - ((v - lo) / (hi - lo)) * (h - 6) : h / 2);
    const coords = nums.map((p, i) => `${x(i).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    const label = `${nums.length} recent values, ${num(lo)} to ${num(hi)}`;
    node.setAttribute('aria-label', label);
    node.append(svg('title', {}, label));
    node.append(svg('polyline', { points: coords, fill: 'none', class: 'line' }));
    const last = nums[nums.length - 1];
    node.append(svg('circle', { cx: x(n - 1).toFixed(1), cy: y(last[1]).toFixed(1), r: 2, class: 'dot' }));
  }

  /**
   * A time chart: `series` = [{label, cls, points: [[time_ms, value], …]}] (any order).
   * Axes show the value range and the time span; an empty chart says so.
   */
  function timeChart(series, opts) {
    const w = 1000;
    const h = opts.height || 200;
    const pad = { l: 56, r: 12, t: 12, b: 26 };
    const node = svg('svg', {
      class: 'chart', viewBox: `0 0 ${w} ${h}`, role: 'img',
      'aria-label': opts.label, preserveAspectRatio: 'xMidYMid meet',
    });
    node.append(svg('title', {}, opts.label));
    const all = series.flatMap((s) => s.points).filter((p) => typeof p[1] === 'number' && isFinite(p[1]));
    if (!all.length) {
      node.append(svg('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'empty' }, 'no data yet'));
      return node;
    }
    let lo = Math.min(...all.map((p) => p[1]));
    let hi = Math.max(...all.map((p) => p[1]));
    if (opts.zero) lo = Math.min(lo, 0);
    if (hi === lo) { hi += 1; lo -= opts.zero && lo === 0 ? 0 : 1; }
    const t0 = Math.min(...all.map((p) => p[0]));
    const t1 = Math.max(...all.map((p) => p[0]));
    const x = (t) => (t1 > t0 ? pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r) : w - pad.r);
    const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (h - pad.t - pad.b);
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      node.append(svg('line', { x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v), class: 'grid' }));
      node.append(svg('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' },
        num(v) + (opts.unit ? ' ' + opts.unit : '')));
    }
    // Past half a day the clock alone is ambiguous: the ends carry their date too.
    const stamp = (t) => (t1 - t0 > 12 * 3600 * 1000 ? `${day(t)} ${clock(t)}` : clock(t));
    node.append(svg('text', { x: pad.l, y: h - 6, class: 'axis' }, stamp(t0)));
    node.append(svg('text', { x: w - pad.r, y: h - 6, 'text-anchor': 'end', class: 'axis' }, stamp(t1)));
    for (const s of series) {
      const pts = s.points.filter((p) => typeof p[1] === 'number' && isFinite(p[1]))
        .sort((a, b) => a[0] - b[0]);
      if (!pts.length) continue;
      const coords = pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
      node.append(svg('polyline', { points: coords, fill: 'none', class: `line ${s.cls}` }));
      if (pts.length <= 60) {
        for (const p of pts) {
          node.append(svg('circle', { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 2.5, class: `dot ${s.cls}` }));
        }
      }
    }
    return node;
  }

  function legend(series) {
    return el('ul', { class: 'legend' },
      series.map((s) => el('li', {}, el('span', { class: `swatch ${s.cls}`, 'aria-hidden': 'true' }), s.label)));
  }

  // ---- the server strip -----------------------------------------------------------------

  const strip = {
    renderServer(s) {
      document.getElementById('srv-rate').textContent = num(s.readings_per_s);
      document.getElementById('srv-conns').textContent = num(s.connections_open);
      document.getElementById('srv-ack').textContent = pair(s.ack_latency_ms);
      document.getElementById('srv-commit').textContent = pair(s.commit_latency_ms);
      document.getElementById('srv-rejected').textContent = num(s.lines_rejected_total);
      const list = document.getElementById('srv-rejections');
      const recent = (s.recent_rejections || []).slice(0, 5);
      list.replaceChildren(...(recent.length ? recent.map((r) => el('li', {},
        el('span', { class: 'reason' }, String(r.reason)),
        ` ${r.detail || ''} `,
        el('span', { class: 'muted' }, `${r.peer || ''} ${clock(r.time_ns / 1e6)}`))) : [el('li', { class: 'muted' }, 'none')]));
      const up = s.uptime_s == null ? '' : `up ${num(s.uptime_s)} s`;
      const ready = s.ready === false ? 'store NOT ready' : 'store ready';
      document.getElementById('srv-meta').textContent =
        [`v${s.version || '?'}`, String(s.store || ''), ready, up].filter(Boolean).join(' · ');
      document.getElementById('server').classList.toggle('not-ready', s.ready === false);
    },
    renderCounts(c) {
      if (!c) return;
      document.getElementById('srv-sensors').textContent =
        `${num(c.connected)} / ${num(c.stale)} / ${num(c.disconnected)}`;
    },
  };

  // ---- the sensor table -----------------------------------------------------------------

  class ListView {
    constructor(params) {
      this.q = params.get('q') || '';
      this.state = params.get('state') || '';
      this.offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
      this.sensors = new Map(); // name → SENSOR, the page shown
      this.rows = new Map(); // name → <tr>
      this.dirty = new Set();
      this.fetchSeq = 0;
      this.stream = null;
      this.streamKey = null;
      this.renderFrame = 0;
    }

    mount(root) {
      this.filterInput = el('input', {
        id: 'q', type: 'search', placeholder: 'sensor name contains…', value: this.q,
        autocomplete: 'off', oninput: () => this.onFilter(),
      });
      this.stateSelect = el('select', { id: 'state', onchange: () => this.onFilter() },
        el('option', { value: '' }, 'all'),
        Object.entries(STATE_TEXT).map(([k, text]) => el('option', { value: k }, text)));
      this.stateSelect.value = this.state;
      this.pageText = el('span', { id: 'page-info', class: 'muted', 'aria-live': 'polite' }, '');
      this.prevBtn = el('button', { type: 'button', id: 'prev', onclick: () => this.page(-1) }, '‹ previous');
      this.nextBtn = el('button', { type: 'button', id: 'next', onclick: () => this.page(1) }, 'next ›');
      this.tbody = el('tbody', {});
      this.empty = el('p', { class: 'empty', hidden: true }, '');
      root.replaceChildren(
        el('div', { class: 'controls' },
          el('label', { for: 'q' }, 'Filter'), this.filterInput,
          el('label', { for: 'state' }, 'State'), this.stateSelect,
          el('span', { class: 'pager' }, this.prevBtn, this.pageText, this.nextBtn)),
        el('div', { class: 'table-wrap' },
          el('table', { id: 'sensors' },
            el('caption', { class: 'sr-only' }, 'Sensors'),
            el('thead', {}, el('tr', {},
              ['state', 'sensor', 'last value', 'recent', 'readings/s', 'RTT p50 / p99', 'TCP srtt / retrans.', 'loss', 'reconnects']
                .map((h) => el('th', { scope: 'col' }, h)))),
            this.tbody)),
        this.empty);
      this.refresh();
    }

    unmount() {
      this.gone = true; // a fetch still in flight must not subscribe again
      clearTimeout(this.filterTimer);
      clearTimeout(this.refreshTimer);
      if (this.stream) this.stream.close();
      cancelAnimationFrame(this.renderFrame);
    }

    onFilter() {
      clearTimeout(this.filterTimer);
      this.filterTimer = setTimeout(() => {
        this.q = this.filterInput.value.trim();
        this.state = this.stateSelect.value;
        this.offset = 0;
        this.saveHash();
        this.refresh();
      }, 200);
    }

    page(dir) {
      this.offset = Math.max(0, this.offset + dir * PAGE_SIZE);
      this.saveHash();
      this.refresh();
    }

    saveHash() {
      const p = new URLSearchParams();
      if (this.q) p.set('q', this.q);
      if (this.state) p.set('state', this.state);
      if (this.offset) p.set('offset', String(this.offset));
      const s = p.toString();
      history.replaceState(null, '', '#/' + (s ? '?' + s : ''));
    }

    async refresh() {
      const seq = ++this.fetchSeq;
      const p = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(this.offset) });
      if (this.q) p.set('q', this.q);
      if (this.state) p.set('state', this.state);
      const page = await getJSON('/api/sensors?' + p).catch((err) => {
        setStatus(`cannot load sensors: ${err.message}`, true);
      });
      if (!page || seq !== this.fetchSeq || this.gone) return; // a newer request won
      if (page.total > 0 && this.offset >= page.total) {
        this.offset = Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE;
        this.saveHash();
        this.refresh();
        return;
      }
      setStatus('');
      this.counts = page.counts ? Object.assign({}, page.counts) : null;
      strip.renderCounts(page.counts);
      this.render(page);
      this.subscribe();
    }

    render(page) {
      this.sensors = new Map(page.sensors.map((s) => [s.sensor, s]));
      const names = page.sensors.map((s) => s.sensor);
      if (names.join('\u0000') === [...this.rows.keys()].join('\u0000')) {
        // The same rows: update their cells in place (focus, clicks and screen readers
        // keep their place).
        for (const s of page.sensors) this.updateRow(this.rows.get(s.sensor), s);
      } else {
        this.rows = new Map(page.sensors.map((s) => [s.sensor, this.row(s)]));
        this.tbody.replaceChildren(...[...this.rows.values()].map((r) => r.tr));
      }
      const first = page.sensors.length ? page.offset + 1 : 0;
      const last = page.offset + page.sensors.length;
      const info = page.sensors.length ? `${first}–${last} of ${page.total}` : `0 of ${page.total}`;
      if (this.pageText.textContent !== info) this.pageText.textContent = info;
      this.prevBtn.disabled = page.offset <= 0;
      this.nextBtn.disabled = last >= page.total;
      this.empty.hidden = page.sensors.length > 0;
      this.empty.textContent = this.q || this.state ? 'No sensor matches the filter.' : 'No sensor has sent a reading yet.';
      document.body.dataset.sensorsTotal = String(page.total);
      if (names.length && !performance.getEntriesByName('sensorlink:rows').length) {
        performance.mark('sensorlink:rows');
      }
    }

    /** A row built once, with references to the cells that change. */
    row(s) {
      const r = {
        tr: el('tr', { 'data-sensor': s.sensor }),
        state: el('td', { class: 'state' }),
        value: el('span', { class: 'v' }),
        series: el('span', { class: 'series muted' }),
        spark: sparkline([]),
        rate: el('td', { class: 'num rate' }),
        rtt: el('td', { class: 'num rtt' }),
        tcp: el('td', { class: 'num tcp' }),
        loss: el('td', { class: 'num loss' }),
        reconnects: el('td', { class: 'num reconnects' }),
        sparkKey: null,
      };
      r.tr.append(r.state,
        el('td', { class: 'name' }, el('a', { href: sensorHref(s.sensor) }, s.sensor)),
        el('td', { class: 'value' }, r.value, r.series),
        el('td', { class: 'spark-cell' }, r.spark),
        r.rate, r.rtt, r.tcp, r.loss, r.reconnects);
      this.updateRow(r, s);
      return r;
    }

    /** Brings a row's cells up to date with SENSOR `s`, touching only what changed. */
    updateRow(r, s) {
      const text = (node, t) => { if (node.textContent !== t) node.textContent = t; };
      if (r.tr.dataset.state !== String(s.state)) {
        r.tr.dataset.state = String(s.state);
        r.state.replaceChildren(stateBadge(s.state));
      }
      const last = s.last;
      const link = s.link;
      const loss = lossPercent(link);
      text(r.value, last ? value(last.value) : '—');
      text(r.series, last ? ` ${last.measurement}.${last.field}` : '');
      const spark = s.spark || [];
      const sparkKey = spark.length ? `${spark.length}:${spark[0][0]}:${spark[spark.length - 1][0]}:${spark[spark.length - 1][1]}` : '';
      if (sparkKey !== r.sparkKey) {
        r.sparkKey = sparkKey;
        drawSpark(r.spark, spark);
      }
      text(r.rate, num(s.rate));
      text(r.rtt, rtt(link));
      text(r.tcp, tcpText(s.tcp));
      if (r.tcp.title !== tcpTitle(s.tcp)) r.tcp.title = tcpTitle(s.tcp);
      text(r.loss, loss == null ? '—' : `${num(loss)} %`);
      if (link) r.loss.title = `${link.lost} lost of ${link.sent} sent`;
      else r.loss.removeAttribute('title');
      text(r.reconnects, link ? num(link.reconnects) : '—');
    }

    /**
     * (Re)subscribes to the events of the sensors shown, when that set changed. With no row
     * shown there is nothing to listen to: the periodic refresh finds new sensors.
     */
    subscribe() {
      // A name with `,` or outer spaces cannot be said in the comma-separated filter: its row
      // is kept current by the periodic refresh alone.
      const names = [...this.sensors.keys()].filter((n) => n && !n.includes(',') && n.trim() === n);
      const key = names.map(encodeURIComponent).join(',');
      if (this.stream && key === this.streamKey) return;
      if (this.stream) this.stream.close();
      this.stream = null;
      this.streamKey = null;
      if (!names.length) return;
      this.streamKey = key;
      let opened = false;
      this.stream = new EventStream(`/api/events?sensor=${key}&every=${LIST_EVERY}`, {
        onOpen: () => {
          setStatus('');
          if (opened) this.refresh(); // events may have been missed while away
          opened = true;
        },
        onError: (err) => setStatus(`live updates interrupted (${err.message}); retrying`, true),
        reading: (r) => this.onReading(r),
        sensor: (s) => this.onSensor(s),
        server: (s) => strip.renderServer(s),
      });
    }

    /** Counts the live events the table handled (the browser test watches it grow). */
    countEvent() {
      this.liveEvents = (this.liveEvents || 0) + 1;
      document.body.dataset.liveEvents = String(this.liveEvents);
    }

    onReading(r) {
      const s = this.sensors.get(r.sensor);
      if (!s) return;
      this.countEvent();
      applyReading(s, r);
      this.markDirty(s.sensor);
    }

    onSensor(s) {
      const old = this.sensors.get(s.sensor);
      if (!old) return;
      this.countEvent();
      // Keep the strip's state counts in step until the next refetch brings exact ones.
      if (this.counts && old.state !== s.state && old.state in this.counts && s.state in this.counts) {
        this.counts[old.state] -= 1;
        this.counts[s.state] += 1;
        strip.renderCounts(this.counts);
      }
      // The SENSOR event carries no sparkline: keep the one the page has drawn.
      this.sensors.set(s.sensor, Object.assign({}, s, { spark: s.spark || old.spark }));
      this.markDirty(s.sensor);
      // It left the state filter: the page's rows (and total) are now the server's to say.
      if (this.state && s.state !== this.state) this.scheduleRefresh();
    }

    scheduleRefresh() {
      clearTimeout(this.refreshTimer);
      this.refreshTimer = setTimeout(() => this.refresh(), 300);
    }

    /** Updates a row at the next frame: many events per frame cost one update each. */
    markDirty(name) {
      this.dirty.add(name);
      if (this.renderFrame) return;
      this.renderFrame = requestAnimationFrame(() => {
        this.renderFrame = 0;
        for (const n of this.dirty) {
          const r = this.rows.get(n);
          const s = this.sensors.get(n);
          if (r && s) this.updateRow(r, s);
        }
        this.dirty.clear();
      });
    }

    tick() { this.refresh(); }
  }

  /** Fold a live `reading` event into a SENSOR entry (values, last, spark, link). */
  function applyReading(s, r) {
    if (r.measurement === LINK) {
      s.link = Object.assign({ time_ns: r.time_ns }, r.fields);
      return;
    }
    s.values = s.values || {};
    s.values[r.measurement] = Object.assign(s.values[r.measurement] || {}, r.fields);
    if (!s.last) {
      const field = Object.keys(r.fields).find((f) => typeof r.fields[f] === 'number');
      if (field == null) return;
      s.last = { measurement: r.measurement, field, value: r.fields[field], time_ns: r.time_ns };
      s.spark = [];
    }
    if (s.last.measurement !== r.measurement || typeof r.fields[s.last.field] !== 'number') return;
    const v = r.fields[s.last.field];
    s.last = Object.assign({}, s.last, { value: v, time_ns: r.time_ns });
    s.last_seen_ns = Math.max(s.last_seen_ns || 0, r.time_ns);
    s.spark = (s.spark || []).concat([[timeMs(r), v]]).slice(-SPARK_POINTS);
  }

  // ---- one sensor -----------------------------------------------------------------------

  const WINDOWS = [['5m', '5 min'], ['15m', '15 min'], ['1h', '1 h'], ['6h', '6 h'], ['1d', '1 day']];

  class SensorView {
    constructor(name) {
      this.name = name;
      this.sensor = null;
      this.readings = []; // newest first, without link reports
      this.links = []; // newest first
      this.field = null; // "measurement\u0000field"
      this.window = '15m';
      this.fetchSeq = 0;
      this.drawTimer = 0;
      this.truncated = false; // the history fetch hit its limit: older readings not shown
      this.gone = false;
    }

    mount(root) {
      this.title = el('h2', {}, this.name);
      this.badge = el('span', {});
      this.facts = el('dl', { class: 'facts' });
      this.fieldSelect = el('select', { id: 'field', onchange: () => { this.field = this.fieldSelect.value; this.draw(); } });
      this.windowSelect = el('select', { id: 'window', onchange: () => { this.window = this.windowSelect.value; this.refresh(true); } },
        WINDOWS.map(([v, text]) => el('option', { value: v }, text)));
      this.windowSelect.value = this.window;
      this.valueChart = el('div', { class: 'chart-box', id: 'value-chart' });
      this.valueNote = el('p', { class: 'muted', id: 'value-note', hidden: true });
      this.rttChart = el('div', { class: 'chart-box', id: 'rtt-chart' });
      this.lossChart = el('div', { class: 'chart-box', id: 'loss-chart' });
      this.rawBody = el('tbody', {});
      root.replaceChildren(
        el('p', { class: 'crumbs' }, el('a', { href: '#/' }, '‹ all sensors')),
        el('div', { class: 'sensor-head' }, this.title, this.badge),
        this.facts,
        el('section', { 'aria-labelledby': 'h-values' },
          el('h3', { id: 'h-values' }, 'Values'),
          el('div', { class: 'controls' },
            el('label', { for: 'field' }, 'Field'), this.fieldSelect,
            el('label', { for: 'window' }, 'Since'), this.windowSelect),
          this.valueChart, this.valueNote),
        el('section', { 'aria-labelledby': 'h-link' },
          el('h3', { id: 'h-link' }, 'Link health'),
          el('p', { class: 'muted' }, 'From the client\'s link reports: round-trip time per interval, and readings lost of those sent.'),
          this.rttChart, this.lossChart),
        el('section', { 'aria-labelledby': 'h-raw' },
          el('h3', { id: 'h-raw' }, 'Recent readings'),
          el('div', { class: 'table-wrap' },
            el('table', { id: 'raw' },
              el('thead', {}, el('tr', {}, ['time', 'measurement', 'tags', 'fields'].map((h) => el('th', { scope: 'col' }, h)))),
              this.rawBody))));
      this.refresh(true);
      this.subscribe();
    }

    unmount() {
      this.gone = true; // a fetch still in flight must not draw into the next view
      if (this.stream) this.stream.close();
      clearTimeout(this.drawTimer);
    }

    async refresh(withHistory) {
      const seq = ++this.fetchSeq;
      const name = encodeURIComponent(this.name);
      try {
        const sensorReq = getJSON('/api/sensors/' + name).catch((err) => {
          if (err.status === 404) return null;
          throw err;
        });
        if (withHistory) {
          const since = encodeURIComponent(this.window);
          // Settled one by one: the live entry still shows when the history cannot be read.
          const [sensor, values, links] = await Promise.allSettled([
            sensorReq,
            getJSON(`/api/readings?sensor=${name}&since=${since}&order=desc&limit=2000`),
            getJSON(`/api/readings?sensor=${name}&measurement=${LINK}&since=${since}&order=desc&limit=1000`),
          ]);
          if (seq !== this.fetchSeq || this.gone) return;
          if (sensor.status === 'fulfilled') this.sensor = sensor.value;
          if (values.status === 'fulfilled') {
            this.readings = values.value.readings.filter((r) => r.measurement !== LINK);
            this.truncated = !!values.value.truncated;
          }
          if (links.status === 'fulfilled') this.links = links.value.readings;
          const failed = [sensor, values, links].find((r) => r.status === 'rejected');
          if (failed) throw failed.reason;
        } else {
          const sensor = await sensorReq;
          if (seq !== this.fetchSeq || this.gone) return;
          this.sensor = sensor;
        }
        setStatus(this.sensor ? '' : `no sensor named “${this.name}” has been seen since the server started`, !this.sensor);
      } catch (err) {
        if (this.gone) return;
        setStatus(`cannot load ${this.name}: ${err.message}`, true);
      }
      this.drawHead();
      this.draw();
    }

    subscribe() {
      let opened = false;
      this.stream = new EventStream('/api/events?sensor=' + encodeURIComponent(this.name), {
        onOpen: () => {
          setStatus('');
          if (opened) this.refresh(true);
          opened = true;
        },
        onError: (err) => setStatus(`live updates interrupted (${err.message}); retrying`, true),
        reading: (r) => {
          if (r.sensor !== this.name) return;
          if (r.measurement === LINK) this.links.unshift(r);
          else this.readings.unshift(r);
          if (this.readings.length > 5000) this.readings.length = 5000;
          if (this.links.length > 2000) this.links.length = 2000;
          if (this.sensor) applyReading(this.sensor, r);
          this.scheduleDraw();
        },
        sensor: (s) => {
          if (s.sensor !== this.name) return;
          this.sensor = s;
          this.scheduleDraw();
        },
        server: (s) => strip.renderServer(s),
      });
    }

    /** Redraws at most once per DRAW_MS: the charts and table are rebuilt on each draw. */
    scheduleDraw() {
      if (this.drawTimer) return;
      this.drawTimer = setTimeout(() => {
        this.drawTimer = 0;
        if (this.gone) return;
        this.drawHead();
        this.draw();
      }, DRAW_MS);
    }

    drawHead() {
      const s = this.sensor;
      this.badge.replaceChildren(s ? stateBadge(s.state) : el('span', { class: 'badge state-unknown' }, 'unknown'));
      if (!s) { this.facts.replaceChildren(); return; }
      const link = s.link;
      const loss = lossPercent(link);
      const facts = [
        ['peer', s.peer || '—'], ['mode', s.mode || '—'], ['connections', num(s.connections)],
        ['last seen', s.last_seen_ns ? `${clock(s.last_seen_ns / 1e6)} (${ago(s.last_seen_ns / 1e6)})` : '—'],
        ['readings', num(s.readings)], ['readings/s', num(s.rate)],
        ['last value', s.last ? `${value(s.last.value)} (${s.last.measurement}.${s.last.field})` : '—'],
        ['server ack p50 / p99', pair(s.ack_latency_ms)],
        ['link RTT p50 / p99', rtt(link)],
        ['server TCP srtt ± rttvar', s.tcp ? `${ms(s.tcp.srtt_ms)} ± ${ms(s.tcp.rttvar_ms)} (sampled ${clock(s.tcp.sampled_at / 1e6)})` : '—'],
        ['server TCP retransmits', s.tcp ? num(s.tcp.retransmits) : '—'],
        ['loss', loss == null ? '—' : `${num(loss)} % (${link.lost} of ${link.sent})`],
        ['reconnects', link ? num(link.reconnects) : '—'],
      ];
      this.facts.replaceChildren(...facts.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', {}, v))));
    }

    /** The numeric series seen in the readings, as "measurement\0field" keys. */
    fieldKeys() {
      const keys = new Set();
      for (const r of this.readings) {
        for (const [f, v] of Object.entries(r.fields || {})) {
          if (typeof v === 'number') keys.add(r.measurement + '\u0000' + f);
        }
      }
      return [...keys].sort();
    }

    draw() {
      const keys = this.fieldKeys();
      if (this.field == null || !keys.includes(this.field)) {
        const primary = this.sensor && this.sensor.last
          ? this.sensor.last.measurement + '\u0000' + this.sensor.last.field : null;
        this.field = primary && keys.includes(primary) ? primary : (keys[0] || null);
      }
      const current = [...this.fieldSelect.options].map((o) => o.value);
      if (current.join('\u0001') !== keys.join('\u0001')) {
        this.fieldSelect.replaceChildren(...keys.map((k) => el('option', { value: k }, k.replace('\u0000', '.'))));
      }
      if (this.field != null) this.fieldSelect.value = this.field;

      const [m, f] = this.field ? this.field.split('\u0000') : [null, null];
      const points = this.readings
        .filter((r) => r.measurement === m && typeof (r.fields || {})[f] === 'number')
        .map((r) => [timeMs(r), r.fields[f]]);
      const valueSeries = [{ label: m ? `${m}.${f}` : 'value', cls: 's1', points }];
      this.valueChart.replaceChildren(
        timeChart(valueSeries, { label: `${this.name}: ${m ? m + '.' + f : 'no numeric field'} over time` }));
      this.valueChart.dataset.points = String(points.length);
      this.valueNote.hidden = !this.truncated;
      this.valueNote.textContent = this.truncated
        ? `latest ${this.readings.length} readings shown (more were stored in this window)` : '';

      const rtts = [
        { label: 'RTT p50', cls: 's1', points: this.links.map((r) => [timeMs(r), r.fields.rtt_p50_ms]) },
        { label: 'RTT p99', cls: 's2', points: this.links.map((r) => [timeMs(r), r.fields.rtt_p99_ms]) },
      ];
      this.rttChart.replaceChildren(legend(rtts),
        timeChart(rtts, { label: `${this.name}: link round-trip time`, unit: 'ms', zero: true, height: 150 }));
      const loss = [{
        label: 'loss %', cls: 's3',
        points: this.links.map((r) => [timeMs(r), lossPercent(r.fields)]).filter((p) => p[1] != null),
      }];
      this.lossChart.replaceChildren(legend(loss),
        timeChart(loss, { label: `${this.name}: readings lost per link report`, unit: '%', zero: true, height: 110 }));

      const raw = this.readings.concat(this.links)
        .sort((a, b) => b.time_ns - a.time_ns).slice(0, 40);
      this.rawBody.replaceChildren(...raw.map((r) => el('tr', {},
        el('td', { class: 'time' }, clock(timeMs(r))),
        el('td', {}, r.measurement),
        el('td', {}, Object.entries(r.tags || {}).filter(([k]) => k !== 'sensor').map(([k, v]) => `${k}=${v}`).join(' ')),
        el('td', { class: 'fields' }, Object.entries(r.fields || {}).map(([k, v]) => `${k}=${value(v)}`).join(' ')))));
    }

    tick() { this.refresh(false); }
  }

  // ---- routing and the periodic refresh -------------------------------------------------

  let view = null;

  function route() {
    if (view) view.unmount();
    view = null;
    if (locked) return;
    const hash = location.hash || '#/';
    const root = document.getElementById('view');
    if (hash.startsWith('#/sensor/')) {
      let name;
      try { name = decodeURIComponent(hash.slice('#/sensor/'.length)); } catch (_) { name = hash.slice(9); }
      document.title = `${name} · sensorlink`;
      view = new SensorView(name);
    } else {
      const q = hash.indexOf('?');
      document.title = 'sensorlink';
      view = new ListView(new URLSearchParams(q >= 0 ? hash.slice(q + 1) : ''));
    }
    view.mount(root);
  }

  async function refreshServer() {
    try {
      strip.renderServer(await getJSON('/api/server'));
    } catch (err) {
      setStatus(`cannot load server status: ${err.message}`, true);
    }
  }

  // ---- login and log out ------------------------------------------------------------------

  const loginForm = document.getElementById('login');
  const loginInput = document.getElementById('login-token');
  const loginError = document.getElementById('login-error');
  const loginButton = loginForm.querySelector('button[type="submit"]');
  const logoutButton = document.getElementById('logout');

  function showLoginError(text) {
    loginError.textContent = text;
    loginError.hidden = !text;
    if (text) loginInput.setAttribute('aria-invalid', 'true');
    else loginInput.removeAttribute('aria-invalid');
  }

  const REFUSED_TEXT = {
    401: 'The server did not accept this token (unknown, revoked or mistyped).',
    403: 'This token may not read the dashboard: it needs the read scope (sensorlink token new --read).',
  };

  /** Show the login form instead of the data (`status`: the refusal that led here, if any). */
  function lock(status) {
    if (locked) return;
    const hadToken = getToken() !== null;
    locked = true;
    route(); // unmounts the view, and with it its event stream
    document.getElementById('view').replaceChildren();
    document.getElementById('server').hidden = true;
    document.getElementById('view').hidden = true;
    const node = document.getElementById('status');
    node.textContent = '';
    node.classList.remove('error');
    // A token the server refuses is of no more use: forget it.
    if (hadToken && status) setToken(null);
    logoutButton.hidden = true;
    loginForm.hidden = false;
    showLoginError(hadToken && status ? REFUSED_TEXT[status] : '');
    loginInput.value = '';
    loginInput.focus();
  }

  /** Back to the data (after a login, or at start when no token is needed). */
  function unlock() {
    locked = false;
    loginForm.hidden = true;
    showLoginError('');
    logoutButton.hidden = getToken() === null;
    document.getElementById('server').hidden = false;
    document.getElementById('view').hidden = false;
    route();
    refreshServer();
  }

  loginForm.addEventListener('submit', async (ev) => {
    // Handled here, never submitted: the token must not travel in a URL or a form post.
    ev.preventDefault();
    const candidate = loginInput.value.trim();
    if (!candidate) {
      showLoginError('Enter an access token.');
      loginInput.focus();
      return;
    }
    loginButton.disabled = true;
    showLoginError('');
    let resp = null;
    try {
      resp = await fetch('/api/server', { headers: { Authorization: 'Bearer ' + candidate }, cache: 'no-store' });
    } catch (err) {
      showLoginError(`Cannot reach the server: ${err.message}`);
    } finally {
      loginButton.disabled = false;
    }
    if (!resp) { loginInput.focus(); return; }
    if (resp.ok) {
      setToken(candidate);
      loginInput.value = '';
      unlock();
      // Where the data starts, for keyboard and screen-reader users.
      document.getElementById('view').focus();
      return;
    }
    showLoginError(REFUSED_TEXT[resp.status] || `Cannot check the token: HTTP ${resp.status}.`);
    loginInput.select();
    loginInput.focus();
  });

  logoutButton.addEventListener('click', () => {
    setToken(null);
    locked = false; // start() decides: a server that needs no token shows the data again
    start();
  });

  /** Ask once whether the server lets this session read, then show data or the form. */
  async function start() {
    let resp = null;
    try {
      resp = await fetch('/api/server', { headers: authHeaders(), cache: 'no-store' });
    } catch (_) { /* unreachable: the views say so and keep retrying */ }
    if (resp && isRefusal(resp.status)) {
      // A token kept from before that no longer works is reported, then forgotten.
      lock(getToken() === null ? 0 : resp.status);
      return;
    }
    unlock();
  }

  migrateToken();
  window.addEventListener('hashchange', route);
  start();
  setInterval(() => {
    if (locked) return;
    refreshServer();
    if (view) view.tick();
  }, REFRESH_MS);
})();
