"""Intake latency on the local stack: seconds from a raw upload to the inbox until the manifest is
claimed, and until its first shard runs on a gpu worker.

    python -m benchmarks.intake [--uploads 5] [--gap 9] [--json FILE]

Starts a stack (`vqclip up` in a temporary folder, one gpu worker), waits until a watcher is
polling, then puts tiny manifests into `manifests/inbox/` with plain boto3 (as any S3 client
would, no `vqclip submit`) `--gap` seconds apart, and polls the bucket and the Prefect API every
0.25 s. Prints each upload's times and the medians; stops the stack at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from flows.lineage import run_tag
from vqclip.run import layout
from vqclip.stack.control import StackState, prefect_client, start_stack, stop_stack

MANIFEST = "defaults: {{preset: tiny, width: 64, height: 64, steps: 10, cutouts: 4}}\nprompts: ['intake probe {n}']\n"
POLL_S = 0.25


def _s3(state: StackState):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=state.s3_endpoint_url, region_name="us-east-1", aws_access_key_id=state.access_key,
        aws_secret_access_key=state.secret_key, config=Config(s3={"addressing_style": "path"}),
    )


def _claimed_run(s3, state: StackState, stem: str) -> str | None:
    """The run id a claimed manifest of this upload got, if it is claimed yet."""
    listing = s3.list_objects_v2(Bucket=state.bucket, Prefix=f"outputs/{layout.CLAIMED}{stem}-")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    return Path(keys[0]).stem if keys else None


def _shard_running(state: StackState, run_id: str) -> bool:
    with prefect_client(state) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag(run_id)])))
    return any(r.parameters.get("shard") is not None and r.state is not None and r.state.is_running() for r in runs)


def measure(state: StackState, uploads: int, gap: float) -> list[dict[str, float]]:
    """Upload `uploads` manifests `gap` s apart; each one's seconds to claimed and to its first running shard."""
    s3 = _s3(state)
    pending: dict[str, dict[str, float]] = {}
    results = []
    next_upload, sent = time.monotonic(), 0
    deadline = time.monotonic() + uploads * gap + 180
    while (sent < uploads or pending) and time.monotonic() < deadline:
        now = time.monotonic()
        if sent < uploads and now >= next_upload:
            stem = f"intake-{int(time.time())}-{sent}"
            s3.put_object(Bucket=state.bucket, Key=f"outputs/{layout.INBOX}{stem}.yaml", Body=MANIFEST.format(n=sent).encode())
            pending[stem] = {"uploaded": time.monotonic()}
            sent, next_upload = sent + 1, now + gap
        for stem, times in list(pending.items()):
            if "run_id" not in times:
                run_id = _claimed_run(s3, state, stem)
                if run_id:
                    times["run_id"], times["claimed"] = run_id, time.monotonic()
            elif _shard_running(state, times["run_id"]):
                results.append({"upload_to_claimed_s": times["claimed"] - times["uploaded"],
                                "upload_to_shard_running_s": time.monotonic() - times["uploaded"]})
                print(f"{stem}: claimed after {results[-1]['upload_to_claimed_s']:.1f} s, "
                      f"first shard running after {results[-1]['upload_to_shard_running_s']:.1f} s", flush=True)
                del pending[stem]
        time.sleep(POLL_S)
    if pending:
        print(f"not measured (no running shard within the deadline): {sorted(pending)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--gap", type=float, default=25.0, help="seconds between uploads (not a divisor of the watcher's 2 s poll)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="vqclip-intake-"))
    try:
        state = start_stack(state_dir, gpu_workers=1, report=lambda step: print(step, flush=True))
        print("stack up; waiting 30 s for the first watcher run to poll", flush=True)
        time.sleep(30)
        results = measure(state, args.uploads, args.gap)
    finally:
        stop_stack(state_dir)
    summary = {
        "uploads": len(results),
        "median_upload_to_claimed_s": statistics.median(r["upload_to_claimed_s"] for r in results) if results else None,
        "median_upload_to_shard_running_s": statistics.median(r["upload_to_shard_running_s"] for r in results) if results else None,
        "runs": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
