// The pure helpers, and the client against a stand-in WebSocket that the test
// drives as the server would: the paths a real server will not take on cue
// (a duplicate of a push, a frozen tab, a refused constructor).
// server.test.mjs runs the same API against the real binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  LifelineClient, LifelineError, LifelineMessageEvent, SUBPROTOCOL, backoffDelay, escapeXml, frames, parseFrame,
  unescapeXml,
} from 'lifeline-client';
import { nextEvent, stateReached, waitFor } from './wait.mjs';

test('escapes text and attributes', () => {
  assert.equal(escapeXml(`a<b>&"c"'d'`), 'a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;');
  assert.equal(frames.msg('b', 'x < y & "z"', 'm1'), '<msg to="b" id="m1">x &lt; y &amp; &quot;z&quot;</msg>');
  assert.equal(frames.login('a@b', ''), '<login id="a@b"/>');
  assert.equal(frames.login('a', 'f00'), '<login id="a" token="f00"/>');
  assert.equal(frames.login('a', 'f00', 1700000000, 30000), '<login id="a" token="f00" exp="1700000000" interval="30000"/>');
  assert.equal(frames.login('a', null, null, 500), '<login id="a" interval="500"/>');
  assert.equal(frames.pong(null), '<heartbeat mode="pong"/>');
  assert.equal(frames.ping(7), '<heartbeat mode="ping" seq="7"/>');
  assert.equal(frames.ack('m1'), '<ack id="m1"/>');
  assert.equal(frames.bye(), '<bye/>');
});

test('parses server frames', () => {
  assert.deepEqual(parseFrame('<welcome id="a" interval="5000" misses="5" phase-ms="120"/>'), {
    name: 'welcome', attrs: { id: 'a', interval: '5000', misses: '5', 'phase-ms': '120' }, text: '',
  });
  assert.deepEqual(parseFrame(" <heartbeat mode='ping' seq = \"3\" />"), {
    name: 'heartbeat', attrs: { mode: 'ping', seq: '3' }, text: '',
  });
  const msg = parseFrame('<msg from="b" id="m&amp;1">1 &lt; 2 &#x1F600;&#233; <![CDATA[<raw>&amp;]]><i>it</i></msg>');
  assert.deepEqual(msg, { name: 'msg', attrs: { from: 'b', id: 'm&1' }, text: '1 < 2 \u{1F600}\u00e9 <raw>&amp;it' });
  assert.equal(parseFrame('<error code="offline" ref="m1">nobody</error>').text, 'nobody');
  assert.equal(unescapeXml('a & b &bogus; &#;'), 'a & b &bogus; &#;');
  for (const bad of ['', 'text', '<a b/>', '<a b="1/>', '<msg>open']) {
    assert.throws(() => parseFrame(bad), undefined, bad);
  }
});

test('backoff has full jitter under an exponential, capped ceiling', () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999), 499);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
  assert.equal(backoffDelay(20, 500, 30000, () => 0.5), 15000);
  assert.equal(backoffDelay(5000, 500, 30000, () => 0.999), 29970);
  assert.equal(backoffDelay(4, 500, 30000, () => 0), 0);
  for (let i = 0; i < 100; i += 1) {
    const d = backoffDelay(2, 100, 1000);
    assert.ok(d >= 0 && d < 400);
  }
});

/** A WebSocket stand-in: records what the client sends; the test plays the server. */
class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    Object.assign(this, { url, protocol, sent: [], readyState: 0, closedWith: null });
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(text); }
  close(code) { this.readyState = 3; this.closedWith = code; }
  open() { this.readyState = 1; this.onopen?.(); }
  receive(text) { this.onmessage?.({ data: text }); }
  drop() { this.readyState = 3; this.onclose?.({ code: 1006 }); }
}

/** A page's document as far as the client looks at it. */
class FakeDocument extends EventTarget {
  visibilityState = 'visible';
  show(state) {
    this.visibilityState = state;
    this.dispatchEvent(new Event('visibilitychange'));
  }
}

