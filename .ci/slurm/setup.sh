#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, with accounting (slurmdbd + MariaDB), for tests.
#
#   bash .ci/slurm/setup.sh        # install (Debian packages), configure, start; idempotent
#   bash .ci/slurm/teardown.sh     # scancel everything, stop the daemons by PID
#
# Needs root and Debian 12 (slurm-wlm 22.05). No systemd: every daemon is started here in
# the background and its PID written to $HARNESS_SLURM_STATE/pids/<name>.pid.
# Everything the cluster writes (configs, munge key and socket, MariaDB data, spool, logs)
# lives under $HARNESS_SLURM_STATE (default /tmp/harness-slurm), never under /var/lib.
# The client config is also installed as /etc/slurm/slurm.conf (when that file is absent or
# was written by this script), so plain sinfo/sbatch/sacct and submitit work without
# SLURM_CONF; $HARNESS_SLURM_STATE/env exports SLURM_CONF for the other case.
#
# Why each setting (measured on a 2-core container):
# - proctrack/linuxproc + task/none: no cgroups/systemd in containers.
# - select/cons_tres + CR_Core_Memory + DefMemPerCPU: without them one job takes the whole
#   node and jobs run one at a time.
# - accounting_storage/slurmdbd: submitit learns a job's end state from sacct; without
#   accounting a job that dies without writing its result hangs job.result() forever.
#
# Environment knobs (defaults in brackets):
#   HARNESS_SLURM_STATE [/tmp/harness-slurm]  HARNESS_SLURM_CLUSTER [harness]
#   HARNESS_SLURM_CPUS [2]  HARNESS_SLURM_MEM_MB [min(20000, 90% of RAM)]
#   HARNESS_SLURM_PORT_BASE [6817: slurmctld, +1 slurmd, +2 slurmdbd]
#   HARNESS_SLURM_MYSQL_PORT [3316]  HARNESS_SLURM_SMOKE [1: run one job through sacct at the end]
set -euo pipefail
export PATH="/usr/local/sbin:/usr/sbin:/sbin:$PATH"

STATE=${HARNESS_SLURM_STATE:-/tmp/harness-slurm}
CLUSTER=${HARNESS_SLURM_CLUSTER:-harness}
NPROC=$(nproc)
CPUS=${HARNESS_SLURM_CPUS:-$(( NPROC < 2 ? NPROC : 2 ))}
PORT_BASE=${HARNESS_SLURM_PORT_BASE:-6817}
MYSQL_PORT=${HARNESS_SLURM_MYSQL_PORT:-3316}
SMOKE=${HARNESS_SLURM_SMOKE:-1}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
MARKER="# written by harness .ci/slurm/setup.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

