#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests that submit through Slurm (tests/test_slurm.py).
# Installs slurm-wlm and munge from Debian's packages when missing (needs root), writes a minimal slurm.conf for
# this host (no cgroups: proctrack/linuxproc, task/none; select/cons_tres by CPU; one partition with every CPU and
# the memory `slurmd -C` reports; short timeouts; no accounting database: sslcli reads job states from squeue and
# the files its jobs write), starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
# Idempotent: a cluster already up (sinfo answers, node idle) is left as it is.
# Usage: .ci/slurm-up.sh          (as root)
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool

node_idle() {
    [ "$(sinfo -h -N -o '%t' 2>/dev/null | head -n1)" = "idle" ]
}

if command -v sinfo >/dev/null && node_idle; then
    echo "slurm-up: the cluster is already up: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: needs root (installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the key the package made (or a new one), then the daemon as its own user.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi

host="$(hostname -s)"
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
node_line="$(slurmd -C | head -n1)"
mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd"
cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by sslcli's .ci/slurm-up.sh: a one-node test cluster.
ClusterName=sslcli-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=30
Waittime=0
MessageTimeout=30
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 60); do
    node_idle && break
    # A node left DOWN by an earlier start comes back once slurmd registers.
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
if ! node_idle; then
    echo "slurm-up: the node did not become idle: $(sinfo -h -N -o '%N %t %E' 2>&1)" >&2
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
fi
echo "slurm-up: $(sinfo -h -N -o '%N %t %c CPUs %m MB, partition %P')"