function client(extra = {}) {
  FakeSocket.all = [];
  const network = new EventTarget();
  const document = new FakeDocument();
  const seen = { states: [], details: [], messages: [], errors: [] };
  const c = new LifelineClient({
    url: 'ws://test/', id: 'a', token: 't', backoffBaseMs: 5, backoffCapMs: 10,
    WebSocket: FakeSocket, window: network, document, ...extra,
  });
  c.addEventListener('state', (e) => { seen.states.push(e.detail.state); seen.details.push(e.detail); });
  c.addEventListener('message', (e) => seen.messages.push(e.detail));
  c.addEventListener('error', (e) => seen.errors.push(e.detail));
  return { c, seen, network, document };
}

/** Starts `c` and plays a server that welcomes it; returns the socket and start()'s promise. */
function welcome(c, attrs = 'interval="5000" misses="5" phase-ms="4000"') {
  const started = c.start();
  const ws = FakeSocket.all.at(-1);
  ws.open();
  ws.receive(`<welcome id="a" ${attrs}/>`);
  return { ws, started };
}

/** Blocks the event loop, as a throttled or frozen tab holds its timers back. */
function freezeFor(ms) {
  const until = performance.now() + ms;
  while (performance.now() < until) { /* a frozen page runs nothing */ }
}

test('logs in, heartbeats, answers probes, acks messages, stops on replaced', async () => {
  const { c, seen } = client();
  assert.equal(c.state, 'idle');
  const started = c.start();
  assert.equal(c.start(), started, 'a second start() while connecting is the same wait');
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, 'ws://test/');
  assert.equal(ws.protocol, SUBPROTOCOL);
  ws.open();
  assert.deepEqual(ws.sent, ['<login id="a" token="t"/>']);
  const beat = nextEvent(c, 'heartbeat');
  ws.receive('<welcome id="a" interval="100" misses="3" phase-ms="0"/>');
  assert.equal(c.state, 'online');
  await started;
  await c.start(); // already online: resolves at once
  await waitFor(() => ws.sent.includes('<heartbeat mode="ping" seq="1"/>'), 'the first ping at phase-ms');
  ws.receive('<heartbeat mode="pong" seq="1"/>');
  const { detail } = await beat;
  assert.equal(typeof detail.rtt, 'number');
  assert.equal(c.rtt, detail.rtt);
  ws.receive('<heartbeat mode="ping" seq="9"/>');
  assert.equal(ws.sent.at(-1), '<heartbeat mode="pong" seq="9"/>');
  ws.receive('<msg from="b" id="m1">hi &amp; bye</msg>');
  assert.deepEqual(seen.messages, [{ from: 'b', id: 'm1', text: 'hi & bye' }]);
  assert.equal(ws.sent.at(-1), '<ack id="m1"/>');
  const id = c.send('b', '<3');
  assert.equal(ws.sent.at(-1), `<msg to="b" id="${id}">&lt;3</msg>`);
  assert.notEqual(c.send('b', 'again'), id, 'every send gets its own id');
  ws.receive('<bye reason="replaced"/>');
  ws.drop();
  assert.equal(c.state, 'stopped');
  assert.equal(FakeSocket.all.length, 1, 'replaced is terminal');
  assert.deepEqual(seen.states, ['connecting', 'online', 'stopped']);
  assert.deepEqual(seen.details.at(-1), { state: 'stopped', reason: 'replaced' });
});

test('declares the server lost after misses unanswered pings, then reconnects', async () => {
  const { c, seen } = client();
  welcome(c, 'interval="100" misses="2" phase-ms="0"');
  const first = FakeSocket.all[0];
  await stateReached(c, 'connecting', 2000);
  assert.equal(first.sent.filter((f) => f.startsWith('<heartbeat')).length, 2);
  assert.equal(first.closedWith, 1000);
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(c.reconnects, 1);
  const waiting = seen.details.find((d) => d.state === 'waiting');
  assert.equal(waiting.reason, 'timeout');
  assert.ok(waiting.delay >= 0 && waiting.delay < 5, `first backoff under base: ${waiting.delay}`);
  c.stop();
});

