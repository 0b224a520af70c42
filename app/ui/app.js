// The shopflow dashboard: one page over the admin API (the same one the CLI uses). No framework,
// no build step; every view polls what it shows every two seconds.
'use strict';

const POLL_MS = 2000;
const HISTORY = 150; // samples kept for the charts (five minutes at two seconds)

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const enc = encodeURIComponent;
const byId = (id) => document.getElementById(id);
const fmtTime = (t) => (t ? new Date(typeof t === 'number' ? t : Date.parse(t)).toLocaleString() : '');
const statusClass = (s) => ({ SHIPPED: 'ok', completed: 'ok', closed: 'ok', ok: 'ok', open: 'bad', degraded: 'bad', CANCELLED: 'warn', compensated: 'warn', failed: 'bad', 'half-open': 'warn', halfopen: 'warn', down: 'bad', streaming: 'ok', new: 'ok', shadow: 'warn' }[s] || '');
const pill = (s) => `<span class="pill ${statusClass(s)}">${esc(s)}</span>`;

// ---- the admin token -------------------------------------------------------------------------

const token = {
  get: () => sessionStorage.getItem('shopflow-admin-token') || '',
  set: (t) => sessionStorage.setItem('shopflow-admin-token', t.trim()),
};

class NeedsToken extends Error {}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (token.get()) headers.authorization = `Bearer ${token.get()}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) throw new NeedsToken();
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = text; }
  if (!r.ok) {
    const e = new Error(`${method} ${path}: ${r.status} ${v && v.message ? v.message : text}`);
    e.status = r.status;
    throw e;
  }
  return v;
}
const get = (p) => api('GET', p);
const getOr = async (p, fallback) => { try { return await get(p); } catch (e) { if (e.status === 404) return fallback; throw e; } };

function loginForm(again) {
  byId('main').innerHTML = `<h1>Admin token</h1>
    <p>${again ? '<span class="bad">That token was not accepted.</span> ' : ''}The dashboard reads and changes the shop through the admin API. Paste the token (printed by <code>shopflow up</code> on first start, in <code>&lt;data-dir&gt;/admin.token</code>).</p>
    <form id="login" class="row"><label>Token <input id="token" type="password" autocomplete="off" size="40" required></label> <button>Open</button></form>`;
  byId('login').addEventListener('submit', (ev) => { ev.preventDefault(); token.set(byId('token').value); render(true); });
  byId('live').textContent = 'needs the admin token';
  byId('token').focus();
}

// ---- confirmation of actions -----------------------------------------------------------------

function confirmAction(text, { reason = false } = {}) {
  const d = byId('confirm');
  byId('confirm-text').textContent = text;
  byId('confirm-reason-label').hidden = !reason;
  byId('confirm-reason').value = '';
  byId('confirm-reason').required = reason;
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok' ? { reason: byId('confirm-reason').value.trim() } : null), { once: true });
    d.showModal();
  });
}

async function act(text, call, opts) {
  const ok = await confirmAction(text, opts);
  if (!ok) return;
  try {
    await call(ok.reason);
    flash(`Done: ${text}`);
  } catch (e) {
    flash(e.message, true);
  }
  render(false);
}

function flash(text, bad) {
  const live = byId('live');
  live.textContent = text;
  live.className = `live ${bad ? 'bad' : ''}`;
}

// ---- charts (inline SVG) ---------------------------------------------------------------------

// Samples kept while the page is open: events on the bus, and each group's handled and lag.
const series = () => ({ at: [], v: [] });
const history = { out: series(), done: {}, lag: {}, svcIn: {}, svcOut: {} };

function record(s, value, at = Date.now()) {
  s.at.push(at);
  s.v.push(value);
  while (s.v.length > HISTORY) { s.at.shift(); s.v.shift(); }
}

// The charts start with the last minutes the server sampled, then go on with the page's own.
async function seed() {
  if (history.seeded) return;
  const h = await get('/admin/history');
  history.seeded = true;
  for (const c of h.counters) {
    for (const [name, [consumed, published]] of Object.entries(c.services)) {
      record((history.svcIn[name] ||= series()), consumed, c.at);
      record((history.svcOut[name] ||= series()), published, c.at);
    }
    for (const [g, n] of Object.entries(c.groups)) record((history.done[g] ||= series()), n, c.at);
  }
  for (const l of h.lag) for (const [g, n] of Object.entries(l.groups)) record((history.lag[g] ||= series()), n, l.at);
}

function sampleTopics(topics) {
  record(history.out, topics.reduce((n, t) => n + t.partitions.reduce((m, p) => m + p.end, 0), 0));
}

function sampleLag(lag) {
  const committed = {};
  for (const p of lag.partitions) committed[p.group] = (committed[p.group] || 0) + (p.committed ?? 0);
  for (const g of Object.keys(lag.groups)) {
    record((history.done[g] ||= series()), committed[g] || 0);
    record((history.lag[g] ||= series()), lag.groups[g]);
  }
}

// Per second, from a sampled counter.
function rates(s) {
  const out = [];
  for (let i = 1; i < s.v.length; i++) out.push(Math.max(0, (s.v[i] - s.v[i - 1]) / Math.max(0.001, (s.at[i] - s.at[i - 1]) / 1000)));
  return out;
}

function spark(series, cls = '') {
  // One sample draws as a flat line.
  const values = series.length >= 2 ? series : [series[0] ?? 0, series[0] ?? 0];
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => `${((i / Math.max(1, values.length - 1)) * 100).toFixed(1)},${(38 - (v / max) * 36).toFixed(1)}`).join(' ');
  return `<svg class="spark" viewBox="0 0 100 40" preserveAspectRatio="none" role="img" aria-label="last ${series.length} samples, peak ${Math.round(max)}"><polyline class="${cls}" points="${pts}"/></svg>`;
}

const last = (a) => (a.length ? a[a.length - 1] : 0);

function waitingCell(w) {
  if (!w) return '<span class="pill ok">running</span>';
  return `<span class="pill ${w.kind === 'paused' ? 'bad' : 'warn'}">${esc(w.kind)}</span> <span class="muted">until ${fmtTime(w.until)}: ${esc(w.reason)}</span>`;
}

// ---- pages -----------------------------------------------------------------------------------

async function overview() {
  await seed();
  const [services, topics, lag, breakers, dlq, stats, events] = await Promise.all([
    get('/admin/services'),
    get('/admin/topics'),
    get('/admin/lag'),
    get('/admin/breakers'),
    get('/admin/dlq?limit=1'),
    getOr('/admin/orders/stats', null),
    get('/admin/events?limit=200'),
  ]);
  sampleTopics(topics);
  sampleLag(lag);
  for (const s of services) {
    record((history.svcIn[s.name] ||= series()), s.consumed);
    record((history.svcOut[s.name] ||= series()), s.published);
  }
  const out = rates(history.out);
  const groups = Object.keys(lag.groups).sort();
  const byStatus = stats ? Object.entries(stats.byStatus).map(([s, n]) => `<div>${pill(s)} <b>${n}</b></div>`).join('') : '<span class="muted">no order service here</span>';
  const system = events.events.filter((e) => e.kind === 'system').slice(-12).reverse();
  const gateway = breakers.find((b) => b.name === 'payment-gateway');
  byId('main').innerHTML = `<h1>Overview</h1>
  <div class="cards">
    <div class="card"><h3>Events published</h3><div class="num" data-testid="events-out-rate">${Math.round(last(out))}/s</div>${spark(out)}<div class="muted">${last(history.out.v)} records on the bus</div></div>
    <div class="card"><h3>Orders</h3><div class="num" data-testid="orders-total">${stats ? stats.total : '–'}</div>${byStatus}</div>
    <div class="card"><h3>Dead letters</h3><div class="num" data-testid="dlq-open">${dlq.counts.open || 0}</div><div class="muted">open · ${dlq.parked.length} keys parked behind them</div><a href="#/dlq">inspect</a></div>
    <div class="card"><h3>Outbox backlog</h3>${Object.entries(lag.outboxBacklog).map(([o, n]) => `<div>${esc(o)} <b class="${n > 0 ? 'warn' : ''}">${n}</b></div>`).join('')}</div>
  </div>
  <h2>Services</h2>
  <div class="scroll"><table data-testid="services"><thead><tr><th>Service</th><th>Health</th><th>Events in per second</th><th>Events out per second</th><th class="n">Outbox</th><th>Breakers</th></tr></thead><tbody>
  ${services.map((s) => {
    const rin = rates(history.svcIn[s.name]);
    const rout = rates(history.svcOut[s.name]);
    return `<tr><td>${esc(s.name)}</td><td>${pill(s.health)}</td><td>${spark(rin, 'in')}<span class="muted">${Math.round(last(rin))}/s · ${s.consumed} since start</span></td><td>${spark(rout)}<span class="muted">${Math.round(last(rout))}/s · ${s.published} since start</span></td><td class="n ${s.outboxBacklog > 0 ? 'warn' : ''}">${s.outboxBacklog}</td><td>${s.breakers.map((b) => `${esc(b.name)} ${pill(b.state)}`).join('<br>') || '<span class="muted">none</span>'}</td></tr>`;
  }).join('')}
  </tbody></table></div>
  <h2>Consumer groups</h2>
  <div class="scroll"><table data-testid="groups"><thead><tr><th>Consumer group</th><th class="n">Lag</th><th>Handled per second</th><th>State</th></tr></thead><tbody>
  ${groups.map((g) => {
    const r = rates(history.done[g] || series());
    const paused = lag.groups[g] > 0 && last(r) === 0;
    return `<tr><td><a href="#/consumers/${enc(g)}">${esc(g)}</a></td><td class="n ${lag.groups[g] > 0 ? 'warn' : ''}">${lag.groups[g]}</td><td>${spark(r, 'in')}<span class="muted">${Math.round(last(r))}/s${paused ? ' · not moving' : ''}</span></td><td>${waitingCell(lag.waiting && lag.waiting[g])}</td></tr>`;
  }).join('')}
  </tbody></table></div>
  <h2>Circuit breakers</h2>
  <div class="scroll"><table data-testid="breakers"><thead><tr><th>Breaker</th><th>State</th><th class="n">Threshold</th><th class="n">Open for</th></tr></thead><tbody>
  ${breakers.map((b) => `<tr><td>${esc(b.name)}</td><td>${pill(b.state)}</td><td class="n">${b.failureThreshold}</td><td class="n">${b.openForMs} ms</td></tr>`).join('')}
  </tbody></table></div>
  ${gateway ? `<div class="row"><span>Payment gateway (simulator):</span> <button id="outage-on" class="danger">Take it down</button> <button id="outage-off">Bring it back</button></div>` : ''}
  <div class="row"><button id="rebuild">Rebuild the order read model</button></div>
  <h2>System events</h2>
  <ul class="timeline" data-testid="system-events">${system.map((e) => `<li><b>${esc(e.eventType)}</b> <span class="muted">${fmtTime(e.timestampMs)}</span><br><span class="muted">${esc(JSON.stringify(e.data))}</span></li>`).join('') || '<li class="muted">none yet</li>'}</ul>`;
  if (gateway) {
    byId('outage-on').onclick = () => act('Take the payment gateway down? Payments pause, their breaker opens.', () => api('PUT', '/admin/payment-gateway', { outage: true }));
    byId('outage-off').onclick = () => act('Bring the payment gateway back?', () => api('PUT', '/admin/payment-gateway', { outage: false }));
  }
  byId('rebuild').onclick = () => act('Rebuild the order read model from the event store (it keeps serving meanwhile)?', () => api('POST', '/admin/projections/orders/rebuild'));
}

const bytes = (n) => (n === null || n === undefined ? '–' : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
function retention(t) {
  const parts = [];
  if (t.retentionMs) parts.push(`${(t.retentionMs / 3600000).toFixed(t.retentionMs % 3600000 ? 1 : 0)} h`);
  if (t.retentionBytes) parts.push(`${bytes(t.retentionBytes)} per partition`);
  return parts.length ? parts.join(', ') : '<span class="muted">kept</span>';
}

async function topicsPage() {
  const topics = await get('/admin/topics');
  byId('main').innerHTML = `<h1>Topics</h1><div class="scroll"><table data-testid="topics"><thead><tr><th>Topic</th><th class="n">Partitions</th><th class="n">Records</th><th class="n">Size</th><th>Retention</th><th>End offsets</th></tr></thead><tbody>
  ${topics.map((t) => `<tr><td><a href="#/topics/${enc(t.name)}/0">${esc(t.name)}</a></td><td class="n">${t.partitions.length}</td><td class="n">${t.records}</td><td class="n">${bytes(t.sizeBytes)}</td><td>${retention(t)}</td><td>${t.partitions.map((p) => `<a href="#/topics/${enc(t.name)}/${p.partition}">${p.partition}:${p.end}</a>`).join(' ')}</td></tr>`).join('')}
  </tbody></table></div>`;
}

const browse = { key: '', from: null };

async function partitionPage(topic, partition) {
  const k = `${topic}/${partition}`;
  if (browse.key !== k) Object.assign(browse, { key: k, from: null });
  const q = browse.from === null ? 'limit=50' : `from=${browse.from}&limit=50`;
  const r = await get(`/admin/topics/${enc(topic)}/${enc(partition)}?${q}`);
  const first = r.records.length ? r.records[0].offset : r.end;
  byId('main').innerHTML = `<h1>${esc(topic)} / ${esc(partition)}</h1>
  <p class="muted">offsets ${r.start}…${r.end - 1} · <a href="#/topics">all topics</a></p>
  <div class="row"><button id="older" ${first <= r.start ? 'disabled' : ''}>Older</button> <button id="newest">Newest</button></div>
  <div class="scroll"><table data-testid="records"><thead><tr><th class="n">Offset</th><th>Key</th><th>Event</th><th>Time</th><th></th></tr></thead><tbody>
  ${r.records.map((e) => `<tr><td class="n">${e.offset}</td><td>${e.key && e.key.startsWith('ord_') ? `<a href="#/orders/${enc(e.key)}">${esc(e.key)}</a>` : esc(e.key)}</td><td>${e.error ? `<span class="bad">not an envelope</span>` : esc(e.eventType)}</td><td>${fmtTime(e.timestampMs)}</td>
    <td><details><summary>record</summary><pre>${esc(JSON.stringify({ headers: r.headers[e.offset], envelope: e }, null, 2))}</pre></details></td></tr>`).join('')}
  </tbody></table></div>`;
  byId('older').onclick = () => { browse.from = Math.max(r.start, first - 50); render(false); };
  byId('newest').onclick = () => { browse.from = null; render(false); };
}

async function consumersPage() {
  await seed();
  const lag = await get('/admin/lag');
  sampleLag(lag);
  const groups = Object.keys(lag.groups).sort();
  byId('main').innerHTML = `<h1>Consumers</h1>
  ${groups.map((g) => {
    const rows = lag.partitions.filter((p) => p.group === g && (p.lag > 0 || p.committed !== null));
    const h = history.lag[g];
    return `<h2><a href="#/consumers/${enc(g)}">${esc(g)}</a> <span class="muted">lag ${lag.groups[g]}</span> ${waitingCell(lag.waiting && lag.waiting[g])}</h2>
    ${h ? spark(h.v) : ''}
    <div class="scroll"><table><thead><tr><th>Topic</th><th class="n">Partition</th><th class="n">Committed</th><th class="n">End</th><th class="n">Lag</th></tr></thead><tbody>
    ${rows.map((p) => `<tr><td><a href="#/topics/${enc(p.topic)}/${p.partition}">${esc(p.topic)}</a></td><td class="n">${p.partition}</td><td class="n">${p.committed ?? '–'}</td><td class="n">${p.endOffset}</td><td class="n ${p.lag > 0 ? 'warn' : ''}">${p.lag}</td></tr>`).join('')}
    </tbody></table></div>`;
  }).join('')}`;
}

// One linked view: a group's lag, its dead letters, the keys (orders) stuck behind them, and the
// sagas waiting.
async function consumerPage(group) {
  await seed();
  const [lag, dlq, sagas] = await Promise.all([get('/admin/lag'), get(`/admin/dlq?consumer=${enc(group)}&limit=200`), get('/sagas?limit=200')]);
  const parked = dlq.parked.filter((p) => p.consumer === group);
  const stuckOrders = new Set(parked.map((p) => p.key).filter((k) => k.startsWith('ord_')));
  const waiting = sagas.sagas.filter((s) => s.state === 'running' || s.state === 'compensating');
  sampleLag(lag);
  const rows = lag.partitions.filter((p) => p.group === group);
  const h = history.lag[group];
  byId('main').innerHTML = `<h1>${esc(group)}</h1>
  <div class="cards">
    <div class="card"><h3>Lag</h3><div class="num" data-testid="group-lag">${lag.groups[group] ?? 0}</div>${h ? spark(h.v) : ''}<div data-testid="group-state">${waitingCell(lag.waiting && lag.waiting[group])}</div></div>
    <div class="card"><h3>Open dead letters</h3><div class="num" data-testid="group-dlq">${dlq.deadLetters.length}</div><a href="#/dlq?consumer=${enc(group)}">inspect</a></div>
    <div class="card"><h3>Keys parked</h3><div class="num">${parked.length}</div><div class="muted">${parked.reduce((n, p) => n + p.depth, 0)} records waiting</div></div>
    <div class="card"><h3>Sagas at work</h3><div class="num">${waiting.length}</div><a href="#/sagas">all sagas</a></div>
  </div>
  <h2>Partitions</h2><div class="scroll"><table><thead><tr><th>Topic</th><th class="n">Partition</th><th class="n">Committed</th><th class="n">End</th><th class="n">Lag</th></tr></thead><tbody>
  ${rows.map((p) => `<tr><td>${esc(p.topic)}</td><td class="n">${p.partition}</td><td class="n">${p.committed ?? '–'}</td><td class="n">${p.endOffset}</td><td class="n">${p.lag}</td></tr>`).join('')}</tbody></table></div>
  <h2>Dead letters of this group</h2>${letterTable(dlq.deadLetters)}
  <h2>Orders stuck behind them</h2><ul data-testid="stuck-orders">${[...stuckOrders].map((o) => `<li><a href="#/orders/${enc(o)}">${esc(o)}</a></li>`).join('') || '<li class="muted">none</li>'}</ul>
  <h2>Sagas waiting</h2>${sagaTable(waiting)}`;
}

async function ordersPage(params) {
  const status = params.get('status') || '';
  const customer = params.get('customer') || '';
  const q = new URLSearchParams({ limit: '50' });
  if (status) q.set('status', status);
  if (customer) q.set('customerId', customer);
  const page = await get(`/orders?${q}`);
  byId('main').innerHTML = `<h1>Orders</h1>
  <form id="filter" class="row"><label>Status <select name="status">${['', 'PENDING', 'PAID', 'RESERVED', 'SHIPPED', 'CANCELLED'].map((s) => `<option ${s === status ? 'selected' : ''} value="${s}">${s || 'any'}</option>`).join('')}</select></label>
  <label>Customer <input name="customer" value="${esc(customer)}" size="34"></label> <button>Filter</button>
  <label>Order id <input id="goto" size="38" placeholder="ord_…"></label></form>
  <p class="muted">read model ${page.projection && page.projection.lag ? `${page.projection.lag} events behind` : 'up to date'}</p>
  <div class="scroll"><table data-testid="orders"><thead><tr><th>Order</th><th>Status</th><th>Customer</th><th class="n">Total</th></tr></thead><tbody>
  ${page.orders.map((o) => `<tr><td><a href="#/orders/${enc(o.orderId)}">${esc(o.orderId)}</a></td><td>${pill(o.status)}</td><td>${esc(o.customerId)}</td><td class="n">${(o.totalMinor / 100).toFixed(2)} ${esc(o.currency)}</td></tr>`).join('')}
  </tbody></table></div>`;
  byId('filter').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const go = byId('goto').value.trim();
    if (go) { location.hash = `#/orders/${enc(go)}`; return; }
    location.hash = `#/orders?${new URLSearchParams({ status: f.get('status'), customer: f.get('customer') })}`;
  });
}

