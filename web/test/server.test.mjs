// The client API against the real server binary (LIFELINE_BIN), through
// Node's own WebSocket (node --experimental-websocket): every line of the API
// in issue 20, with receipts from the admin API and raw TCP peers as the
// other side. Each test starts its own server and client and ends both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import { LifelineClient, LifelineError } from 'lifeline-client';
import { closedPort, startServer } from './server.mjs';
import { nextEvent, stateReached, waitFor } from './wait.mjs';

/** A client for test `t`, stopped when the test ends, with what it heard. */
function clientFor(t, options) {
  const client = new LifelineClient({ id: 'alice', ...options });
  const seen = { states: [], details: [], messages: [], errors: [] };
  client.addEventListener('state', (e) => { seen.states.push(e.detail.state); seen.details.push(e.detail); });
  client.addEventListener('message', (e) => seen.messages.push(e.detail));
  client.addEventListener('error', (e) => seen.errors.push(e.detail));
  t.after(() => client.stop());
  return { client, seen };
}

/** A file of the package, as it is on disk. */
const packageFile = (file) => readFile(new URL(`../${file}`, import.meta.url), 'utf8');

/** The client's modules: the entry, and every module it imports by relative path, transitively. */
async function clientModules() {
  const files = ['lifeline.js'];
  for (let i = 0; i < files.length; i += 1) {
    for (const [, file] of (await packageFile(files[i])).matchAll(/from '\.\/([^']+)'/g)) {
      if (!files.includes(file)) files.push(file);
    }
  }
  return files;
}

test('the server serves every module of the client as these very files, and the package ships them', async (t) => {
  const server = await startServer(t);
  const files = await clientModules();
  assert.ok(files.length > 1, `lifeline.js imports its sibling modules: ${files}`);
  for (const file of files) {
    const res = await fetch(`http://${server.addr}/${file}`);
    assert.equal(res.status, 200, file);
    assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8', file);
    assert.equal(await res.text(), await packageFile(file), file);
  }
  const { files: shipped } = JSON.parse(await packageFile('package.json'));
  for (const file of files) assert.ok(shipped.includes(file), `package.json "files" lacks ${file}`);
});

test('start() resolves online; send() goes out at once; messages and pushes arrive and are acked', async (t) => {
  const server = await startServer(t);
  const bob = await server.peer(t, 'bob');
  const { client, seen } = clientFor(t, { url: server.url });
  assert.equal(client.state, 'idle');
  await client.start();
  assert.equal(client.state, 'online');
  assert.deepEqual(seen.states, ['connecting', 'online']);

  const id = client.send('bob', 'hi <bob> & "co"');
  const got = await bob.frame((f) => f.includes(`id="${id}"`), 'the message at bob');
  assert.equal(got, `<msg from="alice" id="${id}">hi &lt;bob&gt; &amp; &quot;co&quot;</msg>`);

  bob.send('<msg to="alice" id="b1">yo &amp; hi</msg>');
  await waitFor(() => seen.messages.length === 1, 'bob\'s message');
  assert.deepEqual(seen.messages[0], { from: 'bob', id: 'b1', text: 'yo & hi' });

  const pushId = await server.push('alice', 'pushed <text>');
  await waitFor(() => seen.messages.find((m) => m.id === pushId), 'the push');
  assert.deepEqual(seen.messages.at(-1), { from: 'admin', id: pushId, text: 'pushed <text>' });
  await waitFor(async () => (await server.receipt(pushId)) === 'acked', 'the push receipt to read acked');

  // A recipient that is not online comes back as an error naming the message.
  const lost = client.send('nobody', 'anyone?');
  const { detail } = await nextEvent(client, 'error', (d) => d.ref === lost);
  assert.equal(detail.code, 'offline');
  assert.equal(typeof detail.text, 'string');
});

test('a handler\'s waitUntil holds the ack until its promise resolves', async (t) => {
  const server = await startServer(t);
  const { client, seen } = clientFor(t, { url: server.url });
  let release;
  const processed = new Promise((resolve) => { release = resolve; });
  client.addEventListener('message', (e) => e.waitUntil(processed));
  await client.start();
  const pushId = await server.push('alice', 'work');
  await waitFor(() => seen.messages.find((m) => m.id === pushId), 'the push');
  // Delivered and not acked: the ack cannot precede the promise.
  assert.equal(await server.receipt(pushId), 'sent');
  release();
  await waitFor(async () => (await server.receipt(pushId)) === 'acked', 'the receipt to read acked');
});

