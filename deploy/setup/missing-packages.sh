#!/bin/sh
# The Debian packages the local stack and the test suite need that this machine lacks, on one
# line (nothing when all are there). `make setup` installs them. Java must be 17 or newer (the
# Kafka 4 broker); Maven fetches the Kafka jars once.
missing=""
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
command -v kcat >/dev/null 2>&1 || missing="$missing kcat"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
[ "${java_major:-0}" -ge 17 ] 2>/dev/null || missing="$missing default-jre-headless"
command -v mvn >/dev/null 2>&1 || missing="$missing maven"
echo $missing