test('honours retry-ms, then backs off as usual', async () => {
  const { c, seen } = client({ backoffBaseMs: 1000, backoffCapMs: 1000 });
  c.start().catch(() => {}); // stopped at the end, before any welcome
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive('<bye reason="shutdown" retry-ms="30"/>');
  FakeSocket.all[0].drop();
  assert.deepEqual(seen.details.at(-1), { state: 'waiting', reason: 'shutdown', delay: 30 });
  await waitFor(() => FakeSocket.all.length === 2, 'a reconnect after retry-ms, not the 1 s backoff', 900);
  FakeSocket.all[1].drop();
  assert.equal(seen.details.at(-1).reason, 'closed');
  assert.ok(seen.details.at(-1).delay < 2000);
  c.stop();
});

test('offline waits for the network, online reconnects at once', async () => {
  const { c, seen, network } = client({ backoffBaseMs: 60000, backoffCapMs: 60000 });
  const { ws } = welcome(c);
  network.dispatchEvent(new Event('offline'));
  assert.deepEqual(seen.details.at(-1), { state: 'waiting', reason: 'offline' });
  assert.equal(ws.closedWith, 1000);
  const id = c.send('b', 'while offline');
  c.ack('m7');
  network.dispatchEvent(new Event('online'));
  assert.equal(c.state, 'connecting', 'no backoff once the network is back');
  const again = FakeSocket.all[1];
  again.open();
  again.receive('<welcome id="a" interval="5000" misses="5"/>');
  assert.deepEqual(again.sent, ['<login id="a" token="t"/>', '<ack id="m7"/>', `<msg to="b" id="${id}">while offline</msg>`]);
  c.stop();
  network.dispatchEvent(new Event('online'));
  assert.equal(FakeSocket.all.length, 2, 'a stopped client no longer listens to the network');
});

test('a refused login is terminal and rejects start()', async () => {
  const { c, seen } = client();
  const started = c.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive('<error code="auth-failed"/>');
  FakeSocket.all[0].drop();
  assert.equal(c.state, 'stopped');
  await assert.rejects(started, (err) => err instanceof LifelineError && err.code === 'stopped' && err.reason === 'auth-failed');
  assert.deepEqual(seen.errors, [{ code: 'auth-failed', ref: null, text: '' }]);
  assert.equal(FakeSocket.all.length, 1);
});

test('a message id seen before is not dispatched twice; a processed one is acked again', async () => {
  const { c, seen } = client();
  const { ws } = welcome(c);
  let finish;
  c.addEventListener('message', (e) => {
    if (e.detail.id === 'slow') e.waitUntil(new Promise((resolve) => { finish = resolve; }));
  });
  ws.receive('<msg from="b" id="m1">one</msg>');
  ws.receive('<msg from="b" id="m1">one</msg>');
  assert.deepEqual(seen.messages.map((m) => m.id), ['m1']);
  assert.deepEqual(ws.sent.slice(1), ['<ack id="m1"/>', '<ack id="m1"/>'], 'the redelivery is confirmed, not processed');
  ws.receive('<msg from="b" id="slow">two</msg>');
  ws.receive('<msg from="b" id="slow">two</msg>');
  assert.deepEqual(seen.messages.map((m) => m.id), ['m1', 'slow']);
  assert.equal(ws.sent.length, 3, 'no ack while the handler works, none for its duplicate');
  finish();
  await waitFor(() => ws.sent.at(-1) === '<ack id="slow"/>', 'the ack after waitUntil resolved');
  ws.receive('<msg from="b">no id</msg>');
  ws.receive('<msg from="b">no id</msg>');
  assert.equal(seen.messages.length, 4, 'messages without an id cannot be told apart');
  assert.equal(ws.sent.length, 4, 'and are not acked');
  c.stop();
});