test('a rejected waitUntil means no ack', async (t) => {
  const server = await startServer(t);
  const { client } = clientFor(t, { url: server.url });
  client.addEventListener('message', (e) => {
    e.waitUntil(e.detail.text === 'fails' ? Promise.reject(new Error('cannot store it')) : Promise.resolve());
  });
  await client.start();
  const handlerFailed = nextEvent(client, 'error', (d) => d.code === 'handler-failed');
  const failing = await server.push('alice', 'fails');
  const { detail } = await handlerFailed;
  assert.deepEqual(detail, { code: 'handler-failed', ref: failing, text: 'cannot store it' });
  // A later push on the same connection is acked: everything the client
  // decided about the first one has reached the server by then.
  const later = await server.push('alice', 'works');
  await waitFor(async () => (await server.receipt(later)) === 'acked', 'the later push acked');
  assert.equal(await server.receipt(failing), 'sent');
});

test('autoAck: false leaves ack() to the app', async (t) => {
  const server = await startServer(t);
  const bob = await server.peer(t, 'bob');
  const { client, seen } = clientFor(t, { url: server.url, autoAck: false });
  await client.start();
  const pushId = await server.push('alice', 'ack me yourself');
  await waitFor(() => seen.messages.find((m) => m.id === pushId), 'the push');
  // Whatever alice sent before this message has been read by the server once bob has it.
  const barrier = client.send('bob', 'barrier');
  await bob.frame((f) => f.includes(barrier), 'the barrier message');
  assert.equal(await server.receipt(pushId), 'sent');
  client.ack(pushId);
  await waitFor(async () => (await server.receipt(pushId)) === 'acked', 'the receipt to read acked');
});

test('a message id seen before is not dispatched twice', async (t) => {
  const server = await startServer(t);
  const bob = await server.peer(t, 'bob');
  const { client, seen } = clientFor(t, { url: server.url });
  await client.start();
  bob.send('<msg to="alice" id="dup-1">first</msg>');
  bob.send('<msg to="alice" id="dup-1">first</msg>');
  bob.send('<msg to="alice" id="dup-2">second</msg>');
  await waitFor(() => seen.messages.find((m) => m.id === 'dup-2'), 'the message after the duplicate');
  assert.deepEqual(seen.messages.map((m) => m.id), ['dup-1', 'dup-2']);
});

test('sends made while waiting go out in order after the next welcome', async (t) => {
  const first = await startServer(t);
  const { client, seen } = clientFor(t, { url: first.url, backoffBaseMs: 50, backoffCapMs: 200 });
  await client.start();
  await first.kill();
  await stateReached(client, 'waiting');
  const waiting = seen.details.find((d) => d.state === 'waiting');
  assert.equal(waiting.reason, 'closed');
  assert.equal(typeof waiting.delay, 'number');
  // To itself: the server routes a msg to its own sender, so no second
  // client has to win a race to log in before alice's queue goes out.
  const ids = ['q1', 'q2', 'q3'].map((text) => client.send('alice', text));
  assert.notEqual(client.state, 'online');

  const second = await startServer(t, { LIFELINE_LISTEN: first.addr });
  await stateReached(client, 'online', 10000);
  assert.ok(client.reconnects >= 1);
  await waitFor(() => seen.messages.length === 3, 'the three queued messages, back to alice');
  assert.deepEqual(seen.messages, ids.map((id, i) => ({ from: 'alice', id, text: `q${i + 1}` })));
  assert.ok(second.log.some((l) => l.includes('online id=alice')));
});

