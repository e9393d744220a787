// Gantry console: live updates from the event stream, local times, the
// diff and plan previews, and the actions (sent to the API with the
// session cookie; a refusal shows the API's `detail`). No framework, no
// build step; served from the binary.
(() => {
  'use strict';
  const body = document.body;
  if (!document.querySelector('[data-live]')) return; // sign-in and error pages

  // --- times in the browser's zone, with how long ago ---------------------
  const dtf = new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', timeZoneName: 'short',
  });
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const units = [['year', 31536e6], ['month', 2592e6], ['day', 864e5],
    ['hour', 36e5], ['minute', 6e4], ['second', 1e3]];
  function ago(date) {
    const diff = date.getTime() - Date.now();
    for (const [unit, ms] of units) {
      if (Math.abs(diff) >= ms || unit === 'second') {
        return rtf.format(Math.round(diff / ms), unit);
      }
    }
    return '';
  }
  function times(root) {
    root.querySelectorAll('time[datetime]').forEach((t) => {
      const d = new Date(t.dateTime);
      if (Number.isNaN(d.getTime())) return;
      t.title = dtf.format(d);
      t.textContent = `${dtf.format(d)} (${ago(d)})`;
    });
    // An option holds text only: its time is the end of the text.
    root.querySelectorAll('option[data-datetime]').forEach((o) => {
      const d = new Date(o.dataset.datetime);
      if (Number.isNaN(d.getTime())) return;
      const at = o.textContent.lastIndexOf(o.dataset.datetime);
      const head = at >= 0 ? o.textContent.slice(0, at) : `${o.textContent} · `;
      o.textContent = `${head}${dtf.format(d)}`;
      o.dataset.datetime = dtf.format(d);
    });
  }

  // --- previews: the diff and API Manager plan beside an approval ---------
  const previewCache = new Map();
  function previews(root) {
    root.querySelectorAll('pre[data-preview]').forEach(async (pre) => {
      const url = pre.dataset.preview;
      if (!previewCache.has(url)) {
        previewCache.set(url, (async () => {
          try {
            const r = await fetch(url, { credentials: 'same-origin' });
            const text = await r.text();
            if (!r.ok) {
              let detail = `${r.status}`;
              try { detail = JSON.parse(text).detail || detail; } catch (_) { /* not JSON */ }
              return `Not available: ${detail}`;
            }
            if (url.endsWith('/plan')) return JSON.stringify(JSON.parse(text), null, 2);
            return text.trim() === '' ? 'No changes.' : text;
          } catch (e) {
            return `Not available: ${e.message}`;
          }
        })());
      }
      pre.textContent = await previewCache.get(url);
    });
  }

  // --- paused stages, from the pipelines API ------------------------------
  async function pauses() {
    if (!document.querySelector('[data-pipeline]')) return;
    let list;
    try {
      const r = await fetch('/api/v1/pipelines', { credentials: 'same-origin' });
      if (!r.ok) return;
      list = await r.json();
    } catch (_) { return; }
    for (const p of list) {
      for (const s of p.stages || []) {
        const sel = `[data-pipeline="${CSS.escape(p.name)}"] [data-stage="${CSS.escape(s.name)}"]`;
        document.querySelectorAll(sel).forEach((el) => {
          const paused = s.paused;
          let note = el.querySelector('.paused');
          if (paused && !note) {
            note = document.createElement('p');
            note.className = 'paused';
            el.querySelector('h3').after(note);
          }
          if (note) {
            note.hidden = !paused;
            note.textContent = paused
              ? `Paused by ${paused.by}${paused.reason ? `: ${paused.reason}` : ''}` : '';
          }
          const pause = el.querySelector('form[data-pause="pause"]');
          const resume = el.querySelector('form[data-pause="resume"]');
          if (pause) pause.hidden = !!paused;
          if (resume) resume.hidden = !paused;
        });
      }
    }
  }

  function enhance(root) {
    times(root);
    previews(root);
  }

  // --- live regions: refetch the page, swap what changed ------------------
  // The server's HTML of each region as last rendered, to tell changes.
  const served = new Map();
  document.querySelectorAll('[data-live]').forEach((el) => served.set(el.id, el.innerHTML));

  function keep(old, fresh) {
    // What the user is doing survives a swap: typed values, focus, the
    // answer to their last action.
    old.querySelectorAll('input[id], textarea[id], select[id]').forEach((f) => {
      const twin = fresh.querySelector(`#${CSS.escape(f.id)}`);
      if (twin && f.type !== 'hidden') twin.value = f.value;
    });
    old.querySelectorAll('form[data-action] .result').forEach((res) => {
      if (!res.textContent) return;
      const action = res.closest('form').dataset.action;
      const twin = fresh.querySelector(`form[data-action="${CSS.escape(action)}"] .result`);
      if (twin) { twin.textContent = res.textContent; twin.className = res.className; }
    });
    const active = document.activeElement;
    return active && old.contains(active) && active.id ? active.id : null;
  }

  function swap(doc) {
    doc.querySelectorAll('[data-live]').forEach((fresh) => {
      const old = document.getElementById(fresh.id);
      if (!old || served.get(fresh.id) === fresh.innerHTML) return;
      served.set(fresh.id, fresh.innerHTML);
      const node = document.importNode(fresh, true);
      const focus = keep(old, node);
      enhance(node);
      old.replaceWith(node);
      if (focus) document.getElementById(focus)?.focus();
    });
  }

  let timer = null;
  let busy = false;
  let again = false;
  function schedule() {
    if (!timer) timer = setTimeout(refresh, 120);
  }
  async function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(location.href, { credentials: 'same-origin', headers: { Accept: 'text/html' } });
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      if (doc.querySelector('[data-live]')) {
        swap(doc);
        await pauses();
      } else if (r.status === 200 && doc.querySelector('form[action="/console/sign-in"]')) {
        setLive('Signed out: reload the page to sign in again', 'lost');
      }
    } catch (_) {
      // The stream says when the server is gone.
    } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  }

  // --- the event stream ---------------------------------------------------
  const live = document.getElementById('live');
  function setLive(text, state) {
    if (!live) return;
    live.textContent = text;
    live.dataset.state = state;
  }
  let last = Number(body.dataset.head || 0);
  let lost = false;
  let source = null;
  function connect() {
    const follow = body.dataset.follow;
    source = new EventSource(`/api/v1/events?from=${last + 1}${follow ? `&${follow}` : ''}`);
    source.onopen = () => {
      setLive(lost ? 'Reconnected: live' : 'Live', 'ok');
      if (lost) { lost = false; schedule(); }
    };
    source.onmessage = (m) => {
      const id = Number(m.lastEventId);
      if (id > last) last = id;
      schedule();
    };
    source.onerror = () => {
      lost = true;
      setLive('Connection lost: reconnecting…', 'lost');
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, 2000);
      }
    };
  }

  // --- actions ------------------------------------------------------------
  document.addEventListener('submit', async (ev) => {
    const form = ev.target.closest('form[data-action]');
    if (!form) return;
    ev.preventDefault();
    const out = form.querySelector('.result');
    const button = form.querySelector('button[type="submit"]');
    const payload = {};
    new FormData(form).forEach((v, k) => {
      const text = String(v).trim();
      if (text !== '') payload[k] = text;
    });
    if (form.dataset.fixedPipeline) payload.pipeline = form.dataset.fixedPipeline;
    button.disabled = true;
    out.className = 'result';
    out.textContent = 'Sending…';
    try {
      const r = await fetch(form.dataset.action, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(payload),
      });
      let answer = {};
      try { answer = await r.json(); } catch (_) { /* empty answer */ }
      if (!r.ok) {
        out.className = 'result error';
        out.textContent = `Refused: ${answer.detail || answer.title || r.status}`;
        return;
      }
      out.className = 'result ok';
      out.textContent = form.dataset.done || 'Done';
      if (answer.run_id && !form.dataset.action.includes('/stages/') ||
          answer.run_id && form.dataset.action.endsWith('/rollback')) {
        const a = document.createElement('a');
        a.href = `/runs/${encodeURIComponent(answer.run_id)}`;
        a.textContent = ` run ${answer.run_id.slice(-8)}`;
        out.append(a);
      }
      form.querySelectorAll('input:not([type="hidden"]), textarea').forEach((f) => { f.value = ''; });
      schedule();
    } catch (e) {
      out.className = 'result error';
      out.textContent = `Gantry did not answer: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });

  enhance(document);
  pauses();
  setInterval(() => times(document), 30000);
  connect();
})();
