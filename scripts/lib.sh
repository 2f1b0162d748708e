# shellcheck shell=bash
# Shared by scripts/up, scripts/down, scripts/test and scripts/cluster. Sourced, not run.
# Makes sure the toolchain, PostgreSQL and RabbitMQ are there: starts the machine's own
# services when they are installed but stopped, installs them from Debian's packages when
# they are missing on a Debian-like machine (as root), and says what to do anywhere else.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"
mkdir -p "$RUN"

# Set to 1 by ensure_postgres / ensure_rabbitmq when they had to start the service; only
# scripts/up records it (for scripts/down, which stops only what up started).
STARTED_POSTGRES=0
STARTED_RABBITMQ=0

PG_HOST="${AIOKA_PG_HOST:-127.0.0.1}"
PG_PORT="${AIOKA_PG_PORT:-5432}"
AMQP_HOST="${AIOKA_AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AIOKA_AMQP_PORT:-5672}"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# A PostgreSQL server tool (initdb, pg_ctl) of the newest installed version, for instances
# of our own (the chaos harness's, the bench's). PostgreSQL refuses to run as root: as root
# the instance is the postgres user's.
pg_server_tool() { # tool, then its arguments…
  local tool=$1 bindir
  shift
  bindir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$bindir" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  if is_root; then
    runuser -u postgres -- "$bindir/$tool" "$@"
  else
    "$bindir/$tool" "$@"
  fi
}

wait_port() { # host port seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.25
  done
  return 1
}

apt_install() {
  if is_root && have apt-get; then
    say "installing $* from the distribution's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else
    return 1
  fi
}

ensure_toolchain() {
  if ! have cargo; then
    die "cargo is not installed. Install Rust with rustup (https://rustup.rs), then run this again."
  fi
  if ! have cc && ! have gcc; then
    apt_install build-essential || die "a C compiler is needed (ring builds C). Install gcc, then run this again."
  fi
}

# A build of every test needs a few GB under target/; running out mid-build fails with a
# rustc I/O error that hides the cause, so say it first.
ensure_disk() { # gigabytes needed
  local need=${1:-4} free
  mkdir -p "$ROOT/target"
  free=$(df -Pk "$ROOT/target" | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ -n "$free" ] && [ "$free" -lt "$need" ]; then
    die "only ${free} GB free for $ROOT/target; building and testing needs about ${need} GB. Free space (cargo clean in other checkouts), then run this again."
  fi
}

ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then return 0; fi
  if [ "$PG_HOST" != 127.0.0.1 ] && [ "$PG_HOST" != localhost ]; then
    die "PostgreSQL at $PG_HOST:$PG_PORT is not reachable; start it, or set AIOKA_PG_HOST."
  fi
  if ! have pg_ctlcluster && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-client ||
      die "PostgreSQL is not installed. On Debian/Ubuntu: apt-get install postgresql (as root); elsewhere install PostgreSQL 15+ listening on 127.0.0.1:5432."
  fi
  say "starting the machine's PostgreSQL"
  local version
  version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
  [ -n "$version" ] || die "no PostgreSQL cluster under /etc/postgresql; create one with pg_createcluster."
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>&1 ||
    pg_ctlcluster "$version" main start >&2 ||
    die "could not start PostgreSQL $version (see /var/log/postgresql/)."
  # shellcheck disable=SC2034
  STARTED_POSTGRES=1
  wait_port "$PG_HOST" "$PG_PORT" 30 || die "PostgreSQL did not open $PG_HOST:$PG_PORT within 30 s."
}

ensure_rabbitmq_installed() {
  if ! have rabbitmq-server; then
    apt_install rabbitmq-server ||
      die "RabbitMQ is not installed. On Debian/Ubuntu: apt-get install rabbitmq-server (as root); elsewhere install RabbitMQ 3.10+ listening on 127.0.0.1:5672 with guest/guest."
  fi
}

ensure_rabbitmq() {
  if port_open "$AMQP_HOST" "$AMQP_PORT"; then return 0; fi
  if [ "$AMQP_HOST" != 127.0.0.1 ] && [ "$AMQP_HOST" != localhost ]; then
    die "RabbitMQ at $AMQP_HOST:$AMQP_PORT is not reachable; start it, or set AIOKA_AMQP_HOST."
  fi
  ensure_rabbitmq_installed
  say "starting the machine's RabbitMQ"
  rabbitmq-server -detached >&2 2>&1 || die "could not start RabbitMQ (see /var/log/rabbitmq/)."
  # shellcheck disable=SC2034
  STARTED_RABBITMQ=1
  wait_port "$AMQP_HOST" "$AMQP_PORT" 90 || die "RabbitMQ did not open $AMQP_HOST:$AMQP_PORT within 90 s."
}