test('maxQueued bounds the queue; stop() drops it and ends for good', async (t) => {
  const port = await closedPort();
  const url = `ws://127.0.0.1:${port}/`;
  const { client, seen } = clientFor(t, { url, maxQueued: 2, backoffBaseMs: 60000, backoffCapMs: 60000 });
  const started = client.start();
  await stateReached(client, 'waiting');
  client.send('alice', 'queued 1');
  client.send('alice', 'queued 2');
  assert.throws(() => client.send('alice', 'one too many'), (err) => err instanceof LifelineError && err.code === 'queue-full');

  client.stop();
  assert.equal(client.state, 'stopped');
  assert.deepEqual(seen.details.at(-1), { state: 'stopped', reason: 'stop' });
  await assert.rejects(started, (err) => err instanceof LifelineError && err.code === 'stopped' && err.reason === 'stop');
  assert.throws(() => client.send('alice', 'stopped'), (err) => err.code === 'stopped');

  // A server on that port now: nothing of the dropped queue reaches it.
  await startServer(t, { LIFELINE_LISTEN: `127.0.0.1:${port}` });
  await client.start();
  client.send('alice', 'after restart');
  await waitFor(() => seen.messages.length >= 1, 'the message sent after the restart');
  assert.deepEqual(seen.messages.map((m) => m.text), ['after restart']);
});

test('stop() says bye: the server sees alice leave; start() connects anew', async (t) => {
  const server = await startServer(t);
  const { client } = clientFor(t, { url: server.url });
  await client.start();
  client.stop();
  assert.equal(client.state, 'stopped');
  await waitFor(() => server.log.some((l) => l.includes('offline id=alice reason=bye')), 'the server logging a bye');
  assert.equal(await server.isOnline('alice'), false);
  await client.start();
  assert.equal(client.state, 'online');
  assert.equal(await server.isOnline('alice'), true);
});

test('start() rejects on auth-failed; the right token logs in', async (t) => {
  const secret = 'test-secret';
  const server = await startServer(t, { LIFELINE_AUTH_SECRET: secret });
  const { client, seen } = clientFor(t, { url: server.url, token: 'f'.repeat(64) });
  await assert.rejects(client.start(), (err) => err instanceof LifelineError && err.code === 'stopped' && err.reason === 'auth-failed');
  assert.equal(client.state, 'stopped');
  assert.deepEqual(seen.states, ['connecting', 'stopped']);
  assert.equal(seen.errors[0].code, 'auth-failed');

  const token = createHmac('sha256', secret).update('carol').digest('hex');
  const { client: carol } = clientFor(t, { url: server.url, id: 'carol', token });
  await carol.start();
  assert.equal(carol.state, 'online');
});

test('an expiring token logs in until its exp; the granted interval is the one asked for, clamped', async (t) => {
  const server = await startServer(t, {
    LIFELINE_AUTH_SECRET: 'new,old',
    LIFELINE_HEARTBEAT_MIN_MS: '200',
    LIFELINE_HEARTBEAT_MAX_MS: '20000',
  });
  const now = Math.floor(Date.now() / 1000);
  const mint = (secret, id, exp) => createHmac('sha256', secret).update(`${id}|${exp}`).digest('hex');
  const { client: phone } = clientFor(t, {
    url: server.url, id: 'phone', token: mint('old', 'phone', now + 600), exp: now + 600, interval: 15000,
  });
  await phone.start();
  assert.equal(phone.interval, 15000);
  const { client: greedy } = clientFor(t, {
    url: server.url, id: 'greedy', token: mint('new', 'greedy', now + 600), exp: now + 600, interval: 3600000,
  });
  await greedy.start();
  assert.equal(greedy.interval, 20000);
  const { client: stale, seen } = clientFor(t, {
    url: server.url, id: 'stale', token: mint('new', 'stale', now - 1), exp: now - 1,
  });
  await assert.rejects(stale.start(), (err) => err instanceof LifelineError && err.reason === 'auth-failed');
  assert.match(seen.errors[0].text, /expired/);
});

test('an at-least-once push redelivered after a reconnect is dispatched once', async (t) => {
  const server = await startServer(t);
  const { client, seen } = clientFor(t, { url: server.url, autoAck: false, backoffBaseMs: 20, backoffCapMs: 50 });
  await client.start();
  const pushId = await server.push('alice', 'must arrive', '?queue_ttl_ms=60000');
  await waitFor(() => seen.messages.find((m) => m.id === pushId), 'the push');
  // The server ends the connection before the app acked (a slow-consumer cut
  // would do the same): the push is handed back and sent after the next welcome.
  const kicked = await server.adminCall('DELETE', '/clients/alice');
  assert.equal(kicked.status, 204);
  await waitFor(async () => (await server.receipt(pushId)) === 'queued', 'the push to be handed back');
  await stateReached(client, 'stopped'); // kicked is terminal...
  await client.start(); // ...so the app starts it again
  await waitFor(async () => (await server.receipt(pushId)) === 'sent', 'the redelivery');
  client.ack(pushId);
  await waitFor(async () => (await server.receipt(pushId)) === 'acked', 'the ack of the redelivery');
  assert.deepEqual(seen.messages.map((m) => m.id), [pushId], 'dispatched once');
});

