#!/usr/bin/env bash
# Builds the Tessera container image without any container registry.
#
# deploy/Dockerfile is the conventional build (rust builder + debian-slim
# runtime) but needs to pull base images. This script makes an image with the
# same layout from a binary built on this host:
#
#   /usr/local/bin/tessera           the binary (debug info stripped)
#   the shared libraries `ldd` lists, at the same paths, and the dynamic loader
#   /etc/passwd, /etc/group          root + tessera (uid/gid 10001)
#   /etc/nsswitch.conf               hosts: files dns (for container DNS)
#   /etc/ssl/certs/ca-certificates.crt   if the host has it
#   /tmp (1777), /data (owned by 10001, the volume mount point)
#
# packed into a tar and added to `FROM scratch` (the only base image Docker
# has without a registry) by `docker build`.
#
# Usage: deploy/build-image.sh [PATH/TO/tessera]
#   Without an argument it uses $CARGO_TARGET_DIR/release/tessera (default
#   <repo>/target), building it with `cargo build --release --bin tessera`
#   when it is missing.
# Environment:
#   TESSERA_IMAGE   image tag (default tessera:dev)
#   TESSERA_UID     uid/gid of the runtime user (default 10001)
#   STRIP=0         keep debug info in the binary
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
image="${TESSERA_IMAGE:-tessera:dev}"
uid="${TESSERA_UID:-10001}"

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is required (package libc-bin)"

# ------------------------------------------------------------ the binary ---
if [[ $# -ge 1 ]]; then
    bin="$1"
    [[ -x "$bin" ]] || die "$bin is not an executable file"
else
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    bin="$target_dir/release/tessera"
    if [[ ! -x "$bin" ]]; then
        log "no $bin; building it (cargo build --release --bin tessera)"
        (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release --bin tessera)
    fi
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
version="$("$bin" --version 2>/dev/null | awk '{print $2}')" || true
[[ -n "$version" ]] || die "$bin --version failed: not a working tessera binary"
log "binary: $bin (tessera $version)"

# -------------------------------------------------------- the root fs ---
work="$(mktemp -d "${TMPDIR:-/tmp}/tessera-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{usr/local/bin,etc,tmp,data}
chmod 1777 "$root/tmp"
chmod 0750 "$root/data"

install -m 0755 "$bin" "$root/usr/local/bin/tessera"
if [[ "${STRIP:-1}" != 0 ]] && command -v strip >/dev/null; then
    # Keep the symbol table (readable panic backtraces), drop DWARF.
    strip --strip-debug "$root/usr/local/bin/tessera"
fi

# Shared libraries and the loader, copied (dereferenced) to the paths the
# binary asks for. A static binary has none.
copy_lib() {
    local src="$1"
    [[ -e "$src" ]] || die "library $src listed by ldd does not exist"
    mkdir -p "$root$(dirname "$src")"
    cp -L "$src" "$root$src"
}
if ldd "$bin" >/dev/null 2>&1; then
    while read -r line; do
        case "$line" in
            *"=> not found"*) die "ldd: $line" ;;
            *"=> /"*) lib="${line#*=> }"; copy_lib "${lib%% (*}" ;;   # libc.so.6 => /lib/... (0x..)
            /*) copy_lib "${line%% (*}" ;;                           # /lib64/ld-linux-x86-64.so.2 (0x..)
        esac
    done < <(ldd "$bin")
    # The loader the kernel runs (PT_INTERP), in case ldd printed it by
    # another path.
    if command -v readelf >/dev/null; then
        interp="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
        if [[ -n "$interp" && ! -e "$root$interp" ]]; then copy_lib "$interp"; fi
    fi
else
    log "static binary: no shared libraries to copy"
fi

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
tessera:x:$uid:$uid:tessera:/data:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
tessera:x:$uid:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
# Docker bind-mounts its own /etc/hosts, /etc/resolv.conf and /etc/hostname;
# these files only have to exist as mount points in some runtimes.
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -r "$ca" ]]; then
        mkdir -p "$root/etc/ssl/certs"
        cp -L "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
        break
    fi
done

# One tar, everything owned by root except /data; no root privileges needed.
# Fixed order and timestamps make the layer reproducible for one binary.
mtime="@${SOURCE_DATE_EPOCH:-0}"
tar_opts=(--numeric-owner --sort=name --mtime="$mtime" -C "$root")
tar -cf "$work/rootfs.tar" --owner=0 --group=0 --exclude=./data "${tar_opts[@]}" .
tar -rf "$work/rootfs.tar" --owner="$uid" --group="$uid" "${tar_opts[@]}" ./data

revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Keep in sync with deploy/Dockerfile (runtime stage).
cat >"$work/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/bin:/usr/bin:/bin
LABEL org.opencontainers.image.title="tessera" \\
      org.opencontainers.image.description="Erasure-coded, S3-compatible object store" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$revision"
WORKDIR /data
USER $uid:$uid
EXPOSE 9000 7001 7100 9100
ENV TESSERA_ADMIN_LISTEN=0.0.0.0:9100
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \\
    CMD ["tessera", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera"]
CMD ["--help"]
EOF

log "building $image"
docker build --quiet -t "$image" "$work" >/dev/null

# Smoke test: the image runs, as the unprivileged user.
out="$(docker run --rm "$image" --version)" || die "the image does not run"
[[ "$out" == *"$version"* ]] || die "unexpected --version output: $out"

size="$(docker image inspect -f '{{.Size}}' "$image")"
human="$(awk -v b="$size" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"
log "image $image: $human ($size bytes), $(tar -tf "$work/rootfs.tar" | grep -vc '/$') files"
echo "$image"