# The URL of a PostgreSQL role that may create databases. The machine's trust auth for user
# postgres is used when it works; otherwise (a fresh Debian install uses password auth on TCP)
# a role `aioka` with a generated password is created through the local socket.
db_admin_url() {
  local trust="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
  if [ -n "${AIOKA_DB_ADMIN_URL:-}" ]; then echo "$AIOKA_DB_ADMIN_URL"; return; fi
  if psql "$trust" -Atqc 'SELECT 1' >/dev/null 2>&1; then echo "$trust"; return; fi
  local pwfile="$RUN/pg-password"
  [ -s "$pwfile" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$pwfile"
  local pw url
  pw="$(cat "$pwfile")"
  url="postgres://aioka:$pw@$PG_HOST:$PG_PORT/postgres"
  if psql "$url" -Atqc 'SELECT 1' >/dev/null 2>&1; then echo "$url"; return; fi
  if is_root && have runuser; then
    runuser -u postgres -- psql -Atqc "DO \$\$BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'aioka') THEN
        CREATE ROLE aioka LOGIN CREATEDB PASSWORD '$pw';
      ELSE ALTER ROLE aioka LOGIN CREATEDB PASSWORD '$pw'; END IF; END\$\$;" >&2 ||
      die "could not create the PostgreSQL role aioka"
    echo "$url"
    return
  fi
  die "cannot log in to PostgreSQL as postgres without a password; set AIOKA_DB_ADMIN_URL to a role that may create databases."
}

# One RabbitMQ user per role on the machine's broker (aioka-producer, aioka-gateway,
# aioka-fanout, aioka-delivery), with the permissions `aioka amqp-permissions ROLE` prints
# (crates/queue/src/permissions.rs: a producer may only publish to aioka.events). Idempotent:
# passwords are generated once into .run/amqp-users.env and set again on every run.
# AMQP_CTL_NODE, when set, names the node rabbitmqctl talks to (a node of scripts/cluster:
# users and permissions replicate to the whole cluster, so one node is enough).
AMQP_ROLES=(producer gateway fanout delivery)
AMQP_CTL_NODE=""
amqp_ctl() { rabbitmqctl ${AMQP_CTL_NODE:+-n "$AMQP_CTL_NODE"} -q "$@" </dev/null; }
ensure_amqp_users() { # path to the aioka binary
  local bin=$1 file="$RUN/amqp-users.env" role user pw conf write read
  have rabbitmqctl || die "rabbitmqctl is needed to create the broker users (or set AIOKA__AMQP__URL yourself)"
  (umask 077 && touch "$file")
  for role in "${AMQP_ROLES[@]}"; do
    user="aioka-$role"
    pw="$(sed -n "s/^$role=//p" "$file")"
    if [ -z "$pw" ]; then
      pw="$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')"
      echo "$role=$pw" >>"$file"
    fi
    if amqp_ctl list_users 2>/dev/null | awk '{print $1}' | grep -qx "$user"; then
      amqp_ctl change_password "$user" "$pw" >/dev/null
    else
      amqp_ctl add_user "$user" "$pw" >/dev/null
    fi
    { read -r conf; read -r write; read -r read; } < <("$bin" amqp-permissions "$role")
    amqp_ctl set_permissions -p / "$user" "$conf" "$write" "$read" >/dev/null ||
      die "could not set the permissions of the broker user $user"
  done
}
# user:password of a role's broker user (after ensure_amqp_users), as a URL's userinfo.
amqp_user_info() { # role
  echo "aioka-$1:$(sed -n "s/^$1=//p" "$RUN/amqp-users.env")"
}
# The AMQP URL of a role's user on the machine's broker (after ensure_amqp_users).
amqp_user_url() { # role
  echo "amqp://$(amqp_user_info "$1")@$AMQP_HOST:$AMQP_PORT/%2f"
}

# The services scripts/up starts, by name: gateway, fanout, delivery, and the extra
# processes fanout-2.., delivery-2.. (scripts/up --fanout M --delivery K). Each has a pid
# file .run/<name>.pid and a log .run/<name>.log.
SERVICE_BIN="$ROOT/target/release"
service_role() { echo "${1%%-*}"; } # name → gateway | fanout | delivery
# The admin address (/healthz, /readyz, /metrics) of a process: process 1 of each role keeps
# its configured one (9090, 9091, 9092 by default); fanout-N listens on 910N, delivery-N on 920N.
service_admin() { # name
  case "$1" in
    gateway) echo "${AIOKA__GATEWAY__ADMIN_LISTEN:-127.0.0.1:9090}" ;;
    fanout) echo "${AIOKA__FANOUT__HEALTH_LISTEN:-127.0.0.1:9091}" ;;
    delivery) echo "${AIOKA__DELIVERY__HEALTH_LISTEN:-127.0.0.1:9092}" ;;
    fanout-*) echo "127.0.0.1:$((9100 + ${1#fanout-}))" ;;
    delivery-*) echo "127.0.0.1:$((9200 + ${1#delivery-}))" ;;
  esac
}
# The pid in a process's pid file, if that pid is alive and runs our binary of its role
# (a pid reused by another program after a reboot or a crash does not count).
service_pid() { # name
  local pidfile="$RUN/$1.pid" pid argv0
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  argv0="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1)" || return 1
  [ "$argv0" = "$SERVICE_BIN/aioka-$(service_role "$1")" ] || return 1
  echo "$pid"
}
# The environment a running process was started with, one NAME=value a line.
service_env() { # pid
  tr '\0' '\n' 2>/dev/null <"/proc/$1/environ"
}
# The HTTP status of a process's /readyz (000: nothing answers).
service_readyz() { # name
  curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$(service_admin "$1")/readyz" 2>/dev/null || true
}
# Every process name with a pid file, in the order they are stopped: gateway first (no new
# events), then fanout, then delivery.
service_names() {
  local f name
  for f in "$RUN"/gateway.pid "$RUN"/fanout.pid "$RUN"/fanout-*.pid "$RUN"/delivery.pid "$RUN"/delivery-*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    echo "$name"
  done
}
# Stops processes by name: SIGTERM to all of them at once, then waits for each to drain
# (30 s at most, then SIGKILL). A pid file whose pid is not ours is removed, nothing killed.
stop_services() { # names…
  local name pid pids=() names=() i
  for name in "$@"; do
    if pid="$(service_pid "$name")"; then
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid") names+=("$name")
    elif [ -e "$RUN/$name.pid" ]; then
      say "$name is not running (stale pid file removed)"
      rm -f "$RUN/$name.pid"
    fi
  done
  for i in "${!pids[@]}"; do
    for _ in $(seq 1 120); do
      kill -0 "${pids[$i]}" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} did not drain within 30 s; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    rm -f "$RUN/${names[$i]}.pid"
  done
}

