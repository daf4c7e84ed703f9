#!/usr/bin/env bash
# Start, stop or inspect the real services Tidemark talks to, on loopback, without Docker:
# Apache Kafka (KRaft, from Maven Central, run with the JDK), Redis and PostgreSQL (Debian),
# and an S3-compatible server for the archive (moto's server mode, from PyPI).
# Idempotent: `up` installs what is missing and starts only what is not running.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
STATE="${TIDEMARK_SERVICES_DIR:-$HOME/.cache/tidemark/services}"
KAFKA_PORT=9092; KAFKA_CTRL_PORT=9093; REDIS_PORT=6379; PG_PORT=5432; S3_PORT=9400
MOTO_VERSION="${MOTO_VERSION:-5.2.6}"
export TIDEMARK_KAFKA="${TIDEMARK_KAFKA:-127.0.0.1:$KAFKA_PORT}"
export TIDEMARK_REDIS="${TIDEMARK_REDIS:-redis://127.0.0.1:$REDIS_PORT/}"
export TIDEMARK_PG="${TIDEMARK_PG:-host=127.0.0.1 port=$PG_PORT user=tidemark password=tidemark dbname=tidemark}"
export TIDEMARK_S3="${TIDEMARK_S3:-http://127.0.0.1:$S3_PORT}"

