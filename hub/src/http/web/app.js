// The hub's live web view. Plain JS, no build step, nothing from elsewhere:
// the page runs under `Content-Security-Policy: default-src 'self'`, so no
// inline script or style, no eval, and text from the hub only ever goes in
// through textContent.
//
// It reads two server-sent event streams: /api/events (the overview, every
// second) and /api/samples?topic=T (one channel's points, as they come).
// Both reconnect by themselves with a capped, jittered backoff; while the
// overview stream is down the page says "disconnected" and greys out what it
// last showed.
//
// A hub with a token: the page asks for it (#login), keeps it in this tab's
// sessionStorage, and sends it only as `Authorization: Bearer` (a token in an
// address ends up in logs and history, and the hub refuses it there). An
// EventSource cannot send a header, so each stream connection first asks
// /api/ticket (with the header) for a ticket, good once for a few seconds.
//
// Stable hooks for tests and scripts: #conn[data-state], tr[data-agent],
// tr[data-service], tr[data-bus], td[data-field] with data-value (the raw
// number), #accepted-total[data-value], #updates[data-count],
// #chart[data-topic][data-points][data-drawn][data-received],
// #chart-status[data-state] (idle, connecting, empty, live, text,
// disconnected, refused), #login (shown while the hub needs a token),
// #token-input, tr[data-truncated] (a state change shown cut).
'use strict';

