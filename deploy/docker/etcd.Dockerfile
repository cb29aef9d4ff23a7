# The etcd image of the highly available compose cluster (deploy/compose/ha/):
# Debian's etcd binary, /bin/sh, curl (health checks) and the few tools the
# cluster's one-shot `keys` service uses to hand out certificates, with the
# shared libraries they need. No base image is pulled: stage the context first.
#
#   deploy/docker/stage-etcd.sh /tmp/etcd-image
#   docker build -t baton-etcd:dev /tmp/etcd-image
#
# It runs as the unprivileged user `etcd` (uid 10002); /var/lib/etcd, owned by
# it, is meant to be a volume (docker copies that ownership into a new volume).
FROM scratch
COPY rootfs/ /
COPY --chown=10002:10002 etcd-home/ /var/lib/etcd/
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/var/lib/etcd
USER 10002:10002
WORKDIR /var/lib/etcd
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
CMD ["--help"]
