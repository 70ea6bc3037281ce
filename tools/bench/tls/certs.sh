#!/bin/bash
# Makes a throw-away CA and a server certificate for localhost/127.0.0.1
# (ECDSA P-256, as a current public CA issues) in DIR (default
# /tmp/lifeline-bench-tls): ca.pem, server.pem, server.key.
# Uses Debian's openssl. For benchmarks only: the keys are not protected.
set -euo pipefail
DIR=${1:-/tmp/lifeline-bench-tls}
mkdir -p "$DIR"
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 30 -subj "/CN=Lifeline bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 30 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext
# Readable by all: mosquitto, started as root, runs as user mosquitto.
chmod 644 server.key
echo "$DIR"
