#!/bin/sh
# The Slurm batch files against a real Slurm: a one-node cluster on localhost
# (scripts/slurm-local.sh: its own munged, slurmctld and slurmd in a temporary
# folder, stopped when the test ends), the tiny model at SP 2 on the CPU engine.
# For each batch file a run is stopped by several of the ways Slurm stops a job,
# each time resumed by the next job, and finally trained to the end: every stop
# leaves a checkpoint of the step it reached and the state it should (CANCELLED,
# SPECIAL_EXIT, requeued), nothing of the run is left running, and the whole run's
# losses and end checkpoint equal a plain mpirun run's bitwise. The time limit's
# warning and preemption requeue the job, which resumes by itself. Skips only
# where slurm-wlm and munge are not installed or the daemons cannot start.
. "${top_srcdir:-.}/tests/common.sh"
command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 ||
    skip_test "no Slurm here (apt-get install slurm-wlm munge; .ci/run installs them)"
have_mpirun || skip_test "no mpirun (MPIRUN=$MPIRUN)"
env --block-signal=TERM true 2>/dev/null || skip_test "env has no --block-signal (coreutils 9 or later needed)"
SRC=$(cd "$top_srcdir" && pwd)
CL="$TMP/cluster"
SLURM_LOCAL_GRACE=5 "$top_srcdir/scripts/slurm-local.sh" start "$CL" >"$TMP/cluster.log" 2>&1 ||
    { reason=$(grep -m1 '^slurm-local:' "$TMP/cluster.log"); cat "$TMP/cluster.log"; skip_test "the Slurm daemons did not start: $reason"; }
trap '"$top_srcdir/scripts/slurm-local.sh" stop "$CL" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM HUP   # the daemons go with the test, also when it is killed (a timeout)
export SLURM_CONF="$CL/slurm.conf"
export AUTOSP="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
SHARD=$(make_shard)
CFG="$(cd "$top_srcdir" && pwd)/configs/tiny.yaml"
PY="python3 $SRC/tests"
set +e   # every check reports itself; a failed one must not end the test before the clean-up
N=120
ARGS="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
      --set parallel.sequence_parallel_size=2 --set io.log_every=1000"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
lines() { [ -f "$1/metrics.jsonl" ] && wc -l <"$1/metrics.jsonl" || echo 0; }

