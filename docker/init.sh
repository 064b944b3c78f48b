#!/bin/sh
# One-shot setup run by the `init` service of compose.yaml, safe to re-run: the bucket that
# VQCLIP_STORAGE names, the two process work pools, every deployment in deployments/prefect.yaml,
# and the automations that mark flow runs Crashed when their heartbeats stop and resume lost batches.
set -eu
: "${VQCLIP_STORAGE:?set VQCLIP_STORAGE in .env}"
cd "${VQCLIP_PROJECT_DIR:-/opt/vqclip}"

python - <<'PY'
"""Create the bucket of VQCLIP_STORAGE (if it is an s3:// URI), waiting while SeaweedFS starts."""
import os
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

storage = os.environ["VQCLIP_STORAGE"]
if storage.startswith("s3://"):
    bucket = storage[len("s3://"):].split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=os.environ.get("VQCLIP_S3_ENDPOINT_URL") or None,
                      config=Config(s3={"addressing_style": "path"}))
    deadline = time.monotonic() + 120
    while True:
        try:
            s3.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket}")
            break
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                print(f"bucket {bucket} exists")
                break
            if time.monotonic() > deadline:
                raise
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise
        time.sleep(2)
PY

for pool in cpu gpu; do
  # Created only when missing, so a pool edited since (e.g. turned into a Kubernetes pool) is kept.
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
done

# Without VQCLIP_PROJECT_DIR the pull step keeps its "{{ $VQCLIP_PROJECT_DIR }}" placeholder and
# each worker resolves its own checkout (see deployments/prefect.yaml).
env -u VQCLIP_PROJECT_DIR prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

python - <<'PY'
"""(Re)create the zombie-run and reconcile automations, the same ones the local stack installs (vqclip/stack/control.py)."""
from prefect.client.orchestration import get_client

from vqclip.stack.control import install_automations

with get_client(sync_client=True) as client:
    install_automations(client)
    print("automations in place: zombie runs marked Crashed, crashed batch runs reconciled")
PY
