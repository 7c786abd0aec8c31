#!/usr/bin/env bash
# End-to-end test of the Docker Compose cluster (deploy/compose):
#
#   1. build the image (deploy/build-image.sh from $TESSERA_BIN or the
#      release binary; SKIP_BUILD=1 to reuse one)
#   2. `compose up -d` under a unique project name, wait until healthy;
#      the console's JSON and /metrics answer on gateway1's admin port
#   3. with the aws cli: create a bucket, PUT 20 objects of mixed sizes
#      (inline, single stripe, multi-stripe, > 1 MiB)
#   4. `docker kill` two storage nodes in different zones, read everything
#      back through both gateways, byte for byte
#   5. `compose start` them again, wait until the cluster map has all 6 up
#   6. partition the Raft leader (`docker network disconnect`), show that
#      a new leader takes over and writes and reads still succeed, reconnect
#      it and wait until it is healthy again
#   7. final read of every object, listing check
#
# Always tears everything down (`compose down -v`: containers, network,
# volumes, and the image when it built one under its own name), also on
# failure or Ctrl-C; first removes what an earlier run that died (its pid is
# gone) left behind. Runs from any directory.
#
# Environment:
#   AWS            aws cli to use (default: `aws` on PATH, else a venv in
#                  ~/.cache/tessera-compose-venv)
#   TESSERA_BIN    binary to put in the image (default: build-image.sh's,
#                  the release binary, built when missing)
#   TESSERA_IMAGE  image to build/use and keep (default: a per-run
#                  tessera:compose-test-PID, removed at the end)
#   SKIP_BUILD=1   use the existing TESSERA_IMAGE
#   KEEP_LOGS=DIR  also save every container's log there
#   Plus whatever deploy/build-image.sh takes (CARGO_TARGET_DIR, ...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
t_start=$SECONDS
timings=()

