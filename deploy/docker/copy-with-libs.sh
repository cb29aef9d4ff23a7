# Sourced by stage.sh and stage-etcd.sh (not run on its own).
#
# copy_with_libs SRC DEST: copies the program SRC to $rootfs/DEST, then each
# library ldd resolves for it at the same absolute path (symbolic links
# followed: the image holds plain files). A static program has none: ldd says
# "not a dynamic executable", which is fine. A library ldd cannot find stops
# the staging ($me names the script in the message).
copy_with_libs() {
    cp -L "$1" "$rootfs$2"
    chmod 0755 "$rootfs$2"
    { ldd "$1" 2>/dev/null || true; } | while read -r a b c _; do
        # "libc.so.6 => /lib/.../libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        if [ "$b" = "=>" ] && [ "$c" = "not" ]; then
            echo "$me: $1 needs $a, which ldd cannot find" >&2
            exit 1
        fi
        case "$a" in /*) lib="$a" ;; *) lib="$c" ;; esac
        case "$lib" in /*) ;; *) continue ;; esac
        mkdir -p "$rootfs$(dirname "$lib")"
        [ -e "$rootfs$lib" ] || cp -L "$lib" "$rootfs$lib"
    done
}
