#!/usr/bin/env bash
# A lab xvmd you can talk to: libvirt's test driver with the demo domains from fixtures/,
# a freshly generated key, listening on lo inside a private network namespace "xvmd-lab"
# (fence_xvm sends from every local address, so it must never run in the host namespace).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash contrib/dev/setup.sh

NS=xvmd-lab
LAB=$PWD/.lab
mkdir -p "$LAB"
KEY=$LAB/fence_xvm.key
if [ ! -s "$KEY" ]; then
    (umask 077 && head -c 4096 /dev/urandom > "$KEY")
fi
ip netns list | grep -qw "$NS" || ip netns add "$NS"
ip -n "$NS" link set lo up

cleanup() { ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT

cat <<INFO

xvmd lab: 43 demo domains (libvirt test driver), key $KEY, on lo in netns $NS.
Query it from another shell (as root):

  ip netns exec $NS fence_xvm -k $KEY -o list
  ip netns exec $NS fence_xvm -k $KEY -o status -H vm-01
  ip netns exec $NS fence_xvm -k $KEY -o off -H vm-01
  ip netns exec $NS fence_xvm -k $KEY -o on -H vm-01
  .venv/bin/xvmd status --control $LAB/xvmd.sock
  .venv/bin/xvmd audit --file $LAB/audit.jsonl

Stop with Ctrl-C. The demo state lives in the daemon and resets when it stops.

INFO
ip netns exec "$NS" .venv/bin/xvmd --local --no-ccs -k "$KEY" -I lo \
    --control "$LAB/xvmd.sock" --audit "$LAB/audit.jsonl" \
    -U "test://$PWD/fixtures/domains.xml" "$@"
