# shellcheck shell=bash
# A RabbitMQ cluster of three nodes of our own on this machine, beside the machine's node
# (rabbit@localhost, 5672/25672) and the chaos node (aiokachaos@localhost, 6672/26672),
# neither of which it touches. Sourced after lib.sh by scripts/cluster and scripts/up, and
# by anything that wants a cluster of its own (a fault harness): set the variables below
# before sourcing, then call cluster_start / cluster_stop / cluster_status / cluster_urls.
#
#   AIOKA_CLUSTER_PREFIX  node names <prefix>1@localhost .. <prefix>3@localhost (default aioka)
#   AIOKA_CLUSTER_PORT    AMQP port of node 1; nodes 2 and 3 take the next two (default 5681:
#                         5681, 5682, 5683). Each node's distribution port is its AMQP port
#                         + 20000 (25681..25683), RabbitMQ's own rule, written out explicitly.
#   AIOKA_CLUSTER_STATE   where the nodes keep their settings, data and logs (default
#                         /var/tmp/<prefix>-cluster: the nodes run as the rabbitmq user, who
#                         needs a path it can reach)
#
# A second, independent cluster needs only another prefix and port, e.g.
# AIOKA_CLUSTER_PREFIX=aiokaft AIOKA_CLUSTER_PORT=5691 scripts/cluster start.
#
# Three nodes share this machine's cores with the services: their schedulers do not
# busy-wait (+sbwt none, https://www.rabbitmq.com/runtime.html#busy-waiting), which on two
# cores otherwise burns the CPU the services and receivers need (scripts/chaos --cluster saw
# 1 s delivery timeouts against a local receiver at a load of 12 without it).
#
# Every node runs as the rabbitmq user (the Debian wrappers switch to it), so all of them,
# the machine's node and the CLI share one Erlang cookie: /var/lib/rabbitmq/.erlang.cookie.
#
# What RabbitMQ 3.10.8 does with quorum queues here (read from the installed
# rabbit_quorum_queue and rabbit_queue_location modules, and checked by declaring a queue;
# see https://www.rabbitmq.com/quorum-queues.html#replication-factor):
# - Replicas: a new quorum queue gets `x-quorum-initial-group-size` replicas, or the rabbit
#   application's `quorum_cluster_size` (default 3) when the argument is absent; a cluster of
#   at most that many members puts a replica on every member, running or not. Our topology
#   sets no group size, so 3 nodes and the default 3 mean members = all three nodes.
#   rabbitmq.conf has no key for quorum_cluster_size in 3.10 (only advanced.config), so
#   advanced.config below pins it to 3, the default, to say it out loud.
# - Leaders: the leader goes where `queue-leader-locator` (policy, which wins) or
#   `x-queue-leader-locator` (argument) or rabbitmq.conf `queue_leader_locator` says;
#   3.10 knows `client-local` (the default: the node the declaring connection is on, so every
#   queue our services declare through node 1 would lead on node 1) and `balanced` (the
#   running replica with the fewest leaders, or a random one from 1000 queues on; `random`
#   and `least-leaders` are old names for it). The nodes set `queue_leader_locator =
#   balanced`, so leaders spread at declaration; `rabbitmq-queues rebalance quorum`
#   (cluster_rebalance) spreads them again after nodes restarted and leadership piled up.
#   https://www.rabbitmq.com/clustering.html#queue-leader-location
#   Seen here: the 7 queues of an unsharded system led 3/2/2; right after a restart of the
#   cluster one rebalance left 1/4/2 and a second one 2/3/2 (it is best effort while
#   replicas catch up). Both count every quorum queue alike, so with 3 delivery shards two
#   shard queues may still share a leader node.

CLUSTER_PREFIX="${AIOKA_CLUSTER_PREFIX:-aioka}"
CLUSTER_PORT="${AIOKA_CLUSTER_PORT:-5681}"
CLUSTER_STATE="${AIOKA_CLUSTER_STATE:-/var/tmp/$CLUSTER_PREFIX-cluster}"
CLUSTER_SIZE=3

[[ "$CLUSTER_PREFIX" =~ ^[a-z][a-z0-9_]*$ ]] ||
  die "AIOKA_CLUSTER_PREFIX must be lowercase letters, digits and _ (got '$CLUSTER_PREFIX')"
if ! [[ "$CLUSTER_PORT" =~ ^[0-9]+$ ]] || [ "$CLUSTER_PORT" -lt 1024 ] || [ "$CLUSTER_PORT" -gt 45500 ]; then
  die "AIOKA_CLUSTER_PORT must be a port from 1024 to 45500 (its nodes' distribution ports are +20000)"
