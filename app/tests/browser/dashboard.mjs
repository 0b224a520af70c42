// Drives the dashboard in the system's headless Chromium (playwright-core, executablePath set;
// no browser is ever downloaded). Run by app/tests/dashboard.rs, one phase at a time, against a
// shop that test has set up:
//   node dashboard.mjs <phase>   with BASE, TOKEN, SHOTS (a directory), CHROMIUM and the phase's
//   own variables in the environment. Exits non-zero with the reason on the first failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('BASE');
const TOKEN = env('TOKEN');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });

async function api(method, path, body) {
  const r = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function until(what, f, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const errors = [];
async function open(width = 1280, height = 860, withToken = true) {
  const context = await browser.newContext({ viewport: { width, height } });
  if (withToken) await context.addInitScript((t) => sessionStorage.setItem('shopflow-admin-token', t), TOKEN);
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`  (${r.status()} ${r.request().method()} ${r.url()})`); });
  return page;
}
async function show(page, hash) {
  await page.goto(`${BASE}/${hash}`);
  await until(`${hash} to load`, async () => (await page.textContent('#live')).startsWith('live'));
  check(!(await page.$('.error')), `${hash} shows an error: ${await page.textContent('main')}`);
}
const text = (page, sel) => page.textContent(sel).then((t) => t.trim());
async function confirm(page, reason) {
  await page.waitForSelector('#confirm[open]');
  if (reason) await page.fill('#confirm-reason', reason);
  await page.click('#confirm-ok');
}

