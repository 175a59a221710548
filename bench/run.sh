#!/bin/sh
# Runs the whole benchmark suite (a few minutes on 2 cores) against Redis and
# MariaDB (CACHE_REDIS_ADDR, CACHE_MYSQL_DSN) and writes bench/results/:
# RESULTS.md, a CSV and an SVG chart per scenario, and charts.html.
# Pass -quick for a seconds-long harness check; other flags go to the binary.
set -e
cd "$(dirname "$0")"
exec go run . -out results "$@"
