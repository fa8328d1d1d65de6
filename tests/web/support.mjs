// What the browser stories share: Chromium from Debian driven by playwright-core, a server
// started by scripts/browser-tests (FLASHMART_BASE_URL), screenshots at 360 and 1280 px kept in
// FLASHMART_ARTIFACTS, and every page checked for console errors and horizontal scrolling.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const base = process.env.FLASHMART_BASE_URL;
if (!base) throw new Error('FLASHMART_BASE_URL is not set: run scripts/browser-tests');
const artifacts = process.env.FLASHMART_ARTIFACTS || 'artifacts';
mkdirSync(artifacts, { recursive: true });

export const DEMO_ADMIN = ['admin@demo.flashmart.dev', 'demo-admin-pass'];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.FLASHMART_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // The machine has no network beyond loopback: Chromium's own background traffic is off.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/// A browser context of its own (its own cookies), whose pages' console errors, uncaught
/// exceptions and failed requests are collected in `problems`.
export async function visitor(browser, story) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, baseURL: base });
  const problems = [];
  const watch = (page) => {
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`${page.url()}: console: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`${page.url()}: exception: ${e.message}`));
    page.on('requestfailed', (r) => {
      // A stream or poll cut short by leaving the page is not a failure of the page.
      const why = r.failure()?.errorText ?? '';
      if (!why.includes('ERR_ABORTED')) problems.push(`${r.url()}: request failed: ${why}`);
    });
  };
  context.on('page', watch);
  const page = await context.newPage();
  let shots = 0;
  return {
    context,
    page,
    problems,
    /// Screenshots at 360 and 1280 px wide, and neither may scroll sideways; every control on
    /// the page has an accessible name.
    async look(name) {
      shots += 1;
      const unnamed = await page.evaluate(() => {
        const named = (el) => (el.labels && el.labels.length > 0) || el.getAttribute('aria-label')
          || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim())
          || (el.tagName === 'A' && (el.textContent.trim() || el.querySelector('img[alt]:not([alt=""])')));
        return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
          .filter((el) => !named(el)).map((el) => el.outerHTML.slice(0, 120));
      });
      assert.deepEqual(unnamed, [], `${name}: controls without an accessible name`);
      const file = `${story}-${String(shots).padStart(2, '0')}-${name}`;
      for (const width of [360, 1280]) {
        await page.setViewportSize({ width, height: 900 });
        const overflow = await page.evaluate(() =>
          document.documentElement.scrollWidth - document.documentElement.clientWidth);
        await page.screenshot({ path: join(artifacts, `${file}-${width}.png`), fullPage: true });
        assert.ok(overflow <= 0, `${name} scrolls sideways by ${overflow}px at ${width}px wide`);
      }
    },
    /// No console error, exception or failed request on any page so far.
    clean() {
      assert.deepEqual(problems, [], `problems in the browser:\n${problems.join('\n')}`);
    },
  };
}

export function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 7)}`;
}

/// The JSON API, for what a story needs arranged without the pages (another buyer, say).
export async function api(method, path, { token, body } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json();
  return { status: res.status, json };
}

export async function login(email, password) {
  const { status, json } = await api('POST', '/api/v1/auth/login', { body: { email, password } });
  assert.equal(status, 200, JSON.stringify(json));
  return json.data.access_token;
}

/// A new customer account, and its access token.
export async function customer(prefix) {
  const email = `${unique(prefix)}@example.test`;
  const password = 'browser-test-pass-1';
  const reg = await api('POST', '/api/v1/auth/register', { body: { email, password, name: prefix } });
  assert.equal(reg.status, 201, JSON.stringify(reg.json));
  return { email, password, token: await login(email, password) };
}

/// Signs in through the page, as a person would.
export async function signIn(page, email, password) {
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

/// A 1x1 PNG.
export const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64');
