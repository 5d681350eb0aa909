#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian 12, root, no systemd): munge, MariaDB + slurmdbd (so that
# sacct works), slurmctld and slurmd on localhost, one partition "debug" holding all cores.
# Idempotent: a second call restarts the daemons.
#   bash results/slurm/setup.sh
set -euo pipefail
DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm slurmdbd munge mariadb-server > /dev/null

# munge: the shared key that authenticates slurmctld, slurmd and the commands to each other
[ -s /etc/munge/munge.key ] || mungekey --create
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pkill -x munged || true
runuser -u munge -- /usr/sbin/munged
munge -n | unmunge > /dev/null   # the key works

# Accounting: slurmdbd keeps every job's record in MariaDB, for sacct.
/etc/init.d/mariadb start > /dev/null
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost'
            IDENTIFIED BY 'slurmdbpass'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
host=$(hostname -s)
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurmdbd
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf
pkill -x slurmdbd || true
sleep 1
slurmdbd
for _ in $(seq 30); do sacctmgr -n list cluster > /dev/null 2>&1 && break; sleep 1; done

# slurm.conf: this host is controller and only compute node; no cgroups (a container); memory is not a
# consumable resource (CR_Core), so the array's tasks share the node's memory.
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=localcluster
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MaxArraySize=1001
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

sacctmgr -i add cluster localcluster > /dev/null 2>&1 || true   # once; "already exists" afterwards
pkill -x slurmctld || true
pkill -x slurmd || true
sleep 1
slurmctld
slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo
sacctmgr -n list cluster format=cluster,controlhost
