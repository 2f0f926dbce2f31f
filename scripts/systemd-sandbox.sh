#!/usr/bin/env bash
# A real systemd (PID 1 of its own namespaces) on a throwaway copy of this machine's root
# filesystem, for the system test of the units (tests/systemd/system_test.sh) and for trying
# them by hand. Needs root.
#
#   scripts/systemd-sandbox.sh start DIR       # boot a sandbox in the new directory DIR
#   scripts/systemd-sandbox.sh exec DIR CMD... # run CMD inside it (all its namespaces, its root)
#   scripts/systemd-sandbox.sh stop DIR        # SIGKILL its PID 1, unmount, remove DIR
#
# What keeps the host safe: systemd runs in its own PID, mount, network, IPC, UTS and cgroup
# namespaces, with an overlayfs of / as its root (pivot_root) whose upper and work directories
# sit on a tmpfs,
# with fresh tmpfs on /run and /tmp and its own /proc, /sys and /dev. Nothing it writes reaches
# the host's root filesystem (its tmpfiles service cleans the sandbox's /tmp, not the host's),
# and its network namespace has only a loopback interface.
#
# start options (environment):
#   WARP_SANDBOX_BIND="HOSTDIR:PATH ..."  bind HOSTDIR at PATH inside (e.g. a PostgreSQL socket
#                                         directory; unix sockets cross network namespaces)
#   WARP_SANDBOX_TIMEOUT=60               seconds to wait for the boot to settle
set -euo pipefail

die() {
  echo "systemd-sandbox: $*" >&2
  exit 1
}

# The units that would start on the host and mean nothing in a sandbox (or fight the host for
# its resources, like the distribution's PostgreSQL cluster on port 5432).
readonly masked_units=(
  postgresql.service e2scrub_reap.service remote-fs.target getty.target
  systemd-timesyncd.service systemd-logind.service console-getty.service
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
  systemd-networkd-wait-online.service
)

start() {
  local dir=$1
  [[ $(id -u) -eq 0 ]] || die "needs root (namespaces, mounts, chroot)"
  [[ -x /lib/systemd/systemd ]] || die "no /lib/systemd/systemd (install systemd)"
  mkdir "$dir" || die "$dir exists already"
  dir=$(cd "$dir" && pwd)
  mkdir "$dir/layers" "$dir/root"
  touch "$dir/.warp-systemd-sandbox"

  # Runs as PID 1's parent in the new namespaces: private mounts first, then the overlay.
  local setup
  setup=$(
    cat <<'EOF'
set -euo pipefail
dir=$1
mount --make-rprivate /
mount -t tmpfs -o mode=0755 warp-sandbox "$dir/layers"
mkdir "$dir/layers/upper" "$dir/layers/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/layers/upper,workdir=$dir/layers/work" "$dir/root"
r=$dir/root
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"
mount -t tmpfs -o mode=0755 tmpfs "$r/sys/fs/cgroup"
mkdir "$r/sys/fs/cgroup/unified" "$r/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$r/sys/fs/cgroup/systemd"
mount -t tmpfs -o mode=0755 tmpfs "$r/dev"
for node in null zero full random urandom tty; do
  touch "$r/dev/$node"
  mount --bind "/dev/$node" "$r/dev/$node"
done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
for spec in ${WARP_SANDBOX_BIND:-}; do
  mkdir -p "$r/${spec#*:}"
  mount --bind "${spec%%:*}" "$r/${spec#*:}"
done
: >"$r/etc/machine-id"
echo warp-sandbox >"$r/etc/hostname"
hostname warp-sandbox
for unit in $MASKED; do
  ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
# pivot_root rather than chroot: inside a chroot the kernel refuses new user namespaces, which
# PrivateUsers=yes of the units needs. The old root is then detached from this namespace only.
cd "$r"
mkdir -p .warp-old-root
pivot_root . .warp-old-root
cd /
umount -l /.warp-old-root
rmdir /.warp-old-root
# What systemd does at boot outside containers: shared propagation, which credentials and
# other per-service mounts rely on. These are this namespace's mounts only (made private above).
mount --make-rshared /
exec /usr/bin/env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=multi-user.target --log-target=journal --log-level=info
EOF
  )
  MASKED="${masked_units[*]}" setsid unshare --pid --fork --mount --net --uts --ipc --cgroup \
    --propagation private -- bash -c "$setup" sandbox "$dir" \
    </dev/null >"$dir/boot.log" 2>&1 &
  local unshare_pid=$!
  echo "$unshare_pid" >"$dir/unshare.pid"

  # PID 1 of the sandbox is unshare's child, seen from here with a host PID.
  local pid="" deadline=$((SECONDS + ${WARP_SANDBOX_TIMEOUT:-60}))
  while ((SECONDS < deadline)); do
    pid=$(pgrep -P "$unshare_pid" -x systemd || true)
    [[ -n $pid ]] && break
    kill -0 "$unshare_pid" 2>/dev/null || die "the sandbox did not boot: $(tail -5 "$dir/boot.log")"
    sleep 0.1
  done
  [[ -n $pid ]] || die "no systemd after ${WARP_SANDBOX_TIMEOUT:-60}s: $(tail -5 "$dir/boot.log")"
  echo "$pid" >"$dir/pid"

  # Wait until the manager has finished starting up (running, or degraded by a unit that the
  # copy of the host cannot run).
  local state=""
  while ((SECONDS < deadline)); do
    state=$(in_sandbox "$dir" systemctl is-system-running 2>/dev/null || true)
    case $state in
      running | degraded) break ;;
    esac
    sleep 0.2
  done
  case $state in
    running | degraded) echo "systemd-sandbox: $dir: systemd PID $pid, $state" >&2 ;;
    *) die "systemd in $dir did not settle (state '${state:-unknown}')" ;;
  esac
}

in_sandbox() {
  local dir=$1
  shift
  local pid
  pid=$(cat "$dir/pid") || die "$dir is not a running sandbox"
  nsenter -t "$pid" -m -p -u -i -n -C -r -w "$@"
}

stop() {
  local dir=$1
  [[ -f $dir/.warp-systemd-sandbox ]] || die "$dir is not a sandbox directory of this script"
  local pid unshare_pid
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  unshare_pid=$(cat "$dir/unshare.pid" 2>/dev/null || true)
  # Killing PID 1 ends every process of the PID namespace; the mount namespace goes with them.
  [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
  if [[ -n $unshare_pid ]]; then
    for _ in $(seq 50); do
      kill -0 "$unshare_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$unshare_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

case ${1:-} in
  start) start "${2:?DIR}" ;;
  exec)
    dir=${2:?DIR}
    shift 2
    in_sandbox "$dir" "$@"
    ;;
  stop) stop "${2:?DIR}" ;;
  *) die "usage: $0 start|exec|stop DIR [CMD...]" ;;
esac
