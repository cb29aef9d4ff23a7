#!/bin/sh
# Makes the TLS material of etcd in the highly available compose cluster
# (deploy/compose/ha/docker-compose.yml) with openssl: etcd's own CA (not
# Baton's), one certificate per member and one client certificate per
# coordinator. Nothing here is ever committed: give a directory outside the
# repository, and pass it to compose as BATON_HA_CERTS.
#
#   deploy/compose/ha/make-certs.sh [--members N] [--coordinators N] OUT_DIR
#   BATON_HA_CERTS=OUT_DIR docker-compose -f deploy/compose/ha/docker-compose.yml up -d
#
# OUT_DIR gets (keys mode 0600, the directory 0700):
#   ca.pem, ca.key                  etcd's CA (10 years; ca.key is needed only to
#                                   issue more certificates: keep it offline)
#   etcdN.pem, etcdN.key            member N (1..N): serverAuth and clientAuth
#                                   (etcd 3.4 dials its own gateway with it), SANs
#                                   etcdN (its compose host name), localhost,
#                                   127.0.0.1; used for clients and peers alike
#   coordN.pem, coordN.key          coordinator N's client certificate to etcd
#                                   (clientAuth, CN coordN)
# Existing files are kept: run it again to add members or coordinators.
set -eu

members=3
coordinators=2
while [ $# -gt 0 ]; do
    case "$1" in
        --members) members="$2"; shift 2 ;;
        --coordinators) coordinators="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "make-certs.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "usage: make-certs.sh [--members N] [--coordinators N] OUT_DIR" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is needed (Debian: openssl)" >&2; exit 2; }
out="$1"
umask 077
mkdir -p "$out"
chmod 0700 "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# key FILE: a P-256 key, mode 0600.
key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 0600 "$1"
}

if [ ! -e "$out/ca.pem" ]; then
    key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 \
        -subj "/O=Baton HA cluster/CN=etcd CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.pem"
    chmod 0644 "$out/ca.pem"
fi

# issue NAME CN EKU [SAN]: NAME.key and NAME.pem signed by the CA (825 days).
issue() {
    name="$1"; cn="$2"; eku="$3"; san="${4:-}"
    [ -e "$out/$name.pem" ] && return 0
    key "$out/$name.key"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } > "$tmp/$name.ext"
    openssl req -new -key "$out/$name.key" -subj "/O=Baton HA cluster/CN=$cn" -out "$tmp/$name.csr"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days 825 -sha256 \
        -extfile "$tmp/$name.ext" -out "$out/$name.pem" 2>/dev/null
    chmod 0644 "$out/$name.pem"
}

i=1
while [ "$i" -le "$members" ]; do
    issue "etcd$i" "etcd$i" "serverAuth,clientAuth" "DNS:etcd$i,DNS:localhost,IP:127.0.0.1"
    i=$((i + 1))
done
i=1
while [ "$i" -le "$coordinators" ]; do
    issue "coord$i" "coord$i" "clientAuth"
    i=$((i + 1))
done
echo "etcd TLS material in $out ($members members, $coordinators coordinators)"