test('a rejected waitUntil leaves the message unacked and lets its redelivery through', async () => {
  const { c, seen } = client();
  const { ws } = welcome(c);
  let attempts = 0;
  c.addEventListener('message', (e) => {
    attempts += 1;
    e.waitUntil(attempts === 1 ? Promise.reject(new Error('disk full')) : Promise.resolve());
  });
  ws.receive('<msg from="b" id="m1">x</msg>');
  const failed = await nextEvent(c, 'error');
  assert.deepEqual(failed.detail, { code: 'handler-failed', ref: 'm1', text: 'disk full' });
  assert.equal(ws.sent.length, 1, 'no ack');
  ws.receive('<msg from="b" id="m1">x</msg>');
  assert.equal(seen.messages.length, 2, 'the redelivery is handled again');
  await waitFor(() => ws.sent.at(-1) === '<ack id="m1"/>', 'the ack of the second try');
  c.stop();
});

test('waitUntil works only while the event is dispatched', () => {
  const { c } = client();
  const { ws } = welcome(c);
  let kept;
  c.addEventListener('message', (e) => { kept = e; });
  ws.receive('<msg from="b" id="m1">x</msg>');
  assert.ok(kept instanceof LifelineMessageEvent);
  assert.throws(() => kept.waitUntil(Promise.resolve()), (err) => err.code === 'invalid-state');
  c.stop();
});

test('autoAck false leaves the ack to the app', () => {
  const { c } = client({ autoAck: false });
  const { ws } = welcome(c);
  ws.receive('<msg from="b" id="m1">x</msg>');
  assert.equal(ws.sent.length, 1);
  c.ack('m1');
  assert.equal(ws.sent.at(-1), '<ack id="m1"/>');
  assert.throws(() => c.ack('bad id'), TypeError);
  c.stop();
});

test('sends queue while not online, in order and bounded; stop() drops them', async () => {
  const { c, seen } = client({ maxQueued: 2 });
  const first = c.send('b', 'one'); // idle: queued for the first welcome
  c.start().catch(() => {});
  const second = c.send('b', 'two');
  assert.throws(() => c.send('b', 'three'), (err) => err instanceof LifelineError && err.code === 'queue-full');
  const ws = FakeSocket.all[0];
  ws.open();
  let sentWhenOnline;
  c.addEventListener('state', () => { sentWhenOnline ??= [...ws.sent]; });
  ws.receive('<welcome id="a" interval="5000" misses="5"/>');
  assert.deepEqual(sentWhenOnline.slice(1), [`<msg to="b" id="${first}">one</msg>`, `<msg to="b" id="${second}">two</msg>`],
    'the queue is out before the online event');
  ws.drop();
  assert.equal(c.state, 'waiting');
  c.send('b', 'dropped');
  c.stop();
  assert.throws(() => c.send('b', 'after stop'), (err) => err.code === 'stopped');
  const { ws: next } = welcome(c);
  assert.deepEqual(next.sent, ['<login id="a" token="t"/>'], 'stop() dropped the queued send');
  assert.deepEqual(seen.details.filter((d) => d.state === 'stopped'), [{ state: 'stopped', reason: 'stop' }]);
  assert.throws(() => c.send('not an id!', 'x'), TypeError);
  assert.throws(() => c.send('b', 'bell \u0007'), TypeError);
  c.stop();
});

test('stop() before online rejects start()', async () => {
  const { c } = client();
  const started = c.start();
  c.stop();
  await assert.rejects(started, (err) => err.reason === 'stop');
  assert.equal(FakeSocket.all[0].closedWith, 1000);
});