# submit FILE RUNDIR STEPS [sbatch options]: the job id
submit() {
    f=$1; r=$2; n=$3; shift 3
    (cd "$TMP" && sbatch --parsable -N1 --ntasks-per-node=2 --gpus-per-node=0 --time=30 -o "$TMP/$(basename "$r").out" \
        "$@" "$SRC/scripts/slurm/$f.sbatch" "$CFG" $ARGS --set train.steps="$n" --set io.run_dir="$r")
}
# wait_running JOB RUNDIR: running and two more steps trained (60 s at most)
wait_running() {
    i=0; n0=$(lines "$2")
    while [ $i -lt 600 ]; do
        [ "$(field "$1" JobState)" = RUNNING ] && [ "$(lines "$2")" -ge $((n0 + 2)) ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
# wait_state JOB STATE...: until the job is in one of the states (90 s at most)
wait_state() {
    j=$1; shift; i=0
    while [ $i -lt 900 ]; do
        s=$(field "$j" JobState)
        for want in "$@"; do [ "$s" = "$want" ] && return 0; done
        sleep 0.1; i=$((i + 1))
    done
    echo "job $j: state $s after 90 s, expected $*"; return 1
}
# left_behind RUNDIR: processes of that run still there
left_behind() { pgrep -f "io.run_dir=$1" || true; }
# stopped NAME RUNDIR: the run's last line says it stopped, with a checkpoint of that step (K)
stopped() {
    last=$(tail -1 "$2/metrics.jsonl")
    k=$(echo "$last" | sed -n 's/^{"step": \([0-9]*\), "stopped": "SIG[A-Z0-9]*", "resumable": true, "exit_status": 75}$/\1/p')
    if [ -z "$k" ]; then fail "$1: no stop line in metrics.jsonl (last: $last)"; tail -12 "$2.out"; return 1; fi
    ck="$2/checkpoints/$(printf 'step-%08d' "$k")"
    [ -f "$ck/manifest" ] || { fail "$1: no checkpoint $ck"; return 1; }
    p=$(left_behind "$2"); [ -z "$p" ] || { fail "$1: processes left behind: $(ps -o pid,cmd -p $p | tail -n +2)"; return 1; }
    K=$k
}
resumed_from() { grep -c "resumed from .*$(printf 'step-%08d' "$2")" "$1.out" || true; }

# stop_and_check FILE RUNDIR NAME STATE HOW...: submit, stop it HOW, check state and checkpoint
stop_case() {
    f=$1; r=$2; name=$3; want=$4; shift 4
    j=$(submit "$f" "$r" $N) || { fail "$name: sbatch refused"; return; }
    wait_running "$j" "$r" || { fail "$name: job $j did not start training"; scontrol show job "$j" | grep JobState; tail -5 "$r.out"; tail -3 "$CL/slurmctld.log"; scancel "$j"; return; }
    "$@" "$j"
    wait_state "$j" "$want" COMPLETED FAILED || { scancel "$j"; return; }
    s=$(field "$j" JobState)
    [ "$s" = "$want" ] || { fail "$name: job state $s, expected $want"; tail -5 "$r.out"; return; }
    sleep 1   # the node's clean-up after the job's end
    stopped "$f: $name" "$r" || return
    ok "$f: $name: stopped at step $K with its checkpoint, state $s, nothing left running"
    case "$want" in SPECIAL_EXIT) scancel "$j"; wait_state "$j" CANCELLED >/dev/null ;; esac
}
cancel() { scancel "$1"; }
batch_term() { scancel --batch --signal=TERM "$1"; }
full_int() { scancel --full --signal=INT "$1"; }
batch_usr2() { scancel --batch --signal=USR2 "$1"; }
steps_term() { scancel --signal=TERM "$1"; }

chain() { # FILE HOW:STATE...
    f=$1; shift
    r="$TMP/$f"
    prev=""
    for c in "$@"; do
        how=${c%%:*}; want=${c#*:}
        stop_case "$f" "$r" "$how" "$want" "$how"
        k=$(sed -n 's/^{"step": \([0-9]*\), "stopped".*/\1/p' "$r/metrics.jsonl" | tail -1)
        if [ -n "$prev" ] && [ "$k" != "$prev" ]; then
            [ "$(resumed_from "$r" "$prev")" -ge 1 ] && ok "$f: $how: the job resumed from step $prev" ||
                fail "$f: $how: the job did not resume from step $prev"
        fi
        prev=$k
    done
    # to the end: COMPLETED 0:0, the same losses and end state as mpirun
    j=$(submit "$f" "$r" $N)
    wait_state "$j" COMPLETED FAILED CANCELLED || { scancel "$j"; return; }
    s="$(field "$j" JobState) $(field "$j" ExitCode)"
    if [ "$s" = "COMPLETED 0:0" ] && [ "$(resumed_from "$r" "$prev")" -ge 1 ]; then
        ok "$f: resumed from step $prev and trained to step $N: COMPLETED 0:0"
    else fail "$f: last job: $s"; tail -5 "$r.out"; fi
    if python3 - "$TMP/ref/metrics.jsonl" "$r/metrics.jsonl" $N <<'PY' &&
import json, sys
def losses(p):
    out = {}
    for l in open(p):
        row = json.loads(l)
        if "loss" in row:
            assert row["step"] not in out, f"{p}: step {row['step']} twice"
            out[row["step"]] = l.split('"loss": ')[1].split(",")[0]
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
n = int(sys.argv[3])
assert sorted(a) == list(range(1, n + 1)) and sorted(b) == sorted(a), f"steps: {len(a)} and {len(b)}"
bad = [s for s in a if a[s] != b[s]]
assert not bad, f"steps {bad[:5]} differ: {a[bad[0]]} {b[bad[0]]}"
print(f"{n} losses equal")
PY
       $PY/ckpt_compare.py "$TMP/ref/checkpoints/$(printf 'step-%08d' $N)" "$r/checkpoints/$(printf 'step-%08d' $N)" 0 \
           >"$TMP/$f.cmp" 2>&1; then
        ok "$f: every step's loss and the end checkpoint equal a plain mpirun run's bitwise"
    else fail "$f: the stopped and resumed run differs from mpirun's"; cat "$TMP/$f.cmp"; fi
}

# requeued FILE NAME HOW: a stop that requeues the job, which then resumes by itself
requeued() {
    f=$1; name=$2; how=$3
    r="$TMP/$f-$name"
    j=$(submit "$f" "$r" 100000 --time=20) || { fail "$name: sbatch refused"; return; }
    wait_running "$j" "$r" || { fail "$name: job $j did not start"; scancel "$j"; return; }
    $how "$j"
    wait_state "$j" PENDING REQUEUED || { fail "$f: $name: the job was not requeued"; tail -5 "$r.out"; scancel "$j"; return; }
    sleep 1
    stopped "$f: $name" "$r" || { scancel "$j"; return; }
    k=$K
    restarts=$(field "$j" Restarts)
    wait_running "$j" "$r" || { fail "$f: $name: the requeued job did not run again"; scancel "$j"; return; }
    if [ "$(resumed_from "$r" "$k")" -ge 1 ]; then
        ok "$f: $name: stopped at step $k with its checkpoint, requeued (Restarts=$restarts), resumed from it"
    else fail "$f: $name: the requeued job did not resume from step $k"; tail -5 "$r.out"; fi
    scancel "$j"; wait_state "$j" CANCELLED >/dev/null
    p=$(left_behind "$r"); [ -z "$p" ] || fail "$f: $name: processes left behind"
}
# the time limit: shrunk to 10 minutes from the start, inside the warning (B:USR2@600)
time_limit() { scontrol update JobId="$1" TimeLimit="$(( ($(date +%s) - $(date -d "$(field "$1" StartTime)" +%s)) / 60 + 10 ))"; }
# preemption: a job of the higher partition wants the node (GraceTime 5 s)
preempt() { sbatch --parsable -p urgent -n2 -o /dev/null --wrap "sleep 1" >"$TMP/urgent.id"; }

mpi 2 "$BIN" "$CFG" $ARGS --set train.device=cpu --set train.steps=$N --set io.run_dir="$TMP/ref" >"$TMP/ref.log" 2>&1 ||
    { cat "$TMP/ref.log"; fail "mpirun reference run failed"; exit 1; }
chain one-node cancel:CANCELLED batch_term:SPECIAL_EXIT full_int:SPECIAL_EXIT batch_usr2:SPECIAL_EXIT
chain multi-node cancel:CANCELLED steps_term:SPECIAL_EXIT batch_usr2:SPECIAL_EXIT
requeued one-node time-limit time_limit
requeued multi-node preemption preempt
[ $fails = 0 ] || { echo "$fails Slurm check(s) failed"; exit 1; }
echo "all Slurm checks passed"
