#!/usr/bin/env bash
# test.sh: THE test command. Starts (or finds) Redis and MariaDB, then vets,
# format-checks, lints (staticcheck) and race-tests the library and every
# other Go module in the repository (examples/..., bench/..., found by their
# go.mod), and checks the example Prometheus rules with promtool.
#
# staticcheck is installed with `go install` when missing (into
# $(go env GOPATH)/bin, or GOBIN); its findings fail every module's step
# except the root module's, which only reports them for now (the root
# package is being rewritten). promtool comes from Debian's prometheus
# package (services.sh installs it).
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

STATICCHECK_VERSION=v0.8.2
staticcheck_bin=""

# find_staticcheck: set staticcheck_bin to a staticcheck of
# STATICCHECK_VERSION, installing it with go install if needed.
find_staticcheck() {
	local gobin
	gobin="$(go env GOBIN)"
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	local c
	for c in "$gobin/staticcheck" "$(command -v staticcheck 2>/dev/null || true)"; do
		# "staticcheck 2026.2.2 (0.8.2)": the module version without its v.
		if [ -n "$c" ] && [ -x "$c" ] && "$c" -version 2>/dev/null | grep -qF "(${STATICCHECK_VERSION#v})"; then
			staticcheck_bin="$c"
			return 0
		fi
	done
	echo "staticcheck $STATICCHECK_VERSION not found: go install honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
	if ! (cd "$root" && GOBIN="$gobin" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"); then
		echo "staticcheck: go install failed"
		return 1
	fi
	staticcheck_bin="$gobin/staticcheck"
}

# staticcheck_run ./...: staticcheck, failing on findings.
staticcheck_run() {
	[ -n "$staticcheck_bin" ] || { echo "no staticcheck (see above)"; return 1; }
	"$staticcheck_bin" "$@"
}

# staticcheck_report ./...: staticcheck, printing its findings without
# failing on them (a missing or broken staticcheck still fails).
staticcheck_report() {
	[ -n "$staticcheck_bin" ] || { echo "no staticcheck (see above)"; return 1; }
	local out rc=0
	out="$("$staticcheck_bin" "$@" 2>&1)" || rc=$?
	if [ "$rc" -eq 0 ]; then
		echo "staticcheck: no findings"
		return 0
	fi
	printf '%s\n' "$out"
	if [ "$rc" -ne 1 ] || ! printf '%s\n' "$out" | grep -q '([A-Z]*[0-9]*)$'; then
		echo "staticcheck did not run (exit $rc)"
		return 1
	fi
	echo "staticcheck: $(printf '%s\n' "$out" | grep -c '([A-Z]*[0-9]*)$') finding(s), reported only (not failing) for this module"
}

promtool_check() {
	if ! command -v promtool >/dev/null 2>&1; then
		echo "promtool not found (Debian package prometheus; services.sh installs it)"
		return 1
	fi
	promtool check rules "$@"
}

go version
# Once, here: steps run in subshells.
find_staticcheck || true

step . "go vet ./..." go vet ./...
step . "gofmt -l ." gofmt_check
step . "staticcheck ./..." staticcheck_run ./...
step . "go test -race -count=1 -timeout 12m ./..." go test -race -count=1 -timeout 12m ./...
step examples/observability "promtool check rules alerts.yml" promtool_check alerts.yml

# Every other module below the root, skipping the directories the go
# command skips itself (hidden, _-prefixed, testdata, vendor).
mapfile -t modules < <(
	find . -mindepth 1 \
		\( -type d \( -name '.*' -o -name '_*' -o -name testdata -o -name vendor -o -name node_modules \) -prune \) \
		-o \( -type f -name go.mod ! -path ./go.mod -print \) | sed 's|^\./||; s|/go\.mod$||' | LC_ALL=C sort
)
for mod in "${modules[@]}"; do
	step "$mod" "go vet ./..." go vet ./...
	step "$mod" "staticcheck ./..." staticcheck_run ./...
	step "$mod" "go test -race -count=1 -timeout 10m ./..." go test -race -count=1 -timeout 10m ./...
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
	echo "FAIL: ${#failed[@]} step(s) failed:"
	printf '  %s\n' "${failed[@]}"
	exit 1
fi
echo "OK: all steps passed (modules: .${modules[*]:+ ${modules[*]}})"