test('a hidden tab gets no extra wake-ups; visible again, an overdue heartbeat runs at once', () => {
  const { c, document } = client();
  const { ws } = welcome(c, 'interval="1000" misses="5" phase-ms="100"');
  document.show('hidden');
  document.show('visible');
  assert.equal(ws.sent.length, 1, 'visibility alone sends nothing');
  freezeFor(110);
  document.show('hidden');
  assert.equal(ws.sent.length, 1, 'hiding wakes nothing');
  document.show('visible');
  assert.equal(ws.sent.at(-1), '<heartbeat mode="ping" seq="1"/>', 'the throttled ping goes out on return');
  c.stop();
});

test('visible again, an overdue reconnect runs at once', () => {
  const { c, document } = client({ backoffBaseMs: 20, backoffCapMs: 20 });
  const { ws } = welcome(c);
  ws.drop();
  assert.equal(c.state, 'waiting');
  freezeFor(25);
  document.show('visible');
  assert.equal(c.state, 'connecting');
  assert.equal(FakeSocket.all.length, 2);
  c.stop();
});

test('options are checked up front', () => {
  assert.throws(() => new LifelineClient(), TypeError);
  assert.throws(() => new LifelineClient({ url: 'ws://h/' }), /options\.id/);
  assert.throws(() => new LifelineClient({ url: 'http://h/', id: 'a', WebSocket: FakeSocket }), /ws:\/\/ or wss:\/\//);
  assert.throws(() => new LifelineClient({ id: 'a', WebSocket: FakeSocket }), /options\.url is required/);
  assert.throws(() => new LifelineClient({ url: 'ws://h/', id: 'a', WebSocket: FakeSocket, maxQueued: -1 }), /maxQueued/);
  assert.throws(() => new LifelineClient({ url: 'ws://h/', id: 'a', WebSocket: null }), /experimental-websocket/);
  for (const exp of [-1, 1.5, '1700000000', NaN]) {
    assert.throws(() => new LifelineClient({ url: 'ws://h/', id: 'a', WebSocket: FakeSocket, exp }), /options\.exp/, String(exp));
  }
  for (const interval of [0, -5, 2.5, '5000', Infinity]) {
    assert.throws(() => new LifelineClient({ url: 'ws://h/', id: 'a', WebSocket: FakeSocket, interval }), /options\.interval/, String(interval));
  }
});

test('logs in with exp and the interval asked for, and reports the granted one', async () => {
  const { c } = client({ exp: 1900000000, interval: 60000 });
  assert.equal(c.interval, null, 'nothing granted before a welcome');
  const { ws, started } = welcome(c, 'interval="30000" misses="5" phase-ms="10"');
  assert.deepEqual(ws.sent, ['<login id="a" token="t" exp="1900000000" interval="60000"/>']);
  await started;
  assert.equal(c.interval, 30000, 'the server clamped what was asked');
  c.stop();
});

test('a WebSocket that cannot be built is retried with backoff', () => {
  class Refused {
    constructor() { throw new Error('refused by policy'); }
  }
  const { c, seen } = client({ WebSocket: Refused });
  c.start().catch(() => {});
  assert.deepEqual(seen.errors, [{ code: 'connect-failed', ref: null, text: 'refused by policy' }]);
  assert.equal(c.state, 'waiting');
  assert.equal(seen.details.at(-1).reason, 'connect-failed');
  c.stop();
});

test('a handshake that never completes counts as a failed attempt', async () => {
  const { c, seen } = client({ connectTimeoutMs: 20 });
  c.start().catch(() => {});
  FakeSocket.all[0].open(); // login sent, no welcome ever comes
  await waitFor(() => seen.details.find((d) => d.state === 'waiting'), 'the connect timeout', 2000);
  assert.equal(seen.details.find((d) => d.state === 'waiting').reason, 'connect-timeout');
  assert.equal(FakeSocket.all[0].closedWith, 1000);
  c.stop();
});
