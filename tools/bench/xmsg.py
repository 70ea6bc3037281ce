#!/usr/bin/env python3
"""Cross-node <msg> latency in a Lifeline cluster behind one SO_REUSEPORT port.

Logs in --pairs * 2 clients through --target (the kernel spreads them over
the nodes), asks an admin API (--admin) which node each landed on, pairs
senders with receivers on OTHER nodes, then for --duration seconds sends
--rate messages per second (all pairs together), each carrying its send
time; receivers record the one-way delay (same host, same clock). Every
client also heartbeats every --interval-ms so none times out. Prints
p50/p99/max in ms and the count, sent vs received (after the sending window
it reads on, up to 3 s, for the messages still in flight) and any error
frames the senders got. Bounded in time and
count; loopback only; stops by itself.

  tools/bench/xmsg.py --target 127.0.0.1:7070 --admin http://127.0.0.1:9090 \
      --pairs 100 --rate 200 --duration 30
"""
import argparse, json, random, selectors, socket, sys, time, urllib.request

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", default="127.0.0.1:7070")
    p.add_argument("--admin", default="http://127.0.0.1:9090")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--interval-ms", type=int, default=5000)
    p.add_argument("--prefix", default="xmsg")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    sel = selectors.DefaultSelector()
    conns = {}
    for i in range(a.pairs * 2):
        cid = f"{a.prefix}-{i}"
        s = socket.create_connection((host, int(port)), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f'<login id="{cid}"/>'.encode())
        buf = b""
        while b"<welcome" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"{cid}: closed before welcome")
            buf += chunk
        s.setblocking(False)
        conns[cid] = {"sock": s, "buf": b"", "next_ping": time.time() + a.interval_ms / 1000}
        sel.register(s, selectors.EVENT_READ, cid)
    # Which node each client is on (presence reaches Redis a moment after the welcome).
    nodes = {}
    deadline = time.time() + 10
    while len(nodes) < len(conns) and time.time() < deadline:
        for cid in conns:
            if cid in nodes:
                continue
            try:
                with urllib.request.urlopen(f"{a.admin}/clients/{cid}", timeout=5) as r:
                    nodes[cid] = json.load(r).get("node")
            except Exception:
                pass
        time.sleep(0.05)
    ids = list(conns)
    random.shuffle(ids)
    senders, receivers = ids[: a.pairs], ids[a.pairs :]
    pairs = []
    for s in senders:
        for j, r in enumerate(receivers):
            if nodes.get(r) and nodes.get(s) and nodes[r] != nodes[s]:
                pairs.append((s, r))
                receivers.pop(j)
                break
    if not pairs:
        sys.exit("no cross-node pair: are the clients on one node only?")
    delays, sent, seq, closed, errors = [], 0, 0, 0, []
    start = time.time()
    next_send = start
    step = 1.0 / a.rate
    # After the sending window, read on (no more sends) until every message
    # sent has arrived or DRAIN_S has passed: the last ones are in flight.
    drain_s = 3.0
    while True:
        now = time.time()
        sending = now - start < a.duration
        if not sending and (len(delays) >= sent or now - start >= a.duration + drain_s):
            break
        while sending and next_send <= now:
            s, r = pairs[seq % len(pairs)]
            seq += 1
            try:
                conns[s]["sock"].send(f'<msg to="{r}" id="x{seq}">{time.time():.6f}</msg>'.encode())
                sent += 1
            except (BlockingIOError, OSError):
                pass
            next_send += step
        for cid, c in conns.items():
            if c["next_ping"] <= now:
                c["next_ping"] = now + a.interval_ms / 1000
                try:
                    c["sock"].send(b'<heartbeat mode="ping" seq="1"/>')
                except (BlockingIOError, OSError):
                    pass
        wait = min(next_send - time.time(), 0.05) if sending else 0.05
        for key, _ in sel.select(timeout=max(0.0, wait)):
            c = conns[key.data]
            try:
                chunk = c["sock"].recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                # Its node went away (a kill under test): count what came.
                sel.unregister(c["sock"])
                closed += 1
                continue
            c["buf"] += chunk
            got = time.time()
            while b"</msg>" in c["buf"]:
                frame, c["buf"] = c["buf"].split(b"</msg>", 1)
                body = frame.rsplit(b">", 1)[-1]
                try:
                    delays.append((got - float(body)) * 1000)
                except ValueError:
                    pass
            # An error frame (offline, unavailable) names a message that was
            # refused: kept to be reported, not dropped with the heartbeats.
            for err in c["buf"].split(b"<error")[1:]:
                errors.append(err.split(b"/>", 1)[0].decode(errors="replace"))
            # Heartbeat replies and probes: answer probes, drop the rest.
            if b'mode="ping"' in c["buf"]:
                c["sock"].send(b'<heartbeat mode="pong" seq="0"/>')
            if b"</msg>" not in c["buf"]:
                c["buf"] = c["buf"][c["buf"].rfind(b"/>") + 2 :] if b"/>" in c["buf"] else c["buf"]
    delays.sort()
    q = lambda f: delays[min(len(delays) - 1, int(f * len(delays)))] if delays else float("nan")
    print(f"xmsg pairs={len(pairs)} sent={sent} received={len(delays)} "
          f"p50_ms={q(0.5):.3f} p99_ms={q(0.99):.3f} max_ms={(delays[-1] if delays else float('nan')):.3f} "
          f"closed_by_server={closed} errors={len(errors)}")
    for err in errors[:5]:
        print(f"  error:{err}")
    for c in conns.values():
        try:
            c["sock"].send(b"<bye/>")
        except OSError:
            pass

if __name__ == "__main__":
    main()
