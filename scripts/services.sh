#!/usr/bin/env bash
# services.sh: make sure the servers the integration tests use are running
# on loopback, and do nothing if they already are.
#
#   Redis    127.0.0.1:${CACHE_REDIS_PORT:-6379}   (no password)
#   MariaDB  127.0.0.1:3306, user root, empty password, database "test"
#
# and that the tools test.sh needs besides Go are installed: promtool (from
# Debian's prometheus package) for the example alerting rules. A tool that
# cannot be installed is reported, not fatal: the step needing it fails.
#
# That is what the tests' defaults expect (CACHE_REDIS_ADDR,
# CACHE_MYSQL_DSN; see servers_test.go). Missing servers are installed with
# apt-get and started by hand (no systemd needed), so this works in a bare
# CI container. Prints one line per service; exits non-zero with a message
# when a service cannot be made reachable. Safe to run any number of times.
set -uo pipefail

export PATH="/usr/local/go/bin:$PATH:/usr/sbin:/sbin"

REDIS_PORT="${CACHE_REDIS_PORT:-6379}"
MYSQL_PORT=3306
WAIT_SECONDS=30

log() { printf '%s\n' "$*"; }
die() {
	printf 'services.sh: ERROR: %s\n' "$*" >&2
	exit 1
}

# as_root runs a command as root: directly when we are root, else through
# non-interactive sudo when that is allowed.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		echo "services.sh: need root (or password-less sudo) to run: $*" >&2
		return 1
	fi
}

APT_UPDATED=0
# apt_install PACKAGE...: install with apt-get (update once per run). The
# apt output goes to a log that is shown only when something fails.
apt_install() {
	command -v apt-get >/dev/null 2>&1 ||
		die "$* not installed and apt-get is not available; install it by hand"
	local aptlog
	aptlog="$(mktemp "${TMPDIR:-/tmp}/services-apt.XXXXXX")"
	if [ "$APT_UPDATED" -eq 0 ]; then
		if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$aptlog" 2>&1; then
			tail -n 20 "$aptlog" >&2
			die "apt-get update failed (log: $aptlog)"
		fi
		APT_UPDATED=1
	fi
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$aptlog" 2>&1; then
		tail -n 20 "$aptlog" >&2
		die "apt-get install -y $* failed (log: $aptlog)"
	fi
	rm -f "$aptlog"
}

# writable_dir DIR: create DIR if needed and check we can write in it.
writable_dir() {
	mkdir -p "$1" 2>/dev/null || return 1
	local probe="$1/.services-write-test.$$"
	{ : >"$probe"; } 2>/dev/null || return 1
	rm -f "$probe"
}

# ---------------------------------------------------------------- Redis

redis_ping() {
	command -v redis-cli >/dev/null 2>&1 || return 1
	[ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null </dev/null)" = "PONG" ]
}

ensure_redis() {
	local addr="127.0.0.1:$REDIS_PORT" did=""
	if redis_ping; then
		log "redis: already running on $addr, nothing to do"
		return 0
	fi
	if command -v redis-cli >/dev/null 2>&1; then
		# Something that is not a password-less Redis (or a hung one) holds
		# the port: starting another server there cannot work.
		local reply
		reply="$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>&1 </dev/null)"
		case "$reply" in
		*"Connection refused"* | *"Cannot assign requested address"*) ;;
		*) die "redis: $addr is taken but does not answer PING with PONG (got: ${reply:-timeout}); free the port or set CACHE_REDIS_PORT" ;;
		esac
	fi

	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
		apt_install redis-server
		did="installed redis-server, "
		# On a machine with systemd the package starts its own instance
		# (127.0.0.1:6379); take it if it is the one we want.
		if redis_ping; then
			log "redis: ${did}the package's service answers on $addr"
			return 0
		fi
	fi

	local dir=/var/lib/redis logdir=/var/log/redis
	if ! writable_dir "$dir"; then
		dir="$(mktemp -d "${TMPDIR:-/tmp}/cache-redis.XXXXXX")" || die "cannot create a directory for redis"
	fi
	if ! writable_dir "$logdir"; then
		logdir="$dir"
	fi
	local logfile="$logdir/ci.log"
	[ "$REDIS_PORT" = 6379 ] || logfile="$logdir/ci-$REDIS_PORT.log"
	# An explicit pidfile per port: a daemonized redis otherwise writes (and
	# on shutdown deletes) the shared /var/run/redis.pid.
	local pidfile="$dir/redis-$REDIS_PORT.pid"

	if ! redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
		--save "" --appendonly no --dir "$dir" --logfile "$logfile" \
		--pidfile "$pidfile" </dev/null; then
		die "redis-server failed to start on $addr (log: $logfile)"
	fi

	local i
	for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
		if redis_ping; then
			log "redis: ${did}started redis-server on $addr (dir $dir, log $logfile)"
			return 0
		fi
		sleep 0.25
	done
	tail -n 20 "$logfile" >&2 2>/dev/null
	die "redis started but does not answer PING on $addr after ${WAIT_SECONDS}s (log: $logfile)"
}

