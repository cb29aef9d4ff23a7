#!/bin/sh
# Stages a Docker build context for the etcd image of the highly available
# compose cluster (deploy/compose/ha/), from this machine's programs: no base
# image is pulled (the Dockerfile, etcd.Dockerfile, is `FROM scratch`).
#
#   deploy/docker/stage-etcd.sh [--etcd PATH] OUT_DIR
#   docker build -t baton-etcd:dev OUT_DIR
#
# OUT_DIR gets the Dockerfile and rootfs/: etcd (Debian's etcd-server package:
# /usr/bin/etcd), /bin/sh, curl (the members' health checks and the tests'
# probes), cp, chmod, chown, mkdir, head and cat (the one-shot `keys` service
# that copies certificates into volumes and makes the sealing key), every shared
# library `ldd` names for them (with the dynamic loader), /etc/passwd and
# /etc/group with the user `etcd` (uid and gid 10002) and the user `baton`
# (10001, the owner of what `keys` hands to coordinators), a minimal
# /etc/nsswitch.conf, /tmp, and /var/lib/etcd owned by `etcd`.
#
# --etcd PATH  the etcd binary to ship (default: etcd on PATH, else /usr/bin/etcd)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
etcd=""
while [ $# -gt 0 ]; do
    case "$1" in
        --etcd) etcd="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "stage-etcd.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "usage: stage-etcd.sh [--etcd PATH] OUT_DIR" >&2
    exit 2
fi
out="$1"
if [ -z "$etcd" ]; then
    etcd=$(command -v etcd || echo /usr/bin/etcd)
fi
if [ ! -x "$etcd" ]; then
    echo "stage-etcd.sh: no etcd binary at $etcd (Debian: apt-get install etcd-server, or pass --etcd PATH)" >&2
    exit 2
fi
command -v ldd >/dev/null || { echo "stage-etcd.sh: ldd is needed (Debian: libc-bin)" >&2; exit 2; }

rootfs="$out/rootfs"
rm -rf "$rootfs" "$out/etcd-home"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$out/etcd-home"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$out/etcd-home"

me=stage-etcd.sh
. "$here/copy-with-libs.sh"

copy_with_libs "$etcd" /usr/local/bin/etcd
copy_with_libs "$(readlink -f /bin/sh)" /bin/sh
for p in curl cp chmod chown mkdir head cat; do
    path=$(command -v "$p") || { echo "stage-etcd.sh: no program $p on this machine" >&2; exit 2; }
    copy_with_libs "$path" "/bin/$p"
done

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
baton:x:10001:10001:baton:/var/lib/baton:/bin/sh
etcd:x:10002:10002:etcd:/var/lib/etcd:/bin/sh
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
baton:x:10001:
etcd:x:10002:
GROUP
cat > "$rootfs/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
cp "$here/etcd.Dockerfile" "$out/Dockerfile"
echo "staged $(du -sh "$rootfs" | cut -f1) in $out (etcd: $etcd)"
