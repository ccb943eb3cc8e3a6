#!/usr/bin/env bash
# Stops the local test cluster that .ci/slurm/setup.sh started.
#
#   bash .ci/slurm/teardown.sh           # scancel all jobs, stop the daemons (state/logs kept)
#   bash .ci/slurm/teardown.sh --purge   # ... and delete $HARNESS_SLURM_STATE
#
# Daemons are stopped by the PIDs in $HARNESS_SLURM_STATE/pids (SIGTERM, then SIGKILL after a
# grace period), and only when /proc/<pid>/comm still names the expected program.
# Safe to run when nothing is running.
set -uo pipefail
export PATH="/usr/local/sbin:/usr/sbin:/sbin:$PATH"

STATE=${HARNESS_SLURM_STATE:-/tmp/harness-slurm}
MARKER="# written by harness .ci/slurm/setup.sh"
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1
export SLURM_CONF="$STATE/etc/slurm.conf"

log() { echo "[slurm-teardown] $*"; }

# PID of daemon NAME if it is alive and is still that program
daemon_pid() {
  local f="$STATE/pids/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

stop() {  # stop GRACE_SECONDS NAME:COMM...: SIGTERM all, wait, SIGKILL the stragglers
  local grace=$1 item name comm pid i alive
  shift
  local -A pids=()
  for item in "$@"; do
    name=${item%%:*}; comm=${item#*:}
    if pid=$(daemon_pid "$name" "$comm"); then
      kill -TERM "$pid" 2>/dev/null && pids[$name]=$pid
    fi
  done
  for ((i = 0; i < grace * 5; i++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for name in "${!pids[@]}"; do
    pid=${pids[$name]}
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    log "stopped $name (pid $pid)"
  done
  for item in "$@"; do rm -f "$STATE/pids/${item%%:*}.pid"; done
}

if [ -d "$STATE/pids" ]; then
  # 1. cancel every job while the controller is still there, and wait for them to end
  if daemon_pid slurmctld slurmctld >/dev/null && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "scancel $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null
      for ((i = 0; i < 100; i++)); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
      left=$(squeue -h -o '%A %T' 2>/dev/null | tr '\n' ' ')
      [ -n "$left" ] && log "jobs still listed after 20s: $left"
    fi
  fi
  # 2. the SLURM daemons, then what they depend on
  stop 15 slurmd:slurmd slurmctld:slurmctld slurmdbd:slurmdbd
  stop 30 mariadb:mariadbd munged:munged
fi

if [ "$PURGE" = 1 ] && [ -d "$STATE" ]; then
  rm -rf "$STATE"
  if [ -f /etc/slurm/slurm.conf ] && grep -qF "$MARKER" /etc/slurm/slurm.conf; then
    rm -f /etc/slurm/slurm.conf
  fi
  log "removed $STATE"
fi
exit 0