const travel = { order: '', version: null };

async function orderPage(id) {
  if (travel.order !== id) Object.assign(travel, { order: id, version: null });
  const [now, events, notifications, style] = await Promise.all([
    get(`/orders/${enc(id)}`),
    get(`/orders/${enc(id)}/events`),
    get(`/orders/${enc(id)}/notifications`),
    sagaStyle(),
  ]);
  // Ask each service only for what the order's own facts say exists (no 404s to log): a payment
  // once one was recorded or the order was cancelled (a declined card leaves a failed payment),
  // the reservation once reserved or cancelled after the charge (stock was tried), a shipment once shipped or cancelled after its
  // reservation, a saga under orchestration.
  const [payment, reservation, shipment, saga] = await Promise.all([
    now.paymentId || now.status === 'CANCELLED' ? getOr(`/orders/${enc(id)}/payment`, null) : null,
    now.reserved || (now.status === 'CANCELLED' && now.paymentId) ? getOr(`/orders/${enc(id)}/reservation`, null) : null,
    now.shipmentId || (now.status === 'CANCELLED' && now.reserved) ? getOr(`/orders/${enc(id)}/shipment`, null) : null,
    style === 'orchestration' ? getOr(`/sagas/${enc(id)}`, null) : null,
  ]);
  const max = events.length ? events[events.length - 1].version : 1;
  const v = travel.version === null ? max : Math.min(travel.version, max);
  const then = v === max ? now : await get(`/orders/${enc(id)}?version=${v}`);
  const items = [
    ...events.map((e) => ({ t: e.timestamp, what: `order v${e.version}: ${e.eventType}`, detail: e.data, cause: e.causationId })),
    ...(payment ? [{ t: payment.updatedAt || payment.createdAt, what: `payment ${payment.status}`, detail: payment }] : []),
    ...(reservation ? [{ t: reservation.updatedAt, what: `stock ${reservation.status}`, detail: reservation }] : []),
    ...(shipment ? [{ t: shipment.createdAt || shipment.updatedAt, what: `shipment ${shipment.status || ''}`, detail: shipment }] : []),
    ...(Array.isArray(notifications) ? notifications : notifications.notifications || []).map((n) => ({ t: n.sentAt || n.createdAt, what: `notification: ${n.channel} for ${n.eventType}`, detail: n })),
    ...(saga ? (saga.steps || []).map((s) => ({ t: s.updatedAt || saga.updatedAt, what: `saga step ${s.name}: ${s.state}`, detail: s })) : []),
  ].sort((a, b) => String(a.t).localeCompare(String(b.t)));
  byId('main').innerHTML = `<h1>Order ${esc(id)}</h1>
  <div class="grid2"><div>
    <h2>As it is ${pill(now.status)}</h2>
    <label for="travel">Time travel: version <b data-testid="travel-version">${v}</b> of ${max}</label>
    <input id="travel" class="wide" type="range" min="1" max="${max}" value="${v}">
    <div class="row"><button id="travel-now">Now</button> <label>At <input id="travel-at" type="datetime-local" step="1"></label></div>
    <h2>As it was at version ${v}: ${pill(then.status)}</h2>
    <pre data-testid="order-state">${esc(JSON.stringify(then, null, 2))}</pre>
  </div><div>
    <h2>Timeline across the services</h2>
    <ul class="timeline" data-testid="timeline">${items.map((i) => `<li><b>${esc(i.what)}</b> <span class="muted">${fmtTime(i.t)}${i.cause ? ` · caused by ${esc(i.cause)}` : ''}</span><details><summary>details</summary><pre>${esc(JSON.stringify(i.detail, null, 2))}</pre></details></li>`).join('')}</ul>
    ${saga ? `<p><a href="#/sagas/${enc(id)}">its saga</a>: ${pill(saga.state)}</p>` : ''}
  </div></div>`;
  const slider = byId('travel');
  slider.addEventListener('change', () => { travel.version = Number(slider.value); render(false); });
  byId('travel-now').onclick = () => { travel.version = null; render(false); };
  byId('travel-at').addEventListener('change', async (ev) => {
    const at = new Date(ev.target.value);
    if (Number.isNaN(at.getTime())) return;
    const before = events.filter((e) => Date.parse(e.timestamp) <= at.getTime());
    travel.version = before.length ? before[before.length - 1].version : 1;
    render(false);
  });
}

