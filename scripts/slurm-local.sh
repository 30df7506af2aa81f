#!/bin/sh
# A one-node Slurm cluster on localhost for tests and trials, all of it in one
# folder: munged, slurmctld and slurmd with their own configuration, ports,
# state and logs, nothing of the system's /etc/slurm or /run/munge used.
#
#   scripts/slurm-local.sh start DIR   start it (DIR is created); prints the
#                                      line to export: SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-local.sh stop DIR    stop its daemons and every job on it
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). The node
# is "localhost" with this machine's CPUs and no GPU; partitions "debug" (the
# default) and "urgent", whose jobs preempt (requeue) debug's after GraceTime.
# Every wait is bounded; start exits 1 with the daemon's log when one fails.
set -eu
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
KILL_WAIT=${SLURM_LOCAL_KILL_WAIT:-30}     # seconds between SIGTERM and SIGKILL
GRACE=${SLURM_LOCAL_GRACE:-30}             # preemption grace time

pid_of() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid" 2>/dev/null || true; }

stop_all() {
    # jobs first, while the daemons can still end them
    if [ -f "$dir/slurm.conf" ] && [ -n "$(pid_of slurmctld)" ]; then
        SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --full -u "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    for d in slurmd slurmctld munged; do
        p=$(pid_of $d)
        [ -n "$p" ] && kill "$p" 2>/dev/null || continue
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
        kill -9 "$p" 2>/dev/null || true
        rm -f "$dir/$d.pid"
    done
    # slurmstepd of a job that outlived its slurmd
    for f in /proc/[0-9]*; do
        p=${f#/proc/}
        case "$( { tr '\0' ' ' <"$f/cmdline"; } 2>/dev/null)" in
        slurmstepd:*) grep -q "$dir" "$f/environ" 2>/dev/null && kill -9 "$p" 2>/dev/null || true ;;
        esac
    done
}

fail() {
    echo "slurm-local: $1" >&2
    for l in "$dir"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -15 "$l" >&2; }; done
    stop_all
    exit 1
}

write_conf() { # port
    user=$(id -un)
    # at least 2 (SlurmdParameters=config_overrides lets a node claim more than it has);
    # not nproc, which answers OMP_NUM_THREADS
    cpus=$(getconf _NPROCESSORS_ONLN); [ "$cpus" -ge 2 ] || cpus=2
    cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$1
SlurmdPort=$(($1 + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
TmpFS=$dir/tmp
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=$KILL_WAIT
MinJobAge=3600
MessageTimeout=20
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=$GRACE
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

start() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null ||
        { echo "slurm-local: slurmctld, slurmd or munged missing (apt-get install slurm-wlm munge)" >&2; exit 1; }
    mkdir -p "$dir/state" "$dir/spool" "$dir/tmp"
    chmod 700 "$dir"
    dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$dir/munge.key"
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" ||
        fail "munged did not start"
    i=0
    until [ -S "$dir/munge.sock" ]; do
        i=$((i + 1)); [ $i -lt 50 ] || fail "munged made no socket in 10 s"; sleep 0.2
    done
    # a free pair of ports: another cluster of this kind may be running beside this one
    tries=0
    while :; do
        port=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 ))
        write_conf $port
        rm -f "$dir/slurmctld.pid"
        SLURM_CONF="$dir/slurm.conf" slurmctld -c -f "$dir/slurm.conf" 2>>"$dir/slurmctld.log" ||
            fail "slurmctld did not start"
        i=0
        while ! SLURM_CONF="$dir/slurm.conf" timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"; do
            i=$((i + 1)); [ $i -lt 40 ] || break; sleep 0.25
        done
        [ $i -lt 40 ] && break
        tries=$((tries + 1)); [ $tries -lt 3 ] || fail "slurmctld did not answer in 10 s (3 tries)"
        p=$(pid_of slurmctld); [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    done
    SLURM_CONF="$dir/slurm.conf" slurmd -N localhost -f "$dir/slurm.conf" 2>>"$dir/slurmd.log" ||
        fail "slurmd did not start"
    i=0
    until SLURM_CONF="$dir/slurm.conf" timeout 5 sinfo -h -n localhost -o %t 2>/dev/null | grep -qx idle; do
        i=$((i + 1)); [ $i -lt 360 ] || fail "the node did not become idle in 90 s"; sleep 0.25
    done
    echo "SLURM_CONF=$dir/slurm.conf"
}

case "$cmd" in
start) start ;;
stop) stop_all ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