# -------------------------------------------------------------- MariaDB

mysql_client() {
	if command -v mariadb >/dev/null 2>&1; then
		echo mariadb
	elif command -v mysql >/dev/null 2>&1; then
		echo mysql
	else
		return 1
	fi
}

# tcp_sql ARGS...: run the client as the tests connect: TCP to 127.0.0.1,
# root, empty password, no option files (so no ~/.my.cnf password sneaks in).
tcp_sql() {
	local client
	client="$(mysql_client)" || return 1
	timeout 15 "$client" --no-defaults --protocol=TCP -h 127.0.0.1 -P "$MYSQL_PORT" \
		-uroot --connect-timeout=5 "$@" </dev/null
}

# socket_sql ARGS...: run the client as root over the unix socket (where
# Debian's root@localhost authenticates by unix_socket).
socket_sql() {
	local client
	client="$(mysql_client)" || return 1
	as_root timeout 15 "$client" --protocol=SOCKET -uroot --connect-timeout=5 "$@" </dev/null
}

tcp_ok() { tcp_sql -e 'select 1' >/dev/null 2>&1; }
tcp_test_db_ok() { tcp_sql -e 'select 1' test >/dev/null 2>&1; }
socket_ok() { socket_sql -e 'select 1' >/dev/null 2>&1; }

# server_alive: the server answers on its socket at all (even if it refuses
# us: mariadb-admin ping returns 0 on "access denied" too).
server_alive() {
	if command -v mariadb-admin >/dev/null 2>&1; then
		timeout 10 mariadb-admin --protocol=SOCKET --connect-timeout=3 ping >/dev/null 2>&1 </dev/null
	elif command -v mysqladmin >/dev/null 2>&1; then
		timeout 10 mysqladmin --protocol=SOCKET --connect-timeout=3 ping >/dev/null 2>&1 </dev/null
	else
		socket_ok
	fi
}

wait_for() { # wait_for SECONDS COMMAND...
	local secs="$1" i
	shift
	for ((i = 0; i < secs * 2; i++)); do
		"$@" && return 0
		sleep 0.5
	done
	return 1
}

mariadb_option() { # mariadb_option NAME DEFAULT: a [mysqld] option from the config files
	local v=""
	if command -v my_print_defaults >/dev/null 2>&1; then
		v="$(my_print_defaults --mysqld 2>/dev/null | sed -n "s/^--$1=//p" | tail -n 1)"
	fi
	echo "${v:-$2}"
}