const phases = {
  // Every page loads without a console error and shows what the API says; an order's timeline
  // fills in live; the time-travel control shows the order as it was.
  async pages() {
    const login = await open(1280, 860, false);
    await login.goto(`${BASE}/`);
    await login.waitForSelector('#token');
    await login.fill('#token', TOKEN);
    await login.click('#login button');
    await until('the overview after the token', async () => (await login.$('[data-testid=orders-total]')) !== null);

    // The charts start from the last minutes the server sampled.
    // (every two seconds: wait for a second sample)
    const sampled = await until('two samples of the last minutes', async () => {
      const h = await api('GET', '/admin/history');
      return h.counters.length >= 2 && h.lag.length >= 1 ? h : null;
    });
    check(Object.keys(sampled.counters[sampled.counters.length - 1].services).length === 6, 'every service sampled');

    const page = await open();
    const stats = await api('GET', '/admin/orders/stats');
    await show(page, '#/');
    await until('the order count', async () => (await text(page, '[data-testid=orders-total]')) === String((await api('GET', '/admin/orders/stats')).total));
    check(stats.total > 0, 'orders were placed before');
    const services = await api('GET', '/admin/services');
    check((await page.$$('[data-testid=services] tbody tr')).length === services.length && services.length === 6, 'one row per service');
    await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });

    const topics = await api('GET', '/admin/topics');
    await show(page, '#/topics');
    check((await page.$$('[data-testid=topics] tbody tr')).length === topics.length, 'one row per topic');
    check(/\d+(\.\d)? (B|KiB|MiB)/.test(await text(page, '[data-testid=topics]')), 'topic sizes are shown');
    await page.screenshot({ path: `${SHOTS}/topics.png`, fullPage: true });
    await show(page, '#/topics/orders.order-created/0');
    const records = await api('GET', '/admin/topics/orders.order-created/0?limit=50');
    check((await page.$$('[data-testid=records] tbody tr')).length === records.records.length, 'one row per record');
    await page.screenshot({ path: `${SHOTS}/partition.png`, fullPage: true });

    await show(page, '#/consumers');
    await page.screenshot({ path: `${SHOTS}/consumers.png`, fullPage: true });
    await show(page, '#/consumers/payment');
    await page.screenshot({ path: `${SHOTS}/consumer-payment.png`, fullPage: true });

    const orders = await api('GET', '/orders?limit=50');
    await show(page, '#/orders');
    check((await page.$$('[data-testid=orders] tbody tr')).length === orders.orders.length, 'one row per order');
    await page.screenshot({ path: `${SHOTS}/orders.png`, fullPage: true });
    await show(page, '#/sagas');
    await show(page, '#/dlq');
    await page.screenshot({ path: `${SHOTS}/dead-letters.png`, fullPage: true });

    // A new order, watched from the moment it is placed: the payment gateway is held down until
    // the page shows the order pending, so what follows arrives while the page is open.
    await api('PUT', '/admin/payment-gateway', { outage: true });
    const placed = await api('POST', '/orders', {
      customerId: env('CUSTOMER'),
      items: [{ sku: env('SKU'), quantity: 1 }],
      payment: { cardNumber: '4242424242424242' },
      shippingAddress: { name: 'Ada', line1: '1 Main St', city: 'Berlin', postalCode: '10115', country: 'DE' },
    });
    await show(page, `#/orders/${placed.orderId}`);
    const first = (await page.$$('[data-testid=timeline] li')).length;
    check(!(await text(page, 'main')).includes('OrderCompleted'), 'the order is not through yet');
    await api('PUT', '/admin/payment-gateway', { outage: false });
    await until('the timeline to fill in', async () => {
      const items = (await page.$$('[data-testid=timeline] li')).length;
      const shipped = (await text(page, 'main')).includes('OrderCompleted');
      return items > first && shipped;
    });
    await until('the reservation in the timeline', async () => (await text(page, '[data-testid=timeline]')).includes('stock SHIPPED'));
    check((await text(page, '[data-testid=timeline]')).includes('caused by'), 'the timeline says what caused each step');
    await page.screenshot({ path: `${SHOTS}/order-timeline.png`, fullPage: true });
    // A declined order's page asks nothing that is not there (no failed request, checked at the end).
    const declined = await api('POST', '/orders', {
      customerId: env('CUSTOMER'),
      items: [{ sku: env('SKU'), quantity: 1 }],
      payment: { cardNumber: '4000000000000002' },
      shippingAddress: { name: 'Ada', line1: '1 Main St', city: 'Berlin', postalCode: '10115', country: 'DE' },
    });
    const other = await open();
    await show(other, `#/orders/${declined.orderId}`);
    await until('the declined order cancelled', async () => (await text(other, 'main')).includes('payment FAILED'));
    // Back to its first version: the order as it was when placed.
    await page.$eval('#travel', (el) => { el.value = '1'; el.dispatchEvent(new Event('change')); });
    await until('version 1', async () => (await text(page, '[data-testid=travel-version]')) === '1');
    const state = await text(page, '[data-testid=order-state]');
    check(state.includes('"status": "PENDING"'), `the first version is PENDING: ${state}`);
    await page.screenshot({ path: `${SHOTS}/order-time-travel.png`, fullPage: true });

    const phone = await open(390, 844);
    await show(phone, '#/');
    await phone.screenshot({ path: `${SHOTS}/overview-phone.png`, fullPage: true });
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
    check(wide, 'the overview fits a phone width');
  },

  // Dead letters appear; redriving a group (after the fix) makes the count fall; discarding one
  // needs a reason and a confirmation.
  async dlq() {
    const page = await open();
    const before = await api('GET', '/admin/dlq?limit=1000');
    const open0 = before.counts.open || 0;
    check(open0 >= 3, `dead letters to work on (${open0})`);
    await show(page, '#/dlq');
    await until('the open count', async () => (await text(page, '[data-testid=dlq-counts]')).includes(`open ${open0}`));
    await page.screenshot({ path: `${SHOTS}/dead-letters-open.png`, fullPage: true });
    const group = env('REDRIVE_GROUP');
    const topic = env('REDRIVE_TOPIC');
    const n = before.deadLetters.filter((l) => l.consumer === group && l.originalTopic === topic).length;
    check(n >= 2, `${group} has dead letters of ${topic} to redrive (${n})`);
    const button = await until('the group button', async () => {
      for (const h of await page.$$('h2')) {
        const t = await h.textContent();
        if (t.includes(group) && t.includes(topic)) {
          return h.evaluateHandle((el) => {
            let e = el.nextElementSibling;
            while (e && !e.querySelector('[data-group]')) e = e.nextElementSibling;
            return e && e.querySelector('[data-group]');
          });
        }
      }
      return null;
    });
    await button.asElement().click();
    await confirm(page);
    await until('the count to fall', async () => ((await api('GET', '/admin/dlq?limit=1')).counts.open || 0) === open0 - n);
    await until('the page to follow', async () => (await text(page, '[data-testid=dlq-counts]')).includes(`open ${open0 - n}`));
    await until('the redriven group gone from the page', async () => (await page.$$('[data-select]')).length === open0 - n);
    // Discard what is left as a selection, with a reason.
    const boxes = await page.$$('[data-select]');
    check(boxes.length === open0 - n, `one checkbox per open letter (${boxes.length})`);
    for (const b of boxes) await b.check();
    await until('the selection bar', async () => (await text(page, '#selection-count')) === String(open0 - n));
    await page.click('#discard-selected');
    await confirm(page, 'test data from a broken producer');
    await until('the discard', async () => ((await api('GET', '/admin/dlq?limit=1')).counts.open || 0) === 0);
    await until('the page to follow', async () => (await text(page, '[data-testid=dlq-counts]')).includes('discarded'));
    const discarded = await api('GET', '/admin/dlq?status=discarded');
    check(discarded.deadLetters.every((l) => l.statusReason === 'test data from a broken producer'), 'the reason is kept');
    await page.screenshot({ path: `${SHOTS}/dead-letters-after.png`, fullPage: true });
  },

  // The outage switch pauses payments: the breaker opens and the payment group's lag grows in
  // the linked view; back up, it drains.
  async outage() {
    const page = await open();
    await show(page, '#/');
    await page.click('#outage-on');
    await confirm(page);
    for (let i = 0; i < 8; i++) {
      await api('POST', '/orders', {
        customerId: env('CUSTOMER'),
        items: [{ sku: env('SKU'), quantity: 1 }],
        payment: { cardNumber: '4242424242424242' },
        shippingAddress: { name: 'Ada', line1: '1 Main St', city: 'Berlin', postalCode: '10115', country: 'DE' },
      });
    }
    await until('the breaker open on the page', async () => (await text(page, '[data-testid=breakers]')).includes('open'));
    await until('payment degraded', async () => (await text(page, '[data-testid=services]')).includes('degraded'));
    await page.screenshot({ path: `${SHOTS}/outage-breaker.png`, fullPage: true });
    await show(page, '#/consumers/payment');
    await until('lag in the linked view', async () => Number(await text(page, '[data-testid=group-lag]')) > 0);
    await until('the group shown paused, and why', async () => {
      const state = await text(page, '[data-testid=group-state]');
      if (!state.includes('paused')) throw new Error(`state: ${state}`);
      return true;
    });
    await page.screenshot({ path: `${SHOTS}/outage-lag.png`, fullPage: true });
    await show(page, '#/');
    await page.click('#outage-off');
    await confirm(page);
    await show(page, '#/consumers/payment');
    await until('the lag to drain', async () => Number(await text(page, '[data-testid=group-lag]')) === 0, 60000);
  },

  // Leaving a monolith: the gateway's route in shadow has recorded a difference, shown with both
  // answers; moving the route from the page switches it (and the API agrees).
  async migration() {
    const page = await open();
    await show(page, '#/migration');
    const m = await api('GET', '/admin/migration');
    check(m.gateway && m.gateway.routes.length === 1, 'one route');
    check((await page.$$('[data-testid=routes] tbody tr')).length === 1, 'one row per route');
    await until('the recorded difference on the page', async () => (await page.$$('[data-testid=differences] li details')).length >= 1);
    check((await text(page, '[data-testid=differences]')).includes(env('DIFFERENCE')), `the difference says what differs: ${await text(page, '[data-testid=differences]')}`);
    await page.click('[data-testid=differences] li details summary');
    await page.screenshot({ path: `${SHOTS}/migration.png`, fullPage: true });
    // Closed again: an opened detail holds the page still while it is read.
    await page.click('[data-testid=differences] li details summary');
    await page.click('button[data-to=new]');
    await confirm(page);
    await until('the route on new', async () => (await text(page, '[data-testid=routes] [data-testid=target]')).startsWith('new'));
    const after = await api('GET', '/admin/migration');
    check(after.gateway.routes[0].target === 'new', 'the API agrees');
  },
};

const phase = process.argv[2];
try {
  check(phases[phase], `unknown phase ${phase}`);
  await phases[phase]();
  check(errors.length === 0, `console errors:\n${errors.join('\n')}`);
  console.log(`dashboard ${phase}: ok`);
} catch (e) {
  console.error(`dashboard ${phase}: ${e.stack || e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
