// Compiled by `tsc --noEmit --strict` (tests/web_client.rs), never run: it
// uses every item of lifeline.d.ts the way an app would, so a declaration
// that drifts from the API, or a type an app cannot use, fails the build.
import {
  LifelineClient,
  LifelineError,
  LifelineMessageEvent,
  SUBPROTOCOL,
  backoffDelay,
  escapeXml,
  frames,
  parseFrame,
  unescapeXml,
} from 'lifeline-client';
import type {
  LifelineClientEventMap,
  LifelineClientOptions,
  LifelineErrorDetail,
  LifelineEventSource,
  LifelineHeartbeatDetail,
  LifelineMessage,
  LifelineSocket,
  LifelineSocketClass,
  LifelineState,
  LifelineStateDetail,
} from 'lifeline-client';

const options: LifelineClientOptions = {
  url: 'wss://chat.example/',
  id: 'alice',
  token: null,
  autoAck: true,
  maxQueued: 100,
  backoffBaseMs: 500,
  backoffCapMs: 30000,
  connectTimeoutMs: 20000,
  WebSocket, // the DOM's class fits the option
  window,
  document,
};
const c = new LifelineClient(options);
const bare: LifelineClient = new LifelineClient({ url: 'ws://127.0.0.1:7070/', id: 'bob' });

c.addEventListener('state', (e) => {
  const detail: LifelineStateDetail = e.detail;
  const state: Exclude<LifelineState, 'idle'> = detail.state;
  const reason: string | undefined = detail.reason;
  const delay: number | undefined = detail.delay;
  console.log(state, reason, delay);
});
c.addEventListener('message', (e) => {
  const message: LifelineMessage = e.detail;
  const from: string | null = message.from;
  const id: string | null = message.id;
  const text: string = message.text;
  const event: LifelineMessageEvent = e;
  event.waitUntil(fetch(`/store?from=${from}&id=${id}`, { method: 'POST', body: text }));
});
c.addEventListener('error', (e) => {
  const { code, ref, text }: LifelineErrorDetail = e.detail;
  console.log(code, ref, text);
});
c.addEventListener('heartbeat', (e) => {
  const detail: LifelineHeartbeatDetail = e.detail;
  console.log(detail.rtt.toFixed(1));
});
const onAny = (event: Event) => console.log(event.type);
c.addEventListener('custom', onAny);
c.removeEventListener('custom', onAny);
const onState = (e: LifelineClientEventMap['state']) => console.log(e.detail.state);
c.addEventListener('state', onState, { once: true });
c.removeEventListener('state', onState);

async function run(): Promise<void> {
  try {
    await c.start();
  } catch (err) {
    if (err instanceof LifelineError) {
      const code: string = err.code;
      const reason: string | null = err.reason;
      console.log(code, reason, err.message);
    }
  }
  const mid: string = c.send('bob', 'hi');
  c.ack(mid);
  const state: LifelineState = c.state;
  const rtt: number | null = c.rtt;
  const reconnects: number = c.reconnects;
  console.log(state, rtt, reconnects);
  c.stop();
  bare.stop();
}
void run();

// A WebSocket of one's own (e.g. from the `ws` package) fits the option.
class OwnSocket implements LifelineSocket {
  readyState = 0;
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  constructor(readonly url: string, readonly protocol: string) {}
  send(data: string): void {
    console.log(this.url, this.protocol, data);
  }
  close(code?: number, reason?: string): void {
    console.log(code, reason);
  }
}
const socketClass: LifelineSocketClass = OwnSocket;
const network: LifelineEventSource = new EventTarget();
const page = Object.assign(new EventTarget(), { visibilityState: 'visible' });
new LifelineClient({ url: 'ws://h/', id: 'x', WebSocket: socketClass, window: network, document: page }).stop();

const subprotocol: 'lifeline.v1' = SUBPROTOCOL;
const parsed: { name: string; attrs: Record<string, string>; text: string } = parseFrame('<welcome id="a"/>');
const wire: string[] = [
  frames.login('a', 'token'),
  frames.login('a'),
  frames.msg('b', 'text', 'm1'),
  frames.ack('m1'),
  frames.ping(1),
  frames.pong(null),
  frames.bye(),
  escapeXml('<'),
  unescapeXml('&lt;'),
];
const wait: number = backoffDelay(3, 500, 30000, Math.random);
const event = new LifelineMessageEvent({ from: 'b', id: null, text: 'x' });
console.log(subprotocol, parsed, wire, wait, event.detail.text, new LifelineError('queue-full', 'full').code);

// @ts-expect-error: the id is required
new LifelineClient({ url: 'ws://h/' });
// @ts-expect-error: send() takes a recipient and a text
c.send('bob');
// @ts-expect-error: 'offline' is not a state
const wrong: LifelineState = 'offline';
console.log(wrong);
