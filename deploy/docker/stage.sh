#!/bin/sh
# Stages a Docker build context for the Baton image, from the binary of this
# machine: no base image is pulled (the Dockerfile is `FROM scratch`).
#
#   deploy/docker/stage.sh [--bin PATH] [--with PROGRAM]... OUT_DIR
#   docker build -t baton:dev OUT_DIR
#
# OUT_DIR gets the Dockerfile and rootfs/: the `baton` binary, /bin/sh (children
# of `script` tasks and `exec` of `sh -c` need a shell), every shared library that
# `ldd` names for them (with the dynamic loader), /etc/passwd and /etc/group with
# the user `baton` (uid and gid 10001), a minimal /etc/nsswitch.conf, /tmp, and the
# data directories /var/lib/baton/{coordinator,agent,enroll,keys} owned by that
# user (`enroll` receives one-time enrolment tokens in the compose cluster,
# `keys` the CA and sealing key the coordinators of the HA cluster share).
#
# --bin PATH      the binary to ship (default: target/release/baton, else target/debug/baton)
# --with PROGRAM  also ship this program and its libraries (repeatable), e.g.
#                 --with /usr/bin/sleep for child packages that run it
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin=""
extra=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --with) extra="$extra $2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "stage.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "usage: stage.sh [--bin PATH] [--with PROGRAM]... OUT_DIR" >&2
    exit 2
fi
out="$1"
if [ -z "$bin" ]; then
    target="${CARGO_TARGET_DIR:-$here/../../target}"
    for b in "$target/release/baton" "$target/debug/baton"; do
        if [ -x "$b" ]; then bin="$b"; break; fi
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "stage.sh: no baton binary (build one with cargo build -p baton-cli, or pass --bin PATH)" >&2
    exit 2
fi
command -v ldd >/dev/null || { echo "stage.sh: ldd is needed (Debian: libc-bin)" >&2; exit 2; }

rootfs="$out/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" \
    "$out/baton-home/coordinator" "$out/baton-home/agent" "$out/baton-home/enroll" \
    "$out/baton-home/keys"
chmod 1777 "$rootfs/tmp"

me=stage.sh
. "$here/copy-with-libs.sh"

copy_with_libs "$bin" /usr/local/bin/baton
copy_with_libs "$(readlink -f /bin/sh)" /bin/sh
for p in $extra; do
    path=$(command -v "$p") || { echo "stage.sh: no program $p" >&2; exit 2; }
    copy_with_libs "$path" "/bin/$(basename "$path")"
done

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
baton:x:10001:10001:baton:/var/lib/baton:/bin/sh
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
baton:x:10001:
GROUP
cat > "$rootfs/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
cp "$here/Dockerfile" "$out/Dockerfile"
echo "staged $(du -sh "$rootfs" | cut -f1) in $out (binary: $bin)"