log() { printf '[compose-test %4ss] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
phase_start=$SECONDS
phase_name=""
phase() {  # phase NAME: ends the previous phase, starts NAME
    if [[ -n "$phase_name" ]]; then
        timings+=("$(printf '%-44s %4ss' "$phase_name" "$((SECONDS - phase_start))")")
    fi
    phase_name="$1"
    phase_start=$SECONDS
    [[ -n "$1" ]] && log "== $1"
    return 0
}

# ------------------------------------------------------------- tools ---
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    die "neither 'docker compose' nor docker-compose is installed"
fi
command -v python3 >/dev/null || die "python3 is required"

if [[ -n "${AWS:-}" ]]; then
    aws_bin="$AWS"
elif command -v aws >/dev/null; then
    aws_bin="$(command -v aws)"
else
    venv="$HOME/.cache/tessera-compose-venv"
    if [[ ! -x "$venv/bin/aws" ]]; then
        log "installing the aws cli into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check awscli
    fi
    aws_bin="$venv/bin/aws"
fi
"$aws_bin" --version >/dev/null 2>&1 || die "aws cli at $aws_bin does not run"

# ------------------------------------------- leftovers of dead runs ---
# Projects are named tessera-ci-<time>-<pid> and images
# tessera:compose-test-<pid>: whatever belongs to a pid that is no longer
# running was left by a run that was killed before its cleanup.
stale_pid_gone() { [[ "$1" =~ ^[0-9]+$ ]] && ! kill -0 "$1" 2>/dev/null; }
for p in $(docker ps -a --format '{{.Label "com.docker.compose.project"}}' | sort -u | grep '^tessera-ci-' || true); do
    if stale_pid_gone "${p##*-}"; then
        log "removing leftovers of an earlier run: $p"
        docker ps -aq --filter "label=com.docker.compose.project=$p" | xargs -r docker rm -f >/dev/null 2>&1 || true
    fi
done
for v in $(docker volume ls -q --filter label=com.docker.compose.project | grep '^tessera-ci-' || true); do
    p="$(docker volume inspect -f '{{index .Labels "com.docker.compose.project"}}' "$v" 2>/dev/null)" || continue
    pid="${p##*-}"
    stale_pid_gone "$pid" && docker volume rm "$v" >/dev/null 2>&1 || true
done
for n in $(docker network ls --format '{{.Name}}' | grep '^tessera-ci-' || true); do
    p="${n%_tessera}"
    stale_pid_gone "${p##*-}" && docker network rm "$n" >/dev/null 2>&1 || true
done
for img in $(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^tessera:compose-test-' || true); do
    stale_pid_gone "${img##*-}" && docker image rm "$img" >/dev/null 2>&1 || true
done

# ------------------------------------------------------ the cluster ---
project="tessera-ci-$(date +%s)-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/tessera-compose-test.XXXXXX")"
own_image=0
if [[ -z "${TESSERA_IMAGE:-}" ]]; then
    TESSERA_IMAGE="tessera:compose-test-$$"
    [[ "${SKIP_BUILD:-0}" == 1 ]] && die "SKIP_BUILD=1 needs TESSERA_IMAGE"
    own_image=1
fi
export TESSERA_IMAGE
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export TESSERA_GATEWAY1_PORT="${TESSERA_GATEWAY1_PORT:-$(free_port)}"
export TESSERA_GATEWAY2_PORT="${TESSERA_GATEWAY2_PORT:-$(free_port)}"
export TESSERA_GATEWAY1_ADMIN_PORT="${TESSERA_GATEWAY1_ADMIN_PORT:-$(free_port)}"
export TESSERA_GATEWAY2_ADMIN_PORT="${TESSERA_GATEWAY2_ADMIN_PORT:-$(free_port)}"
export TESSERA_ADMIN_BIND=127.0.0.1
export TESSERA_BIND=127.0.0.1
export TESSERA_SUSPECT_AFTER_MS=3000
# Fresh credentials for every run: nothing real is ever committed.
TESSERA_ROOT_ACCESS_KEY="TESSERACI$(python3 -c 'import secrets; print(secrets.token_hex(6).upper())')"
TESSERA_ROOT_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')"
TESSERA_CLUSTER_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export TESSERA_ROOT_ACCESS_KEY TESSERA_ROOT_SECRET_KEY TESSERA_CLUSTER_SECRET

compose() { "${COMPOSE[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }
# Container id of a service, running or not (by label: same for Compose v1
# and v2, whose `ps` differ).
cid() {
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}
network="${project}_tessera"
long_running=(meta1 meta2 meta3 storage-z1-a storage-z1-b storage-z2-a storage-z2-b
              storage-z3-a storage-z3-b gateway1 gateway2)

# The original stdout/stderr: a signal can land while a command runs with
# redirected output, and the cleanup report must not go there.
exec 3>&1 4>&2
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    set +e
    if [[ $rc -ne 0 ]]; then
        log "test failed (exit $rc); cluster state and recent logs:"
        compose ps >&2
        docker exec "$(cid gateway1)" tessera admin status >&2 2>&1
        compose logs --no-color --tail 40 >&2 2>&1
    fi
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        mkdir -p "$KEEP_LOGS" && compose logs --no-color >"$KEEP_LOGS/$project.log" 2>&1
    fi
    log "tearing down $project"
    compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1
    # Belt and braces: nothing of this project may survive.
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1
    docker network rm "$network" >/dev/null 2>&1
    [[ $own_image == 1 ]] && docker image rm "$TESSERA_IMAGE" >/dev/null 2>&1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------- helpers ---
export AWS_ACCESS_KEY_ID="$TESSERA_ROOT_ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$TESSERA_ROOT_SECRET_KEY"
export AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE="$work/aws-config"
export AWS_SHARED_CREDENTIALS_FILE="$work/aws-credentials"
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
printf '[default]\nregion = us-east-1\nretry_mode = standard\nmax_attempts = 4\n' >"$AWS_CONFIG_FILE"
: >"$AWS_SHARED_CREDENTIALS_FILE"
endpoint() { echo "http://127.0.0.1:$([[ $1 == 1 ]] && echo "$TESSERA_GATEWAY1_PORT" || echo "$TESSERA_GATEWAY2_PORT")"; }
s3api() { local gw=$1; shift; "$aws_bin" --endpoint-url "$(endpoint "$gw")" s3api "$@"; }

status_json() { docker exec "$(cid "${1:-gateway1}")" tessera admin status --json 2>/dev/null; }
# Prints "<leader id> <up storage nodes>" from admin status JSON on stdin.
summarize() {
    python3 -c 'import json,sys
try: s = json.load(sys.stdin)
except Exception: print("- 0"); sys.exit()
l = s.get("leader") or {}
print(l.get("id", "-"), sum(1 for n in s.get("storage", []) if n.get("state") == "up"))'
}
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        [[ $SECONDS -lt $deadline ]] || die "timed out after ${limit}s waiting for $what"
        sleep 1
    done
}
all_healthy() {
    local svc st
    for svc in "${long_running[@]}"; do
        st="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$svc")" 2>/dev/null)"
        [[ "$st" == healthy ]] || return 1
    done
}
healthy() { [[ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")" 2>/dev/null)" == healthy ]]; }
storage_up() { [[ "$(status_json | summarize | cut -d' ' -f2)" -ge "$1" ]]; }
init_done() {
    local st
    st="$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid init)" 2>/dev/null)"
    [[ "$st" == "exited 0" ]] && return 0
    [[ "$st" == exited* ]] && { compose logs --no-color init >&2; die "init exited: $st"; }
    return 1
}
# Meta members as "id:state:last_applied ..." from admin status JSON on stdin.
members() {
    python3 -c 'import json,sys
s = json.load(sys.stdin)
print(" ".join("%s:%s:%s" % (m.get("id"), m.get("state"), m.get("last_applied")) for m in s["meta"]))'
}
caught_up() {  # caught_up ID: member ID follows the leader and applied all it has
    status_json | python3 -c 'import json,sys
s = json.load(sys.stdin); me = int(sys.argv[1])
lead = (s.get("leader") or {}).get("id")
m = {x.get("id"): x for x in s["meta"] if x.get("reachable")}
ok = (lead is not None and lead != me and me in m and lead in m
      and m[me].get("leader_id") == lead
      and m[me].get("last_applied") == m[lead].get("last_applied"))
sys.exit(0 if ok else 1)' "$1" 2>/dev/null
}
s3_ready() { s3api 1 list-buckets >/dev/null 2>&1 && s3api 2 list-buckets >/dev/null 2>&1; }

bucket=compose-test
keys=()
put() {  # put GATEWAY KEY FILE: PUT with retries (elections, failover)
    local gw=$1 key=$2 file=$3 n
    for n in 1 2 3 4 5 6 7 8 9 10; do
        if s3api "$gw" put-object --bucket "$bucket" --key "$key" --body "$file" \
            >/dev/null 2>"$work/put.err"; then
            return 0
        fi
        log "PUT $key via gateway$gw failed (try $n): $(tail -1 "$work/put.err")"
        sleep 3
    done
    die "PUT $key via gateway$gw kept failing"
}
verify_all() {  # verify_all GATEWAY...: GET every object, compare bytes
    local gw key n=0
    for key in "${keys[@]}"; do
        gw=$1; [[ $# -gt 1 && $((n % 2)) -eq 1 ]] && gw=$2
        rm -f "$work/get.out"
        s3api "$gw" get-object --bucket "$bucket" --key "$key" "$work/get.out" \
            >/dev/null 2>"$work/get.err" \
            || die "GET $key via gateway$gw: $(tail -1 "$work/get.err")"
        cmp -s "$work/get.out" "$work/data/$key" \
            || die "GET $key via gateway$gw: bytes differ from what was written"
        n=$((n + 1))
    done
    log "read back $n objects byte-identical via gateway(s) $*"
}

# ------------------------------------------------------------ 1. build ---
phase "build image ($TESSERA_IMAGE)"
if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    docker image inspect "$TESSERA_IMAGE" >/dev/null || die "SKIP_BUILD=1 but no image $TESSERA_IMAGE"
else
    "$deploy/build-image.sh" ${TESSERA_BIN:+"$TESSERA_BIN"} >/dev/null
fi
image_size="$(docker image inspect -f '{{.Size}}' "$TESSERA_IMAGE")"

# --------------------------------------------------------------- 2. up ---
phase "compose up + wait for health"
log "project $project, S3 on 127.0.0.1:$TESSERA_GATEWAY1_PORT and :$TESSERA_GATEWAY2_PORT (${COMPOSE[*]})"
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; die "compose up failed"; }
wait_until 180 "all containers healthy" all_healthy
wait_until 60 "6 storage nodes up in the cluster map" storage_up 6
wait_until 60 "the init service to create the root key" init_done
wait_until 60 "S3 on both gateways" s3_ready
read -r leader up <<<"$(status_json | summarize)"
log "healthy: meta leader $leader, $up storage nodes up"
# The console and metrics on gateway1's published admin port.
python3 - "http://127.0.0.1:$TESSERA_GATEWAY1_ADMIN_PORT" <<'PY' || die "console or /metrics on the gateway admin port"
import json, sys, urllib.request
base = sys.argv[1]
s = json.load(urllib.request.urlopen(base + "/console/api/status", timeout=10))
nodes = s["storage"]["nodes"]
assert s["meta"]["leader"] in (1, 2, 3), s["meta"]
assert len(nodes) == 6 and all(n["state"] == "up" for n in nodes), nodes
assert sorted({n["zone"] for n in nodes}) == ["z1", "z2", "z3"], nodes
page = urllib.request.urlopen(base + "/console/", timeout=10).read().decode()
assert "console.js" in page
metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
assert "tessera_gateway_s3_requests_total" in metrics
print("console: leader meta%s, %d storage nodes up in 3 zones" % (s["meta"]["leader"], len(nodes)))
PY

# ------------------------------------------------------------ 3. write ---
phase "create bucket + PUT 20 objects"
mkdir -p "$work/data/obj" "$work/data/late"
s3api 1 create-bucket --bucket "$bucket" >/dev/null
sizes=(0 1 17 1000 4096 65535 65536 65537 100000 262144
       1048575 1048576 1048577 2097152 3000000 4194304 4194305 5242880 8388608 9437185)
python3 - "$work/data/obj" "${sizes[@]}" <<'PY'
import os, sys
d = sys.argv[1]
for i, n in enumerate(map(int, sys.argv[2:])):
    with open(os.path.join(d, f"{i:02d}-{n}.bin"), "wb") as f:
        f.write(os.urandom(n))
PY
total=0
i=0
for f in "$work"/data/obj/*.bin; do
    key="obj/$(basename "$f")"
    put $((i % 2 + 1)) "$key" "$f"
    keys+=("$key")
    total=$((total + $(stat -c %s "$f")))
    i=$((i + 1))
done
log "wrote ${#keys[@]} objects, $total bytes, through both gateways"
verify_all 2 1

# ---------------------------------------------- 4. lose 2 storage nodes ---
phase "kill 2 storage nodes (z1, z2) + degraded reads"
victims=(storage-z1-a storage-z2-b)
for svc in "${victims[@]}"; do docker kill "$(cid "$svc")" >/dev/null; done
log "killed ${victims[*]}"
verify_all 1 2
for svc in "${victims[@]}"; do
    [[ "$(docker inspect -f '{{.State.Running}}' "$(cid "$svc")")" == false ]] \
        || die "$svc was restarted behind our back: the reads were not degraded"
done
read -r _ up <<<"$(status_json | summarize)"
log "storage nodes up in the cluster map while they are dead: $up"

# ------------------------------------------------------ 5. bring back ---
phase "restart the 2 storage nodes"
compose start "${victims[@]}" >/dev/null 2>&1
wait_until 90 "6 storage nodes up again" storage_up 6
verify_all 2

# ------------------------------------------------- 6. meta partition ---
phase "partition the meta leader + write"
read -r leader _ <<<"$(status_json | summarize)"
[[ "$leader" =~ ^[123]$ ]] || die "no meta leader before the partition (got '$leader')"
isolated="meta$leader"
docker network disconnect "$network" "$(cid "$isolated")"
log "disconnected $isolated (the leader) from $network"
t_part=$SECONDS
python3 - "$work/data/late" <<'PY'
import os, sys
for i, n in enumerate([0, 5000, 70000, 1048577, 4194305, 6000000]):
    with open(os.path.join(sys.argv[1], f"{i:02d}-{n}.bin"), "wb") as f:
        f.write(os.urandom(n))
PY
first=1
for f in "$work"/data/late/*.bin; do
    key="late/$(basename "$f")"
    put 1 "$key" "$f"
    keys+=("$key")
    if [[ $first == 1 ]]; then
        log "first write after the partition succeeded after $((SECONDS - t_part))s"
        first=0
    fi
done
read -r new_leader _ <<<"$(status_json gateway2 | summarize)"
[[ "$new_leader" =~ ^[123]$ && "$new_leader" != "$leader" ]] \
    || die "expected a new leader other than $leader, got '$new_leader'"
log "new leader: meta$new_leader; ${#keys[@]} objects now"
verify_all 2 1

phase "heal the partition"
docker network connect --alias "$isolated" "$network" "$(cid "$isolated")"
log "reconnected $isolated"
wait_until 120 "$isolated healthy again" healthy "$isolated"
wait_until 120 "$isolated to rejoin as a follower and catch up" caught_up "$leader"
log "$isolated rejoined: $(status_json | members)"

# ------------------------------------------------------------ 7. final ---
phase "final verification"
wait_until 120 "all containers healthy" all_healthy
verify_all 1 2
listed="$(s3api 2 list-objects-v2 --bucket "$bucket" --query 'length(Contents)' --output text)"
[[ "$listed" == "${#keys[@]}" ]] || die "list-objects-v2 shows $listed objects, expected ${#keys[@]}"
log "list-objects-v2: $listed objects"
phase ""

printf '\ncompose test passed (%s, image %s: %s MiB)\n' "${COMPOSE[*]}" "$TESSERA_IMAGE" \
    "$(awk -v b="$image_size" 'BEGIN { printf "%.1f", b / 1048576 }')"
printf '%s\n' "${timings[@]}"
printf '%-44s %4ss\n' "total" "$((SECONDS - t_start))"
