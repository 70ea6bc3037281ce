// Run with `node --test web/`: the pure helpers, and the client against a
// fake WebSocket (no browser, no server).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  LifelineClient, SUBPROTOCOL, backoffDelay, escapeXml, frames, parseFrame, unescapeXml,
} from './lifeline.js';

test('escapes text and attributes', () => {
  assert.equal(escapeXml(`a<b>&"c"'d'`), 'a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;');
  assert.equal(frames.msg('b', 'x < y & "z"', 'm1'), '<msg to="b" id="m1">x &lt; y &amp; &quot;z&quot;</msg>');
  assert.equal(frames.login('a@b', ''), '<login id="a@b"/>');
  assert.equal(frames.login('a', 'f00'), '<login id="a" token="f00"/>');
  assert.equal(frames.pong(null), '<heartbeat mode="pong"/>');
  assert.equal(frames.ping(7), '<heartbeat mode="ping" seq="7"/>');
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

function client(extra = {}) {
  FakeSocket.all = [];
  const seen = { states: [], messages: [], errors: [] };
  const c = new LifelineClient({
    url: 'ws://test/', id: 'a', token: 't', base: 5, cap: 10,
    WebSocket: FakeSocket, events: new EventTarget(),
    onState: (s) => seen.states.push(s),
    onMessage: (m) => seen.messages.push(m),
    onError: (e) => seen.errors.push(e),
    ...extra,
  });
  return { c, seen };
}

test('logs in, heartbeats, answers probes, acks messages, stops on replaced', async () => {
  const { c, seen } = client();
  c.start();
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, 'ws://test/');
  assert.equal(ws.protocol, SUBPROTOCOL);
  ws.open();
  assert.deepEqual(ws.sent, ['<login id="a" token="t"/>']);
  ws.receive('<welcome id="a" interval="100" misses="3" phase-ms="0"/>');
  assert.equal(c.state, 'online');
  await sleep(20);
  assert.equal(ws.sent[1], '<heartbeat mode="ping" seq="1"/>');
  ws.receive('<heartbeat mode="pong" seq="1"/>');
  assert.equal(typeof c.rtt, 'number');
  ws.receive('<heartbeat mode="ping" seq="9"/>');
  assert.equal(ws.sent.at(-1), '<heartbeat mode="pong" seq="9"/>');
  ws.receive('<msg from="b" id="m1">hi &amp; bye</msg>');
  assert.deepEqual(seen.messages, [{ from: 'b', id: 'm1', text: 'hi & bye' }]);
  assert.equal(ws.sent.at(-1), '<ack id="m1"/>');
  assert.equal(c.send('b', '<3', 'x1'), 'x1');
  assert.equal(ws.sent.at(-1), '<msg to="b" id="x1">&lt;3</msg>');
  ws.receive('<bye reason="replaced"/>');
  ws.drop();
  await sleep(30);
  assert.equal(c.state, 'stopped');
  assert.equal(FakeSocket.all.length, 1, 'replaced is terminal');
  assert.deepEqual(seen.states, ['connecting', 'online', 'stopped']);
});

test('declares the server lost after misses unanswered pings, then reconnects', async () => {
  const { c } = client();
  c.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive('<welcome id="a" interval="100" misses="2" phase-ms="0"/>');
  await sleep(350);
  const first = FakeSocket.all[0];
  assert.equal(first.sent.filter((f) => f.startsWith('<heartbeat')).length, 2);
  assert.equal(first.closedWith, 1000);
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(c.reconnects, 1);
  assert.equal(c.state, 'connecting');
  c.stop();
});

test('honours retry-ms, goes offline and comes back online', async () => {
  const events = new EventTarget();
  const { c } = client({ events, base: 1000, cap: 1000 });
  c.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive('<bye reason="shutdown" retry-ms="30"/>');
  FakeSocket.all[0].drop();
  assert.equal(c.state, 'waiting');
  await sleep(60);
  assert.equal(FakeSocket.all.length, 2, 'reconnected after retry-ms, not the 1 s backoff');
  events.dispatchEvent(new Event('offline'));
  assert.equal(c.state, 'offline');
  assert.equal(FakeSocket.all[1].closedWith, 1001);
  events.dispatchEvent(new Event('online'));
  assert.equal(c.state, 'connecting');
  assert.equal(FakeSocket.all.length, 3);
  c.stop();
});

test('a refused login is terminal', () => {
  const { c, seen } = client();
  c.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive('<error code="auth-failed"/>');
  FakeSocket.all[0].drop();
  assert.equal(c.state, 'stopped');
  assert.deepEqual(seen.errors, [{ code: 'auth-failed', ref: null, text: '' }]);
});