T0=$EPOCHREALTIME
elapsed() { awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN { printf "%.1f", a - b }'; }
log() { printf '[slurm-setup %5ss] %s\n' "$(elapsed)" "$*"; }
die() { log "ERROR: $*"; for f in "$STATE"/log/*.log "$STATE"/mysql/*.log "$STATE"/munge/*.log; do [ -f "$f" ] && { echo "--- tail $f"; tail -n 20 "$f"; }; done; exit 1; }
# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s until COMMAND succeeds;
# gives up early when the daemon whose PID is in $WATCH has died
WATCH=
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
    if [ -n "$WATCH" ] && ! kill -0 "$WATCH" 2>/dev/null; then die "daemon (pid $WATCH) died while waiting for $what"; fi
    sleep 0.2
  done
}
# pid_alive NAME COMM: the PID in pids/NAME.pid runs COMM and is not a zombie
pid_alive() {
  local pid
  [ -s "$STATE/pids/$1.pid" ] || return 1
  pid=$(cat "$STATE/pids/$1.pid")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- packages
need_install=0
for bin in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mungekey mariadbd mariadb-install-db mariadb-admin; do
  command -v "$bin" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
  log "apt-get install ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep the packages' init scripts from starting system-wide daemons (no systemd here;
  # this script starts its own): the usual container policy-rc.d, only for this install
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  ok=0
  for try in 1 2 3; do
    if apt-get -o DPkg::Lock::Timeout=120 update -qq \
      && apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; then
      ok=1; break
    fi
    log "apt-get failed (try $try of 3)"; sleep $((try * 5))
  done
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || die "could not install ${PACKAGES[*]}"
fi
log "packages: $(dpkg-query -W -f='${Package}=${Version} ' "${PACKAGES[@]}")"

export SLURM_CONF="$STATE/etc/slurm.conf"

# ---------------------------------------------------------------- already running?
healthy() {
  for d in mariadb:mariadbd munged:munged slurmdbd:slurmdbd slurmctld:slurmctld slurmd:slurmd; do
    pid_alive "${d%%:*}" "${d#*:}" || return 1
  done
  scontrol ping >/dev/null 2>&1 || return 1
  sinfo -h -n localhost -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)' || return 1
  sacct -n -X -S now-1minute >/dev/null 2>&1 || return 1
}
if [ -d "$STATE/pids" ] && healthy; then
  log "already running (state $STATE): nothing to do"
  sinfo
  exit 0
fi
if [ -d "$STATE" ]; then
  log "stale state in $STATE: tearing it down first"
  bash "$HERE/teardown.sh" --purge || true
fi

# ---------------------------------------------------------------- layout
MEM_TOTAL_MB=$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 ))
DEFAULT_MEM=$(( MEM_TOTAL_MB * 9 / 10 ))
[ "$DEFAULT_MEM" -gt 20000 ] && DEFAULT_MEM=20000
MEM_MB=${HARNESS_SLURM_MEM_MB:-$DEFAULT_MEM}
CTLD_PORT=$PORT_BASE; SLURMD_PORT=$((PORT_BASE + 1)); DBD_PORT=$((PORT_BASE + 2))
DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
MUNGE_SOCKET="$STATE/munge/munge.socket.2"

mkdir -p "$STATE"/{etc,pids,run,log,slurmctld,slurmd,munge,mysql}
chmod 755 "$STATE" "$STATE"/{etc,pids,run,log}
chown slurm:slurm "$STATE"/{run,log,slurmctld}
chown munge:munge "$STATE/munge"; chmod 755 "$STATE/munge"   # clients must reach the socket
chown mysql:mysql "$STATE/mysql"; chmod 750 "$STATE/mysql"

cat > "$STATE/etc/slurm.conf" <<EOF
$MARKER (state dir $STATE)
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# containers: no cgroups, no systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# share the node between jobs: per-core, per-MB allocation
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# real accounting, so sacct (and submitit) see every job's end state
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# with auth/munge this names the munge socket used towards slurmdbd (AuthInfo is not used there)
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# quick turnaround for tests
KillWait=5
MinJobAge=60
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
ReturnToService=2
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$STATE/etc/slurm.conf"

cat > "$STATE/etc/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chown slurm:slurm "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"

echo "export SLURM_CONF=$STATE/etc/slurm.conf" > "$STATE/env"
# the default client config path, so sbatch/sacct/submitit need no SLURM_CONF
if [ ! -e /etc/slurm/slurm.conf ] || grep -qF "$MARKER" /etc/slurm/slurm.conf; then
  mkdir -p /etc/slurm
  cp "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf
else
  log "WARNING: /etc/slurm/slurm.conf is not ours; left alone: export SLURM_CONF=$SLURM_CONF (or source $STATE/env)"
fi
log "configs written to $STATE/etc"

# ---------------------------------------------------------------- MariaDB
MYSQL_SOCK="$STATE/mysql/mysqld.sock"
mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql/data" \
  --auth-root-authentication-method=socket --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1 \
  || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql/data" \
  --socket="$MYSQL_SOCK" --pid-file="$STATE/mysql/mariadb.pid" \
  --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-log-bin \
  --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
  --log-error="$STATE/mysql/mariadb.log" < /dev/null > /dev/null 2>&1 &
echo $! > "$STATE/pids/mariadb.pid"
WATCH=$(cat "$STATE/pids/mariadb.pid")
wait_for 60 "MariaDB" mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -uroot ping
mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
log "MariaDB up (pid $(cat "$STATE/pids/mariadb.pid"), 127.0.0.1:$MYSQL_PORT)"

# ---------------------------------------------------------------- munge
WATCH=
mungekey --create --bits=1024 --keyfile="$STATE/munge/munge.key" --force
chown munge:munge "$STATE/munge/munge.key"; chmod 600 "$STATE/munge/munge.key"
runuser -u munge -- munged --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
  --seed-file="$STATE/munge/munged.seed" \
  || die "munged failed (see $STATE/munge/munged.log)"
wait_for 20 "munged pid file" test -s "$STATE/munge/munged.pid"
cp "$STATE/munge/munged.pid" "$STATE/pids/munged.pid"
WATCH=$(cat "$STATE/pids/munged.pid")
munge_ok() { munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET"; }
wait_for 20 "munge round trip" munge_ok
log "munged up (pid $(cat "$STATE/pids/munged.pid"), socket $MUNGE_SOCKET)"

# ---------------------------------------------------------------- slurmdbd
WATCH=
slurmdbd || die "slurmdbd failed"
wait_for 20 "slurmdbd pid file" test -s "$STATE/run/slurmdbd.pid"
cp "$STATE/run/slurmdbd.pid" "$STATE/pids/slurmdbd.pid"
WATCH=$(cat "$STATE/pids/slurmdbd.pid")
wait_for 60 "slurmdbd to answer" sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$CLUSTER" Cluster="$CLUSTER" Description=tests Organization=harness >/dev/null
for u in $(printf '%s\n' root "${SUDO_USER:-root}" | sort -u); do
  sacctmgr -i add user "$u" Account="$CLUSTER" Cluster="$CLUSTER" >/dev/null || true
done
log "slurmdbd up (pid $(cat "$STATE/pids/slurmdbd.pid")); cluster/account/user registered"

# ---------------------------------------------------------------- slurmctld, slurmd
WATCH=
slurmctld -i || die "slurmctld failed"
wait_for 20 "slurmctld pid file" test -s "$STATE/run/slurmctld.pid"
cp "$STATE/run/slurmctld.pid" "$STATE/pids/slurmctld.pid"
WATCH=$(cat "$STATE/pids/slurmctld.pid")
wait_for 60 "slurmctld to answer" scontrol ping
WATCH=
slurmd -N localhost || die "slurmd failed"
wait_for 20 "slurmd pid file" test -s "$STATE/run/slurmd.pid"
cp "$STATE/run/slurmd.pid" "$STATE/pids/slurmd.pid"
WATCH=$(cat "$STATE/pids/slurmd.pid")
node_idle() { sinfo -h -n localhost -o %T | grep -Eq '^idle'; }
wait_for 60 "node localhost idle" node_idle
wait_for 30 "sacct" sacct -n -X -S now-1minute
log "slurmctld (pid $(cat "$STATE/pids/slurmctld.pid")) and slurmd (pid $(cat "$STATE/pids/slurmd.pid")) up"

# ---------------------------------------------------------------- smoke: one job, seen by sacct
WATCH=
if [ "$SMOKE" = 1 ]; then
  jid=$(sbatch --parsable -o /dev/null -J harness-smoke --wrap true) || die "sbatch failed"
  completed() { sacct -n -X -P -j "$jid" -o State | grep -q '^COMPLETED'; }
  wait_for 60 "smoke job $jid COMPLETED in sacct" completed
  log "smoke job $jid COMPLETED (sacct)"
fi

sinfo
log "ready: SLURM_CONF=$SLURM_CONF (also /etc/slurm/slurm.conf), logs in $STATE/log"
