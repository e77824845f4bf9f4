#!/bin/sh
# Run by BentoML's generated Dockerfile as root (bentofile.yaml `docker.setup_script`), after the
# `bentoml` user exists and before it is switched to.
set -eu

# One directory for everything the service writes and must keep: the prediction log (SQLite by
# default), its spool, drift snapshots. Owned by the non-root `bentoml` user so the service can
# write there, and the one path to mount as a volume. A named volume mounted here inherits this
# ownership; a bind-mounted host directory must be writable by uid 1034 (BentoML's `bentoml`).
install -d -o bentoml -g bentoml -m 0755 /data

# `bentoml serve` creates these under BENTOML_HOME (/home/bentoml/) at every start, even when it
# serves the bento in /home/bentoml/bento and uses none of them. Made here, a read-only root
# filesystem (Kubernetes' readOnlyRootFilesystem, `docker run --read-only`) needs only /data and
# a writable /tmp; otherwise the start fails with "Read-only file system: '/home/bentoml/bentos'".
install -d -o bentoml -g bentoml -m 0755 \
    /home/bentoml/bentos /home/bentoml/models /home/bentoml/envs /home/bentoml/tmp