fi

cluster_node() { echo "$CLUSTER_PREFIX$1@localhost"; }           # i
cluster_amqp_port() { echo $((CLUSTER_PORT + $1 - 1)); }          # i
cluster_dist_port() { echo $((CLUSTER_PORT + 20000 + $1 - 1)); }  # i
cluster_dir() { echo "$CLUSTER_STATE/$CLUSTER_PREFIX$1"; }        # i
cluster_pidfile() { echo "$(cluster_dir "$1")/mnesia/$(cluster_node "$1").pid"; }
cluster_ctl() { # i rabbitmqctl-arguments…
  local i=$1
  shift
  rabbitmqctl -n "$(cluster_node "$i")" -q "$@" </dev/null
}

# The comma-separated AMQP URLs of the three nodes, for one user (guest, whom the nodes
# accept from loopback only, or one of ours).
cluster_urls() { # user:password
  local userinfo=$1 i urls=()
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    urls+=("amqp://$userinfo@127.0.0.1:$(cluster_amqp_port "$i")/%2f")
  done
  (IFS=,; echo "${urls[*]}")
}

# One state directory is one cluster: refuse to use it under other names or ports.
cluster_check_state() {
  local have
  [ -s "$CLUSTER_STATE/cluster.env" ] || return 0
  have="$(cat "$CLUSTER_STATE/cluster.env")"
  [ "$have" = "prefix=$CLUSTER_PREFIX port=$CLUSTER_PORT" ] ||
    die "$CLUSTER_STATE holds the cluster with $have, not prefix=$CLUSTER_PREFIX port=$CLUSTER_PORT; set AIOKA_CLUSTER_PREFIX, AIOKA_CLUSTER_PORT and AIOKA_CLUSTER_STATE together"
}

# The files of each node, written on every start (they hold nothing a node changes).
cluster_write_config() {
  local i dir
  is_root || die "the cluster's nodes run as the rabbitmq user: run this as root"
  if ! id rabbitmq >/dev/null 2>&1 || ! have rabbitmq-server; then
    die "RabbitMQ is not installed (apt-get install rabbitmq-server)"
  fi
  mkdir -p "$CLUSTER_STATE"
  cluster_check_state
  echo "prefix=$CLUSTER_PREFIX port=$CLUSTER_PORT" >"$CLUSTER_STATE/cluster.env"
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    dir="$(cluster_dir "$i")"
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq-env.conf" <<ENV
NODENAME=$(cluster_node "$i")
NODE_PORT=$(cluster_amqp_port "$i")
DIST_PORT=$(cluster_dist_port "$i")
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
ENV
    # pause_minority: the documented choice for clusters of three or more; a node cut off
    # from the other two stops serving rather than diverging
    # (https://www.rabbitmq.com/partitions.html).
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$(cluster_amqp_port "$i")
loopback_users.guest = true
queue_leader_locator = balanced
cluster_partition_handling = pause_minority
CONF
    echo '[{rabbit, [{quorum_cluster_size, 3}]}].' >"$dir/advanced.config"
    echo '[].' >"$dir/enabled_plugins"
  done
  chown -R rabbitmq: "$CLUSTER_STATE"
}

# Whether node i's Erlang VM is running: its pid file names a live process started with
# this node's data directory (so a pid reused by another process does not count).
cluster_node_alive() { # i
  local pidfile pid
  pidfile="$(cluster_pidfile "$1")"
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/environ" ] || return 1
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_MNESIA_BASE=$(cluster_dir "$1")/mnesia"
}

# Whether a node of node i's name is registered with epmd (ours or anyone's).
cluster_registered() { # i
  epmd -names 2>/dev/null | grep -q "^name $CLUSTER_PREFIX$1 at "
}

cluster_launch() { # i
  local i=$1 node dir port dist
  node="$(cluster_node "$i")" dir="$(cluster_dir "$i")"
  port="$(cluster_amqp_port "$i")" dist="$(cluster_dist_port "$i")"
  if cluster_registered "$i"; then
    die "a node named $node runs with another data directory than $dir; stop it first"
  fi
  port_open 127.0.0.1 "$port" && die "port $port (AMQP of $node) is taken; set AIOKA_CLUSTER_PORT"
  port_open 127.0.0.1 "$dist" && die "port $dist (distribution of $node) is taken; set AIOKA_CLUSTER_PORT"
  say "starting $node (AMQP 127.0.0.1:$port, data $dir)"
  # The node must not inherit the lock (it would hold it for its lifetime). The RABBITMQ_*
  # variables repeat the env file so that none the caller exported (the chaos harness
  # exports RABBITMQ_NODENAME) can point this node elsewhere.
  RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_NODENAME="$node" \
    RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    setsid rabbitmq-server -detached >>"$dir/start.log" 2>&1 </dev/null {CLUSTER_LOCK}>&- ||
    die "could not start $node; see $dir/start.log and $dir/log"
}

