#!/usr/bin/env bash
# Start (or make sure is running) a real one-node SLURM cluster on this machine, for the
# tests that submit jobs with sbatch/srun. Debian 12, run as root; systemd is not assumed
# (the daemons are started directly). Idempotent: when munged, slurmctld and slurmd are
# up and the node answers, it changes nothing and exits 0; daemons that died are restarted.
#
# Nothing is written in the repository tree: configuration goes to /etc/slurm, state to
# /var/spool/slurm*, logs to /var/log/slurm, pid files to /run.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

LOG_DIR=/var/log/slurm
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
WAIT_S="${SLURM_START_TIMEOUT:-60}"

say() { echo "start_slurm: $*"; }
fail() {
    {
        echo "start_slurm: ERROR: $*"
        for f in /var/log/munge/munged.log "$CTLD_LOG" "$SLURMD_LOG"; do
            [ -f "$f" ] && { echo "--- tail of $f"; tail -n 25 "$f"; }
        done
    } >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "must run as root"

# --- 1. packages ---------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting daemons themselves (no config yet).
    POLICY=/usr/sbin/policy-rc.d
    ADDED_POLICY=0
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && ADDED_POLICY=1
    fi
    rc=0
    { apt-get update -qq \
        && apt-get install -y -qq -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold slurmctld slurmd slurm-client munge >/dev/null
    } || rc=$?
    if [ "$ADDED_POLICY" -eq 1 ]; then rm -f "$POLICY"; fi
    [ "$rc" -eq 0 ] || fail "apt-get install slurmctld slurmd slurm-client munge failed (rc $rc)"
fi

# --- 2. configuration ----------------------------------------------------------------
HOST="$(hostname -s)"
NCPU="$(nproc)"
# RealMemory must not exceed what slurmd measures, or the node is drained: stay well below
# the total (computed from MemTotal, not from free memory, so the file is the same on every
# run and an unchanged cluster is not reconfigured).
MEM_TOTAL_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
REAL_MEM_MB=$(( MEM_TOTAL_MB * 85 / 100 ))

mkdir -p /etc/slurm "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
chmod 755 /var/spool/slurmctld /var/spool/slurmd

# Two FAKE GPU device nodes (character devices with the numbers of /dev/null): this machine
# has no GPU, but gres.conf must name device files so that jobs asking for GPUs
# (--gpus-per-node=N, --gres=gpu:N) can be scheduled on a CPU-only machine. Nothing can
# compute on them; jobs only see CUDA_VISIBLE_DEVICES set by SLURM.
for i in 0 1; do
    dev="/dev/zenith_fake_gpu$i"
    if [ ! -c "$dev" ]; then
        rm -f "$dev"
        mknod -m 666 "$dev" c 1 3 || fail "cannot create fake GPU device $dev (mknod)"
    fi
done

NEW_CONF="$(mktemp /tmp/slurm.conf.XXXXXX)"
NEW_GRES="$(mktemp /tmp/gres.conf.XXXXXX)"
trap 'rm -f "$NEW_CONF" "$NEW_GRES"' EXIT
cat >"$NEW_CONF" <<EOF
# Written by .ci/start_slurm.sh: a one-node CI cluster.
ClusterName=zenithci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (job credential lifetime, s) also sets how long a requeued job waits
# before it may start again: BeginTime = requeue time + cred_expire + 1 (default 120,
# so ~2 min). 5 is the smallest value SLURM 22.05 accepts (below it falls back to 120);
# only read at daemon start. Measured here: a requeued job runs again ~7 s later.
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
Waittime=0
SchedulerType=sched/backfill
# Run the full scheduling pass often, so pending jobs whose begin time has passed
# (e.g. requeued jobs) start within seconds rather than after the default 60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$NCPU RealMemory=$REAL_MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
cat >"$NEW_GRES" <<EOF
# Written by .ci/start_slurm.sh. FAKE devices (see the script): lets GPU requests schedule.
NodeName=$HOST Name=gpu File=/dev/zenith_fake_gpu[0-1]
EOF

CONF_CHANGED=0
for pair in "$NEW_CONF:/etc/slurm/slurm.conf" "$NEW_GRES:/etc/slurm/gres.conf"; do
    src="${pair%%:*}"; dst="${pair#*:}"
    if ! cmp -s "$src" "$dst"; then
        install -m 644 "$src" "$dst"
        CONF_CHANGED=1
    fi
done

# --- 3. daemons ----------------------------------------------------------------------
# alive PIDFILE NAME: the pid file names a live process whose command is NAME. A zombie
# does not count (where PID 1 does not reap, a killed daemon stays one with its name).
alive() {
    local pid st
    [ -s "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# stop PIDFILE NAME: end the daemon named by the pid file (ours), wait until it is gone.
stop() {
    if alive "$1" "$2"; then
        kill "$(cat "$1")" 2>/dev/null || true
        for _ in $(seq 1 100); do alive "$1" "$2" || break; sleep 0.1; done
        if alive "$1" "$2"; then kill -9 "$(cat "$1")" 2>/dev/null || true; sleep 0.5; fi
    fi
    rm -f "$1"
}

# munge: key (the Debian package normally creates one), runtime dir, daemon as user munge.
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
start_munged() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
}
munge_works() {
    local _
    for _ in $(seq 1 "$1"); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}
tries=5
if ! alive "$MUNGE_PID" munged; then
    start_munged
    tries=50
fi
if ! munge_works "$tries"; then
    # A live munged without its socket (e.g. reinstalling the munge package removes
    # /run/munge): restart it.
    stop "$MUNGE_PID" munged
    start_munged
    munge_works 50 || fail "munge credentials do not work"
fi

if [ "$CONF_CHANGED" -eq 1 ]; then
    # Restart rather than 'scontrol reconfigure': some settings (AuthInfo, Gres) are only
    # read at daemon start. Saved jobs survive the controller restart.
    stop "$SLURMD_PID" slurmd
    stop "$CTLD_PID" slurmctld
fi
if ! alive "$CTLD_PID" slurmctld; then
    say "starting slurmctld"
    rm -f "$CTLD_PID"
    # No -c: keep saved state (jobs survive a controller restart); a first start has none.
    slurmctld || fail "slurmctld did not start"
    # It forks before reading everything: a bad config shows up as an exit a moment later.
    ctld_ok=0
    for _ in $(seq 1 $(( WAIT_S * 2 ))); do
        alive "$CTLD_PID" slurmctld || { sleep 0.5; alive "$CTLD_PID" slurmctld; } \
            || fail "slurmctld exited after start"
        if scontrol ping 2>/dev/null | grep -q 'is UP'; then ctld_ok=1; break; fi
        sleep 0.5
    done
    [ "$ctld_ok" -eq 1 ] || fail "slurmctld does not answer 'scontrol ping'"
fi
if ! alive "$SLURMD_PID" slurmd; then
    say "starting slurmd"
    rm -f "$SLURMD_PID"
    slurmd || fail "slurmd did not start"
fi

# --- 4. wait until the node takes jobs ------------------------------------------------
start=$SECONDS
state=""
while :; do
    alive "$CTLD_PID" slurmctld || fail "slurmctld died"
    alive "$SLURMD_PID" slurmd || fail "slurmd died"
    state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*)
            # A node left down by an earlier slurmd death: ReturnToService=2 should bring it
            # back on registration; if not, resume it explicitly.
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if (( SECONDS - start >= WAIT_S )); then
        fail "node $HOST not ready after ${WAIT_S}s (state '${state:-none}'; $(scontrol show node "$HOST" 2>/dev/null | grep -o 'Reason=.*' || true))"
    fi
    sleep 1
done

# A job step end to end (munge, slurmctld, slurmd, slurmstepd). Only on an idle node: on a
# busy one running jobs already prove that, and srun could queue behind them.
if [ "$state" = idle ]; then
    left=$(( WAIT_S - (SECONDS - start) ))
    if (( left < 15 )); then left=15; fi
    out="$(timeout "$left" srun -N1 -n1 hostname 2>&1)" \
        || fail "srun -N1 -n1 hostname failed: ${out:-timed out after ${left}s}"
fi
say "SLURM cluster up: node $HOST ($NCPU CPUs, 2 fake GPUs) $state in partition debug after $((SECONDS - start))s"
