#!/bin/sh
# ceph-single.sh start|stop|env DIR [PORT]
#
# A throwaway single-node Ceph cluster on 127.0.0.1 for the rbd tests
# (tests/cli/test_net_rbd.py, make check-rbd, bench): one mon, one OSD on
# memstore (objects in the OSD's memory: no disk, no loop device, starts
# in seconds), no mgr (librbd's I/O needs none), cephx off, and a pool
# "rbd" of size 1.  Everything lives in DIR: DIR/ceph.conf is the
# configuration clients use (CEPH_CONF=DIR/ceph.conf or conf=...), the
# daemons' pids are DIR/mon.pid and DIR/osd.pid, their logs DIR/*.log.
# "stop" ends those two pids only.  PORT is the mon's (default 6789).
set -eu

cmd=${1:?usage: ceph-single.sh start|stop DIR [PORT]}
dir=${2:?usage: ceph-single.sh start|stop DIR [PORT]}
port=${3:-6789}

stop_pid() {
    f=$dir/$1.pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
            sleep 0.1; i=$((i + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

case $cmd in
stop)
    stop_pid osd
    stop_pid mon
    exit 0 ;;
start) ;;
*) echo "usage: ceph-single.sh start|stop DIR [PORT]" >&2; exit 2 ;;
esac

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
fsid=$(cat /proc/sys/kernel/random/uuid)
conf=$dir/ceph.conf
cat > "$conf" <<CONF
[global]
fsid = $fsid
mon_host = v1:127.0.0.1:$port
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = $dir
admin_socket = $dir/\$name.asok
log_file = $dir/\$name.log
pid_file = $dir/\$name.pid.ceph
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_crush_chooseleaf_type = 0
ms_bind_msgr2 = false
[mon]
mon_data = $dir/mon
mon_warn_on_pool_no_redundancy = false
[osd]
osd_data = $dir/osd
osd_objectstore = memstore
# The script puts the OSD in the CRUSH map itself; the OSD doing it at
# start races its first monmap here ("wrong fsid") and fails.
osd_crush_update_on_start = false
osd_class_update_on_start = false
memstore_device_bytes = 4294967296
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
CONF

export CEPH_CONF=$conf
ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. \
    --cap mon 'allow *' >/dev/null
monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" \
    "$dir/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" \
    --mon-data "$dir/mon"
ceph-mon -i a --mon-data "$dir/mon"
cp "$dir/mon.a.pid.ceph" "$dir/mon.pid" 2>/dev/null || \
    pgrep -n -f "ceph-mon -i a --mon-data $dir/mon" > "$dir/mon.pid"

c() { timeout 30 ceph --connect-timeout 20 "$@"; }
id=$(c osd create)
mkdir -p "$dir/osd"
ceph-osd -i "$id" --mkfs --osd-data "$dir/osd" --osd-uuid \
    "$(cat /proc/sys/kernel/random/uuid)" 2>>"$dir/osd-mkfs.log"
c osd crush add "osd.$id" 1.0 host=localhost root=default >/dev/null 2>&1 || \
    { c osd crush add-bucket localhost host && \
      c osd crush move localhost root=default && \
      c osd crush add "osd.$id" 1.0 host=localhost; }
ceph-osd -i "$id" --osd-data "$dir/osd"
i=0
while [ ! -f "$dir/osd.$id.pid.ceph" ] && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
done
cp "$dir/osd.$id.pid.ceph" "$dir/osd.pid"
c osd pool create rbd 8 8 >/dev/null 2>&1
c osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
c osd pool application enable rbd rbd >/dev/null
# Wait until the OSD is up and the pool's placement groups serve I/O.
i=0
until timeout 10 rados -p rbd put probe /dev/null 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 60 ] || { echo "ceph-single: the OSD did not come up" >&2; exit 1; }
    sleep 0.5
done
rados -p rbd rm probe
echo "$conf"