# The cluster's members and running members: two lines, each a space-separated list, as
# the first node that answers sees them (a node answers only while its application runs).
cluster_membership() {
  local i out
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    cluster_node_alive "$i" || continue
    if out="$(cluster_ctl "$i" cluster_status --formatter json 2>/dev/null)"; then
      jq -r '(.disk_nodes + .ram_nodes | join(" ")), (.running_nodes | join(" "))' <<<"$out"
      return
    fi
  done
  return 1
}

cluster_all_in() { # members running
  local i
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    [[ " $1 " == *" $(cluster_node "$i") "* && " $2 " == *" $(cluster_node "$i") "* ]] || return 1
  done
}

cluster_all_running_members() {
  local members running
  { read -r members; read -r running; } < <(cluster_membership) || return 1
  cluster_all_in "$members" "$running"
}

# Starts what is not running, joins what is not a member, waits until all three are running
# members, and prints the guest URL list on stdout. Safe to run again with the cluster up
# (it then only checks), and after one node died (it starts that one; it rejoins by itself).
cluster_start() {
  local i launched=() members running node changed=0
  have jq || apt_install jq || die "jq is needed (apt-get install jq)"
  cluster_write_config
  exec {CLUSTER_LOCK}>"$CLUSTER_STATE/lock"
  flock -w 600 "$CLUSTER_LOCK" || die "another start or stop of $CLUSTER_STATE is running"
  # All first, then wait: a node that was clustered waits at boot for its peers.
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    cluster_node_alive "$i" && continue
    cluster_launch "$i"
    launched+=("$i")
  done
  for i in "${launched[@]}"; do
    # await_startup fails at once while the VM is not yet reachable: wait for the node's
    # name in epmd first.
    for _ in $(seq 1 240); do
      cluster_registered "$i" && break
      sleep 0.5
    done
    cluster_ctl "$i" await_startup --timeout 300 >/dev/null 2>&1 ||
      die "$(cluster_node "$i") did not start within 300 s; see $(cluster_dir "$i")/log"
  done
  # One cluster_status (each CLI call costs seconds on a busy machine) says what else to do.
  if ! { read -r members; read -r running; } < <(cluster_membership); then
    # No node answers: every application was stopped (rabbitmqctl stop_app).
    for ((i = 1; i <= CLUSTER_SIZE; i++)); do
      [[ " ${launched[*]} " == *" $i "* ]] && continue
      say "starting the application on $(cluster_node "$i")"
      cluster_ctl "$i" start_app >/dev/null || true
    done
    { read -r members; read -r running; } < <(cluster_membership) ||
      die "no node of the cluster answers cluster_status; see $CLUSTER_STATE/*/log"
    changed=1
  fi
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    node="$(cluster_node "$i")"
    [[ " $running " == *" $node "* || " ${launched[*]} " == *" $i "* ]] && continue
    [[ " $members " == *" $node "* ]] || continue
    # A member whose VM runs but whose application does not (rabbitmqctl stop_app).
    say "starting the application on $node"
    cluster_ctl "$i" start_app >/dev/null || die "could not start the application on $node"
    changed=1
  done
  for ((i = 2; i <= CLUSTER_SIZE; i++)); do
    node="$(cluster_node "$i")"
    [[ " $members " == *" $node "* ]] && continue
    say "joining $node to $(cluster_node 1)"
    # join_cluster resets the joining node (its own users and queues go) and takes the
    # cluster's; https://www.rabbitmq.com/clustering.html#creating. Its CLI output (3.10
    # logs harmless "tracked connection table" errors while the node restarts) goes to
    # the node's start.log.
    if ! { cluster_ctl "$i" stop_app &&
      cluster_ctl "$i" join_cluster "$(cluster_node 1)" &&
      cluster_ctl "$i" start_app; } >>"$(cluster_dir "$i")/start.log" 2>&1; then
      die "could not join $node to the cluster; see $(cluster_dir "$i")/start.log and $(cluster_dir "$i")/log"
    fi
    changed=1
  done
  if [ "$changed" = 1 ] || [ "${#launched[@]}" -gt 0 ]; then
    for _ in $(seq 1 60); do
      cluster_all_running_members && break
      sleep 1
    done
    cluster_all_running_members ||
      die "the three nodes are not all running members after 60 s (scripts/cluster status)"
  else
    cluster_all_in "$members" "$running" ||
      die "the three nodes are not all running members (scripts/cluster status)"
  fi
  exec {CLUSTER_LOCK}>&-
  say "cluster $CLUSTER_PREFIX: $(cluster_node 1), $(cluster_node 2), $(cluster_node 3) running"
  cluster_urls guest:guest
}