# Exports the NAME=value lines of a file whose name starts with a prefix, except those the
# environment already sets.
export_unset_from() { # file prefix
  local k v
  while IFS='=' read -r k v; do
    [[ "$k" == "$2"* ]] || continue
    [ -n "${!k:-}" ] || export "$k=$v"
  done <"$1"
}

# Stops the cluster that .run/started-cluster names (scripts/up started it) and forgets it.
stop_started_cluster() {
  [ -s "$RUN/started-cluster" ] || return 0
  (
    # Its own names, ports and directory, whatever the caller's environment says.
    unset AIOKA_CLUSTER_PREFIX AIOKA_CLUSTER_PORT AIOKA_CLUSTER_STATE
    export_unset_from "$RUN/started-cluster" AIOKA_CLUSTER_
    # shellcheck source=scripts/cluster-lib.sh disable=SC1091
    source "$ROOT/scripts/cluster-lib.sh"
    cluster_stop
  )
  rm -f "$RUN/started-cluster"
}

# Schemathesis (PyPI), for the gateway's fuzz test, in a venv of the project's own.
SCHEMATHESIS_VERSION=4.32.5
ensure_fuzz_tools() {
  local venv="$RUN/tools/fuzz"
  if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    say "installing schemathesis $SCHEMATHESIS_VERSION into .run/tools/fuzz"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; } ||
      die "python3 -m venv failed; install python3-venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2 || die "could not install schemathesis from PyPI"
  fi
  export AIOKA_SCHEMATHESIS="$venv/bin/schemathesis"
}

# Interpreters for the receiver snippets of docs/receivers.md (scripts/check-receivers): Python
# and Node.js come with the machine; Ruby and PHP are small packages of the distribution. One
# that cannot be installed is reported by the check as not executed.
ensure_receiver_langs() {
  local missing=()
  have ruby || missing+=(ruby)
  have php || missing+=(php-cli)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}" || say "could not install ${missing[*]}; their receiver snippets are not executed"
  fi
}

# The portal's browser tests (crates/e2e/tests/portal.rs): headless Chromium, its driver and
# Selenium, all from the distribution's packages (no browser download).
ensure_browser() {
  local missing=()
  have chromium || missing+=(chromium)
  have chromedriver || missing+=(chromium-driver)
  # The distribution's Python, which the package installs into (not a pyenv or venv one).
  /usr/bin/python3 -c 'import selenium' 2>/dev/null || missing+=(python3-selenium)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}" ||
      die "the portal's browser tests need ${missing[*]} (apt-get install ${missing[*]}, as root)"
  fi
}

ensure_psql() {
  have psql || apt_install postgresql-client || die "psql is needed (package postgresql-client)."
}
