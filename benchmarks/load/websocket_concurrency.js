// The spec's WebSocket concurrency test (performance-baseline.md, "Test Commands"), over the gateway's /ws
// protocol (README, "WebSocket"): the client sends {"type":"chat","id",...} (the REST body's fields), the
// server answers {"type":"delta","id","content"} events then {"type":"done","id","usage","finish_reason"},
// or {"type":"error","id","error":{...}}.
//
//   k6 run benchmarks/load/websocket_concurrency.js                       # smoke (the default)
//   k6 run -e WS_URL=ws://localhost:8000/ws -e API_KEY=test-key-123 benchmarks/load/websocket_concurrency.js
//   k6 run -e SCENARIO=soak benchmarks/load/websocket_concurrency.js      # smoke | load | stress | soak
//
// k6 has no --scenario flag, so SCENARIO picks one. Each VU holds one connection for HOLD seconds and
// streams one chat after another over it: `load` holds the spec's 100 connections, `stress` its 150
// maximum, `soak` 100 for SOAK_DURATION (default 30m). AUTH=header (default) | query | message picks
// how the key is sent: Authorization header, ?api_key=, or a first {"type":"auth"} message.
import ws from 'k6/ws';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { SharedArray } from 'k6/data';

const WS_URL = __ENV.WS_URL || 'ws://localhost:8000/ws';
const API_KEY = __ENV.API_KEY || 'test-key-123';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';
const SCENARIO = __ENV.SCENARIO || 'smoke';
const AUTH = __ENV.AUTH || 'header';
const HOLD = Number(__ENV.HOLD || 20); // seconds one connection stays open
const PROFILE = __ENV.PROFILE || 'development';

const SCENARIOS = {
  smoke: { executor: 'constant-vus', vus: 5, duration: __ENV.DURATION || '15s' },
  load: {
    executor: 'ramping-vus', startVUs: 0, gracefulRampDown: '30s',
    stages: [{ duration: '20s', target: 100 }, { duration: '2m', target: 100 }, { duration: '10s', target: 0 }],
  },
  stress: {
    executor: 'ramping-vus', startVUs: 0, gracefulRampDown: '30s',
    stages: [{ duration: '20s', target: 100 }, { duration: '1m', target: 150 }, { duration: '1m', target: 150 }, { duration: '10s', target: 0 }],
  },
  soak: { executor: 'constant-vus', vus: 100, duration: __ENV.SOAK_DURATION || '30m' },
};
if (!SCENARIOS[SCENARIO]) throw new Error(`SCENARIO must be one of ${Object.keys(SCENARIOS).join(', ')}; got ${SCENARIO}`);
if (!['header', 'query', 'message'].includes(AUTH)) throw new Error(`AUTH must be header, query or message; got ${AUTH}`);
const ERRORS = PROFILE === 'production' ? 0.005 : 0.01;

export const options = {
  scenarios: { [SCENARIO]: SCENARIOS[SCENARIO] },
  thresholds: {
    ws_chat_errors: [`rate<${ERRORS}`],
    ws_connect_ok: ['rate>0.99'],
    checks: [`rate>${1 - ERRORS}`],
    ws_time_to_first_delta: [PROFILE === 'production' ? 'p(95)<200' : 'p(95)<300'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

const MIX = new SharedArray('prompt mix', () => [JSON.parse(open('../prompt_mix.json'))]);
const chatErrors = new Rate('ws_chat_errors'); // per chat: an error message, a bad message or no done
const connectOk = new Rate('ws_connect_ok');
const firstDelta = new Trend('ws_time_to_first_delta', true);
const chatTime = new Trend('ws_chat_duration', true);
const badMessages = new Counter('ws_bad_messages');
const chats = new Counter('ws_chats_done');

function target() {
  if (AUTH !== 'query') return WS_URL;
  return WS_URL + (WS_URL.includes('?') ? '&' : '?') + 'api_key=' + encodeURIComponent(API_KEY);
}

function params() {
  return AUTH === 'header' ? { headers: { Authorization: `Bearer ${API_KEY}` } } : {};
}

function pick(items, weightOf) {
  let total = 0;
  for (const it of items) total += weightOf(it);
  let r = Math.random() * total;
  for (const it of items) {
    r -= weightOf(it);
    if (r <= 0) return it;
  }
  return items[items.length - 1];
}

export function setup() {
  // A gateway without /ws answers the upgrade with 404: stop with that reason, never pass silently.
  const res = ws.connect(target(), params(), (socket) => {
    socket.on('open', () => socket.close());
  });
  if (!res || res.status !== 101) {
    exec.test.abort(`${WS_URL} did not upgrade to a WebSocket (HTTP ${res ? res.status : 'none'}): `
      + 'the gateway has no /ws endpoint or refused the key; this test needs /ws (issue 11)');
  }
}

export default function () {
  const mix = MIX[0];
  const pending = {}; // id -> {t0, first, text}
  let seq = 0;
  let opened = false;

  const res = ws.connect(target(), params(), (socket) => {
    const send = () => {
      const cls = pick(Object.keys(mix.classes), (c) => mix.classes[c].share);
      const p = pick(mix.prompts.filter((x) => x.class === cls), (x) => x.weight);
      const id = `${exec.vu.idInTest}-${++seq}`;
      pending[id] = { t0: Date.now(), first: null, text: '' };
      socket.send(JSON.stringify({
        type: 'chat', id, model: MODEL, max_tokens: p.max_tokens,
        messages: [{ role: 'system', content: mix.system }, { role: 'user', content: p.variants[seq % p.variants.length] }],
      }));
    };
    socket.on('open', () => {
      opened = true;
      if (AUTH === 'message') socket.send(JSON.stringify({ type: 'auth', api_key: API_KEY }));
      send();
    });
    socket.on('message', (raw) => {
      let m;
      try {
        m = JSON.parse(raw);
      } catch (e) {
        badMessages.add(1);
        return;
      }
      const req = m && pending[m.id];
      const known = check(m, { 'message has a known type and id': (x) => !!req && ['delta', 'done', 'error'].includes(x.type) });
      if (!known) {
        badMessages.add(1);
        return;
      }
      if (m.type === 'delta') {
        if (req.first === null) {
          req.first = Date.now();
          firstDelta.add(req.first - req.t0);
        }
        if (typeof m.content === 'string') req.text += m.content;
        return;
      }
      delete pending[m.id];
      if (m.type === 'error') {
        check(m, { 'error is OpenAI-shaped': (x) => !!x.error && typeof x.error.message === 'string' });
        chatErrors.add(true);
      } else {
        const good = check(m, {
          'done has usage and finish_reason': (x) => !!x.usage && typeof x.finish_reason === 'string',
          'deltas carried content': () => req.text.length > 0,
        });
        chatErrors.add(!good);
        chatTime.add(Date.now() - req.t0);
        chats.add(1);
      }
      send();
    });
    socket.on('error', () => {});
    socket.setTimeout(() => socket.close(), HOLD * 1000);
  });
  connectOk.add(opened && !!res && res.status === 101);
  // Chats still open when the connection closed never got their done: they count as errors.
  for (const id of Object.keys(pending)) {
    if (Date.now() - pending[id].t0 > 1000) chatErrors.add(true);
  }
}