(function () {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOPIC_PREFIX = 'org.plantd.Metric.';
  const MAX_POINTS = 1200; // what the hub keeps per channel
  const RATE_WINDOW = 5; // overview events a rate is worked out over
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 15000;
  const TOKEN_KEY = 'plantd_http_token';
  const TICKET_WAIT_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat('en-US');

  // ---- formatting ---------------------------------------------------------

  function isNum(v) {
    return typeof v === 'number' && isFinite(v);
  }

  function fmtInt(v) {
    return isNum(v) ? numberFormat.format(Math.round(v)) : '–';
  }

  function fmtRate(v) {
    if (!isNum(v)) return '–';
    if (v < 10) return v.toFixed(1);
    return numberFormat.format(Math.round(v));
  }

  function fmtBytes(v) {
    if (!isNum(v)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }

  // Seconds as "0.4 s", "12 s", "5 min", "3 h 20 min", "2 d 4 h".
  function fmtSeconds(s) {
    if (!isNum(s)) return '–';
    if (s < 0) s = 0;
    if (s < 10) return s.toFixed(1) + ' s';
    if (s < 60) return Math.round(s) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    if (isNaN(d.getTime())) return '–';
    const pad = (n) => String(n).padStart(2, '0');
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return numberFormat.format(v);
      const a = Math.abs(v);
      if (a !== 0 && (a < 0.001 || a >= 1e9)) return v.toExponential(3);
      return String(Number(v.toPrecision(5)));
    }
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  function truncate(text, n) {
    return text.length > n ? text.slice(0, n - 1) + '…' : text;
  }

  // ---- DOM helpers --------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }

  // A table cell for one field: its text, the raw value in data-value.
  function cell(row, field, cls) {
    let td = row.querySelector('td[data-field="' + field + '"]');
    if (!td) {
      td = el('td');
      td.dataset.field = field;
      row.appendChild(td);
    }
    if (td.className !== (cls || '')) td.className = cls || '';
    return td;
  }

  function setCell(row, field, text, value, cls) {
    const td = cell(row, field, cls);
    setText(td, text);
    const raw = value === null || value === undefined ? '' : String(value);
    if (td.dataset.value !== raw) td.dataset.value = raw;
    return td;
  }

  function setChip(row, field, text, kind) {
    const td = cell(row, field);
    let chip = td.firstElementChild;
    if (!chip) {
      chip = el('span');
      td.appendChild(chip);
    }
    chip.className = 'chip ' + kind;
    setText(chip, text);
    td.dataset.value = text;
  }

  // Keeps a tbody's rows in step with `items`, one row per key (in the
  // items' order), so rows are updated in place rather than rebuilt.
  function syncRows(tbody, items, keyAttr, keyOf, update) {
    const existing = new Map();
    for (const row of Array.from(tbody.rows)) existing.set(row.getAttribute(keyAttr), row);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let row = existing.get(key);
      if (row) {
        existing.delete(key);
      } else {
        row = document.createElement('tr');
        row.setAttribute(keyAttr, key);
      }
      update(row, item);
      const want = previous ? previous.nextSibling : tbody.firstChild;
      if (want !== row) tbody.insertBefore(row, want);
      previous = row;
    }
    for (const row of existing.values()) row.remove();
  }

  // ---- a server-sent event stream that comes back ---------------------------

  // ---- the token, and tickets for streams ------------------------------------

  const auth = { token: '' };
  try {
    auth.token = sessionStorage.getItem(TOKEN_KEY) || '';
  } catch (e) {
    // Storage off: the token is asked for, and kept in this page only.
  }

  function authHeaders() {
    return auth.token ? { Authorization: 'Bearer ' + auth.token } : {};
  }

  // The hub wants the token: show the form, saying why. A refused token is forgotten.
  function needToken(why) {
    const form = $('login');
    if (form.hidden) setText($('login-why'), why);
    if (auth.token) {
      auth.token = '';
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch (e) {
        // nothing kept
      }
    }
    if (form.hidden) {
      form.hidden = false;
      $('token-input').focus();
    }
  }

  const TOKEN_NEEDED = 'This hub needs its HTTP token (the file named by [http] token_file): paste it here.';
  const TOKEN_REFUSED = 'The hub refused that token: check it against the file named by [http] token_file.';
  const TOKEN_IN_ADDRESS =
    'A token in the address is not used: addresses end up in logs and history (if this token was in one, ' +
    'replace it). The page asks for the token instead.';

  // Where to open a live stream: with a fresh ticket when the hub has a
  // token (an EventSource cannot send the header), as is when it has none;
  // null when the hub cannot be asked, or refuses (then the form shows).
  async function streamUrl(path) {
    let response;
    // A hub that takes the connection but never answers is a dropped stream too.
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TICKET_WAIT_MS);
    try {
      response = await fetch('/api/ticket', { cache: 'no-store', headers: authHeaders(), signal: abort.signal });
    } catch (e) {
      return null;
    } finally {
      clearTimeout(timer);
    }
    if (response.status === 401) {
      needToken(auth.token ? TOKEN_REFUSED : TOKEN_NEEDED);
      return null;
    }
    if (!response.ok) return null;
    let body;
    try {
      body = await response.json();
    } catch (e) {
      return null;
    }
    if (!body || typeof body.ticket !== 'string') return path;
    return path + (path.includes('?') ? '&' : '?') + 'ticket=' + encodeURIComponent(body.ticket);
  }

  // Follows the stream at `path`; calls onMessage(data) for each parsed
  // event and onState(state, retryAt) on changes: 'connecting', 'live'
  // (first event in), 'disconnected' (with when it tries again). An event
  // stream silent for `staleMs` counts as dropped (a proxy or a half-open
  // connection). Each connection asks for its own ticket.
  function follow(path, handlers, staleMs) {
    let source = null;
    let retryTimer = null;
    let delay = BACKOFF_MIN_MS;
    let lastEvent = 0;
    let state = '';
    let stopped = false;
    let attempt = 0;

    function setState(next, retryAt) {
      state = next;
      handlers.onState(next, retryAt);
    }

    async function open() {
      retryTimer = null;
      if (stopped) return;
      const mine = ++attempt;
      setState('connecting');
      lastEvent = Date.now();
      const url = await streamUrl(path);
      // Closed, or started again, meanwhile.
      if (stopped || mine !== attempt) return;
      if (!url) {
        drop();
        return;
      }
      source = new EventSource(url);
      source.onmessage = (event) => {
        lastEvent = Date.now();
        delay = BACKOFF_MIN_MS;
        if (state !== 'live') setState('live');
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (e) {
          return;
        }
        handlers.onMessage(data);
      };
      source.onerror = () => drop();
    }

    function drop() {
      if (source) {
        source.close();
        source = null;
      }
      if (stopped || retryTimer) return;
      const wait = Math.round(delay * (0.8 + Math.random() * 0.4));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      const retryAt = Date.now() + wait;
      retryTimer = setTimeout(open, wait);
      setState('disconnected', retryAt);
      if (handlers.onDrop) handlers.onDrop();
    }

    const watchdog = setInterval(() => {
      if (source && Date.now() - lastEvent > staleMs) drop();
    }, 1000);

    open();
    return {
      close() {
        stopped = true;
        clearInterval(watchdog);
        if (retryTimer) clearTimeout(retryTimer);
        if (source) source.close();
        source = null;
      },
      // Connects again at once, if not connected (the token was just given).
      retryNow() {
        if (stopped || source) return;
        if (retryTimer) clearTimeout(retryTimer);
        retryTimer = null;
        delay = BACKOFF_MIN_MS;
        open();
      },
    };
  }

  // Why a request fails, when the browser's EventSource cannot say: the
  // status line and the hub's one-line explanation. Reads only the head of
  // the answer (an event stream's body never ends) and lets go.
  async function probe(url) {
    const abort = new AbortController();
    try {
      const response = await fetch(url, { cache: 'no-store', signal: abort.signal, headers: authHeaders() });
      let text = '';
      if (!response.ok) text = (await response.text()).trim();
      return { status: response.status, text };
    } catch (e) {
      return { status: 0, text: '' };
    } finally {
      abort.abort();
    }
  }

  // ---- the overview ----------------------------------------------------------

  const view = {
    updates: 0,
    lastUpdate: 0,
    conn: 'connecting',
    retryAt: 0,
    // Per bus / agent: the last few [t, counters...] seen in this stream.
    history: new Map(),
    streamId: 0,
    topics: '',
  };

  // Rate over the last RATE_WINDOW events of one stream, from the hub's own
  // clock (stream_s), or the browser's when the hub does not say.
  function rate(key, t, value) {
    let h = view.history.get(key);
    if (!h || h.stream !== view.streamId) {
      h = { stream: view.streamId, points: [] };
      view.history.set(key, h);
    }
    if (!isNum(value)) return null;
    const last = h.points[h.points.length - 1];
    if (last && (t <= last[0] || value < last[1])) h.points = []; // a restart: counters begin again
    h.points.push([t, value]);
    if (h.points.length > RATE_WINDOW + 1) h.points.shift();
    if (h.points.length < 2) return null;
    const first = h.points[0];
    const end = h.points[h.points.length - 1];
    return (end[1] - first[1]) / (end[0] - first[0]);
  }

  function renderOverview(o) {
    view.updates++;
    view.lastUpdate = Date.now();
    const t = o.hub && isNum(o.hub.stream_s) ? o.hub.stream_s : performance.now() / 1000;

    if (o.hub) {
      const security = o.hub.security ? 'CURVE security on' : 'no [security]';
      setText($('hub-info'), 'v' + (o.hub.version || '?') + ' · ' + security);
    }
    renderStores(o.stores || []);
    renderAgents(o.agents || [], t);
    renderServices(o.services || []);
    renderBuses(o.buses || [], t);
    renderStateChanges(o.state_changes || []);
    updatePicker(o.agents || []);

    const updates = $('updates');
    updates.dataset.count = String(view.updates);
    setText(updates, 'updated ' + fmtClock(view.lastUpdate) + ' (' + numberFormat.format(view.updates) + ' updates)');
  }

  // The hub's own stores: one line for each failing now or found damaged
  // at start (the hub runs on, degraded); hidden when all are well.
  function renderStores(stores) {
    const lines = [];
    for (const s of stores) {
      if (s.error) lines.push('Hub store \u2018' + s.store + '\u2019 is failing: ' + s.error);
      if (s.recovered) lines.push('Hub store \u2018' + s.store + '\u2019 was found damaged at start: ' + s.recovered);
    }
    const banner = $('stores');
    setText(banner, lines.join('\n'));
    banner.hidden = lines.length === 0;
  }

  function renderAgents(agents, t) {
    const tbody = $('agents').tBodies[0];
    let up = 0;
    let silent = 0;
    let backlog = 0;
    let backlogKnown = false;
    let accepted = 0;
    let acceptedRate = 0;
    let rateKnown = false;
    syncRows(tbody, agents, 'data-agent', (a) => a.agent, (row, a) => {
      const isUp = a.link === 'up';
      if (isUp) up++;
      else silent++;
      if (isNum(a.backlog)) {
        backlog += a.backlog;
        backlogKnown = true;
      }
      if (isNum(a.accepted)) accepted += a.accepted;
      const r = rate('agent:' + a.agent, t, a.accepted);
      if (isNum(r)) {
        acceptedRate += r;
        rateKnown = true;
      }
      const storeBad = a.store_ok === false;
      // While an agent's disk is short of its reserve it drops a sample for each new one: said
      // as long as it lasts (its report's warnings), not once.
      const spaceLow = a.space_low === true;
      const warnings = Array.isArray(a.warnings) ? a.warnings.map(String) : [];
      row.dataset.link = String(a.link);
      row.dataset.warnings = String(warnings.length);
      row.className = storeBad || spaceLow ? 'row-bad' : isUp ? '' : 'row-silent';
      row.title = warnings.join('\n');

      setCell(row, 'agent', String(a.agent), a.agent, 'name');
      setChip(row, 'link', isUp ? 'up' : String(a.link || '?'), isUp ? 'ok' : 'warn');
      const ago = isNum(a.last_seen_s) ? fmtSeconds(a.last_seen_s) + ' ago' : '–';
      const seen = setCell(row, 'last_seen_s', ago, a.last_seen_s, 'num');
      if (isNum(a.last_seen_wall_ns)) seen.title = new Date(a.last_seen_wall_ns / 1e6).toString();
      const lagging = isNum(a.lag_s) && a.lag_s > 10;
      setCell(row, 'backlog', fmtInt(a.backlog), a.backlog, 'num' + (lagging ? ' warn-text' : ''));
      setCell(row, 'lag_s', fmtSeconds(a.lag_s), a.lag_s, 'num' + (lagging ? ' warn-text' : ''));
      setCell(row, 'accepted', fmtInt(a.accepted), a.accepted, 'num');
      setCell(row, 'accepted_rate', fmtRate(r), isNum(r) ? r.toFixed(3) : '', 'num');
      setCell(row, 'duplicates', fmtInt(a.duplicates), a.duplicates, 'num');
      // Every sample the agent lost, by its counters (kept across its restarts): dropped from a
      // full outbox or for space, and lost to failed writes; the breakdown in the tooltip.
      const lossKnown = isNum(a.dropped);
      const lost = lossKnown ? a.dropped + (isNum(a.store_errors) ? a.store_errors : 0) : null;
      const droppedCell = setCell(row, 'dropped', fmtInt(lost), lost, 'num' + (lost > 0 ? ' bad-text' : ''));
      droppedCell.title = lossKnown
        ? 'outbox full: ' + fmtInt(a.dropped - (a.dropped_for_space || 0)) +
          ', disk short of its reserve: ' + fmtInt(a.dropped_for_space || 0) +
          ', failed writes: ' + fmtInt(a.store_errors || 0) +
          ', damaged stretches set aside: ' + fmtInt(a.quarantined || 0)
        : '';
      if (a.store_ok === null || a.store_ok === undefined) setChip(row, 'store_ok', '?', 'warn');
      else if (!a.store_ok) setChip(row, 'store_ok', 'failing', 'bad');
      else if (spaceLow) setChip(row, 'store_ok', 'disk short', 'bad');
      else setChip(row, 'store_ok', 'ok', 'ok');
      cell(row, 'store_ok').title = warnings.join('\n');
      // Alarms in force at the agent: channel and level, marked while unacknowledged.
      const alarms = Array.isArray(a.alarms) ? a.alarms : [];
      const unacked = alarms.filter((x) => x.acknowledged === false).length;
      const alarmCell = setCell(
        row,
        'alarms',
        alarms.length ? alarms.map((x) => String(x.channel) + ' ' + String(x.state) + (x.acknowledged === false ? '!' : '')).join(', ') : '–',
        alarms.length,
        unacked > 0 ? 'bad-text' : alarms.length ? 'warn-text' : '',
      );
      alarmCell.title = alarms
        .map((x) => String(x.channel) + ': ' + String(x.state) + ' (' + String(x.priority) + ', value ' + String(x.value) + (x.acknowledged ? ', acknowledged' : ', not acknowledged') + ')')
        .join('\n');
      // Its fleet configuration: the version it runs, and the one it should while they differ.
      const c = a.config;
      if (c && c.desired > 0) {
        const drift = c.drift === true;
        const configCell = setCell(
          row,
          'config',
          drift ? 'v' + c.applied + ' → v' + c.desired + ' ' + String(c.state) : 'v' + c.applied,
          c.applied,
          drift ? 'bad-text' : '',
        );
        configCell.title = c.reason ? String(c.reason) : (c.pending || []).length ? 'at the next restart: ' + c.pending.join(', ') : '';
      } else {
        setCell(row, 'config', '–', '', '');
      }
      setCell(row, 'epoch', isNum(a.epoch) ? String(a.epoch) : '–', a.epoch, 'num small');
      setCell(row, 'uptime_s', fmtSeconds(a.uptime_s), a.uptime_s, 'num');
      setCell(row, 'version', a.version ? String(a.version) : '–', a.version, 'small');
    });
    $('agents-empty').hidden = agents.length > 0;

    const upEl = $('agents-up');
    setText(upEl, agents.length ? up + ' / ' + agents.length : '0');
    upEl.className = 'big' + (silent > 0 ? ' warn' : '');
    setText($('agents-silent'), silent > 0 ? silent + ' silent' : agents.length ? 'all reporting' : 'none yet');
    setText($('backlog-total'), backlogKnown ? fmtInt(backlog) : '–');
    const total = $('accepted-total');
    setText(total, fmtInt(accepted));
    total.dataset.value = String(accepted);
    setText($('accepted-rate'), rateKnown ? fmtRate(acceptedRate) + ' samples/s' : '');
  }

  function renderServices(services) {
    const tbody = $('services').tBodies[0];
    syncRows(tbody, services, 'data-service', (s) => s.service, (row, s) => {
      const none = s.workers === 0;
      row.className = none ? 'row-bad' : '';
      setCell(row, 'service', String(s.service), s.service, 'name');
      setCell(row, 'workers', none ? '0 (none)' : fmtInt(s.workers), s.workers, 'num' + (none ? ' bad-text' : ''));
      setCell(row, 'idle', fmtInt(s.idle), s.idle, 'num');
      setCell(row, 'queued', fmtInt(s.queued), s.queued, 'num' + (s.queued > 0 ? ' warn-text' : ''));
      setCell(row, 'queued_bytes', fmtBytes(s.queued_bytes), s.queued_bytes, 'num');
      setCell(row, 'requests', fmtInt(s.requests), s.requests, 'num');
      setCell(row, 'replies', fmtInt(s.replies), s.replies, 'num');
      setCell(row, 'expired', fmtInt(s.expired), s.expired, 'num' + (s.expired > 0 ? ' warn-text' : ''));
      setCell(row, 'overflowed', fmtInt(s.overflowed), s.overflowed, 'num' + (s.overflowed > 0 ? ' bad-text' : ''));
    });
    $('services-empty').hidden = services.length > 0;
  }

  // Counters that are zero on a healthy bus.
  const BUS_PROBLEMS = [
    ['publish_denied', 'publish denied'],
    ['subscribe_denied', 'subscribe denied'],
    ['malformed_up', 'malformed'],
    ['too_many_frames', 'too many frames'],
    ['subscribers_closed', 'subscribers dropped'],
    ['capture_dropped', 'capture dropped'],
    ['record_errors', 'record errors'],
  ];

  function renderBuses(buses, t) {
    const tbody = $('buses').tBodies[0];
    let metricRate = null;
    syncRows(tbody, buses, 'data-bus', (b) => b.bus, (row, b) => {
      const down = rate('bus-down:' + b.bus, t, b.messages_down);
      const up = rate('bus-up:' + b.bus, t, b.messages_up);
      if (b.bus === 'metric') metricRate = down;
      setCell(row, 'bus', String(b.bus), b.bus, 'name');
      setCell(row, 'rate_down', fmtRate(down), isNum(down) ? down.toFixed(3) : '', 'num');
      setCell(row, 'rate_up', fmtRate(up), isNum(up) ? up.toFixed(3) : '', 'num');
      setCell(row, 'messages_down', fmtInt(b.messages_down), b.messages_down, 'num');
      setCell(row, 'bytes_down', fmtBytes(b.bytes_down), b.bytes_down, 'num');
      setCell(row, 'subscriptions', fmtInt(b.subscriptions), b.subscriptions, 'num');
      const problems = BUS_PROBLEMS.filter(([k]) => isNum(b[k]) && b[k] > 0).map(([k, name]) => name + ' ' + fmtInt(b[k]));
      setCell(row, 'problems', problems.length ? problems.join(', ') : 'none', problems.length, problems.length ? 'bad-text' : 'small');
    });
    setText($('metric-rate'), fmtRate(metricRate));
  }

  function renderStateChanges(changes) {
    const tbody = $('state-changes').tBodies[0];
    // Newest first, as the hub sends them; rebuilt only when they change.
    const signature = changes.length ? JSON.stringify(changes[0]) + changes.length : '';
    if (tbody.dataset.signature === signature) return;
    tbody.dataset.signature = signature;
    tbody.replaceChildren(
      ...changes.map((c) => {
        const row = el('tr');
        // The hub cuts long fields (and says which): shown with "…" and their full size.
        const cut = Array.isArray(c.truncated) ? c.truncated : [];
        if (cut.length) row.dataset.truncated = cut.join(' ');
        const more = (field, text) => (cut.includes(field) ? text + '…' : text);
        const when = typeof c.ts === 'string' ? Date.parse(c.ts) : NaN;
        const time = el('td', 'small', isNaN(when) ? more('ts', String(c.ts || '–')) : fmtClock(when));
        if (!isNaN(when)) time.title = String(c.ts);
        row.appendChild(time);
        row.appendChild(el('td', 'name', more('scope', String(c.scope || ''))));
        const key = el('td', '', more('key', c.key === null || c.key === undefined ? '' : String(c.key)));
        if (isNum(c.key_bytes)) key.title = 'cut: the key is ' + fmtBytes(c.key_bytes);
        row.appendChild(key);
        row.appendChild(el('td', '', String(c.op || '')));
        let value = c.value === undefined || c.value === null ? '' : JSON.stringify(c.value);
        if (typeof c.value_preview === 'string') value = c.value_preview + '…';
        const size = isNum(c.value_bytes) ? ' (' + fmtBytes(c.value_bytes) + ')' : '';
        const td = el('td', 'value', truncate(value, 120) + size);
        if (value.length > 120 || size) td.title = value + size;
        row.appendChild(td);
        return row;
      })
    );
    $('state-empty').hidden = changes.length > 0;
  }

  // The picker: one group per agent, its channels' topics as options.
  function updatePicker(agents) {
    const groups = agents
      .filter((a) => Array.isArray(a.channels) && a.channels.length)
      .map((a) => [String(a.agent), a.channels.map(String)]);
    const signature = JSON.stringify(groups);
    if (signature === view.topics) return;
    view.topics = signature;
    const picker = $('channel-picker');
    const keep = chart.topic || picker.value;
    const first = el('option', '', groups.length ? 'pick a channel…' : 'no channel reported yet');
    first.value = '';
    const options = [first];
    for (const [agent, channels] of groups) {
      const group = el('optgroup');
      group.label = agent;
      for (const channel of channels) {
        const option = el('option', '', channel);
        option.value = TOPIC_PREFIX + agent + '.' + channel;
        group.appendChild(option);
      }
      options.push(group);
    }
    picker.replaceChildren(...options);
    picker.value = keep;
    if (picker.value !== keep) picker.value = '';
  }

  function setConn(state, retryAt) {
    if (state === 'connecting') view.streamId++; // stream_s starts again
    view.conn = state;
    view.retryAt = retryAt || 0;
    showConn();
  }

  // The connection badge (ticks every second while a retry is pending).
  function showConn() {
    const conn = $('conn');
    conn.dataset.state = view.conn;
    let text;
    if (view.conn === 'live') text = 'live';
    else if (view.conn === 'connecting') text = view.updates ? 'reconnecting…' : 'connecting…';
    else {
      const wait = Math.max(0, Math.ceil((view.retryAt - Date.now()) / 1000));
      text = 'disconnected · retry in ' + wait + ' s';
    }
    setText(conn, text);
    const stale = view.conn !== 'live' && view.updates > 0;
    $('main').classList.toggle('stale', stale);
    document.title = (view.conn === 'disconnected' ? '⚠ disconnected · ' : '') + 'plantd hub';
    if (stale && view.lastUpdate) {
      setText($('updates'), 'disconnected: showing data as of ' + fmtClock(view.lastUpdate));
    }
  }

  function showNotice(text) {
    const notice = $('notice');
    notice.hidden = !text;
    setText(notice, text || '');
  }

  // ---- the chart -------------------------------------------------------------

  const W = 800;
  const H = 280;
  const PAD = { left: 64, right: 14, top: 12, bottom: 28 };

  const chart = {
    topic: '',
    stream: null,
    points: [], // [{t: ms, v: number|boolean|string|null}], by time
    received: 0,
    state: 'idle',
    retryAt: 0,
    refused: '',
    drawPending: false,
  };

  function chartStatus(state, text) {
    chart.state = state;
    const status = $('chart-status');
    status.dataset.state = state;
    setText(status, text);
  }

  function describeChart() {
    const topic = chart.topic;
    switch (chart.state) {
      case 'idle':
        return chartStatus('idle', 'Pick a channel, or type a topic, to chart it live.');
      case 'connecting':
        return chartStatus('connecting', 'Connecting to ' + topic + '…');
      case 'refused':
        return chartStatus('refused', chart.refused);
      case 'disconnected': {
        const wait = Math.max(0, Math.ceil((chart.retryAt - Date.now()) / 1000));
        return chartStatus('disconnected', 'Disconnected from the hub: retrying in ' + wait + ' s. The points shown are the last received.');
      }
    }
    if (!chart.points.length) {
      return chartStatus(
        'empty',
        'No points yet for ' + topic + '. The hub starts following a channel when it is first charted: ' +
          'points appear as samples arrive (check the agent is up and the channel name is right).'
      );
    }
    const numeric = chart.points.some((p) => typeof p.v === 'number' || typeof p.v === 'boolean');
    if (!numeric) return chartStatus('text', 'This channel carries text, not numbers: its latest value is shown above.');
    const last = chart.points[chart.points.length - 1];
    chartStatus(
      'live',
      numberFormat.format(chart.points.length) + ' points, latest at ' + fmtClock(last.t) + ' (' + fmtSeconds((Date.now() - last.t) / 1000) + ' ago).'
    );
  }

  function startChart(topic) {
    stopChart();
    chart.topic = topic;
    chart.points = [];
    chart.received = 0;
    const svgEl = $('chart');
    svgEl.dataset.topic = topic;
    $('chart-stop').hidden = false;
    $('topic-input').value = topic;
    const picker = $('channel-picker');
    picker.value = topic;
    if (picker.value !== topic) picker.value = '';
    setText($('chart-title'), topic);
    setText($('chart-latest'), '');
    if (location.hash !== '#' + encodeURIComponent(topic)) {
      history.replaceState(null, '', location.pathname + '#' + encodeURIComponent(topic));
    }
    const url = '/api/samples?topic=' + encodeURIComponent(topic);
    let opened = false;
    chart.stream = follow(
      url,
      {
        onMessage(data) {
          opened = true;
          if (data.topic !== undefined && data.topic !== chart.topic) return;
          if (typeof data.unit === 'string' && data.unit) setText($('chart-title'), chart.topic + ' (' + data.unit + ')');
          addPoints(Array.isArray(data.points) ? data.points : []);
        },
        onState(state, retryAt) {
          if (state === 'disconnected') chart.retryAt = retryAt;
          if (state === 'live') chart.state = 'live';
          else if (!(state === 'disconnected' && chart.state === 'refused')) chart.state = state;
          describeChart();
          drawChart();
        },
        async onDrop() {
          // Refused outright (400, 503: too many channels charted)? Say why.
          if (opened) return;
          const answer = await probe(url);
          if (chart.topic !== topic || answer.status < 400) return;
          chart.refused = 'The hub refused this chart (' + answer.status + '): ' + (answer.text || 'no reason given') + ' Retrying.';
          if (answer.status === 401) needToken(auth.token ? TOKEN_REFUSED : TOKEN_NEEDED);
          chart.state = 'refused';
          describeChart();
        },
      },
      // The hub sends points only when there are new ones: a quiet channel is
      // not a dead stream, so only a long silence counts.
      120000
    );
    drawChart();
  }

  function stopChart() {
    if (chart.stream) chart.stream.close();
    chart.stream = null;
    chart.topic = '';
    chart.points = [];
    chart.received = 0;
    chart.state = 'idle';
    const svgEl = $('chart');
    svgEl.dataset.topic = '';
    $('chart-stop').hidden = true;
    setText($('chart-title'), '');
    setText($('chart-latest'), '');
    drawChart();
    describeChart();
  }

  function addPoints(points) {
    let changed = false;
    for (const p of points) {
      if (!p || !(isNum(p.t_ms) || isNum(p.wall_ns))) continue;
      chart.received++;
      // t_ms is exact; wall_ns (beyond 2^53) only to the nearest 256 ns.
      const t = isNum(p.t_ms) ? p.t_ms : p.wall_ns / 1e6;
      const point = { t, v: p.value === undefined ? null : p.value };
      const list = chart.points;
      // Mostly in order; a late (historical) sample goes where it belongs,
      // and one sent again (a hub restart) replaces its copy.
      let i = list.length;
      while (i > 0 && list[i - 1].t > point.t) i--;
      if (i > 0 && list[i - 1].t === point.t) list[i - 1] = point;
      else list.splice(i, 0, point);
      changed = true;
    }
    if (chart.points.length > MAX_POINTS) chart.points.splice(0, chart.points.length - MAX_POINTS);
    const svgEl = $('chart');
    svgEl.dataset.received = String(chart.received);
    if (chart.points.length) {
      const last = chart.points[chart.points.length - 1];
      setText($('chart-latest'), fmtValue(last.v));
    }
    if (changed || !points.length) scheduleDraw();
    describeChart();
  }

  function scheduleDraw() {
    if (chart.drawPending) return;
    chart.drawPending = true;
    const run = () => {
      chart.drawPending = false;
      drawChart();
    };
    // A hidden tab gets no animation frames: draw there on the next tick.
    if (document.hidden) setTimeout(run, 0);
    else requestAnimationFrame(run);
  }

  // 1, 2 or 5 times a power of ten: about `count` steps across `span`.
  function niceStep(span, count) {
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / power;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * power;
  }

  // A step of whole seconds, minutes or hours near `ms`, for time labels.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  function timeStep(ms) {
    const s = ms / 1000;
    return (TIME_STEPS.find((step) => step >= s) || TIME_STEPS[TIME_STEPS.length - 1]) * 1000;
  }

  function drawChart() {
    const root = $('chart');
    const parts = [];
    const plotted = chart.points
      .map((p) => ({ t: p.t, y: typeof p.v === 'boolean' ? (p.v ? 1 : 0) : p.v }))
      .filter((p) => isNum(p.y) || p.y === null);
    const values = plotted.filter((p) => isNum(p.y));
    root.dataset.points = String(chart.points.length);

    if (!values.length) {
      let message = '';
      if (chart.topic && !chart.points.length) message = 'No points yet: waiting for samples on this channel';
      else if (chart.topic) message = 'Nothing to draw: this channel carries text';
      else message = 'No channel charted';
      parts.push(svg('text', { class: 'message', x: W / 2, y: H / 2, 'text-anchor': 'middle' }));
      parts[0].textContent = message;
      root.replaceChildren(...parts);
      root.dataset.drawn = '0';
      return;
    }

    // Time runs over what is kept (at least 10 s); values are padded a little.
    const t1 = values[values.length - 1].t;
    const t0 = Math.min(values[0].t, t1 - 10000);
    let lo = Math.min(...values.map((p) => p.y));
    let hi = Math.max(...values.map((p) => p.y));
    if (lo === hi) {
      const d = Math.abs(lo) * 0.1 || 1;
      lo -= d;
      hi += d;
    } else {
      const d = (hi - lo) * 0.06;
      lo -= d;
      hi += d;
    }
    const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - ((v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);

    const step = niceStep(hi - lo, 5);
    const decimals = Math.max(0, -Math.floor(Math.log10(step)));
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {
      const yy = y(v).toFixed(1);
      parts.push(svg('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy }));
      const label = svg('text', { class: 'axis', x: PAD.left - 6, y: Number(yy) + 4, 'text-anchor': 'end' });
      label.textContent = Math.abs(v) >= 1e6 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(1) : v.toFixed(Math.min(decimals, 6));
      parts.push(label);
    }
    const tStep = timeStep((t1 - t0) / 6);
    for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
      const xx = x(t).toFixed(1);
      parts.push(svg('line', { class: 'grid', x1: xx, x2: xx, y1: PAD.top, y2: H - PAD.bottom }));
      const label = svg('text', { class: 'axis', x: xx, y: H - 8, 'text-anchor': 'middle' });
      label.textContent = fmtClock(t);
      parts.push(label);
    }

    // The line breaks where samples stop for a while (an outage, a null).
    const gaps = [];
    for (let i = 1; i < values.length; i++) gaps.push(values[i].t - values[i - 1].t);
    gaps.sort((a, b) => a - b);
    const typical = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
    const breakAfter = Math.max(typical * 5, 2000);
    let d = '';
    let drawn = 0;
    let previous = null;
    for (const p of plotted) {
      if (!isNum(p.y)) {
        previous = null;
        continue;
      }
      const cmd = previous && p.t - previous.t <= breakAfter ? 'L' : 'M';
      d += cmd + x(p.t).toFixed(1) + ',' + y(p.y).toFixed(1);
      previous = p;
      drawn++;
    }
    const line = svg('path', { id: 'chart-line', class: 'line', d });
    parts.push(line);
    const last = values[values.length - 1];
    parts.push(svg('circle', { id: 'chart-last', class: 'last', cx: x(last.t).toFixed(1), cy: y(last.y).toFixed(1), r: 4 }));
    root.replaceChildren(...parts);
    root.dataset.drawn = String(drawn);
  }

  // ---- start -------------------------------------------------------------------

  function topicFrom(text) {
    const t = text.trim();
    if (!t) return '';
    // "agent.channel" is short for the full topic.
    return t.startsWith(TOPIC_PREFIX) ? t : TOPIC_PREFIX + t;
  }

  function init() {
    // A token in the address (an old bookmark): out of the address bar and
    // the history, and not used.
    if (/[?&]token=/.test(location.search)) {
      history.replaceState(null, '', location.pathname + location.hash);
      showNotice(TOKEN_IN_ADDRESS);
    }

    $('channel-picker').addEventListener('change', (e) => {
      const topic = e.target.value;
      if (topic) startChart(topic);
    });
    $('chart-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const topic = topicFrom($('topic-input').value) || $('channel-picker').value;
      if (topic) startChart(topic);
    });
    $('chart-stop').addEventListener('click', () => {
      stopChart();
      history.replaceState(null, '', location.pathname);
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) drawChart();
    });

    const overview = follow(
      '/api/events',
      { onMessage: renderOverview, onState: setConn },
      // An overview comes every second: five without one is a dropped stream.
      5000
    );
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('token-input').value.trim();
      if (!token) return;
      auth.token = token;
      try {
        sessionStorage.setItem(TOKEN_KEY, token);
      } catch (err) {
        // Storage off: kept in this page only.
      }
      $('token-input').value = '';
      $('login').hidden = true;
      overview.retryNow();
      if (chart.stream) chart.stream.retryNow();
    });
    // Countdowns and "ago" texts move on between events.
    setInterval(() => {
      if (view.conn !== 'live') showConn();
      if (chart.topic && chart.state !== 'refused') describeChart();
    }, 1000);

    const fromHash = decodeURIComponent(location.hash.slice(1));
    if (fromHash.startsWith(TOPIC_PREFIX)) startChart(fromHash);
    else describeChart();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
