/* Baton dashboard: the browser side of the coordinator's web dashboard (coordinator/src/web).
 * Plain ES2020, no framework, no build step, nothing fetched from anywhere but this origin.
 * CSP-safe: no inline code, no style attributes (geometry only through the CSSOM), and every
 * text from the server goes through textContent. Hash routes: #/fleet, #/executions,
 * #/execution/<id>[?child=<path>], #/catalog. Live data comes over EventSource; each page owns a
 * context whose close() ends its streams and timers when the route changes. */
'use strict';

(() => {
  const TIMELINE_MAX = 2000; // bars drawn at most, and children asked of /api/executions/<id>
  const CHILD_PAGE = 100;
  const REFETCH_MS = 1000; // execution details at most once a second
  const FAILURES_SHOWN = 100;
  const LOG_CHARS_MAX = 1000000; // the oldest log text is dropped beyond this
  const RETRY_CLOSED_MS = 3000; // an EventSource the browser gave up on is reopened after this
  const PROBE_MS = 10000; // longest wait for the status of a stream that would not open
  const BAD_PHASES = new Set(['failed', 'timed_out', 'lost', 'cancelled']);
  const CHILD_PHASES = ['pending', 'dispatching', 'accepted', 'running', 'succeeded', 'failed',
    'cancelled', 'timed_out', 'lost'];
  const COUNT_KEYS = ['pending', 'running', 'succeeded', 'failed', 'cancelled'];

  // ---------------------------------------------------------------- DOM and formatting helpers

  const $ = (sel) => document.querySelector(sel);

  /** Creates an element. props: class, text, on<event>, or attributes; kids: nodes or strings. */
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid !== null && kid !== undefined && kid !== false) e.append(kid); // strings become text nodes
    }
    return e;
  }

  const nf = new Intl.NumberFormat('en-US');
  const fmtN = (n) => nf.format(Number(n) || 0);
  const pad2 = (n) => String(n).padStart(2, '0');
  const enc = encodeURIComponent;
  const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
  const errText = (e) => `${e.message} (${e.code})`;

  /** JSON.parse that answers `fallback` instead of throwing. */
  function parseJSON(text, fallback = null) {
    try {
      return text ? JSON.parse(text) : fallback;
    } catch {
      return fallback;
    }
  }

  function fmtAge(ms, now = Date.now()) {
    if (!ms) return '—';
    const d = Math.round((now - ms) / 1000);
    const a = Math.abs(d);
    const [unit, name] = [[86400, 'd'], [3600, 'h'], [60, 'min']].find(([u]) => a >= u) || [1, 's'];
    const s = `${Math.floor(a / unit)} ${name}`;
    return d < 0 ? `in ${s}` : `${s} ago`;
  }

  function fmtDur(ms) {
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return `${ms} ms`;
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${pad2(s % 60)} s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr} h ${pad2(m % 60)} min`;
    return `${Math.floor(hr / 24)} d ${hr % 24} h`;
  }

  /** A relative time ("3 s ago") kept fresh by the ticker; the local time is its tooltip. */
  function relTime(ms) {
    const e = h('time', { class: 'rel', title: fmtTime(ms) }, fmtAge(ms));
    if (ms) {
      e.dataset.ms = String(ms);
      e.dateTime = new Date(ms).toISOString();
    }
    return e;
  }

  /** A duration from start to end (0: still going, kept fresh by the ticker). */
  function liveDur(start, end) {
    if (!start) return h('span', { class: 'muted' }, '—');
    const e = h('span', { class: 'dur' }, fmtDur((end || Date.now()) - start));
    if (!end) e.dataset.start = String(start);
    return e;
  }

  function tick() {
    const now = Date.now();
    for (const e of document.querySelectorAll('time.rel[data-ms]')) e.textContent = fmtAge(Number(e.dataset.ms), now);
    for (const e of document.querySelectorAll('.dur[data-start]')) e.textContent = fmtDur(now - Number(e.dataset.start));
  }

  const badge = (state) => h('span', { class: `badge st-${state || 'unknown'}` }, state || '?');
  const cell = (...kids) => h('td', null, ...kids);
  const numCell = (n, cls) => h('td', { class: `num${n ? '' : ' zero'}${cls ? ` ${cls}` : ''}` }, fmtN(n));
  /** Column headers; a name starting with '#' is a numeric column (right-aligned). */
  const thead = (...names) => h('thead', null, h('tr', null, names.map((n) =>
    (n.startsWith('#') ? h('th', { class: 'num' }, n.slice(1)) : h('th', null, n)))));
  const section = (title, props, ...kids) => h('section', { class: 'card', ...props }, h('h2', null, title), ...kids);

  /** Fills (or makes) a bar of segments by count; widths through the CSSOM, allowed by the CSP. */
  function progressBar(c, total, bar = h('div', { class: 'progress', role: 'img' })) {
    const t = Math.max(1, Number(total) || 0);
    bar.replaceChildren();
    for (const k of ['succeeded', 'failed', 'cancelled', 'running']) {
      if (!c[k]) continue;
      const seg = h('span', { class: `seg st-${k}`, title: `${k}: ${fmtN(c[k])}` });
      seg.style.width = `${(100 * c[k]) / t}%`;
      bar.append(seg);
    }
    const done = (c.succeeded || 0) + (c.failed || 0) + (c.cancelled || 0);
    bar.setAttribute('aria-label', `${fmtN(done)} of ${fmtN(total)} done`);
    return bar;
  }

  // ---------------------------------------------------------------- banner, API, live streams

  function showBanner(msg) {
    $('#banner-text').textContent = msg;
    $('#banner').hidden = false;
  }

  function clearBanner() {
    $('#banner-text').textContent = '';
    $('#banner').hidden = true;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the API. 401 goes back to the login form (unless opts.login); non-2xx throws ApiError. */
  async function api(path, opts = {}) {
    const init = { method: opts.method || 'GET', credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (init.method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      init.headers['X-Baton-Request'] = '1';
      init.body = JSON.stringify(opts.body || {});
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'UNREACHABLE', `Cannot reach the coordinator (${e.message})`);
    }
    const text = res.status === 204 ? '' : await res.text();
    const body = parseJSON(text);
    if (res.ok) return body;
    const code = (body && body.code) || `HTTP_${res.status}`;
    const message = (body && body.message) || text.slice(0, 300) || res.statusText || 'request failed';
    if (res.status === 401 && !opts.login) showLogin();
    throw new ApiError(res.status, code, message);
  }

  /** Shows an error of a page's data: 403 hides the page, others go to the banner. */
  function pageError(ctx, err) {
    if (!ctx.alive || err.status === 401) return;
    if (err.status === 403) {
      ctx.close();
      showBanner(`You may not read this (${err.code === 'HTTP_403' ? 'PERMISSION_DENIED' : err.code})`);
      ctx.root.replaceChildren(h('p', { class: 'denied' }, err.message));
      return;
    }
    showBanner(errText(err));
  }

  /** The top bar's stream indicator: '', 'live', 'reconnecting…', 'ended'. */
  function setLive(text) {
    const e = $('#live');
    e.textContent = text;
    e.className = `live ${text === 'live' ? 'ok' : text === 'ended' ? 'ended' : 'bad'}`;
    e.hidden = !text;
  }

  /**
   * Opens an EventSource on url, closed with ctx. events: name → fn(data, sub) with parsed JSON.
   * An `error` event carrying data is the server's (the stream is over); one without data is the
   * browser losing the connection: status('reconnecting…') and EventSource retries by itself,
   * or, if the browser gave up (HTTP error), the session is checked and the stream reopened later.
   */
  function openEvents(ctx, url, events, status = setLive) {
    let es = null;
    let retry = null;
    let probe = null;
    const sub = {
      closed: false,
      close() {
        if (sub.closed) return;
        sub.closed = true;
        clearTimeout(retry);
        if (probe) probe.abort();
        if (es) es.close();
      },
    };
    const connect = () => {
      es = new EventSource(url);
      es.addEventListener('open', () => status('live'));
      for (const [name, fn] of Object.entries(events)) {
        if (name === 'error') continue;
        es.addEventListener(name, (ev) => {
          const data = parseJSON(ev.data);
          if (!sub.closed && data !== null) fn(data, sub);
        });
      }
      es.addEventListener('error', (ev) => {
        if (sub.closed) return;
        if (typeof ev.data === 'string' && ev.data) {
          sub.close();
          const data = parseJSON(ev.data, { code: 'ERROR', message: ev.data });
          if (events.error) events.error(data, sub);
          else showBanner(errText(data));
          return;
        }
        status('reconnecting…');
        if (es.readyState === EventSource.CLOSED) {
          retry = setTimeout(() => sub.closed || reopen(), RETRY_CLOSED_MS);
        }
      });
    };
    // The browser gave up on the stream (an HTTP error it does not show): ask why
    // once — a 401 goes to the login form, a refusal ends the stream with the
    // server's reason — and open it again otherwise (a 429 or 5xx, no network).
    // The probe is cut as soon as its status is known, or after PROBE_MS.
    const reopen = async () => {
      let refused = null;
      probe = new AbortController();
      const timer = setTimeout(() => probe && probe.abort(), PROBE_MS);
      try {
        await api('/api/whoami');
        const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/event-stream' }, signal: probe.signal });
        if (res.status === 401) {
          showLogin();
          return;
        }
        if (!res.ok) {
          const body = parseJSON(await res.text());
          refused = { code: (body && body.code) || `HTTP_${res.status}`, message: (body && body.message) || res.statusText, status: res.status };
        }
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
      } finally {
        clearTimeout(timer);
        if (probe) probe.abort();
        probe = null;
      }
      if (sub.closed) return;
      if (refused && refused.status >= 400 && refused.status < 500 && refused.status !== 429) {
        sub.close();
        if (events.error) events.error(refused, sub);
        else showBanner(errText(refused));
        return;
      }
      connect();
    };
    connect();
    ctx.onClose(() => sub.close());
    return sub;
  }

  /** Runs fn at most once per ms; calls while it runs or too early are folded into one more run. */
  function throttled(ctx, fn, ms) {
    let [last, timer, running, again] = [0, null, false, false];
    const run = async () => {
      timer = null;
      if (!ctx.alive) return;
      [running, last] = [true, Date.now()];
      await fn().finally(() => {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      });
    };
    const schedule = () => {
      if (running) again = true;
      else if (!timer) timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
    };
    ctx.onClose(() => clearTimeout(timer));
    return schedule;
  }

  function newCtx(root) {
    const cleanups = [];
    const ctx = {
      root,
      alive: true,
      onClose: (f) => cleanups.push(f),
      close() {
        if (!ctx.alive) return;
        ctx.alive = false;
        for (const f of cleanups.splice(0)) f();
      },
    };
    return ctx;
  }

  // ---------------------------------------------------------------- session and routing

  let principal = null;
  let page = null;

  function showLogin() {
    principal = null;
    if (page) page.close();
    page = null;
    setLive('');
    $('#topbar').hidden = true;
    $('#main').replaceChildren();
    $('#principal').textContent = '';
    $('#login').hidden = false;
    $('#token').focus();
  }

  function loggedIn(who) {
    principal = who || '?';
    $('#principal').textContent = principal;
    $('#login').hidden = true;
    $('#login-error').hidden = true;
    $('#topbar').hidden = false;
    if (!location.hash || location.hash === '#' || location.hash === '#/') location.replace('#/fleet');
    else route();
  }

  async function submitLogin(ev) {
    ev.preventDefault();
    const input = $('#token');
    const token = input.value;
    input.value = ''; // the page never keeps the token: the server answers with an HttpOnly cookie
    const err = $('#login-error');
    err.hidden = true;
    $('#login-button').disabled = true;
    try {
      const r = await api('/api/login', { method: 'POST', body: { token }, login: true });
      loggedIn(r && r.principal);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      input.focus();
    } finally {
      $('#login-button').disabled = false;
    }
  }

  async function logout() {
    try {
      await api('/api/logout', { method: 'POST', login: true });
      clearBanner();
      showLogin();
    } catch (e) {
      showBanner(errText(e));
    }
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const [name, ...rest] = path.split('/');
    let arg = rest.join('/');
    try {
      arg = decodeURIComponent(arg);
    } catch {
      /* keep it as typed */
    }
    return { name: name || 'fleet', arg, params: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) };
  }

  const PAGES = { fleet: pageFleet, executions: pageExecutions, execution: pageExecution, catalog: pageCatalog };

  function route() {
    if (!principal) return;
    if (page) page.close();
    clearBanner();
    setLive('');
    const r = parseHash();
    const fn = PAGES[r.name];
    if (!fn) {
      location.replace('#/fleet');
      return;
    }
    for (const a of document.querySelectorAll('[data-nav]')) {
      a.classList.toggle('active', a.dataset.nav === r.name || (r.name === 'execution' && a.dataset.nav === 'executions'));
    }
    const root = $('#main');
    root.replaceChildren();
    window.scrollTo(0, 0);
    page = newCtx(root);
    document.title = r.name === 'execution' ? `Baton · execution ${r.arg}` : `Baton · ${r.name}`;
    fn(page, r);
  }

  // ---------------------------------------------------------------- fleet

  function pageFleet(ctx) {
    const summary = h('p', { class: 'summary' }, 'Loading…');
    const tbody = h('tbody');
    ctx.root.append(
      h('h1', null, 'Fleet'),
      summary,
      h('table', { class: 'grid', 'data-testid': 'agents-table' },
        thead('Agent', 'State', 'Labels', '#Slots used', '#Free', '#Load', 'Last heartbeat', 'Quarantine'),
        tbody),
    );
    const render = (data) => {
      const agents = [...((data && data.agents) || [])].sort((a, b) => a.name.localeCompare(b.name));
      tbody.replaceChildren(...agents.map(agentRow));
      if (!agents.length) tbody.append(h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No agents registered.')));
      const ready = agents.filter((a) => a.state === 'ready');
      const slots = ready.reduce((s, a) => s + (a.slots || 0), 0);
      const used = ready.reduce((s, a) => s + (a.used || 0), 0);
      summary.textContent = `${fmtN(agents.length)} agents, ${fmtN(ready.length)} ready · ${fmtN(used)} of ${fmtN(slots)} ready slots in use`;
    };
    api('/api/agents')
      .then((d) => {
        if (!ctx.alive) return;
        render(d);
        openEvents(ctx, '/api/events/fleet', { agents: render });
      })
      .catch((e) => pageError(ctx, e));
  }

  function agentRow(a) {
    const labels = Object.entries(a.labels || {}).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`));
    const q = a.quarantine;
    const usage = h('div', { class: 'usage' });
    const fill = h('span', { class: 'usage-fill' });
    fill.style.width = `${a.slots ? Math.min(100, (100 * (a.used || 0)) / a.slots) : 0}%`;
    usage.append(fill);
    const hbAge = Date.now() - (a.last_heartbeat_unix_ms || 0);
    return h('tr', { 'data-testid': 'agent-row', 'data-name': a.name },
      cell(h('strong', null, a.name)),
      cell(badge(a.state)),
      h('td', { class: 'labels' }, labels.length ? labels : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'num' }, h('span', { class: 'slots' }, `${fmtN(a.used)} / ${fmtN(a.slots)}`, usage)),
      numCell(a.free),
      h('td', { class: 'num' }, a.load1 === null || a.load1 === undefined ? '—' : Number(a.load1).toFixed(2)),
      h('td', { class: hbAge > 15000 ? 'stale' : '' }, relTime(a.last_heartbeat_unix_ms)),
      q ? cell(h('span', { class: 'reason' }, q.reason || 'quarantined'), q.until_unix_ms ? h('span', { class: 'muted' }, ' · lifts ', relTime(q.until_unix_ms)) : null)
        : cell(h('span', { class: 'muted' }, '—')),
    );
  }

  // ---------------------------------------------------------------- executions

  function pageExecutions(ctx, r) {
    const f = { state: r.params.get('state') || '', package: r.params.get('package') || '', folder: r.params.get('folder') || '' };
    const tokens = []; // page tokens of the pages before this one; live only on the newest page
    let token = '';
    let sub = null;
    const stateSel = h('select', { 'data-testid': 'filter-state', 'aria-label': 'State' },
      ['', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => h('option', { value: s }, s || 'all states')));
    stateSel.value = f.state;
    const pkg = h('input', { type: 'search', placeholder: 'package', 'data-testid': 'filter-package', 'aria-label': 'Package', value: f.package });
    const folder = h('input', { type: 'search', placeholder: 'folder, e.g. /etl', 'data-testid': 'filter-folder', 'aria-label': 'Folder', value: f.folder });
    const tbody = h('tbody');
    const newer = h('button', { type: 'button', disabled: true }, '← Newer');
    const older = h('button', { type: 'button', disabled: true }, 'Older →');
    const note = h('span', { class: 'muted' });
    ctx.root.append(
      h('h1', null, 'Executions'),
      h('div', { class: 'toolbar' }, stateSel, pkg, folder, h('span', { class: 'spacer' }), note, newer, older),
      h('table', { class: 'grid', 'data-testid': 'executions-table' },
        thead('Execution', 'Package', 'Folder', 'State', 'Progress', '#Pending', '#Running', '#Succeeded', '#Failed', '#Cancelled', '#Total', 'Created', 'Duration'),
        tbody),
    );
    const query = () => new URLSearchParams(Object.entries(f).filter(([, v]) => v)).toString();
    const render = (d) => {
      const list = (d && d.executions) || [];
      tbody.replaceChildren(...list.map(executionRow));
      if (!list.length) tbody.append(h('tr', null, h('td', { colspan: 13, class: 'empty' }, 'No executions match.')));
      older.disabled = !(d && d.next_page_token);
      older.dataset.token = (d && d.next_page_token) || '';
      newer.disabled = tokens.length === 0;
    };
    let loads = 0; // a newer load makes an older one's answer stale
    const load = async () => {
      const mine = ++loads;
      if (sub) sub.close();
      sub = null;
      const q = new URLSearchParams(query());
      q.set('limit', '50');
      if (token) q.set('page_token', token);
      try {
        const d = await api(`/api/executions?${q}`);
        if (!ctx.alive || mine !== loads) return;
        render(d);
        note.textContent = token ? 'older page: not live' : '';
        if (!token) sub = openEvents(ctx, `/api/events/executions?${query()}`, { executions: render });
        else setLive('');
      } catch (e) {
        pageError(ctx, e);
      }
    };
    const apply = () => {
      Object.assign(f, { state: stateSel.value, package: pkg.value.trim(), folder: folder.value.trim() });
      const q = query();
      history.replaceState(null, '', `#/executions${q ? `?${q}` : ''}`);
      tokens.length = 0;
      token = '';
      clearBanner();
      load();
    };
    for (const e of [stateSel, pkg, folder]) e.addEventListener('change', apply);
    older.addEventListener('click', () => {
      tokens.push(token);
      token = older.dataset.token;
      load();
    });
    newer.addEventListener('click', () => {
      token = tokens.pop() || '';
      load();
    });
    load();
  }

  function executionRow(s) {
    const pkg = [s.package];
    if (s.catalog) pkg.push(h('span', { class: 'muted' }, ` v${s.catalog.version}`));
    return h('tr', { 'data-testid': 'execution-row', 'data-id': s.execution_id },
      h('td', { class: 'mono' }, h('a', { href: `#/execution/${enc(s.execution_id)}` }, s.execution_id)),
      cell(...pkg),
      cell(s.folder || '/'),
      cell(badge(s.state), s.resumes ? h('span', { class: 'muted', title: 'resumes' }, ` ↻${s.resumes}`) : null,
        s.reason ? h('div', { class: 'reason small' }, s.reason) : null),
      h('td', { class: 'progress-cell' }, progressBar(s, s.total)),
      numCell(s.pending), numCell(s.running, 'c-running'), numCell(s.succeeded, 'c-succeeded'),
      numCell(s.failed, 'c-failed'), numCell(s.cancelled, 'c-cancelled'), numCell(s.total),
      cell(relTime(s.created_unix_ms)),
      cell(liveDur(s.created_unix_ms, s.finished_unix_ms)),
    );
  }

  // ---------------------------------------------------------------- one execution

  function pageExecution(ctx, r) {
    const id = r.arg;
    const st = { summary: null, may: false, stream: null };
    const refetchSoon = throttled(ctx, () => refetch().catch((e) => pageError(ctx, e)), REFETCH_MS);
    const drawer = childDrawer(ctx, id);
    const head = execHeader(id, { cancel: () => act('cancel'), resume: () => act('resume') });
    const tasks = tasksSection();
    const fails = failuresSection(drawer.open);
    const timeline = timelineSection(drawer.open);
    const kids = childrenSection(ctx, id, drawer.open);
    ctx.root.append(head.el, tasks.el, fails.el, timeline.el, kids.el, drawer.el);

    const applySummary = (s) => {
      st.summary = s;
      head.update(s, st.may);
    };
    async function refetch() {
      const d = await api(`/api/executions/${enc(id)}?limit=${TIMELINE_MAX}`);
      if (!ctx.alive) return;
      st.may = { cancel: !!d.may_cancel, resume: !!d.may_resume };
      applySummary(d.summary);
      tasks.update(d.tasks || []);
      fails.update(d.children || []);
      timeline.update(d);
      drawer.refresh(d.children || []);
      await kids.reload();
      ensureStream();
    }
    function ensureStream() {
      if (!ctx.alive || (st.stream && !st.stream.closed) || st.summary.state !== 'running') return;
      st.stream = openEvents(ctx, `/api/events/execution/${enc(id)}`, {
        summary: (s) => {
          applySummary(s);
          refetchSoon();
        },
        end: (s, sub) => {
          sub.close();
          setLive('ended');
          applySummary(s);
          refetchSoon();
        },
      });
    }
    async function act(what) {
      const btn = what === 'cancel' ? head.cancelBtn : head.resumeBtn;
      btn.disabled = true;
      try {
        const res = await api(`/api/executions/${enc(id)}/${what}`, { method: 'POST', body: {} });
        head.setNote(what === 'cancel' ? `Cancel: ${String(res.outcome).replace('_', ' ')}` : `Resumed ${fmtN(res.resumed)} children`);
        refetchSoon();
      } catch (e) {
        if (e.status !== 401) showBanner(errText(e));
      } finally {
        btn.disabled = false;
      }
    }
    refetch()
      .then(() => {
        const child = r.params.get('child');
        if (child && ctx.alive) drawer.open(kids.find(child) || { path: child });
      })
      .catch((e) => {
        pageError(ctx, e);
        if (!ctx.alive || e.status === 401) return;
        ctx.close();
        ctx.root.replaceChildren(h('p', { class: 'denied' }, `Execution ${id} could not be loaded.`));
      });
  }

  function execHeader(id, actions) {
    const state = h('span', { 'data-testid': 'exec-state', class: 'badge' });
    const meta = h('div', { class: 'meta' });
    const counts = {};
    const countBoxes = [...COUNT_KEYS, 'total'].map((k) => {
      counts[k] = h('span', { class: 'count-num', 'data-testid': `count-${k}` }, '0');
      return h('div', { class: `count c-${k}` }, counts[k], h('span', { class: 'count-label' }, k));
    });
    const lost = h('div', { class: 'count c-lost' }, h('span', { class: 'count-num' }, '0'), h('span', { class: 'count-label' }, 'lost attempts'));
    const bar = h('div', { class: 'progress big' });
    const pct = h('span', { class: 'pct' });
    const waiting = h('p', { class: 'waiting', hidden: true });
    const reason = h('p', { class: 'reason-line', hidden: true });
    const perAgent = h('div', { class: 'per-agent' });
    const cancelBtn = h('button', { type: 'button', class: 'danger', 'data-testid': 'cancel-button', hidden: true, onclick: actions.cancel }, 'Cancel execution');
    const resumeBtn = h('button', { type: 'button', class: 'primary', 'data-testid': 'resume-button', hidden: true, onclick: actions.resume }, 'Resume');
    const note = h('span', { class: 'muted action-note' });
    const el = h('section', { class: 'card exec-head' },
      h('div', { class: 'title-row' },
        h('h1', null, 'Execution ', h('span', { class: 'mono' }, id)), state,
        h('span', { class: 'spacer' }), note, cancelBtn, resumeBtn),
      meta,
      h('div', { class: 'counts' }, countBoxes, lost),
      h('div', { class: 'progress-row' }, bar, pct),
      waiting, reason, perAgent);

    function update(s, may) {
      state.textContent = s.state;
      state.className = `badge big st-${s.state}`;
      for (const k of [...COUNT_KEYS, 'total']) counts[k].textContent = String(s[k] || 0);
      lost.firstChild.textContent = String(s.lost_attempts || 0);
      lost.hidden = !s.lost_attempts;
      progressBar(s, s.total, bar);
      const done = (s.succeeded || 0) + (s.failed || 0) + (s.cancelled || 0);
      pct.textContent = `${s.total ? Math.floor((100 * done) / s.total) : 0} % · ${fmtN(done)} of ${fmtN(s.total)} done`;
      waiting.hidden = !s.waiting;
      waiting.textContent = s.waiting ? `Waiting: ${s.waiting}` : '';
      reason.hidden = !s.reason;
      reason.textContent = s.reason ? `Reason: ${s.reason}` : '';
      cancelBtn.hidden = !(may && may.cancel && s.state === 'running');
      resumeBtn.hidden = !(may && may.resume && (s.state === 'failed' || s.state === 'cancelled'));
      meta.replaceChildren(...metaItems(s));
      perAgent.replaceChildren(...perAgentItems(s.per_agent || {}));
    }
    return { el, update, cancelBtn, resumeBtn, setNote: (t) => { note.textContent = t; } };
  }

  function metaItems(s) {
    const item = (label, ...v) => h('span', { class: 'meta-item' }, h('span', { class: 'meta-label' }, label), ...v);
    return [
      item('package', h('strong', null, s.package)),
      item('folder', s.folder || '/'),
      s.catalog ? item('catalog', `${s.catalog.path} v${s.catalog.version}`) : null,
      item('created', relTime(s.created_unix_ms)),
      s.finished_unix_ms ? item('finished', relTime(s.finished_unix_ms)) : null,
      item('duration', liveDur(s.created_unix_ms, s.finished_unix_ms)),
      s.resumes ? item('resumes', String(s.resumes)) : null,
      s.parent ? item('parent', h('a', { class: 'mono', href: `#/execution/${enc(s.parent)}` }, s.parent)) : null,
    ].filter(Boolean);
  }

  function perAgentItems(per) {
    const names = Object.keys(per).sort();
    if (!names.length) return [];
    return [h('span', { class: 'meta-label' }, 'per agent'), ...names.map((n) => h('span', { class: 'chip' },
      h('strong', null, n), ` ${fmtN(per[n].succeeded)} ok`,
      per[n].failed ? h('span', { class: 'c-failed' }, ` · ${fmtN(per[n].failed)} failed`) : null))];
  }

  function tasksSection() {
    const tbody = h('tbody');
    const el = section('Tasks', null, h('table', { class: 'grid', 'data-testid': 'tasks-table' },
      thead('Task', 'State', '#Pending', '#Running', '#Succeeded', '#Failed', '#Cancelled', '#Children', 'Reason'), tbody));
    const update = (tasks) => tbody.replaceChildren(...tasks.map((t) => {
      const c = t.counts || {};
      return h('tr', { 'data-task': t.name },
        cell(h('strong', null, t.name)), cell(badge(t.state)),
        numCell(c.pending), numCell(c.running, 'c-running'), numCell(c.succeeded, 'c-succeeded'),
        numCell(c.failed, 'c-failed'), numCell(c.cancelled, 'c-cancelled'), numCell(t.children),
        h('td', { class: 'reason' }, t.reason || ''));
    }));
    return { el, update };
  }

  function failuresSection(open) {
    const body = h('div');
    const title = h('h2', null, 'Failures');
    const el = h('section', { class: 'card', 'data-testid': 'failures' }, title, body);
    const update = (children) => {
      const bad = children.filter((c) => BAD_PHASES.has(c.phase));
      title.textContent = bad.length ? `Failures (${fmtN(bad.length)}${bad.length >= TIMELINE_MAX ? '+' : ''})` : 'Failures';
      if (!bad.length) {
        body.replaceChildren(h('p', { class: 'muted' }, 'No failed, timed out, lost or cancelled children.'));
        return;
      }
      const rows = bad.slice(0, FAILURES_SHOWN).map((c) => h('tr', { class: 'clickable', 'data-path': c.path, onclick: () => open(c) },
        h('td', { class: 'mono' }, c.path), cell(badge(c.phase)), cell(c.agent || '—'), numCell(c.attempt),
        h('td', { class: 'num' }, c.exit_code === null || c.exit_code === undefined ? '—' : String(c.exit_code)),
        h('td', { class: 'reason' }, c.reason || '')));
      body.replaceChildren(h('div', { class: 'scroll' }, h('table', { class: 'grid' }, thead('Child', 'Phase', 'Agent', '#Attempt', '#Exit', 'Reason'), h('tbody', null, rows))));
      if (bad.length > FAILURES_SHOWN) body.append(h('p', { class: 'muted' }, `Showing ${FAILURES_SHOWN} of ${fmtN(bad.length)}; filter the children table by phase for the rest.`));
    };
    return { el, update };
  }

  // ---------------------------------------------------------------- timeline (Gantt by agent)

  function timelineSection(open) {
    const note = h('span', { class: 'muted' });
    const axis = h('div', { class: 'tl-axis' });
    const lanes = h('div', { class: 'tl-lanes' });
    const el = h('section', { class: 'card', 'data-testid': 'timeline' },
      h('div', { class: 'title-row' }, h('h2', null, 'Timeline'), h('span', { class: 'spacer' }), note),
      axis, lanes, legend());
    lanes.addEventListener('click', (ev) => {
      const bar = ev.target.closest('.bar');
      if (bar && bar.child) open(bar.child);
    });
    const update = (d) => {
      const now = Date.now();
      const started = (d.children || []).filter((c) => c.started_unix_ms && c.agent).slice(0, TIMELINE_MAX);
      const t0 = Math.min(d.summary.created_unix_ms || now, ...started.map((c) => c.started_unix_ms));
      const t1 = Math.max(t0 + 1000, d.summary.finished_unix_ms || now, ...started.map((c) => c.finished_unix_ms || now));
      const total = d.children_total || 0;
      note.textContent = started.length < total ? `showing ${fmtN(started.length)} of ${fmtN(total)}` : `${fmtN(started.length)} bars`;
      drawAxis(axis, t0, t1);
      const byAgent = new Map();
      for (const c of started) {
        if (!byAgent.has(c.agent)) byAgent.set(c.agent, []);
        byAgent.get(c.agent).push(c);
      }
      const frag = document.createDocumentFragment();
      for (const agent of [...byAgent.keys()].sort()) frag.append(agentLane(agent, byAgent.get(agent), t0, t1, now));
      if (!started.length) frag.append(h('p', { class: 'muted' }, 'No child has started yet.'));
      lanes.replaceChildren(frag);
    };
    return { el, update };
  }

  function legend() {
    return h('div', { class: 'legend' }, ['running', 'succeeded', 'failed', 'cancelled'].map((p) => h('span', null, h('i', { class: `sw ph-${p}` }), p)),
      h('span', null, h('i', { class: 'sw ph-succeeded retry' }), 'attempt > 1'));
  }

  function drawAxis(axis, t0, t1) {
    axis.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const mark = h('span', { class: 'tick' }, i === 0 ? new Date(t0).toLocaleTimeString() : `+${fmtDur(((t1 - t0) * i) / 4)}`);
      mark.style.left = `${i * 25}%`;
      if (i === 4) mark.classList.add('last');
      axis.append(mark);
    }
  }

  /** One agent's row: bars packed greedily into sub-lanes so concurrent children do not overlap. */
  function agentLane(agent, children, t0, t1, now) {
    const MAX_SUB = 12;
    const span = t1 - t0;
    const ends = [];
    const track = h('div', { class: 'tl-track' });
    children.sort((a, b) => a.started_unix_ms - b.started_unix_ms);
    for (const c of children) {
      const start = c.started_unix_ms;
      const end = c.finished_unix_ms || now;
      let sub = ends.findIndex((e) => e <= start);
      if (sub < 0) sub = ends.length < MAX_SUB ? ends.length : ends.indexOf(Math.min(...ends));
      ends[sub] = end;
      const bar = h('span', { class: `bar ph-${c.phase}`, 'data-testid': 'timeline-bar', 'data-path': c.path, title: barTitle(c, start, end) });
      if (c.attempt > 1) bar.classList.add('retry');
      const width = Math.max(0.15, (100 * (end - start)) / span);
      bar.style.left = `${Math.min(100 - width, (100 * (start - t0)) / span)}%`;
      bar.style.width = `${width}%`;
      bar.style.top = `${sub * 7}px`;
      bar.child = c;
      track.append(bar);
    }
    track.style.height = `${Math.max(1, ends.length) * 7}px`;
    return h('div', { class: 'tl-row', 'data-agent': agent }, h('span', { class: 'tl-name', title: agent }, agent), track);
  }

  function barTitle(c, start, end) {
    let t = `${c.path} · ${c.phase} · ${fmtDur(end - start)}`;
    if (c.attempt > 1) {
      const earlier = (c.attempt_agents || []).slice(0, -1);
      t += ` · attempt ${c.attempt}, earlier on ${earlier.length ? earlier.join(', ') : '?'}`;
    }
    return c.reason ? `${t} · ${c.reason}` : t;
  }

  // ---------------------------------------------------------------- children table and panel

  function childrenSection(ctx, id, open) {
    let offset = 0;
    let rows = [];
    const phase = h('select', { 'aria-label': 'Phase', 'data-testid': 'filter-phase' },
      h('option', { value: '' }, 'all phases'), CHILD_PHASES.map((p) => h('option', { value: p }, p)));
    const prev = h('button', { type: 'button', 'data-testid': 'children-prev' }, '← Prev');
    const next = h('button', { type: 'button', 'data-testid': 'children-next' }, 'Next →');
    const range = h('span', { class: 'muted' });
    const tbody = h('tbody');
    const el = h('section', { class: 'card' },
      h('div', { class: 'title-row' }, h('h2', null, 'Children'), h('span', { class: 'spacer' }), phase, range, prev, next),
      h('table', { class: 'grid', 'data-testid': 'children-table' },
        thead('Child', 'Phase', '#Attempt', 'Agent', 'Item', '#Exit', 'Started', 'Duration', 'Reason / waiting'), tbody));
    async function reload() {
      const q = new URLSearchParams({ offset: String(offset), limit: String(CHILD_PAGE) });
      if (phase.value) q.set('phase', phase.value);
      const d = await api(`/api/executions/${enc(id)}/children?${q}`);
      if (!ctx.alive) return;
      rows = d.children || [];
      const total = d.total || 0;
      tbody.replaceChildren(...rows.map((c) => childRow(c, open)));
      if (!rows.length) tbody.append(h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No children.')));
      range.textContent = rows.length ? `${fmtN(offset + 1)}–${fmtN(offset + rows.length)} of ${fmtN(total)}` : `0 of ${fmtN(total)}`;
      prev.disabled = offset === 0;
      next.disabled = offset + rows.length >= total;
    }
    const go = (o) => {
      offset = Math.max(0, o);
      reload().catch((e) => pageError(ctx, e));
    };
    phase.addEventListener('change', () => go(0));
    prev.addEventListener('click', () => go(offset - CHILD_PAGE));
    next.addEventListener('click', () => go(offset + CHILD_PAGE));
    return { el, reload, find: (path) => rows.find((c) => c.path === path) };
  }

  function childRow(c, open) {
    const exit = c.exit_code === null || c.exit_code === undefined ? '—' : String(c.exit_code);
    const note = c.reason || (c.waiting ? `waiting: ${c.waiting}` : '');
    return h('tr', { 'data-testid': 'child-row', 'data-path': c.path, class: 'clickable', onclick: () => open(c) },
      h('td', { class: 'mono' }, c.path), cell(badge(c.phase)),
      h('td', { class: `num${c.attempt > 1 ? ' c-retry' : ''}`, title: (c.attempt_agents || []).join(' → ') }, String(c.attempt || 0)),
      cell(c.agent || '—'), h('td', { class: 'item' }, c.item === undefined ? '' : String(c.item)),
      h('td', { class: `num${c.exit_code ? ' c-failed' : ''}` }, exit),
      cell(c.started_unix_ms ? relTime(c.started_unix_ms) : '—'),
      cell(liveDur(c.started_unix_ms, c.finished_unix_ms || (c.phase === 'running' ? 0 : c.started_unix_ms))),
      h('td', { class: c.reason ? 'reason' : 'muted' }, note));
  }

  /** The side panel of one child: its facts, rows on demand, logs streaming live. */
  function childDrawer(pageCtx, id) {
    let ctx = null;
    let path = null;
    const info = h('div', { class: 'child-info' });
    const title = h('h2', { class: 'mono' });
    const rowsOut = h('pre', { class: 'rows', hidden: true, 'data-testid': 'child-rows' });
    const rowsBtn = h('button', { type: 'button', 'data-testid': 'load-rows' }, 'Load rows');
    const logStatus = h('span', { class: 'muted', 'data-testid': 'logs-status' });
    const logs = h('pre', { class: 'logs', 'data-testid': 'child-logs' });
    const closeBtn = h('button', { type: 'button', class: 'close', 'aria-label': 'Close', title: 'Close (Esc)', 'data-testid': 'child-panel-close' }, '×');
    const el = h('aside', { class: 'drawer', 'data-testid': 'child-panel', hidden: true },
      h('div', { class: 'title-row' }, title, h('span', { class: 'spacer' }), closeBtn),
      info,
      h('div', { class: 'title-row' }, h('h3', null, 'Rows'), rowsBtn), rowsOut,
      h('div', { class: 'title-row' }, h('h3', null, 'Logs'), logStatus), logs);
    let logChars = 0;

    function close() {
      if (ctx) ctx.close();
      ctx = null;
      path = null;
      el.hidden = true;
      if (pageCtx.alive) history.replaceState(null, '', `#/execution/${enc(id)}`);
    }
    function open(c) {
      if (ctx) ctx.close();
      ctx = newCtx(el);
      path = c.path;
      title.textContent = c.path;
      show(c);
      rowsOut.hidden = true;
      rowsOut.textContent = '';
      logs.replaceChildren();
      logChars = 0;
      el.hidden = false;
      history.replaceState(null, '', `#/execution/${enc(id)}?child=${enc(c.path)}`);
      streamLogs(ctx, c.path);
    }
    function show(c) {
      const item = (k, ...v) => [h('dt', null, k), h('dd', null, ...v)];
      const outputs = Object.entries(c.outputs || {});
      const agents = c.attempt_agents || [];
      info.replaceChildren(h('dl', null,
        item('phase', c.phase ? badge(c.phase) : '—'),
        item('task', c.task === undefined ? '—' : `${c.task} [${c.index}]`),
        item('item', c.item === undefined ? '—' : String(c.item)),
        item('attempt', `${c.attempt || 0}`, agents.length ? h('span', { class: 'muted' }, ` (agents: ${agents.map((a, i) => `#${i + 1} ${a}`).join(', ')})`) : ''),
        item('agent', c.agent || '—'),
        item('failures / lost', `${c.failures || 0} / ${c.lost || 0}`),
        item('exit code', c.exit_code === null || c.exit_code === undefined ? '—' : String(c.exit_code)),
        c.reason ? item('reason', h('span', { class: 'reason' }, c.reason)) : null,
        c.waiting ? item('waiting', c.waiting) : null,
        item('started', c.started_unix_ms ? [relTime(c.started_unix_ms), ` (${fmtTime(c.started_unix_ms)})`] : '—'),
        item('duration', liveDur(c.started_unix_ms, c.finished_unix_ms || (c.phase === 'running' ? 0 : c.started_unix_ms))),
        item('outputs', outputs.length ? h('table', { class: 'kv' }, h('tbody', null, outputs.map(([k, v]) =>
          h('tr', null, h('td', { class: 'mono' }, k), h('td', { class: 'eq' }, '='), h('td', { class: 'mono' }, typeof v === 'string' ? v : JSON.stringify(v))))))
          : h('span', { class: 'muted' }, 'none'))));
    }
    function streamLogs(c, p) {
      logStatus.textContent = 'connecting…';
      openEvents(c, `/api/executions/${enc(id)}/logs?child=${enc(p)}&follow=1`, {
        log: (d) => appendLog(d.stream, d.text),
        end: (d, sub) => {
          sub.close();
          logStatus.textContent = 'complete';
        },
        error: (d) => {
          logStatus.textContent = `error: ${d.message} (${d.code})`;
        },
      }, (s) => {
        if (s === 'live') {
          logs.replaceChildren(); // a (re)connection replays the logs from the start
          logChars = 0;
        }
        logStatus.textContent = s === 'live' ? 'streaming…' : s;
      });
    }
    function appendLog(stream, text) {
      const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      const cls = stream === 'stderr' ? 'stderr' : 'stdout';
      const last = logs.lastChild;
      if (last && last.className === cls) last.append(text);
      else logs.append(h('span', { class: cls }, text));
      logChars += text.length;
      while (logChars > LOG_CHARS_MAX && logs.firstChild) {
        logChars -= logs.firstChild.textContent.length;
        logs.firstChild.remove();
      }
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    }
    async function loadRows() {
      rowsBtn.disabled = true;
      try {
        const d = await api(`/api/executions/${enc(id)}/rows?child=${enc(path)}`);
        rowsOut.textContent = (d.rows || []).join('\n') || '(no rows)';
        if (d.truncated) rowsOut.append(h('span', { class: 'muted' }, '\n… truncated'));
        rowsOut.hidden = false;
      } catch (e) {
        if (e.status !== 401) showBanner(errText(e));
      } finally {
        rowsBtn.disabled = false;
      }
    }
    rowsBtn.addEventListener('click', loadRows);
    closeBtn.addEventListener('click', close);
    pageCtx.onClose(() => ctx && ctx.close());
    const onKey = (ev) => {
      if (ev.key === 'Escape' && !el.hidden) close();
    };
    document.addEventListener('keydown', onKey);
    pageCtx.onClose(() => document.removeEventListener('keydown', onKey));
    const refresh = (children) => {
      const c = path && children.find((x) => x.path === path);
      if (c) show(c);
    };
    return { el, open, refresh };
  }

  // ---------------------------------------------------------------- catalog

  function pageCatalog(ctx) {
    const box = h('div', { 'data-testid': 'catalog' }, h('p', { class: 'muted' }, 'Loading…'));
    ctx.root.append(h('h1', null, 'Catalog'), box);
    api('/api/catalog')
      .then((d) => {
        if (!ctx.alive) return;
        const folders = (d && d.folders) || [];
        box.replaceChildren(...folders.map(folderCard));
        if (!folders.length) box.append(h('p', { class: 'muted' }, 'No folder you may read.'));
      })
      .catch((e) => pageError(ctx, e));
  }

  function folderCard(f) {
    const rows = [];
    for (const p of f.packages || []) {
      const versions = [...(p.versions || [])].sort((a, b) => b.version - a.version);
      const link = h('a', { href: `#/executions?${new URLSearchParams({ package: p.name, folder: f.path })}`, title: 'Executions of this package' }, p.name);
      const first = h('td', { rowspan: Math.max(1, versions.length), class: 'pkg' }, h('strong', null, link), h('div', { class: 'muted mono small' }, p.path));
      if (!versions.length) rows.push(h('tr', { 'data-package': p.path }, first, h('td', { colspan: 4, class: 'muted' }, 'no versions')));
      versions.forEach((v, i) => rows.push(h('tr', { 'data-package': p.path, class: i ? 'older' : '' },
        i ? null : first,
        h('td', { class: 'num' }, `v${v.version}`, i ? '' : h('span', { class: 'chip latest' }, 'latest')),
        cell(relTime(v.deployed_unix_ms), h('span', { class: 'muted small' }, ` ${fmtTime(v.deployed_unix_ms)}`)),
        cell(v.deployed_by || '—'),
        h('td', { class: 'mono', title: v.hash }, (v.hash || '').slice(0, 12)))));
    }
    return section(f.path, { 'data-folder': f.path },
      h('table', { class: 'grid catalog' }, thead('Package', '#Version', 'Deployed', 'By', 'Hash'),
        h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No packages.')))));
  }

  // ---------------------------------------------------------------- start

  /** Asks who we are: logged in, or the login form (401), or the banner and a retry in 5 s. */
  function whoami() {
    api('/api/whoami')
      .then((w) => {
        clearBanner();
        loggedIn(w && w.principal);
      })
      .catch((e) => {
        if (e.status === 401) return;
        showBanner(errText(e));
        setTimeout(whoami, 5000);
      });
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#login-form').addEventListener('submit', submitLogin);
    $('#logout').addEventListener('click', logout);
    $('#banner-close').addEventListener('click', clearBanner);
    window.addEventListener('hashchange', route);
    setInterval(tick, 1000);
    whoami();
  });
})();
