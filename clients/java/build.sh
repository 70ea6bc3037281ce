#!/usr/bin/env bash
# Builds the Java client with the JDK alone: no build tool, nothing downloaded.
#
#   clients/java/build.sh         library and Chat sample -> build/classes, build/lifeline-client.jar
#   clients/java/build.sh test    also compiles the tests and runs them (JUnit 5 from Debian's junit5)
#
# The tests start the real server: LIFELINE_BIN=/path/to/lifeline (default: this
# repository's target/release/lifeline, made by `cargo build --release`).
# JUNIT_DIR is where the JUnit jars are (default /usr/share/java).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"

for tool in javac java jar; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install default-jdk-headless)" >&2; exit 1; }
done

# Java 11 language and API level: what Android's toolchain accepts.
javac_flags=(--release 11 -encoding UTF-8 -Xlint:all -Werror)

rm -rf "$build/classes" "$build/test-classes"
mapfile -t sources < <(find "$here/src/main/java" -name '*.java' | sort)
javac "${javac_flags[@]}" -d "$build/classes" "${sources[@]}"
jar --create --file "$build/lifeline-client.jar" -C "$build/classes" .
echo "build.sh: built $build/lifeline-client.jar"

[ "${1:-}" = test ] || exit 0

junit_dir=${JUNIT_DIR:-/usr/share/java}
launcher="$junit_dir/junit-platform-console-standalone.jar"
test_classpath="$build/classes:$junit_dir/junit-jupiter-api.jar:$junit_dir/apiguardian-api.jar:$junit_dir/opentest4j.jar"
for jar in "$launcher" "$junit_dir/junit-jupiter-api.jar" "$junit_dir/apiguardian-api.jar" "$junit_dir/opentest4j.jar"; do
    [ -f "$jar" ] || { echo "build.sh: $jar not found (apt-get install junit5)" >&2; exit 1; }
done
server=${LIFELINE_BIN:-$here/../../target/release/lifeline}
[ -x "$server" ] || { echo "build.sh: no server binary at $server (cargo build --release, or set LIFELINE_BIN)" >&2; exit 1; }

mapfile -t tests < <(find "$here/src/test/java" -name '*.java' | sort)
# The tests reach package-private parts (the parser, the backoff); -Xlint:-try
# because try-with-resources on a server kept only for its close is the point.
javac "${javac_flags[@]}" -Xlint:-try -cp "$test_classpath" -d "$build/test-classes" "${tests[@]}"
exec java -Dlifeline.bin="$server" -jar "$launcher" \
    --class-path "$build/classes:$build/test-classes" \
    --select-package dev.lifeline \
    --disable-banner --disable-ansi-colors --details=tree --fail-if-no-tests