let style = null;
async function sagaStyle() {
  if (style === null) style = (await get('/sagas?limit=1')).style;
  return style;
}

function sagaTable(sagas) {
  return `<div class="scroll"><table data-testid="sagas"><thead><tr><th>Saga</th><th>State</th><th>Step</th><th>Deadline</th><th>Updated</th></tr></thead><tbody>
  ${sagas.map((s) => `<tr><td><a href="#/sagas/${enc(s.sagaId)}">${esc(s.sagaId)}</a></td><td>${pill(s.state)}</td><td>${esc(s.currentStep || '')}</td><td>${fmtTime(s.deadline)}</td><td>${fmtTime(s.updatedAt)}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">none</td></tr>'}
  </tbody></table></div>`;
}

async function sagasPage(params) {
  const state = params.get('state') || '';
  const list = await get(`/sagas?limit=200${state ? `&state=${enc(state)}` : ''}`);
  byId('main').innerHTML = `<h1>Sagas</h1>
  <p class="muted">${list.style === 'choreography' ? 'This shop runs choreography: no orchestrated sagas.' : Object.entries(list.counts).map(([s, n]) => `${pill(s)} ${n}`).join(' ')}</p>
  ${sagaTable(list.sagas)}`;
}

async function sagaPage(id) {
  const s = await get(`/sagas/${enc(id)}`);
  byId('main').innerHTML = `<h1>Saga ${esc(id)} ${pill(s.state)}</h1>
  <p><a href="#/orders/${enc(id)}">its order</a></p>
  <div class="scroll"><table><thead><tr><th>Step</th><th>State</th><th>Updated</th></tr></thead><tbody>${(s.steps || []).map((st) => `<tr><td>${esc(st.name)}</td><td>${pill(st.state)}</td><td>${fmtTime(st.updatedAt)}</td></tr>`).join('')}</tbody></table></div>
  ${s.failure ? `<p class="bad">${esc(JSON.stringify(s.failure))}</p>` : ''}
  ${s.state === 'running' ? '<div class="row"><button id="cancel" class="danger">Cancel (compensate)</button></div>' : ''}`;
  if (byId('cancel')) byId('cancel').onclick = () => act(`Cancel saga ${id}? Its completed steps are compensated.`, (reason) => api('POST', `/sagas/${enc(id)}/cancel`, { reason }), { reason: true });
}

function letterTable(letters) {
  return `<div class="scroll"><table data-testid="letters"><thead><tr><th><span class="sr">Select</span></th><th>Dead letter</th><th>Event</th><th>Consumer</th><th class="n">Tries</th><th>Error</th><th></th></tr></thead><tbody>
  ${letters.map((l) => `<tr><td>${l.status === 'open' ? `<input type="checkbox" data-select="${esc(l.id)}" aria-label="select ${esc(l.id)}" ${selected.has(l.id) ? 'checked' : ''}>` : ''}</td><td><a href="#/dlq/${enc(l.id)}">${esc(l.id)}</a></td><td>${esc(l.eventType)}</td><td><a href="#/consumers/${enc(l.consumer)}">${esc(l.consumer)}</a></td><td class="n">${l.attempts}</td><td>${esc(l.error)}</td><td>${l.status === 'open' ? `<button data-redrive="${esc(l.id)}">Redrive</button> <button class="danger" data-discard="${esc(l.id)}">Discard</button>` : pill(l.status)}</td></tr>`).join('') || '<tr><td colspan="7" class="muted">none</td></tr>'}
  </tbody></table></div>`;
}

// Dead letters ticked for an action on a selection (kept across the page's refreshes).
const selected = new Set();

function wireLetterButtons() {
  for (const c of document.querySelectorAll('[data-select]')) {
    c.onchange = () => { if (c.checked) selected.add(c.dataset.select); else selected.delete(c.dataset.select); updateSelection(); };
  }
  updateSelection();
  for (const b of document.querySelectorAll('[data-redrive]')) {
    b.onclick = () => act(`Redrive ${b.dataset.redrive} to the group that dead-lettered it?`, () => api('POST', `/admin/dlq/${enc(b.dataset.redrive)}/redrive`));
  }
  for (const b of document.querySelectorAll('[data-discard]')) {
    b.onclick = () => act(`Discard ${b.dataset.discard}? What waited behind it is released.`, (reason) => api('POST', `/admin/dlq/${enc(b.dataset.discard)}/discard`, { reason }), { reason: true });
  }
}

function updateSelection() {
  const bar = byId('selection');
  if (!bar) return;
  const ids = [...selected].filter((id) => document.querySelector(`[data-select="${CSS.escape(id)}"]`));
  bar.hidden = ids.length === 0;
  byId('selection-count').textContent = String(ids.length);
}

async function each(ids, call) {
  for (const id of ids) await call(id);
  for (const id of ids) selected.delete(id);
}

async function dlqPage(params) {
  const consumer = params.get('consumer') || '';
  const r = await get(`/admin/dlq?limit=1000${consumer ? `&consumer=${enc(consumer)}` : ''}`);
  const groups = new Map();
  for (const l of r.deadLetters) {
    const k = JSON.stringify([l.originalTopic, l.consumer, l.error]);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(l);
  }
  byId('main').innerHTML = `<h1>Dead letters</h1>
  <div id="selection" class="row" hidden><span><b id="selection-count">0</b> selected:</span> <button id="redrive-selected">Redrive</button> <button id="discard-selected" class="danger">Discard</button></div>
  <p class="muted" data-testid="dlq-counts">${Object.entries(r.counts).map(([s, n]) => `${s} ${n}`).join(' · ')}${consumer ? ` · consumer ${esc(consumer)} (<a href="#/dlq">all</a>)` : ''}</p>
  ${[...groups.entries()].map(([k, letters], i) => {
    const [topic, group, error] = JSON.parse(k);
    return `<h2>${esc(topic)} · <a href="#/consumers/${enc(group)}">${esc(group)}</a> · ${letters.length}</h2>
    <p class="muted">${esc(error)}</p>
    <div class="row"><button data-group="${i}">Redrive these ${letters.length}</button> <button class="danger" data-discard-group="${i}">Discard these ${letters.length}</button></div>
    ${letterTable(letters)}`;
  }).join('') || '<p class="muted">No open dead letters.</p>'}
  <h2>Parked keys</h2>
  <div class="scroll"><table data-testid="parked"><thead><tr><th>Consumer</th><th>Key</th><th class="n">Waiting</th><th>Head</th><th>Error</th></tr></thead><tbody>
  ${r.parked.map((p) => `<tr><td>${esc(p.consumer)}</td><td>${p.key.startsWith('ord_') ? `<a href="#/orders/${enc(p.key)}">${esc(p.key)}</a>` : esc(p.key)}</td><td class="n">${p.depth}</td><td>${esc(p.head)}</td><td>${esc(p.headError)}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">none</td></tr>'}
  </tbody></table></div>`;
  wireLetterButtons();
  [...groups.values()].forEach((letters, i) => {
    const l = letters[0];
    const btn = document.querySelector(`[data-group="${i}"]`);
    btn.onclick = () => act(`Redrive ${letters.length} dead letters of ${l.consumer} on ${l.originalTopic}?`, () => api('POST', '/admin/dlq/redrive', { topic: l.originalTopic, consumer: l.consumer, error: l.error, limit: 1000 }));
    document.querySelector(`[data-discard-group="${i}"]`).onclick = () => act(`Discard ${letters.length} dead letters of ${l.consumer} on ${l.originalTopic}? What waited behind them is released.`, (reason) => api('POST', '/admin/dlq/discard', { topic: l.originalTopic, consumer: l.consumer, error: l.error, limit: 1000, reason }), { reason: true });
  });
  const chosen = () => [...selected].filter((id) => document.querySelector(`[data-select="${CSS.escape(id)}"]`));
  byId('redrive-selected').onclick = () => { const ids = chosen(); act(`Redrive the ${ids.length} selected dead letters?`, () => each(ids, (id) => api('POST', `/admin/dlq/${enc(id)}/redrive`))); };
  byId('discard-selected').onclick = () => { const ids = chosen(); act(`Discard the ${ids.length} selected dead letters?`, (reason) => each(ids, (id) => api('POST', `/admin/dlq/${enc(id)}/discard`, { reason })), { reason: true }); };
}

async function letterPage(id) {
  const d = await get(`/admin/dlq/${enc(id)}`);
  const order = d.key && d.key.startsWith('ord_') ? d.key : null;
  byId('main').innerHTML = `<h1>Dead letter ${esc(id)} ${pill(d.status)}</h1>
  <p>${esc(d.eventType)} from <a href="#/topics/${enc(d.originalTopic)}/${d.originalPartition}">${esc(d.originalTopic)}/${d.originalPartition}@${d.originalOffset}</a>, dead-lettered by <a href="#/consumers/${enc(d.consumer)}">${esc(d.consumer)}</a> after ${d.attempts} attempt(s).</p>
  ${order ? `<p>Its order: <a href="#/orders/${enc(order)}">${esc(order)}</a> · its saga: <a href="#/sagas/${enc(order)}">${esc(order)}</a></p>` : ''}
  <p class="bad">${esc(d.error)}</p>
  ${d.status === 'open' ? `<div class="row"><button data-redrive="${esc(id)}">Redrive</button> <button class="danger" data-discard="${esc(id)}">Discard</button></div>` : ''}
  <h2>Payload</h2><pre>${esc(JSON.stringify(d.payload, null, 2))}</pre>
  <h2>Headers</h2><pre>${esc(JSON.stringify(d.headers, null, 2))}</pre>`;
  wireLetterButtons();
}

// ---- routing ---------------------------------------------------------------------------------

// Leaving a monolith: the change data capture connector and the strangler-fig gateway of this
// process (docs/MIGRATING.md), with each route's switch and what shadowing found.
async function migrationPage() {
  const m = await get('/admin/migration');
  const { cdc, gateway: gw } = m;
  byId('main').innerHTML = `<h1>Migration</h1>
  <h2>Change data capture</h2>
  ${cdc ? `<div class="cards" data-testid="cdc">
    <div class="card"><h3>Connector</h3><div class="num">${pill(cdc.status)}</div><div class="muted">${esc(cdc.phase)}</div></div>
    <div class="card"><h3>Changes on the bus</h3><div class="num">${cdc.changes}</div><div class="muted">${cdc.snapshotRows} snapshot rows · ${cdc.transactions} transactions</div></div>
    <div class="card"><h3>Not yet confirmed</h3><div class="num">${bytes(cdc.lagBytes)}</div><div class="muted">of WAL held by the slot · confirmed LSN ${cdc.confirmedLsn}</div></div>
  </div>` : '<p class="muted">Not running in this process (<code>up --cdc-source …</code>).</p>'}
  <h2>Gateway</h2>
  ${gw ? `<div class="row">Breakers: ${Object.entries(gw.breakers).map(([side, st]) => `${esc(side)} ${pill(st)}`).join(' · ')}</div>
  <div class="scroll"><table data-testid="routes"><thead><tr><th>Methods</th><th>Path</th><th>Goes to</th><th>Move to</th></tr></thead><tbody>
  ${gw.routes.map((r, i) => `<tr><td>${esc(r.methods.join(', '))}</td><td><code>${esc(r.path)}</code></td><td data-testid="target">${pill(r.target)}${r.serve ? ` <span class="muted">answered by ${esc(r.serve)}</span>` : ''}</td><td>${['legacy', 'shadow', 'new'].filter((t) => t !== r.target).map((t) => `<button data-route="${i}" data-to="${t}">${t}</button>`).join(' ')}</td></tr>`).join('')}
  </tbody></table></div>
  <h2>Shadow differences</h2>
  <ul class="timeline" data-testid="differences">${gw.differences.map((d) => `<li><b>${esc(d.method)} ${esc(d.uri)}</b> <span class="muted">${esc(d.at)} · answered by ${esc(d.served)}</span><br>${esc(d.reason)}
    <details><summary>both answers</summary><div class="diff"><div class="card"><h3>legacy · ${d.legacyStatus}</h3><pre>${esc(JSON.stringify(d.legacyBody, null, 2))}</pre></div><div class="card"><h3>new · ${d.newStatus}</h3><pre>${esc(JSON.stringify(d.newBody, null, 2))}</pre></div></div></details></li>`).join('') || '<li class="muted">none recorded</li>'}</ul>`
    : '<p class="muted">Not running in this process (<code>up --routes routes.toml</code>).</p>'}`;
  if (!gw) return;
  for (const b of document.querySelectorAll('button[data-route]')) {
    const r = gw.routes[Number(b.dataset.route)];
    const to = b.dataset.to;
    b.onclick = () => act(`Move ${r.methods[0]} ${r.path} to ${to}?${to === 'shadow' ? ' The legacy side answers; the new side gets a copy to compare.' : ''}`,
      () => api('PUT', '/admin/migration/routes', { method: r.methods[0], path: r.path, to, serve: to === 'shadow' ? 'legacy' : null }));
  }
}

function parse() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

function view({ parts, params }) {
  const [page, a, b] = parts;
  switch (page) {
    case undefined: return ['overview', () => overview()];
    case 'topics': return ['topics', () => (a ? partitionPage(a, b || '0') : topicsPage())];
    case 'consumers': return ['consumers', () => (a ? consumerPage(a) : consumersPage())];
    case 'orders': return ['orders', () => (a ? orderPage(a) : ordersPage(params))];
    case 'sagas': return ['sagas', () => (a ? sagaPage(a) : sagasPage(params))];
    case 'dlq': return ['dlq', () => (a ? letterPage(a) : dlqPage(params))];
    case 'migration': return ['migration', () => migrationPage()];
    default: return ['overview', () => overview()];
  }
}

let timer = null;
let busy = false;

// Renders the current view; polls it again unless the reader is inside a form or a dialog.
async function render(fresh) {
  clearTimeout(timer);
  if (busy) return;
  const [page, show] = view(parse());
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  // Not while the reader types, picks, confirms or reads an opened detail (a ticked checkbox
  // or the time-travel slider re-render themselves).
  const el = document.activeElement;
  const typing = el && (['SELECT', 'TEXTAREA'].includes(el.tagName) || (el.tagName === 'INPUT' && !['checkbox', 'range'].includes(el.type)));
  const editing = !fresh && (byId('confirm').open || typing || document.querySelector('details[open]'));
  if (!token.get()) {
    loginForm(false);
    return;
  }
  if (!editing) {
    busy = true;
    try {
      await show();
      byId('live').textContent = `live · ${new Date().toLocaleTimeString()}`;
      byId('live').className = 'live';
    } catch (e) {
      if (e instanceof NeedsToken) {
        busy = false;
        loginForm(Boolean(token.get()));
        return;
      }
      byId('main').innerHTML = `<div class="error" role="alert">${esc(e.message)}</div>`;
    } finally {
      busy = false;
    }
  }
  timer = setTimeout(() => render(false), POLL_MS);
}

window.addEventListener('hashchange', () => { render(true); byId('main').focus(); });
window.addEventListener('DOMContentLoaded', () => render(true));
