// flashmart's one script: what must move without a reload. Every page works without it.
// Countdowns ([data-countdown]), a sale's stock from its event stream ([data-sale]), an order
// turning paid ([data-watch]), and the console's live view of a sale ([data-live]).
'use strict';

function pad(n) { return String(n).padStart(2, '0'); }

function left(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return d + 'd ' + h + 'h';
  if (h > 0) return h + ':' + pad(m) + ':' + pad(s % 60);
  return m + ':' + pad(s % 60);
}

function countdowns() {
  const all = document.querySelectorAll('[data-countdown]');
  if (all.length === 0) return;
  const tick = () => {
    const now = Date.now();
    for (const el of all) {
      const at = Date.parse(el.dataset.countdown);
      if (Number.isNaN(at)) continue;
      if (at > now) {
        el.textContent = el.dataset.prefix + ' ' + left(at - now);
        continue;
      }
      el.textContent = el.dataset.done;
      // The time to pay is over: its Pay button would only be refused.
      const pay = el.closest('[data-pay]');
      if (pay) for (const form of pay.querySelectorAll('form')) form.hidden = true;
    }
  };
  tick();
  setInterval(tick, 1000);
}

function saleLive() {
  const head = document.querySelector('[data-sale]');
  if (!head || !window.EventSource) return;
  const id = head.dataset.sale;
  const remaining = document.querySelector('[data-remaining]');
  const soldOut = document.querySelector('[data-sold-out]');
  const status = document.querySelector('[data-sale-status]');
  const meter = document.querySelector('[data-meter]');
  let fetching = false, again = false;
  const items = async () => {
    if (!document.querySelector('[data-item]')) return;
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const page = head.dataset.page || '1', per = head.dataset.perPage || '100';
      const res = await fetch('/api/v1/flash-sales/' + id + '/items?page=' + page + '&per_page=' + per,
        { credentials: 'same-origin' });
      if (res.ok) {
        const body = await res.json();
        for (const item of body.data.items) {
          const card = document.querySelector('[data-item="' + item.id + '"]');
          if (!card) continue;
          const label = card.querySelector('[data-item-left]');
          if (label) label.textContent = item.remaining + ' left';
          if (item.remaining === 0) soldOutItem(card);
        }
      }
    } catch (e) { /* the next event tries again */ }
    fetching = false;
    if (again) { again = false; items(); }
  };
  const soldOutItem = (card) => {
    const button = card.querySelector('[data-reserve]');
    if (button) {
      const sold = document.createElement('button');
      sold.type = 'button'; sold.disabled = true; sold.textContent = 'Sold out';
      button.closest('form').replaceWith(sold);
    }
  };
  const source = new EventSource('/api/v1/flash-sales/' + id + '/events');
  source.addEventListener('snapshot', (event) => {
    const snap = JSON.parse(event.data);
    if (remaining) remaining.textContent = snap.remaining + ' left';
    if (meter) meter.value = snap.remaining;
    if (status) status.textContent = snap.status;
    if (snap.remaining === 0) {
      if (soldOut) soldOut.hidden = false;
      for (const card of document.querySelectorAll('[data-item]')) {
        const label = card.querySelector('[data-item-left]');
        if (label) label.textContent = '0 left';
        soldOutItem(card);
      }
    } else {
      items();
    }
    if (snap.status === 'ended') source.close();
  });
  window.addEventListener('pagehide', () => source.close());
}

function orderWatch() {
  const el = document.querySelector('[data-watch]');
  if (!el) return;
  const url = el.dataset.watch;
  const poll = async () => {
    try {
      const res = await fetch(url, { credentials: 'same-origin', headers: { accept: 'application/json' } });
      if (res.ok) {
        const body = await res.json();
        el.textContent = body.label;
        if (body.status !== 'pending_payment') {
          for (const pay of document.querySelectorAll('[data-pay]')) pay.hidden = true;
          return;
        }
      }
    } catch (e) { /* try again below */ }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

function consoleLive() {
  const root = document.querySelector('[data-live]');
  if (!root) return;
  const rates = root.querySelector('[data-rates]');
  let last = null, lastAt = 0;
  const poll = async () => {
    try {
      const res = await fetch(root.dataset.live, { credentials: 'same-origin' });
      if (res.ok) {
        const d = await res.json();
        for (const el of root.querySelectorAll('[data-stat]')) {
          const v = d[el.dataset.stat];
          if (v !== undefined) el.textContent = v;
        }
        const now = Date.now();
        if (rates) {
          const rows = [];
          for (const [result, total] of Object.entries(d.results)) {
            const rate = last && last[result] !== undefined ? (total - last[result]) / ((now - lastAt) / 1000) : 0;
            rows.push([result, rate, total]);
          }
          rates.replaceChildren(...rows.map(([result, rate, total]) => {
            const tr = document.createElement('tr');
            for (const text of [result.replace(/_/g, ' '), rate.toFixed(1), String(total)]) {
              const td = document.createElement('td'); td.textContent = text; tr.append(td);
            }
            return tr;
          }));
        }
        last = d.results; lastAt = now;
      }
    } catch (e) { /* next poll */ }
    setTimeout(poll, 1000);
  };
  poll();
}

countdowns();
saleLive();
orderWatch();
consoleLive();
