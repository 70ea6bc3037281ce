#!/bin/bash
# Starts Debian's mosquitto with the TLS listener of mosquitto-tls.conf on a
# free loopback port, certificates from certs.sh in DIR. Prints "PID PORT".
# Extra arguments go before the command (e.g. `taskset -c 0`).
#
#   read PID PORT < <(tools/bench/tls/mosquitto-tls.sh /tmp/lifeline-bench-tls taskset -c 0)
#   ... kill $PID
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/tmp/lifeline-bench-tls}
shift || true
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
[[ -f $DIR/server.pem ]] || "$HERE/certs.sh" "$DIR" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s|@PORT@|$PORT|" -e "s|@DIR@|$DIR|" "$HERE/mosquitto-tls.conf" >"$DIR/mosquitto-tls.conf"
"$@" "$MOSQUITTO" -c "$DIR/mosquitto-tls.conf" 2>"$DIR/mosquitto.log" >/dev/null &
PID=$!
# Ready when the port accepts a TCP connection (bounded: 5 s).
for _ in $(seq 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.1)" 2>/dev/null; then
        echo "$PID $PORT"
        exit 0
    fi
    kill -0 $PID 2>/dev/null || break
    sleep 0.05
done
echo "mosquitto did not start; see $DIR/mosquitto.log" >&2
kill $PID 2>/dev/null
exit 1