start_mariadb() {
	local mariadbd
	mariadbd="$(command -v mariadbd || command -v mysqld)" || die "mariadbd not found after install"
	local datadir sockdir errlog
	datadir="$(mariadb_option datadir /var/lib/mysql)"
	sockdir="$(dirname "$(mariadb_option socket /run/mysqld/mysqld.sock)")"
	errlog="$(mariadb_option 'log[-_]error' "")"

	if ! { as_root mkdir -p "$sockdir" && as_root chown mysql:mysql "$sockdir"; }; then
		die "cannot prepare $sockdir for mariadbd"
	fi
	if [ -n "$errlog" ]; then
		as_root mkdir -p "$(dirname "$errlog")" && as_root chown mysql:mysql "$(dirname "$errlog")"
	fi

	if ! as_root test -d "$datadir/mysql"; then
		local installlog
		installlog="$(mktemp "${TMPDIR:-/tmp}/mariadb-install-db.XXXXXX")"
		if ! { as_root mkdir -p "$datadir" && as_root chown mysql:mysql "$datadir" &&
			as_root mariadb-install-db --user=mysql --datadir="$datadir" >"$installlog" 2>&1; }; then
			tail -n 20 "$installlog" >&2
			die "mariadb-install-db failed for $datadir (log: $installlog)"
		fi
		rm -f "$installlog"
	fi

	# Debian's own config leaves "user = mysql" commented out (systemd sets
	# the user), and mariadbd refuses to run as root without it.
	if as_root start-stop-daemon --start --oknodo --background \
		--exec "$mariadbd" -- --user=mysql </dev/null >/dev/null 2>&1 &&
		wait_for "$WAIT_SECONDS" server_alive; then
		return 0
	fi

	# Fallback: start it directly, detached from our stdout/stderr so a CI
	# step that captures our output does not wait for mariadbd to exit.
	local outlog="${TMPDIR:-/tmp}/mariadbd-ci.log"
	as_root setsid "$mariadbd" --user=mysql </dev/null >>"$outlog" 2>&1 &
	if wait_for "$WAIT_SECONDS" server_alive; then
		return 0
	fi
	tail -n 20 "$outlog" >&2 2>/dev/null
	[ -n "$errlog" ] && as_root tail -n 20 "$errlog" >&2 2>/dev/null
	die "mariadbd did not come up on its unix socket after ${WAIT_SECONDS}s (see $outlog${errlog:+, $errlog})"
}

# Let root in over TCP with an empty password, as the tests connect, and
# make the "test" database. Done over the socket, where root gets in.
fix_root_over_socket() {
	socket_sql -e "
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS test;"
}

ensure_mariadb() {
	local addr="127.0.0.1:$MYSQL_PORT" did=""

	if tcp_ok; then
		if tcp_test_db_ok; then
			log "mariadb: already running on $addr (root over TCP works), nothing to do"
			return 0
		fi
		if ! { tcp_sql -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1 && tcp_test_db_ok; }; then
			die "mariadb on $addr lets root in but database 'test' is missing and cannot be created"
		fi
		log "mariadb: already running on $addr; created database 'test'"
		return 0
	fi

	if ! command -v mariadbd >/dev/null 2>&1 || ! mysql_client >/dev/null; then
		apt_install mariadb-server
		did="installed mariadb-server, "
	fi

	if server_alive; then
		[ -n "$did" ] && did="${did}the package's service was running, "
	else
		start_mariadb
		did="${did}started mariadbd, "
	fi

	if ! wait_for 5 tcp_ok; then
		socket_ok ||
			die "mariadb runs but root gets in neither over TCP ($addr, empty password) nor over the unix socket; fix the root account by hand"
		fix_root_over_socket ||
			die "could not let root in over TCP (ALTER USER/GRANT over the socket failed)"
		did="${did}let root in over TCP, "
		if ! wait_for "$WAIT_SECONDS" tcp_ok; then
			local why
			why="$(socket_sql -N -e 'select concat("port=",@@port," bind_address=",@@bind_address," skip_networking=",@@skip_networking)' 2>/dev/null)"
			die "mariadb: root still cannot log in over TCP at $addr after ${WAIT_SECONDS}s (${why:-server settings unknown})"
		fi
	fi

	if ! tcp_test_db_ok; then
		if ! { tcp_sql -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1 && tcp_test_db_ok; }; then
			die "mariadb: cannot create database 'test'"
		fi
		did="${did}created database 'test', "
	fi
	[ -n "$did" ] || did="came up by itself, "
	log "mariadb: ${did%, } (root@$addr over TCP, empty password)"
}

# ---------------------------------------------------------------- Tools

# ensure_promtool: promtool checks examples/observability/alerts.yml. It
# ships in Debian's prometheus package (on a host with systemd the package
# also enables and starts a Prometheus server on :9090; in a container
# nothing starts).
ensure_promtool() {
	if command -v promtool >/dev/null 2>&1; then
		log "promtool: found ($(command -v promtool))"
		return 0
	fi
	# A subshell: apt_install dies on failure, and a missing promtool
	# should fail only test.sh's promtool step.
	if (apt_install --no-install-recommends prometheus) && command -v promtool >/dev/null 2>&1; then
		log "promtool: installed Debian's prometheus package ($(command -v promtool))"
		return 0
	fi
	log "promtool: WARNING: could not install it (apt-get install prometheus); the promtool step will fail"
}

ensure_redis
ensure_mariadb
ensure_promtool
