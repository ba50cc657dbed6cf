#!/bin/bash
# One testbed host: real systemd as PID 1 in new PID, mount, UTS and cgroup
# namespaces, with private /opt, /etc/systemd/system, /run, /tmp, /var/lib and
# /var/log, and /etc and /usr/local overlaid. Run as root:  launch.sh RUN_DIR HOST
# The host's files are prepared under RUN_DIR/hosts/HOST by the test harness;
# RUN_DIR must not be under a directory this script mounts over.
set -euo pipefail
run_dir=$1 host=$2
host_dir=$run_dir/hosts/$host

if [ "${3:-}" != --inside ]; then
  # Give the host its own cgroup2 subtree, so its systemd manages only that.
  cgroup=/sys/fs/cgroup/unified/hostenv-$(basename "$run_dir")-$host
  mkdir -p "$cgroup"
  echo $$ > "$cgroup/cgroup.procs"
  exec unshare -p -m -u -C --fork --mount-proc --propagation private "$0" "$run_dir" "$host" --inside
fi

hostname "$host"
umount -R /sys/fs/cgroup
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
# The host's own /etc and /usr/local (where hostenv-host and its configuration
# are installed): the machine's files below, the host's changes in an overlay.
for dir in etc usr/local; do
  mkdir -p "$host_dir/overlay/$dir/upper" "$host_dir/overlay/$dir/work"
  mount -t overlay overlay \
    -o "lowerdir=/$dir,upperdir=$host_dir/overlay/$dir/upper,workdir=$host_dir/overlay/$dir/work" "/$dir"
done
for dir in /opt /etc/systemd/system /run /tmp /var/lib /var/log; do
  mount -t tmpfs -o mode=755 tmpfs "$dir"
done
chmod 1777 /tmp
# The host's own accounts and sudo rules; the machine's files are untouched.
for file in passwd group shadow sudoers hostname hosts; do
  mount --bind "$host_dir/etc/$file" "/etc/$file"
done
# This machine's root .bashrc runs `pyenv init`, which slows and races SSH logins.
mount --bind "$run_dir/bashrc" /root/.bashrc
cp -r "$host_dir/units/." /etc/systemd/system/
sh "$host_dir/setup.sh"
exec env -i container=hostenv-testbed SYSTEMD_UNIT_PATH="/etc/systemd/system:$run_dir/stub" \
  /usr/lib/systemd/systemd --unit=testbed.target --log-target=console