# Stops exactly this cluster's nodes (by their own pid files), the last one first; keeps
# their data, so the next start brings back the same cluster with its users and queues.
cluster_stop() {
  local i pid node
  [ -d "$CLUSTER_STATE" ] || return 0
  cluster_check_state
  exec {CLUSTER_LOCK}>"$CLUSTER_STATE/lock"
  flock -w 600 "$CLUSTER_LOCK" || die "another start or stop of $CLUSTER_STATE is running"
  for ((i = CLUSTER_SIZE; i >= 1; i--)); do
    cluster_node_alive "$i" || continue
    node="$(cluster_node "$i")" pid="$(cat "$(cluster_pidfile "$i")")"
    say "stopping $node (pid $pid)"
    # With the pid file, stop returns once the OS process has exited.
    cluster_ctl "$i" stop "$(cluster_pidfile "$i")" >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$node did not stop within 60 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  exec {CLUSTER_LOCK}>&-
}

# One line per node on stdout; returns 0 when all three are running members.
cluster_status() {
  local i node state members="" running="" ok=0
  cluster_check_state
  { read -r members; read -r running; } < <(cluster_membership) || true
  echo "cluster $CLUSTER_PREFIX (state $CLUSTER_STATE)"
  for ((i = 1; i <= CLUSTER_SIZE; i++)); do
    node="$(cluster_node "$i")"
    if ! cluster_node_alive "$i"; then
      state="stopped"
    elif [[ " $running " == *" $node "* && " $members " == *" $node "* ]]; then
      state="running, member"
    elif [[ " $members " == *" $node "* ]]; then
      state="member, application not running"
    elif [ -z "$members" ]; then
      state="up, cluster status unknown (no node answers)"
    else
      state="up, not a member"
    fi
    [ "$state" = "running, member" ] || ok=1
    printf '  %-24s AMQP 127.0.0.1:%-6s distribution %-6s %s\n' \
      "$node" "$(cluster_amqp_port "$i")" "$(cluster_dist_port "$i")" "$state"
  done
  echo "  URLs: $(cluster_urls guest:guest)"
  return "$ok"
}

# Moves quorum queue leaders so each node leads about as many (after restarts piled them up).
cluster_rebalance() {
  rabbitmq-queues -n "$(cluster_node 1)" -q rebalance quorum </dev/null
}

# Stops the cluster and deletes its data: the next start makes a new, empty cluster.
cluster_delete() {
  cluster_stop
  [ -s "$CLUSTER_STATE/cluster.env" ] || return 0
  say "deleting $CLUSTER_STATE"
  rm -rf "$CLUSTER_STATE"
}

# Makes a cluster, checks it, deletes it (scripts/test): all three running members, and a
# quorum queue declared through node 1 with no size of its own has a replica on every node.
# Only for a cluster of its own: it refuses a state directory that already exists, so it
# never deletes what it did not make.
cluster_selftest() {
  local members
  [ ! -e "$CLUSTER_STATE" ] ||
    die "the self-test makes and deletes a cluster of its own, but $CLUSTER_STATE exists; choose AIOKA_CLUSTER_PREFIX/PORT for it"
  trap cluster_delete EXIT
  cluster_start >/dev/null
  cluster_status >/dev/null || die "scripts/cluster status does not report three running members"
  cluster_ctl 1 eval '{new, _} = rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"selftest">>),
    true, false, [{<<"x-queue-type">>, longstr, <<"quorum">>}], none, <<"selftest">>), ok.' >/dev/null ||
    die "could not declare a quorum queue on $(cluster_node 1)"
  members="$(cluster_ctl 2 list_queues name members --formatter json |
    jq -r '.[] | select(.name == "selftest") | .members | length')"
  [ "$members" = "$CLUSTER_SIZE" ] ||
    die "a new quorum queue has ${members:-no} replicas, not one on each of the $CLUSTER_SIZE nodes"
  say "cluster self-test passed: three running members, a quorum queue on all three"
}
