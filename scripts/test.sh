#!/usr/bin/env bash
# test.sh: THE test command. Starts (or finds) Redis and MariaDB, then vets,
# format-checks and race-tests the library and every other Go module in the
# repository (examples/..., bench/..., found by their go.mod).
#
# Integration tests run with CACHE_REQUIRE_SERVERS=1: an unreachable server
# is a failure, not a skip. Runs every step even after a failure, lists the
# failed steps at the end, and exits non-zero if any failed.
set -euo pipefail

export PATH="/usr/local/go/bin:$PATH"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

bash "$root/scripts/services.sh"

export CACHE_REQUIRE_SERVERS=1
# If services.sh was pointed at another Redis port, point the tests there too.
if [ -n "${CACHE_REDIS_PORT:-}" ] && [ -z "${CACHE_REDIS_ADDR:-}" ]; then
	export CACHE_REDIS_ADDR="127.0.0.1:$CACHE_REDIS_PORT"
fi

failed=()

# step DIR DESCRIPTION COMMAND...: run COMMAND in DIR, remember a failure.
step() {
	local dir="$1" what="$2"
	shift 2
	echo
	echo "=== ${dir}: $what"
	if (cd "$root/$dir" && "$@"); then
		return 0
	fi
	echo "--- FAILED (${dir}): $what"
	failed+=("${dir}: $what")
}

gofmt_check() {
	local out
	out="$(gofmt -l .)" || return 1
	if [ -n "$out" ]; then
		echo "gofmt: these files are not formatted (run gofmt -w):"
		printf '%s\n' "$out" | sed 's/^/  /'
		return 1
	fi
}

go version

step . "go vet ./..." go vet ./...
step . "gofmt -l ." gofmt_check
step . "go test -race -count=1 -timeout 12m ./..." go test -race -count=1 -timeout 12m ./...

# Every other module below the root, skipping the directories the go
# command skips itself (hidden, _-prefixed, testdata, vendor).
mapfile -t modules < <(
	find . -mindepth 1 \
		\( -type d \( -name '.*' -o -name '_*' -o -name testdata -o -name vendor -o -name node_modules \) -prune \) \
		-o \( -type f -name go.mod ! -path ./go.mod -print \) | sed 's|^\./||; s|/go\.mod$||' | LC_ALL=C sort
)
for mod in "${modules[@]}"; do
	step "$mod" "go vet ./..." go vet ./...
	step "$mod" "go test -race -count=1 -timeout 10m ./..." go test -race -count=1 -timeout 10m ./...
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
	echo "FAIL: ${#failed[@]} step(s) failed:"
	printf '  %s\n' "${failed[@]}"
	exit 1
fi
echo "OK: all steps passed (modules: .${modules[*]:+ ${modules[*]}})"