test('start() rejects on bad-id', async (t) => {
  const server = await startServer(t);
  const { client } = clientFor(t, { url: server.url, id: 'not an id!' });
  await assert.rejects(client.start(), (err) => err.reason === 'bad-id');
  assert.equal(client.state, 'stopped');
});

test('replaced and kicked are terminal', async (t) => {
  const server = await startServer(t);
  const { client: first, seen } = clientFor(t, { url: server.url });
  await first.start();
  const { client: second, seen: secondSeen } = clientFor(t, { url: server.url });
  await second.start();
  await stateReached(first, 'stopped');
  assert.deepEqual(seen.details.at(-1), { state: 'stopped', reason: 'replaced' });

  const { status } = await server.adminCall('DELETE', '/clients/alice');
  assert.equal(status, 204);
  await stateReached(second, 'stopped');
  assert.deepEqual(secondSeen.details.at(-1), { state: 'stopped', reason: 'kicked' });
  assert.equal(await server.isOnline('alice'), false);
});

test('heartbeats follow the welcome; a silent server is declared lost', async (t) => {
  const server = await startServer(t, { LIFELINE_HEARTBEAT_MS: '100', LIFELINE_MISSES: '2' });
  const { client, seen } = clientFor(t, { url: server.url, backoffBaseMs: 50, backoffCapMs: 100 });
  const beat = nextEvent(client, 'heartbeat');
  await client.start();
  const { detail } = await beat;
  assert.equal(typeof detail.rtt, 'number');
  assert.equal(client.rtt, detail.rtt);

  // Frozen, the server answers nothing: after `misses` unanswered pings the
  // client gives up on the connection. Thawed, it takes the client back.
  server.signal('SIGSTOP');
  t.after(() => server.signal('SIGCONT'));
  await waitFor(() => seen.details.find((d) => d.state === 'waiting'), 'the client to notice the silence', 5000);
  assert.equal(seen.details.find((d) => d.state === 'waiting').reason, 'timeout');
  server.signal('SIGCONT');
  await stateReached(client, 'online', 10000);
  assert.ok(client.reconnects >= 1);
});

test('a shutdown bye\'s retry-ms is the wait before reconnecting', async (t) => {
  const spread = 300;
  const server = await startServer(t, { LIFELINE_RECONNECT_SPREAD_MS: String(spread) });
  const { client, seen } = clientFor(t, { url: server.url, backoffBaseMs: 60000, backoffCapMs: 60000 });
  await client.start();
  await server.kill('SIGTERM');
  await stateReached(client, 'waiting');
  const waiting = seen.details.find((d) => d.state === 'waiting');
  assert.equal(waiting.reason, 'shutdown');
  assert.ok(waiting.delay >= 0 && waiting.delay <= spread, `retry-ms ${waiting.delay} within the spread`);
});

test('offline drops the connection; online reconnects at once and sends the queue', async (t) => {
  const server = await startServer(t);
  const bob = await server.peer(t, 'bob');
  const network = new EventTarget();
  const { client, seen } = clientFor(t, { url: server.url, window: network, backoffBaseMs: 60000, backoffCapMs: 60000 });
  await client.start();
  network.dispatchEvent(new Event('offline'));
  assert.deepEqual(seen.details.at(-1), { state: 'waiting', reason: 'offline' });
  await waitFor(async () => !(await server.isOnline('alice')), 'the server to see alice go');
  const ids = [client.send('bob', 'offline 1'), client.send('bob', 'offline 2')];
  network.dispatchEvent(new Event('online'));
  assert.equal(client.state, 'connecting', 'no backoff once the network is back');
  await stateReached(client, 'online');
  await bob.frame((f) => f.includes(ids[1]), 'the second queued message');
  const order = bob.frames.filter((f) => f.startsWith('<msg')).map((f) => ids.findIndex((id) => f.includes(id)));
  assert.deepEqual(order, [0, 1]);
});
