#!/bin/sh
# dom0's init in nasmig's Xen test bed: bring up the Xen toolstack, run the
# job the test put on the second disk (/dev/vdb: run.sh), print its exit
# status where the test reads it (the serial console), and power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname xenbed
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback xenfs; do
	modprobe "$m" 2>/dev/null
done
mount -t xenfs xenfs /proc/xen
echo "nasmig-xenbed: dom0 up, starting the toolstack"
/etc/init.d/xen start >/tmp/xen-start.log 2>&1 || cat /tmp/xen-start.log
mkdir -p /job
rc=255
if mount /dev/vdb /job 2>/dev/null && [ -x /job/run.sh ]; then
	echo "nasmig-xenbed: running the job"
	(cd /job && ./run.sh) </dev/null 2>&1
	rc=$?
	sync
	umount /job
else
	echo "nasmig-xenbed: no job on /dev/vdb"
fi
echo "nasmig-xenbed: job exit $rc"
busybox poweroff -f