log() { echo "[services] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, name, seconds
  local i; for ((i = 0; i < $3 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  log "$2 did not open port $1 within $3 s"; return 1
}

apt_install() { # packages…
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

kafka_libs() { # fetch Kafka, its tools (the console consumer) and their dependencies once
  local libs="$STATE/kafka-$KAFKA_VERSION/libs"
  if [ ! -f "$libs/.complete-tools" ]; then
    command -v mvn >/dev/null || apt_install maven
    log "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central"
    local pom="$STATE/kafka-$KAFKA_VERSION/pom.xml"
    mkdir -p "$libs"
    cat >"$pom" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tidemark</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime >&2
    touch "$libs/.complete-tools"
  fi
  echo "$libs"
}

kafka_up() {
  if port_open $KAFKA_PORT; then log "kafka already up on $KAFKA_PORT"; return 0; fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  local libs; libs=$(kafka_libs)
  local dir="$STATE/kafka"; mkdir -p "$dir"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  cat >"$dir/log4j2.properties" <<L4J
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$dir/kafka.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=%d %p %c: %m%n
L4J
  local jvm=(java -Xmx512m -Xms256m -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*")
  if [ ! -f "$dir/data/meta.properties" ]; then
    "${jvm[@]}" kafka.tools.StorageTool format --standalone --cluster-id "tidemark-local-0001" \
      --config "$dir/server.properties" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; return 1; }
  fi
  log "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  nohup "${jvm[@]}" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_port $KAFKA_PORT kafka 90
  # the port opens before the broker answers metadata requests
  local i; for ((i = 0; i < 120; i++)); do
    kcat -b "$TIDEMARK_KAFKA" -L -m 2 >/dev/null 2>&1 && return 0; sleep 0.5
  done
  log "kafka did not answer a metadata request"; return 1
}

redis_up() {
  apt_install redis-server
  if port_open $REDIS_PORT; then log "redis already up on $REDIS_PORT"; return 0; fi
  local dir="$STATE/redis"; mkdir -p "$dir"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port $REDIS_PORT --dir "$dir" --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/pid" --logfile "$dir/redis.log"
  wait_port $REDIS_PORT redis 20
}

pg_up() {
  apt_install postgresql postgresql-client
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  # the postgres user must reach its data directory, so it does not live under $HOME
  local dir="${TIDEMARK_PG_DIR:-/var/lib/tidemark/postgres}"
  if ! port_open $PG_PORT; then
    as_root mkdir -p "$dir"
    id postgres >/dev/null 2>&1 || as_root useradd -r -m postgres
    as_root chown -R postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      log "initialising a postgres cluster in $dir/data"
      su postgres -s /bin/sh -c "$bin/initdb -D '$dir/data' -A trust -U postgres >'$dir/initdb.log'"
    fi
    log "starting postgres on 127.0.0.1:$PG_PORT"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$dir/data' -l '$dir/postgres.log' -w -t 60 \
      -o \"-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off\" start" >/dev/null
  else
    log "postgres already up on $PG_PORT"
  fi
  wait_port $PG_PORT postgres 30
  psql -h 127.0.0.1 -p $PG_PORT -U postgres -tAc "select 1 from pg_roles where rolname='tidemark'" | grep -q 1 ||
    psql -h 127.0.0.1 -p $PG_PORT -U postgres -qc "create role tidemark login superuser password 'tidemark'"
  psql -h 127.0.0.1 -p $PG_PORT -U postgres -tAc "select 1 from pg_database where datname='tidemark'" | grep -q 1 ||
    psql -h 127.0.0.1 -p $PG_PORT -U postgres -qc "create database tidemark owner tidemark"
}

s3_up() { # moto's S3 server (in memory: a restart empties it), in a virtualenv of its own
  if port_open $S3_PORT; then log "s3 (moto) already up on $S3_PORT"; return 0; fi
  local venv="$STATE/moto-$MOTO_VERSION"
  if [ ! -x "$venv/bin/moto_server" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
    log "installing moto[server]==$MOTO_VERSION from PyPI"
    "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  fi
  local dir="$STATE/s3"; mkdir -p "$dir"
  log "starting moto (S3) on 127.0.0.1:$S3_PORT"
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p $S3_PORT >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_port $S3_PORT s3 60
}

down() {
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -f "$STATE/kafka/pid" ]; then kill "$(cat "$STATE/kafka/pid")" 2>/dev/null || true; rm -f "$STATE/kafka/pid"; fi
  if [ -f "$STATE/s3/pid" ]; then kill "$(cat "$STATE/s3/pid")" 2>/dev/null || true; rm -f "$STATE/s3/pid"; fi
  if port_open $REDIS_PORT; then redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true; fi
  local pgdir="${TIDEMARK_PG_DIR:-/var/lib/tidemark/postgres}"
  if [ -n "$bin" ] && [ -f "$pgdir/data/postmaster.pid" ]; then
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$pgdir/data' -m fast stop" >/dev/null 2>&1 || true
  fi
  log "stopped"
}

stop_one() { # kafka|postgres: stop one service (the outage tests start it again with `up`)
  case "$1" in
    kafka)
      if [ -f "$STATE/kafka/pid" ]; then kill "$(cat "$STATE/kafka/pid")" 2>/dev/null || true; fi
      local i; for ((i = 0; i < 120; i++)); do port_open $KAFKA_PORT || break; sleep 0.5; done
      rm -f "$STATE/kafka/pid" ;;
    postgres)
      local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
      local pgdir="${TIDEMARK_PG_DIR:-/var/lib/tidemark/postgres}"
      su postgres -s /bin/sh -c "$bin/pg_ctl -D '$pgdir/data' -m fast -w stop" >/dev/null ;;
    *) echo "stop: kafka or postgres" >&2; return 2 ;;
  esac
  log "$1 stopped"
}

status() {
  local rc=0
  for s in "kafka $KAFKA_PORT" "redis $REDIS_PORT" "postgres $PG_PORT" "s3 $S3_PORT"; do
    set -- $s
    if port_open "$2"; then echo "$1: up (127.0.0.1:$2)"; else echo "$1: down"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) apt_install kcat prometheus; redis_up; pg_up; kafka_libs >/dev/null; kafka_up; s3_up; status ;;
  down) down ;;
  stop) stop_one "${2:-}" ;;
  status) status ;;
  env) echo "export TIDEMARK_KAFKA='$TIDEMARK_KAFKA' TIDEMARK_REDIS='$TIDEMARK_REDIS' TIDEMARK_PG='$TIDEMARK_PG' TIDEMARK_S3='$TIDEMARK_S3' KAFKA_LIBS='$STATE/kafka-$KAFKA_VERSION/libs'" ;;
  *) echo "usage: $0 up|down|status|env|stop kafka|stop postgres" >&2; exit 2 ;;
esac
