# Shared by scripts/test and scripts/local-cluster: installs and starts
# private NATS (JetStream), PostgreSQL, Redis and S3 (moto) instances in a
# directory, on free loopback ports. Source it, then call the functions.
#
#   infra_install [CMD...]   apt-get the servers (and commands CMD) that are
#                            missing; pip-installs moto's S3 server
#   infra_start DIR          start all four under DIR; exports
#                            MAILFLEET_TEST_NATS_URL, _POSTGRES_URL, _REDIS_URL,
#                            _S3_URL (an S3 endpoint, http://127.0.0.1:PORT)
#   infra_stop               stop what infra_start started

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
    # Debian keeps initdb/pg_ctl out of PATH, under /usr/lib/postgresql/<major>/bin.
    local b
    for b in /usr/lib/postgresql/*/bin; do
        if [ -x "$b/initdb" ]; then echo "$b"; return 0; fi
    done
    dirname "$(command -v initdb)"
}

infra_install() {
    local missing=()
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v swaks >/dev/null || missing+=(swaks)
    command -v mbsync >/dev/null || missing+=(isync)  # IMAP interop (tests/e2e/test_imap_clients.py)
    command -v curl >/dev/null || missing+=(curl)  # IMAPS/POP3S interop (same test)
    local cmd
    for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian's postgresql package starts a cluster on 5432; we never use it.
    # An S3-compatible server for the object-store blob tests: moto's, from PyPI
    # (Debian packages none). Newer pips refuse a system Python without the flag.
    if ! command -v moto_server >/dev/null; then
        echo "installing moto[server]" >&2
        python3 -m pip install -q 'moto[server]' 2>/dev/null \
            || python3 -m pip install -q --break-system-packages 'moto[server]'
    fi
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

wait_port() {
    local port=$1 name=$2 i
    for i in $(seq 1 100); do
        if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$name did not start on port $port" >&2
    return 1
}

# Where PostgreSQL keeps its data for infra directory $1. Normally $1/pg; but
# as root the server runs as the postgres user, which cannot enter a private
# (0700) directory such as mktemp's or pytest's: then the data lives in a
# postgres-owned directory under /tmp whose path is kept in $1/pg-path, so a
# restart on the same $1 finds it again. infra_purge removes it.
pg_dir() {
    local dir=$1 kept
    if [ "$(id -u)" != 0 ]; then
        mkdir -p "$dir/pg"; echo "$dir/pg"; return
    fi
    if [ -s "$dir/pg-path" ]; then
        kept=$(cat "$dir/pg-path")
        if [ -d "$kept" ]; then echo "$kept"; return; fi
    fi
    mkdir -p "$dir/pg"
    chown postgres "$dir/pg"
    if runuser -u postgres -- test -w "$dir/pg"; then
        echo "$dir/pg"; return
    fi
    kept=$(mktemp -d /tmp/mailfleet-pg.XXXXXX)
    chown postgres "$kept"
    echo "$kept" >"$dir/pg-path"
    echo "$kept"
}

# Removes what infra_start left outside its directory (see pg_dir).
infra_purge() {
    local dir=$1
    if [ -s "$dir/pg-path" ]; then rm -rf "$(cat "$dir/pg-path")"; fi
}

infra_start() {
    INFRA_DIR=$1
    mkdir -p "$INFRA_DIR"
    local nats_port pg_port redis_port s3_port bin
    nats_port=$(free_port)
    pg_port=$(free_port)
    redis_port=$(free_port)
    s3_port=$(free_port)

    nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$INFRA_DIR/nats" >"$INFRA_DIR/nats.log" 2>&1 &
    INFRA_NATS_PID=$!

    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$INFRA_DIR" >"$INFRA_DIR/redis.log" 2>&1 &
    INFRA_REDIS_PID=$!

    # In memory: every test creates a bucket of its own.
    moto_server -H 127.0.0.1 -p "$s3_port" >"$INFRA_DIR/moto.log" 2>&1 &
    INFRA_S3_PID=$!

    bin=$(pg_bin)
    PG_DIR=$(pg_dir "$INFRA_DIR")
    # A directory kept from an earlier run is reused: its data survives restarts.
    if [ ! -d "$PG_DIR/data" ]; then
        as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust >"$INFRA_DIR/initdb.log" 2>&1
    fi
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $pg_port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    INFRA_PG_BIN=$bin

    wait_port "$nats_port" nats-server
    wait_port "$redis_port" redis-server
    wait_port "$pg_port" postgresql
    # Python imports take a few seconds on a busy machine.
    wait_port "$s3_port" moto_server || wait_port "$s3_port" moto_server || wait_port "$s3_port" moto_server

    export MAILFLEET_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
    export MAILFLEET_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
    export MAILFLEET_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
    export MAILFLEET_TEST_S3_URL="http://127.0.0.1:$s3_port"
}

infra_stop() {
    [ -n "${INFRA_DIR:-}" ] || return 0
    [ -n "${INFRA_NATS_PID:-}" ] && kill "$INFRA_NATS_PID" 2>/dev/null
    [ -n "${INFRA_REDIS_PID:-}" ] && kill "$INFRA_REDIS_PID" 2>/dev/null
    [ -n "${INFRA_S3_PID:-}" ] && kill "$INFRA_S3_PID" 2>/dev/null
    if [ -n "${INFRA_PG_BIN:-}" ]; then
        as_pg "$INFRA_PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1
    fi
    wait 2>/dev/null
    INFRA_DIR=
}
