#!/usr/bin/env bash
# deploy/image-test.sh — build the real Dockerfile and run the image, without a Docker engine or a registry.
#
#  1. debootstrap a minimal Debian bookworm root with python3 + python3-venv (cached as a tarball, so reruns are fast);
#  2. import it as the local base image localhost/bifrost-base:bookworm;
#  3. `buildah bud --build-arg BASE_IMAGE=localhost/bifrost-base:bookworm` the repository's Dockerfile, unchanged;
#  4. check the image config (numeric non-root user, exec-form entrypoint, port 9877);
#  5. run it with --demo (podman + runc, read-only root, uid/gid 65532, all capabilities dropped, ulimits) — or, if
#     podman cannot run containers here, with `buildah run --isolation chroot` — and poll /metrics until it shows
#     bifrost_batch_exporter_up; also /healthz and /readyz;
#  6. print the image size.
#
# Needs root (debootstrap, rootful containers storage) and: debootstrap buildah podman runc python3 (Debian packages).
# Environment knobs:
#   BIFROST_IMAGE_TEST_CACHE  where the base rootfs tarball is cached (default: <repo>/.tools/image-test)
#   DEBIAN_MIRROR             debootstrap mirror (default: http://deb.debian.org/debian)
#   IMAGE_TEST_TIMEOUT        seconds to wait for /metrics (default: 90)
#   IMAGE_TEST_REBUILD_BASE=1 force a fresh debootstrap
#   IMAGE_TEST_KEEP=0         remove the built image afterwards (default 1: keep it)
#   IMAGE_TEST_RUNNER=buildah skip podman and run the container with `buildah run --isolation chroot`
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${BIFROST_IMAGE_TEST_CACHE:-$repo/.tools/image-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
include=python3,python3-venv,ca-certificates
base_image=localhost/bifrost-base:$suite
image=localhost/bifrost-batch-exporter:image-test
timeout=${IMAGE_TEST_TIMEOUT:-90}
py=${PYTHON:-python3}
started=$SECONDS

log() { printf '[image-test %3ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap and rootful buildah/podman storage)"
for tool in debootstrap buildah runc "$py"; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install debootstrap buildah podman runc python3)"
done
# One run at a time per machine: runs share the containers storage and the image names (a second run re-importing
# the base image would remove the first run's build container).
lockfile=${IMAGE_TEST_LOCK:-/run/lock/bifrost-image-test.lock}
exec 9>"$lockfile"
if ! flock -n 9; then
  log "another image test holds $lockfile; waiting"
  flock 9
fi
have_podman=0
if [[ ${IMAGE_TEST_RUNNER:-podman} == podman ]] && command -v podman >/dev/null; then have_podman=1; fi

# --- 1. base root filesystem (cached) -------------------------------------------------------------------------------
mkdir -p "$cache"
rootfs_tar=$cache/$suite-minbase-${include//,/-}.tar
if [[ ${IMAGE_TEST_REBUILD_BASE:-0} == 1 ]]; then
  rm -f "$rootfs_tar"
fi
if [[ ! -s $rootfs_tar ]]; then
  log "debootstrap $suite (minbase + $include) from $mirror"
  work=$(mktemp -d "$cache/debootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # Extra CAs of this machine (e.g. a TLS-intercepting egress proxy) must be trusted by pip inside the build stage.
  # Only the test base gets them; the Dockerfile stays as it is for real registries.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$work/root/usr/local/share/ca-certificates/"
    chroot "$work/root" update-ca-certificates >/dev/null 2>&1
  fi
  # Slim the base like the official slim images: no apt caches, docs, man pages.
  rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/* \
    "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/usr/share/info/*
  tar --numeric-owner -C "$work/root" -cf "$rootfs_tar.partial" .
  mv "$rootfs_tar.partial" "$rootfs_tar"
  rm -rf "$work"
  trap - EXIT
  buildah rmi -f "$base_image" >/dev/null 2>&1 || true
else
  log "cached base rootfs: $rootfs_tar"
fi

# --- 2. import it as the local base image ---------------------------------------------------------------------------
# The tarball's mtime is recorded as a label, so a rebuilt tarball is re-imported.
stamp=$(stat -c %Y "$rootfs_tar")
if [[ $(buildah inspect --type image --format '{{index .ImageAnnotations "bifrost.test/rootfs-mtime"}}' \
          "$base_image" 2>/dev/null || true) != "$stamp" ]]; then
  log "importing $base_image"
  buildah rmi -f "$base_image" >/dev/null 2>&1 || true
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$rootfs_tar" / >/dev/null
  buildah config --annotation "bifrost.test/rootfs-mtime=$stamp" --cmd /bin/sh "$ctr"
  buildah commit --quiet --rm "$ctr" "$base_image" >/dev/null
else
  log "base image $base_image up to date"
fi

# --- 3. build the real Dockerfile ------------------------------------------------------------------------------------
log "buildah bud $repo/Dockerfile (BASE_IMAGE=$base_image)"
# No --layers: a cache of intermediate images would pile up on CI machines; the old test image is replaced.
# The version is written once, in exporter/__init__.py (it imports nothing, so no install is needed to read it).
version=$(PYTHONPATH=$repo "$py" -c 'import exporter; print(exporter.__version__)')
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
branch=$(git -C "$repo" rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
buildah rmi -f "$image" >/dev/null 2>&1 || true
buildah bud --quiet --layers=false --pull=never --network=host \
  --build-arg "BASE_IMAGE=$base_image" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "BRANCH=$branch" \
  --build-arg "CREATED=$created" \
  -f "$repo/Dockerfile" -t "$image" "$repo" >/dev/null
# --- 4. image config ---------------------------------------------------------------------------------------------------
config=$(buildah inspect --type image "$image" | "$py" -c '
import json, sys
c = json.load(sys.stdin)["OCIv1"]["config"]
labels = c.get("Labels") or {}
oci = [labels.get("org.opencontainers.image." + k, "") for k in ("version", "revision", "created", "source", "documentation")]
print(c.get("User", ""), json.dumps(c.get("Entrypoint")), json.dumps(sorted(c.get("ExposedPorts") or {})), *oci, sep="\t")')
IFS=$'\t' read -r user entrypoint ports l_version l_revision l_created l_source l_docs <<<"$config"
log "image config: user=$user entrypoint=$entrypoint ports=$ports"
log "image labels: version=$l_version revision=$l_revision created=$l_created source=$l_source documentation=$l_docs"
[[ $l_version == "$version" && $l_revision == "$revision" && $l_created == "$created" ]] \
  || die "OCI labels do not carry the build args (version/revision/created)"
[[ $l_source == https://* && $l_docs == https://* ]] || die "OCI source/documentation labels missing"
[[ $user == 65532:65532 ]] || die "image user is '$user', want 65532:65532"
[[ $entrypoint == '["/opt/venv/bin/bifrost-batch-exporter"]' ]] || die "unexpected entrypoint $entrypoint"
[[ $ports == *'"9877/tcp"'* ]] || die "port 9877 not exposed: $ports"
# The state directory the README mounts a named volume on: owned by the runtime user (a new volume takes its owner).
probe=bifrost-image-probe-$$
buildah from --quiet --pull-never --name "$probe" "$image" >/dev/null
state_owner=$(buildah run --isolation chroot "$probe" -- /opt/venv/bin/python -c \
  'import os; s = os.stat("/var/lib/bifrost-batch-exporter"); print(f"{s.st_uid}:{s.st_gid}")' 2>&1) || true
buildah rm "$probe" >/dev/null 2>&1 || true
log "state directory /var/lib/bifrost-batch-exporter owned by $state_owner"
[[ $state_owner == 65532:65532 ]] || die "/var/lib/bifrost-batch-exporter is owned by '$state_owner', want 65532:65532"

# --- 5. run with --demo and scrape ---------------------------------------------------------------------------------
port=$("$py" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
name=bifrost-image-test-$$
logfile=$(mktemp)
bg_pid=
cleanup() {
  if [[ $have_podman == 1 ]]; then podman rm -f -t 2 "$name" >/dev/null 2>&1 || true; fi
  if [[ -n $bg_pid ]]; then kill "$bg_pid" 2>/dev/null || true; wait "$bg_pid" 2>/dev/null || true; fi
  buildah rm "$name" >/dev/null 2>&1 || true
  rm -f "$logfile"
}
trap cleanup EXIT
args=(--demo --listen-address "127.0.0.1:$port")
# podman's default RLIMIT_NOFILE may exceed what this (possibly nested) host allows; fix the limits explicitly.
run_opts=(--runtime runc run --pull=never --read-only --read-only-tmpfs=false --user 65532:65532 --cap-drop=ALL
  --security-opt=no-new-privileges --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
mode=
# The build facts baked into the package (exporter/_build.py) from the build args.
check_version() {
  log "--version:"; sed 's/^/    /' "$1" >&2
  grep -qF "bifrost-batch-exporter, version $version (branch: $branch, revision: $revision)" "$1" \
    && grep -qE "^  build date: +$created\$" "$1" \
    || die "--version does not carry the build args (version/branch/revision/created)"
}
if [[ $have_podman == 1 ]] && podman "${run_opts[@]}" --rm --network=none "$image" --version >"$logfile" 2>&1; then
  check_version "$logfile"
  mode=podman
  # The README's Docker example: a named volume on the image's state directory, written by the runtime user.
  volume=bifrost-image-test-state-$$
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  podman "${run_opts[@]}" --rm --network=none -v "$volume:/var/lib/bifrost-batch-exporter" "$image" \
    --demo --once --state-dir /var/lib/bifrost-batch-exporter >"$logfile" 2>&1 \
    || { cat "$logfile" >&2; podman volume rm -f "$volume" >/dev/null 2>&1; die "--once with a state volume failed"; }
  ledgers=$(find "$(podman volume inspect --format '{{.Mountpoint}}' "$volume")" -name 'ledger-*.base' | wc -l)
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  log "a named volume on the state directory: $ledgers ledger bases written by uid 65532"
  [[ $ledgers -ge 1 ]] || die "no ledger written to the state volume"
  podman "${run_opts[@]}" -d --name "$name" --network=host "$image" "${args[@]}" >/dev/null
else
  [[ $have_podman == 1 ]] && { log "podman cannot run containers here:"; cat "$logfile" >&2; }
  log "falling back to buildah run --isolation chroot"
  mode=buildah-chroot
  buildah from --quiet --pull-never --name "$name" "$image" >/dev/null
  buildah run --isolation chroot --user 65532:65532 "$name" -- /opt/venv/bin/bifrost-batch-exporter --version \
    >"$logfile" 2>&1
  check_version "$logfile"
  buildah run --isolation chroot --user 65532:65532 "$name" -- /opt/venv/bin/bifrost-batch-exporter "${args[@]}" \
    >"$logfile" 2>&1 &
  bg_pid=$!
fi
log "running ($mode) on 127.0.0.1:$port; waiting up to ${timeout}s for /metrics"

container_log() {
  if [[ $mode == podman ]]; then podman logs "$name" 2>&1 | tail -n 40; else tail -n 40 "$logfile"; fi
}
"$py" - "$port" "$timeout" <<'PY' || { container_log >&2; die "the container did not serve the expected /metrics"; }
import sys, time, urllib.request, urllib.error

port, timeout = int(sys.argv[1]), float(sys.argv[2])
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + timeout


def get(path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


last = "no answer yet"
while True:
    try:
        status, body = get("/metrics")
        if status == 200 and "bifrost_batch_exporter_up" in body:
            break
        last = f"/metrics answered {status} without bifrost_batch_exporter_up"
    except OSError as e:
        last = repr(e)
    if time.monotonic() > deadline:
        sys.exit(f"timeout: {last}")
    time.sleep(0.5)
health, _ = get("/healthz")
if health != 200:
    sys.exit(f"/healthz answered {health}")
while (ready := get("/readyz")[0]) != 200:
    if time.monotonic() > deadline:
        sys.exit(f"/readyz still {ready}")
    time.sleep(0.5)
print("/healthz 200, /readyz 200")
# After the first polls: one up series per provider (the demo simulator may inject failures, so 0 is possible).
status, body = get("/metrics")
ups = [line for line in body.splitlines() if line.startswith("bifrost_batch_exporter_up{")]
if status != 200 or not ups:
    sys.exit(f"/metrics answered {status} without bifrost_batch_exporter_up after /readyz")
print("\n".join(ups))
PY
if [[ $mode == podman ]]; then
  state=$(podman inspect --format '{{.State.Status}}' "$name")
  [[ $state == running ]] || die "container is $state after the scrape"
fi

# --- 6. size -----------------------------------------------------------------------------------------------------------
size=$(buildah images --format '{{.Size}}' "$image" | head -n 1)
base_size=$(buildah images --format '{{.Size}}' "$base_image" | head -n 1)
log "image $image: $size (local test base $base_image: $base_size)"
if [[ ${IMAGE_TEST_KEEP:-1} == 0 ]]; then buildah rmi -f "$image" >/dev/null 2>&1 || true; fi
log "OK in $((SECONDS - started))s"
