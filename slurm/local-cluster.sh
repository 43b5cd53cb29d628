#!/bin/bash
# A one-node SLURM cluster on this machine, for trying the batch scripts without a cluster and for
# tests/faults/test_slurm_real.py. Everything lives in DIR (config, munge key and socket, state,
# spool, logs); nothing goes to /etc. Needs Debian's packages and root (slurmd starts jobs):
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#
#   slurm/local-cluster.sh start DIR   # prints: export SLURM_CONF=DIR/slurm.conf
#   export SLURM_CONF=DIR/slurm.conf
#   BIGTRAIN_PROCS_PER_NODE=1 ACCELERATE_USE_CPU=1 sbatch --nodes=1 --gpus-per-node=0 \
#       --cpus-per-task=1 --time=30 slurm/train.sbatch CONFIG
#   slurm/local-cluster.sh stop DIR    # cancels the jobs left, stops the daemons
#
# The node is called localhost (slurmd -N localhost: the machine's host name does not matter) and
# has no GPU gres (SLURM 22.05 marks a node INVAL whose GPUs have no device files): submit with
# --gpus-per-node=0. The machine's CPUs are the node's; a job asks for as few as it needs.
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none work in a container without cgroups.
# No accounting database (no sacct): DIR/log/jobcomp.txt has a line for each end of a job
# (JobState=COMPLETED/FAILED/REQUEUED..., ExitCode), the job-level part of what sacct shows.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ "$#" -eq 2 ] || usage
ACTION="$1"
DIR="$(realpath -m "$2")"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local missing=()
    for command in munged mungekey slurmctld slurmd sbatch; do
        command -v "$command" > /dev/null || missing+=("$command")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "local-cluster: no ${missing[*]}:" \
             "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2
        exit 3
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "local-cluster: slurmd must run as root to start jobs" >&2
        exit 3
    fi
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 755 "$DIR" "$DIR/munge"  # munged refuses a socket directory others can write; clients must reach it
    mungekey --create --keyfile="$DIR/munge/munge.key"
    munged --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    : > "$DIR/plugstack.conf"  # no SPANK plugins (not /etc/slurm's)
    cat > "$CONF" <<EOF
ClusterName=bigtrain-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -f "$CONF"
    slurmd -f "$CONF" -N localhost
    local state=""
    for _ in $(seq 60); do
        state="$(sinfo -h -n localhost -o %T 2>/dev/null || true)"
        [ "$state" = "idle" ] && break
        sleep 0.5
    done
    if [ "$state" != "idle" ]; then
        echo "local-cluster: the node is '${state:-unreachable}', not idle, after 30 s; logs in $DIR/log" >&2
        stop
        exit 1
    fi
    echo "export SLURM_CONF=$CONF"
}

stop_daemon() {  # pid file: TERM, then KILL after 10 s
    local pid
    [ -f "$1" ] && pid="$(cat "$1")" && [ -n "$pid" ] || return 0
    kill "$pid" 2> /dev/null || return 0
    for _ in $(seq 20); do
        kill -0 "$pid" 2> /dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2> /dev/null || true
}

stop() {
    if [ -f "$CONF" ] && [ -f "$DIR/slurmctld.pid" ]; then
        local jobs
        jobs="$(squeue -h -o %i 2> /dev/null || true)"
        if [ -n "$jobs" ]; then  # the jobs' processes go with them, not with the daemons
            # shellcheck disable=SC2086
            scancel $jobs 2> /dev/null || true
            for _ in $(seq 60); do
                [ -z "$(squeue -h -t running,completing -o %i 2> /dev/null || true)" ] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemon "$DIR/slurmd.pid"
    stop_daemon "$DIR/slurmctld.pid"
    stop_daemon "$DIR/munge/munged.pid"
}

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
