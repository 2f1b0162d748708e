# shellcheck shell=bash
# The broker and the database scripts/chaos breaks: a RabbitMQ node and a PostgreSQL instance
# of its own (own node name, ports, data and log directories), never the machine's, which
# the rest of the machine (and the test suite) keeps using while scenarios stop, restart and
# kill these. Sourced by scripts/chaos after lib.sh. Once sourced, rabbitmqctl,
# rabbitmq-server and rabbitmq-diagnostics talk to the chaos node (RABBITMQ_CONF_ENV_FILE),
# and AMQP_PORT / PG_PORT are the chaos instances' ports.
#
#   AIOKA_CHAOS_STATE   where their data lives (default /var/tmp/aioka-chaos: the broker runs
#                       as the rabbitmq user and the database as postgres, who need a path
#                       they can reach)

CHAOS_STATE="${AIOKA_CHAOS_STATE:-/var/tmp/aioka-chaos}"
# AMQP 6672, so its distribution port (+20000: 26672) is below the kernel's ephemeral range
# (32768-60999): at 46672 an outgoing connection of any process could hold the port when the
# node starts (a CI run saw that for a cluster node: dist_port_already_used, not_erlang).
CHAOS_AMQP_PORT=6672
CHAOS_PG_PORT=25432
CHAOS_NODE=aiokachaos@localhost
CHAOS_RABBIT="$CHAOS_STATE/rabbitmq"
CHAOS_PG="$CHAOS_STATE/postgres"

# The machine's RabbitMQ settings name its own node and listener; the chaos node gets files
# of its own (the Erlang cookie stays the machine's, so the CLI can reach both).
mkdir -p "$CHAOS_RABBIT/mnesia" "$CHAOS_RABBIT/log" "$CHAOS_PG"
cat >"$CHAOS_RABBIT/rabbitmq-env.conf" <<ENV
NODENAME=$CHAOS_NODE
NODE_PORT=$CHAOS_AMQP_PORT
MNESIA_BASE=$CHAOS_RABBIT/mnesia
LOG_BASE=$CHAOS_RABBIT/log
CONFIG_FILE=$CHAOS_RABBIT/rabbitmq.conf
ENABLED_PLUGINS_FILE=$CHAOS_RABBIT/enabled_plugins
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
cat >"$CHAOS_RABBIT/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$CHAOS_AMQP_PORT
loopback_users.guest = true
CONF
echo '[].' >"$CHAOS_RABBIT/enabled_plugins"
if is_root && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$CHAOS_RABBIT"; fi
export RABBITMQ_CONF_ENV_FILE="$CHAOS_RABBIT/rabbitmq-env.conf"
export RABBITMQ_NODENAME="$CHAOS_NODE"
AMQP_PORT=$CHAOS_AMQP_PORT
PG_PORT=$CHAOS_PG_PORT
PG_HOST=127.0.0.1

chaos_rabbit_up() { rabbitmq-diagnostics -q ping >/dev/null 2>&1 </dev/null; }

chaos_rabbit_start() {
  if ! chaos_rabbit_up; then
    setsid rabbitmq-server -detached >>"$CHAOS_STATE/rabbitmq-start.log" 2>&1 </dev/null || return 1
  fi
  rabbitmqctl -q await_startup --timeout 120 >/dev/null 2>&1 </dev/null || true
  wait_port 127.0.0.1 "$CHAOS_AMQP_PORT" 120
}

# At the start of a run the node begins empty: the last run's queues are of no use, and a
# node that recovers dozens of quorum queues while the first scenario deletes them
# (fresh_state) answered INTERNAL_ERROR to every connection once (RabbitMQ 3.10, a
# scripts/test run right after another). Restarts within a scenario keep their data: there
# the recovery is what is under test.
chaos_rabbit_fresh_start() {
  if ! chaos_rabbit_up; then
    rm -rf "${CHAOS_RABBIT:?}/mnesia"
    mkdir -p "$CHAOS_RABBIT/mnesia"
    if is_root && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$CHAOS_RABBIT/mnesia"; fi
  fi
  chaos_rabbit_start
}

# The chaos instance's server tools (scripts/lib.sh, pg_server_tool).
chaos_pg() { pg_server_tool "$@"; }

chaos_pg_start() {
  if [ ! -s "$CHAOS_PG/data/PG_VERSION" ]; then
    mkdir -p "$CHAOS_PG/data"
    if is_root; then chown -R postgres: "$CHAOS_PG"; fi
    chaos_pg initdb -D "$CHAOS_PG/data" -U postgres -A trust >"$CHAOS_STATE/initdb.log" 2>&1 ||
      die "initdb for the chaos database failed; see $CHAOS_STATE/initdb.log"
  fi
  if ! port_open 127.0.0.1 "$CHAOS_PG_PORT"; then
    chaos_pg pg_ctl -D "$CHAOS_PG/data" -l "$CHAOS_PG/server.log" -w -t 60 \
      -o "-p $CHAOS_PG_PORT -c listen_addresses=127.0.0.1 -k $CHAOS_PG -c max_connections=200" \
      start >>"$CHAOS_STATE/postgres-start.log" 2>&1 </dev/null || return 1
  fi
  wait_port 127.0.0.1 "$CHAOS_PG_PORT" 60
}

chaos_pg_restart() {
  chaos_pg pg_ctl -D "$CHAOS_PG/data" -l "$CHAOS_PG/server.log" -w -t 60 -m fast \
    -o "-p $CHAOS_PG_PORT -c listen_addresses=127.0.0.1 -k $CHAOS_PG -c max_connections=200" \
    restart </dev/null
}

# Both started (idempotent); the chaos instances then outlive one scenario, not the run.
chaos_infra_start() {
  if is_root && ! id postgres >/dev/null 2>&1; then die "the chaos database runs as the postgres user, which is missing"; fi
  chaos_pg_start || die "the chaos PostgreSQL did not start; see $CHAOS_PG/server.log"
  chaos_rabbit_fresh_start || die "the chaos RabbitMQ node did not start; see $CHAOS_RABBIT/log"
}

chaos_infra_stop() {
  rabbitmqctl -q stop >/dev/null 2>&1 </dev/null || true
  if port_open 127.0.0.1 "$CHAOS_PG_PORT"; then
    chaos_pg pg_ctl -D "$CHAOS_PG/data" -m fast -w stop >/dev/null 2>&1 </dev/null || true
  fi
}
