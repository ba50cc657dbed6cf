#!/bin/bash
# One testbed host: real systemd as PID 1 in new PID, mount, UTS and cgroup
# namespaces, with private /opt, /etc/systemd/system, /run, /tmp, /var/lib and
# /var/log, and /etc and /usr/local overlaid; or, where RUN_DIR/hosts/HOST/tree
# names a Debian tree, that tree's own programs. Run as root:  launch.sh RUN_DIR HOST
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

if [ -e "$host_dir/tree" ]; then
  # Another Debian generation: its own tree (made by debootstrap, cached, never
  # written) under an overlay whose upper layer lives in this mount namespace
  # only, with the machine's /sys and /dev, a /proc of this PID namespace, and
  # RUN_DIR at the same path; then the tree becomes / and its own systemd runs.
  tree=$(cat "$host_dir/tree")
  root=$host_dir/root
  mkdir -p "$host_dir/layer" "$root"
  mount -t tmpfs -o mode=755 tmpfs "$host_dir/layer"
  mkdir "$host_dir/layer/upper" "$host_dir/layer/work"
  mount -t overlay overlay \
    -o "lowerdir=$tree,upperdir=$host_dir/layer/upper,workdir=$host_dir/layer/work" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  for dir in /opt /run /tmp; do
    mount -t tmpfs -o mode=755 tmpfs "$root$dir"
  done
  chmod 1777 "$root/tmp"
  mkdir -p "$root$run_dir"
  mount --bind "$run_dir" "$root$run_dir"
  for file in passwd group shadow sudoers hostname hosts; do
    cat "$host_dir/etc/$file" > "$root/etc/$file"
  done
  cp -r "$host_dir/units/." "$root/etc/systemd/system/"
  cd "$root"
  mkdir -p .machine
  pivot_root . .machine
  umount -l /.machine
  rmdir /.machine
  cd /
  # A system bus, as a Debian host has: systemctl run by a user other than root asks through it.
  cp /lib/systemd/system/dbus.socket /lib/systemd/system/dbus.service /etc/systemd/system/
  mkdir -p /etc/systemd/system/testbed.target.wants
  ln -s ../dbus.socket /etc/systemd/system/testbed.target.wants/dbus.socket
  sh "$host_dir/setup.sh"
  exec /usr/bin/env -i container=hostenv-testbed SYSTEMD_UNIT_PATH="/etc/systemd/system:$run_dir/stub" \
    /lib/systemd/systemd --unit=testbed.target --log-target=console
fi

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
