#!/usr/bin/env bash
# A local Slurm cluster (slurmctld + N slurmd + slurmdbd/MariaDB + munge) on one Debian host, for CI and dev.
# usage: workflow/slurm/cluster.sh up|down|status
# Idempotent: `up` installs only missing Debian packages, starts only dead daemons, and restarts the Slurm
# daemons only when the generated slurm.conf changed. `down` stops every daemon by its pidfile.
# Needs root and no systemd/cgroups (README, "Running the paper on a Slurm cluster").
# env: SLURM_CI_STATE  state/log dir (default /tmp/slurm-ci)
#      SLURM_CI_DBD    1: slurmdbd + MariaDB so sacct works (submitit needs it to see killed jobs); 0: none
#      SLURM_CI_NODES  N>1: N slurmd daemons on this host named n1..nN (multi-node allocations)
#      SLURM_CI_GPUS   G>0: fake GRES gpu:G per node (placeholder char devices: scheduling only, no CUDA)
set -euo pipefail
STATE=${SLURM_CI_STATE:-/tmp/slurm-ci}
DBD=${SLURM_CI_DBD:-1}
NODES=${SLURM_CI_NODES:-1}
GPUS=${SLURM_CI_GPUS:-0}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
log() { echo "[slurm-cluster] $*" >&2; }
die() { log "$*"; exit 1; }
pidalive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

install_pkgs() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld slurmd slurm-client munge)
  if [ "$DBD" = 1 ]; then
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    log "installing ${need[*]}"
    apt-get update -qq
    # --no-install-recommends: the slurm-wlm metapackage would pull ~20 -dev and plugin packages
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged  # daemonizes; pid in /run/munge/munged.pid
    wait_for 50 munge -n || die "munged did not start"
  fi
}

start_db() {
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! mariadb-admin ping >/dev/null 2>&1; then
    runuser -u mysql -- mariadbd --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --skip-networking=0 --bind-address=127.0.0.1 \
      --innodb-buffer-pool-size=64M --log-error="$STATE/log/mariadb.log" >/dev/null 2>&1 &
    wait_for 150 mariadb-admin ping || { tail "$STATE/log/mariadb.log" >&2; die "mariadb did not start"; }
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >"$DBDCONF" <<DBDEOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
DBDEOF
  chmod 600 "$DBDCONF"
  if ! pidalive "$STATE/slurmdbd.pid"; then
    slurmdbd
    wait_for 100 sacctmgr -n list cluster || { tail "$STATE/log/slurmdbd.log" >&2; die "slurmdbd not answering"; }
  fi
  sacctmgr -n list cluster format=cluster | grep -qw ci || sacctmgr -i add cluster ci >/dev/null
}

# Writes slurm.conf (and gres.conf); returns 0 when the config changed, 1 when it is unchanged.
write_conf() {
  local host cpus mem acct nodes gres="" i
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024))
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
  mkdir -p /etc/slurm
  if [ "$GPUS" -gt 0 ]; then
    gres="Gres=gpu:$GPUS"
    # gres/gpu needs File= entries that are character devices: /dev/null clones under $STATE
    for i in $(seq 0 $((GPUS - 1))); do [ -c "$STATE/fakegpu$i" ] || mknod "$STATE/fakegpu$i" c 1 3; done
    printf 'AutoDetect=off\nName=gpu File=%s/fakegpu[0-%d]\n' "$STATE" $((GPUS - 1)) >/etc/slurm/gres.conf
  else
    rm -f /etc/slurm/gres.conf
  fi
  if [ "$NODES" -gt 1 ]; then
    nodes="SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdSpoolDir=$STATE/d/%n
SlurmdLogFile=$STATE/log/slurmd-%n.log"
    local per_cpu=$((cpus / NODES > 0 ? cpus / NODES : 1)) per_mem=$((mem / NODES))
    for i in $(seq 1 "$NODES"); do
      nodes+="
NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$per_cpu RealMemory=$per_mem $gres State=UNKNOWN"
    done
    nodes+="
PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
  else
    nodes="SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/d
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP"
  fi
  if [ "$DBD" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  # cred_expire=10: a requeued job restarts after ~10 s instead of 120 s; DefMemPerCPU: else one job takes
  # the node's whole memory and jobs run one at a time; MinJobAge=300 keeps finished jobs visible to squeue.
  cat >"$CONF.new" <<CONFEOF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
$([ "$GPUS" -gt 0 ] && echo GresTypes=gpu)
$nodes
CONFEOF
  if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
    return 1
  fi
  mv "$CONF.new" "$CONF"
  return 0
}

stop_pidfile() {
  local f=$1 p
  if pidalive "$f"; then
    p=$(cat "$f")
    kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
}

down_slurm() {
  if pidalive "$STATE/slurmctld.pid"; then scancel --user=root 2>/dev/null || true; fi
  local f
  for f in "$STATE"/slurmd.pid "$STATE"/slurmd-n*.pid; do
    if [ -e "$f" ]; then stop_pidfile "$f"; fi
  done
  stop_pidfile "$STATE/slurmctld.pid"
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (starts munge, MariaDB and the Slurm daemons)"
  install_pkgs
  mkdir -p "$STATE"/{ctld,d,log}
  start_munge
  local changed=0
  if write_conf; then changed=1; fi  # before slurmdbd: sacctmgr reads slurm.conf
  if [ "$DBD" = 1 ]; then start_db; fi
  if [ "$changed" = 1 ] && pidalive "$STATE/slurmctld.pid"; then
    log "slurm.conf changed: restarting the Slurm daemons"
    down_slurm
  fi
  # a node set that changed leaves slurmd pidfiles of the other layout alive
  if [ "$NODES" -gt 1 ]; then stop_pidfile "$STATE/slurmd.pid"; else
    for f in "$STATE"/slurmd-n*.pid; do if [ -e "$f" ]; then stop_pidfile "$f"; fi; done
  fi
  pidalive "$STATE/slurmctld.pid" || slurmctld -i
  wait_for 100 scontrol ping || { tail "$STATE/log/slurmctld.log" >&2; die "slurmctld did not start"; }
  if [ "$NODES" -gt 1 ]; then
    for i in $(seq 1 "$NODES"); do pidalive "$STATE/slurmd-n$i.pid" || slurmd -N "n$i"; done
  else
    pidalive "$STATE/slurmd.pid" || slurmd
  fi
  wait_for 150 bash -c "[ \$(sinfo -h -N -o %T | grep -cE '^(idle|mix|alloc)') -ge $NODES ]" ||
    { sinfo -R >&2; die "nodes not idle"; }
  log "up: $NODES node(s), $GPUS fake GPU(s) per node, accounting $([ "$DBD" = 1 ] && echo slurmdbd || echo none)"
}

down() {
  down_slurm
  stop_pidfile "$STATE/slurmdbd.pid"
  stop_pidfile /run/mysqld/mysqld.pid
  stop_pidfile /run/munge/munged.pid
  log "down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) scontrol ping && sinfo -N && squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
