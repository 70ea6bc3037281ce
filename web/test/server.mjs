// The real `lifeline` binary for one test, on loopback ports the OS picks,
// plus the two things a test needs besides the client under test: a raw TCP
// peer that speaks the XML stream, and the admin API (pushes and receipts).
//
// The binary comes from LIFELINE_BIN (tests/web_client.rs passes cargo's
// CARGO_BIN_EXE_lifeline). Each server is killed through its own child handle
// when its test ends, pass or fail, and on process exit as a last resort.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import net from 'node:net';

import { waitFor } from './wait.mjs';

const START_TIMEOUT_MS = 10000;

function binary() {
  const bin = process.env.LIFELINE_BIN;
  if (!bin) {
    throw new Error('LIFELINE_BIN is not set: build with `cargo build --release` and set LIFELINE_BIN=target/release/lifeline');
  }
  return bin;
}

/**
 * Starts a server for test context `t` (killed in t.after) with `env` on top
 * of loopback ports and info logs. Resolves once it logged its addresses.
 */
export async function startServer(t, env = {}) {
  const server = await LifelineServer.start(env);
  t.after(() => server.kill());
  return server;
}

export class LifelineServer {
  /** Log lines (stderr), for waits and for failure messages. */
  log = [];
  addr = null;
  admin = null;
  #child;
  #exited;
  #killOnExit = () => this.#child.kill('SIGKILL');

  constructor(child) {
    this.#child = child;
    this.#exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    process.once('exit', this.#killOnExit);
    createInterface({ input: child.stderr }).on('line', (line) => this.log.push(line));
  }

  static async start(env = {}) {
    const child = spawn(binary(), [], {
      // Only what the test chooses: an outer LIFELINE_* setting must not leak in.
      env: {
        LIFELINE_LISTEN: '127.0.0.1:0',
        LIFELINE_ADMIN_ADDR: '127.0.0.1:0',
        LIFELINE_LOG: 'info',
        ...env,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const server = new LifelineServer(child);
    let exit = null;
    server.#exited.then((status) => { exit = status; });
    const spawnError = new Promise((_, reject) => child.once('error', reject));
    const listening = waitFor(() => {
      if (exit) throw new Error(`lifeline exited (${JSON.stringify(exit)}); log:\n${server.log.join('\n')}`);
      return server.log.find((line) => line.includes('listening on '));
    }, `lifeline's "listening on" line (log so far: ${server.log.join(' | ')})`, START_TIMEOUT_MS);
    let line;
    try {
      line = await Promise.race([listening, spawnError]);
    } catch (err) {
      server.kill();
      throw err;
    }
    // "listening on ADDR; capacity ..." and, before it, "admin API on http://ADDR".
    server.addr = line.split('listening on ')[1].split(';')[0].trim();
    const adminLine = server.log.find((l) => l.includes('admin API on http://'));
    server.admin = adminLine ? adminLine.split('admin API on http://')[1].trim() : null;
    return server;
  }

  get url() {
    return `ws://${this.addr}/`;
  }

  get port() {
    return Number(this.addr.split(':').at(-1));
  }

  /** Stops the process at once (SIGKILL, or `signal`) and waits for its exit. */
  async kill(signal = 'SIGKILL') {
    process.removeListener('exit', this.#killOnExit);
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill(signal);
    return this.#exited;
  }

  /** Sends a signal without waiting (SIGSTOP freezes the server: a silent peer). */
  signal(signal) {
    this.#child.kill(signal);
  }

  exited() {
    return this.#exited;
  }

  /** An admin API call; resolves with { status, body } (body parsed when JSON). */
  async adminCall(method, path, body) {
    const response = await fetch(`http://${this.admin}${path}`, { method, body });
    const text = await response.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: response.status, body: parsed };
  }

  /** POST /clients/{id}/push: resolves with the push id. */
  async push(to, text, query = '') {
    const { status, body } = await this.adminCall('POST', `/clients/${to}/push${query}`, text);
    if (status !== 200 && status !== 202) throw new Error(`push to ${to}: ${status} ${JSON.stringify(body)}`);
    return body.id;
  }

  /** GET /messages/{id}: the receipt's status ('sent', 'acked', ...). */
  async receipt(pushId) {
    const { status, body } = await this.adminCall('GET', `/messages/${pushId}`);
    if (status !== 200) throw new Error(`receipt ${pushId}: ${status} ${JSON.stringify(body)}`);
    return body.status;
  }

  /** Whether `id` is online, by GET /clients/{id}. */
  async isOnline(id) {
    const { status } = await this.adminCall('GET', `/clients/${id}`);
    return status === 200;
  }

  /** A raw TCP peer logged in as `id` (closed in t.after). */
  async peer(t, id) {
    const peer = await RawPeer.connect(this.addr);
    t.after(() => peer.close());
    peer.send(`<login id="${id}"/>`);
    await peer.frame((f) => f.startsWith('<welcome'), `the welcome of raw peer ${id}`);
    return peer;
  }
}

/** The raw XML stream over TCP, as `nc` would speak it: frames one per line in, split out by element. */
export class RawPeer {
  frames = [];
  #socket;
  #buffer = '';

  constructor(socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => {
      this.#buffer += chunk;
      this.#split();
    });
    socket.on('error', () => {}); // a peer of a killed server: its frames so far are what counts
  }

  static connect(addr) {
    const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port }, () => resolve(new RawPeer(socket)));
      socket.once('error', reject);
    });
  }

  send(text) {
    this.#socket.write(text);
  }

  /** Waits for a received frame matching `match`, and returns it. */
  frame(match, what, timeoutMs = 5000) {
    return waitFor(() => this.frames.find(match), what, timeoutMs);
  }

  close() {
    this.#socket.destroy();
  }

  /**
   * The server writes whole frames; each is one element: a self-closing tag,
   * or a start tag through its matching end tag (never nested on this wire).
   */
  #split() {
    for (;;) {
      const start = this.#buffer.indexOf('<');
      if (start < 0) return;
      const tagEnd = this.#buffer.indexOf('>', start);
      if (tagEnd < 0) return;
      let end = tagEnd + 1;
      if (this.#buffer[tagEnd - 1] !== '/') {
        const name = this.#buffer.slice(start + 1).match(/^[^\s/>]+/)[0];
        const close = this.#buffer.indexOf(`</${name}>`, tagEnd);
        if (close < 0) return;
        end = close + name.length + 3;
      }
      this.frames.push(this.#buffer.slice(start, end));
      this.#buffer = this.#buffer.slice(end);
    }
  }
}

/** A loopback port nothing listens on (bound by the OS, then released). */
export function closedPort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}
