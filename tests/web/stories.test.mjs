// The storefront's and the console's stories, in headless Chromium, against a server started by
// scripts/browser-tests. Controls are found by their accessible names, which are part of the
// contract (docs/API.md, "Web pages").
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  DEMO_ADMIN, PNG, api, base, customer, launch, login, signIn, unique, visitor,
} from './support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/// Waits until `locator`'s text matches, without reloading the page.
async function untilText(locator, pattern, timeout = 15000) {
  await locator.filter({ hasText: pattern }).first().waitFor({ timeout });
}

test('a shopper registers, searches, fills the cart, checks out with WELCOME10, pays, and sees the order paid', async () => {
  const v = await visitor(browser, 'shopper');
  const { page } = v;
  await page.goto('/');
  await v.look('catalogue');

  await page.getByRole('link', { name: 'Register', exact: true }).click();
  await v.look('register');
  const email = `${unique('shopper')}@example.test`;
  await page.getByLabel('Name', { exact: true }).fill('Browser Shopper');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill('browser-test-pass-1');
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await page.getByRole('button', { name: 'Sign out', exact: true }).waitFor();

  await page.getByLabel('Search', { exact: true }).fill('hoodie');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  const hoodie = page.getByRole('link', { name: 'Heavyweight Hoodie', exact: true });
  await hoodie.waitFor();
  assert.equal(await page.locator('.card').count(), 1, 'the search finds the one hoodie');
  await v.look('search');

  await hoodie.click();
  await v.look('product');
  await page.getByRole('button', { name: 'Add to cart', exact: true }).click();
  await page.waitForURL('**/cart');
  await v.look('cart');
  assert.match(await page.locator('main').innerText(), /Heavyweight Hoodie/);

  await page.getByRole('link', { name: 'Checkout', exact: true }).click();
  await v.look('checkout');
  await page.getByLabel('Recipient', { exact: true }).fill('Browser Shopper');
  await page.getByLabel('Address line 1', { exact: true }).fill('1 Test Street');
  await page.getByLabel('City', { exact: true }).fill('Berlin');
  await page.getByLabel('Postal code', { exact: true }).fill('10115');
  await page.getByLabel('Country', { exact: true }).fill('DE');
  await page.getByLabel('Coupon code', { exact: true }).fill('WELCOME10');
  await page.getByRole('button', { name: 'Place order', exact: true }).click();
  await page.waitForURL(/\/orders\/[0-9a-f-]{36}$/);
  const orderUrl = page.url();
  const main = page.locator('main');
  assert.match(await main.innerText(), /WELCOME10/, 'the coupon is on the order');
  assert.match(await main.innerText(), /53\.10 USD/, '59.00 less 10%');
  await untilText(page.locator('[data-order-status]'), 'awaiting payment');
  await v.look('order-unpaid');

  await page.getByRole('button', { name: 'Pay', exact: true }).click();
  await page.waitForURL(/\/sandbox\/pay\//);
  await v.look('provider');
  await page.getByRole('button', { name: 'Pay', exact: true }).click();
  // Back on the order, which turns paid when the provider's notification arrives.
  await page.waitForURL(orderUrl);
  await untilText(page.locator('[data-order-status]'), /^paid$/);
  await v.look('order-paid');

  await page.getByRole('link', { name: 'Orders', exact: true }).click();
  await untilText(page.locator('main td'), /^paid$/);
  await v.look('orders');

  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.getByRole('link', { name: 'Sign in', exact: true }).waitFor();

  // And back in with the keyboard alone: the skip link, then the form's fields in order.
  await page.goto('/signin');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  await page.keyboard.press('Enter');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'email');
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'password');
  await page.keyboard.type('browser-test-pass-1');
  await page.keyboard.press('Enter');
  await page.getByRole('button', { name: 'Sign out', exact: true }).waitFor();
  v.clean();
  await v.context.close();
});

test('a buyer reserves; another takes the last unit and the sale page shows sold out without a reload', async () => {
  const admin = await login(...DEMO_ADMIN);
  const now = Date.now();
  const name = unique('Last pair drop');
  const created = await api('POST', '/api/v1/admin/flash-sales', {
    token: admin,
    body: {
      name,
      starts_at: new Date(now - 1000).toISOString(),
      ends_at: new Date(now + 3600_000).toISOString(),
      per_user_limit: 1,
      reservation_ttl_secs: 600,
      items: [{ name: 'Last Pair', price_cents: 4900, stock: 2 }],
    },
  });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  const saleId = created.json.data.id;

  const buyer = await customer('first-buyer');
  const v = await visitor(browser, 'flash');
  const { page } = v;
  await page.goto('/');
  await page.getByRole('link', { name: 'Sign in', exact: true }).click();
  await signIn(page, buyer.email, buyer.password);
  await page.getByRole('button', { name: 'Sign out', exact: true }).waitFor();

  await page.getByRole('link', { name: 'Flash sales', exact: true }).click();
  await v.look('sales');
  await page.getByRole('link', { name, exact: true }).click();
  await untilText(page.locator('[data-remaining]'), '2 left');
  await v.look('sale');
  await page.getByRole('button', { name: 'Reserve', exact: true }).click();
  await page.waitForURL(/\/reservations\//);
  const reservationUrl = page.url();
  await untilText(page.locator('.deadline'), /Pay within \d+:\d\d/);
  await page.getByRole('button', { name: 'Pay', exact: true }).waitFor();
  await v.look('reservation');

  await page.goto(`/flash-sales/${saleId}`);
  await untilText(page.locator('[data-remaining]'), '1 left');
  assert.equal(await page.locator('[data-sold-out]').isVisible(), false);
  // Another buyer takes the last unit through the API.
  const other = await customer('second-buyer');
  const taken = await api('POST', `/api/v1/flash-sales/${saleId}/reservations`, {
    token: other.token, body: { item_id: 1, quantity: 1 },
  });
  assert.equal(taken.status, 201, JSON.stringify(taken.json));
  // No reload: the event stream says so.
  await page.locator('[data-sold-out]').waitFor({ state: 'visible', timeout: 15000 });
  await untilText(page.locator('[data-remaining]'), '0 left');
  await expectNoReserve(page);
  await v.look('sold-out');

  // The reservation is still the first buyer's to pay.
  await page.goto(reservationUrl);
  await page.getByRole('button', { name: 'Pay', exact: true }).click();
  await page.waitForURL(/\/sandbox\/pay\//);
  await page.getByRole('button', { name: 'Pay', exact: true }).click();
  await untilText(page.locator('[data-order-status]'), /^paid$/);
  v.clean();
  await v.context.close();
});

async function expectNoReserve(page) {
  await page.waitForFunction(() => document.querySelectorAll('[data-reserve]').length === 0);
  assert.equal(await page.getByRole('button', { name: 'Reserve', exact: true }).count(), 0);
}

/// A paid order of a new customer, made through the API and the provider's page.
async function paidOrder(browser) {
  const buyer = await customer('refund-buyer');
  const products = await api('GET', '/api/v1/products?q=tote');
  const tote = products.json.data.items[0];
  let r = await api('PUT', `/api/v1/cart/items/${tote.id}`, { token: buyer.token, body: { quantity: 1 } });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  r = await api('POST', '/api/v1/cart/checkout', {
    token: buyer.token,
    body: { shipping_address: { recipient: 'R', line1: '1 Road', city: 'Paris', postal_code: '75001', country: 'FR' } },
  });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  const order = r.json.data.id;
  r = await api('POST', `/api/v1/orders/${order}/payments`, { token: buyer.token });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  const context = await browser.newContext({ baseURL: base });
  const page = await context.newPage();
  await page.goto(r.json.data.pay_url);
  await page.getByRole('button', { name: 'Pay', exact: true }).click();
  for (let i = 0; i < 150; i++) {
    const o = await api('GET', `/api/v1/orders/${order}`, { token: buyer.token });
    if (o.json.data.status === 'paid') break;
    await page.waitForTimeout(100);
  }
  await context.close();
  return order;
}

test('an admin signs in, adds a product with a picture, makes a sale and watches it live, and refunds an order', async () => {
  const order = await paidOrder(browser);
  const v = await visitor(browser, 'console');
  const { page } = v;
  await page.goto('/admin');
  await page.waitForURL(/\/signin\?next=%2Fadmin|\/signin\?next=\/admin/);
  await signIn(page, ...DEMO_ADMIN);
  await page.waitForURL(/\/admin$/);
  await v.look('home');

  // A product with a picture.
  await page.getByRole('link', { name: 'Products', exact: true }).first().click();
  await v.look('products');
  await page.getByRole('link', { name: 'New product', exact: true }).click();
  const product = unique('Desk Lamp');
  await page.getByLabel('Name', { exact: true }).fill(product);
  await page.getByLabel('Price', { exact: true }).fill('24.50');
  await page.getByLabel('Stock', { exact: true }).fill('7');
  await page.getByLabel('Category', { exact: true }).fill('home');
  await page.getByLabel('Add pictures', { exact: true }).setInputFiles({ name: 'lamp.png', mimeType: 'image/png', buffer: PNG });
  await v.look('new-product');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await untilText(page.locator('[role=status]'), 'Saved.');
  const picture = page.locator('main img').first();
  assert.match(await picture.getAttribute('src'), /^\/uploads\/[0-9a-f]{64}\.png$/);
  await v.look('product-saved');
  // The shop shows it, picture and all.
  await page.getByRole('link', { name: 'As shoppers see it', exact: true }).click();
  await untilText(page.locator('h1'), product);
  assert.equal(await page.locator('.gallery img').count(), 1);
  assert.ok(await page.locator('.gallery img').evaluate((img) => img.complete && img.naturalWidth === 1));

  // A sale of generated items, watched as it runs.
  await page.goto('/admin/flash-sales');
  await page.getByRole('link', { name: 'New sale', exact: true }).click();
  const sale = unique('Console drop');
  await page.getByLabel('Name', { exact: true }).fill(sale);
  await page.getByLabel('Generated items', { exact: true }).check();
  await page.getByLabel('How many items', { exact: true }).fill('3');
  await page.getByLabel('Units of each', { exact: true }).fill('5');
  await v.look('new-sale');
  await page.getByRole('button', { name: 'Create sale', exact: true }).click();
  await page.waitForURL(/\/admin\/flash-sales\/[0-9a-f-]{36}$/);
  const saleId = page.url().split('/').pop();
  await untilText(page.locator('[data-remaining]'), '15 left');
  // Buyers arrive.
  for (const item of [1, 2]) {
    const buyer = await customer('live-buyer');
    const r = await api('POST', `/api/v1/flash-sales/${saleId}/reservations`, {
      token: buyer.token, body: { item_id: item, quantity: 1 },
    });
    assert.equal(r.status, 201, JSON.stringify(r.json));
  }
  await untilText(page.locator('[data-remaining]'), '13 left');
  await untilText(page.locator('[data-stat=reserved]'), /^2$/);
  await untilText(page.locator('[data-stat=buyers]'), /^2$/);
  await untilText(page.locator('[data-rates] td'), /^reserved$/);
  await v.look('sale-live');

  // A refund.
  await page.getByRole('link', { name: 'Orders', exact: true }).click();
  await page.getByLabel('Status', { exact: true }).selectOption('paid');
  await page.getByRole('button', { name: 'Filter', exact: true }).click();
  const short = `#${order.replace(/-/g, '').slice(-8)}`;
  await page.getByRole('link', { name: short, exact: true }).click();
  await v.look('order');
  await page.getByRole('button', { name: 'Refund', exact: true }).click();
  await untilText(page.locator('[role=status]'), 'Refunded.');
  await untilText(page.locator('.status strong'), /^refunded$/);
  await v.look('refunded');

  await page.getByRole('link', { name: 'Users', exact: true }).click();
  await untilText(page.locator('main td'), 'admin@demo.flashmart.dev');
  await v.look('users');
  v.clean();
  await v.context.close();
});
