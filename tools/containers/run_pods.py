"""The container stage, timed: build the images and run tests/containers/ as CI does.

    python tools/containers/run_pods.py --from-scratch  # as on a fresh machine: no image, no cache
    python tools/containers/run_pods.py --out bench/results/containers_cached  # images reused
    python tools/containers/run_pods.py --print-pods    # only print the Pods and substitutions

Writes bench/results/containers.{json,md} (wall time of the stage, of each image build and
scenario, the image sizes) and quotes the table in docs/kubernetes.md between its
<!-- results:containers --> markers (<!-- results:containers_cached --> for that --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from images import (
    BASE_IMAGE,
    CACHE_DIR,
    REPO,
    SIDECAR_IMAGE,
    TIMINGS_ENV,
    TRAINER_IMAGE,
    image_exists,
    image_size_bytes,
    podman,
)
from pod_convert import job_of, pod_for_index
from podman_pods import MANIFEST, PodmanJob

sys.path.insert(0, str(REPO / "bench"))
from results_doc import quote_in_doc, write_results  # type: ignore[import-not-found]

DEFAULT_OUT = REPO / "bench" / "results" / "containers"
KUBERNETES_DOC = REPO / "docs" / "kubernetes.md"


def from_scratch() -> None:
    for image in (TRAINER_IMAGE, SIDECAR_IMAGE, BASE_IMAGE):
        if image_exists(image):
            podman("rmi", "--force", image)
    podman("image", "prune", "--force")  # the build layers too
    podman("builder", "prune", "--force", check=False)
    for tarball in CACHE_DIR.glob("rootfs-*.tar"):
        tarball.unlink()


def print_pods() -> None:
    job = job_of(list(yaml.safe_load_all(MANIFEST.read_text())))
    site = PodmanJob(Path(tempfile.gettempdir()), ["--steps", "30"], log=lambda _: None).site
    for index in range(int(job["spec"]["completions"])):
        pod = pod_for_index(job, index, site)
        print(f"# {pod.name}: " + "\n#   ".join(pod.notes))
        print(yaml.safe_dump(pod.manifest, sort_keys=False) + "---")


def run_stage(scratch: Path) -> dict[str, Any]:
    timings, junit = scratch / "builds.json", scratch / "junit.xml"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/containers", "-q", "-p", "no:cacheprovider",
         f"--junitxml={junit}"],
        cwd=REPO, env={**os.environ, TIMINGS_ENV: str(timings)},
    )  # fmt: skip
    wall = time.monotonic() - started
    cases = {
        case.get("name", ""): {
            "seconds": float(case.get("time", "0")),
            "passed": not any(child.tag in ("failure", "error") for child in case),
            "skipped": any(child.tag == "skipped" for child in case),
        }
        for case in ElementTree.parse(junit).getroot().iter("testcase")
    }
    builds = json.loads(timings.read_text()) if timings.exists() else {}
    return {"exit_code": done.returncode, "wall_s": wall, "builds_s": builds, "tests": cases}


def markdown(report: dict[str, Any], command: str) -> str:
    builds = report["builds_s"]
    rows = [
        "| container stage (tools/containers, tests/containers) | figure |",
        "|---|---|",
        f"| whole stage: image builds, 4 scenarios (pytest) | {report['wall_s']:.0f} s |",
    ]
    for name in ("base", "sidecar", "trainer"):
        if name in builds:
            cached = " (cached)" if name == "base" and builds.get("base_cached") else ""
            rows.append(f"| build: {name} image{cached} | {builds[name]:.0f} s |")
    for name, case in report["tests"].items():
        outcome = "passed" if case["passed"] and not case["skipped"] else "NOT passed"
        rows.append(f"| `{name}` | {case['seconds']:.0f} s, {outcome} |")
    for image, size in report["image_sizes_mb"].items():
        rows.append(f"| image size: `{image}` | {size:.0f} MB |")
    host = report["host"]
    return (
        "\n".join(rows) + f"\n\nCommand: `{command}`. Host: {host['cpus']} CPUs, load average "
        f"{host['load_before']:.1f} when it started (other jobs share this machine), podman "
        f"{host['podman']}; the test durations include their own setup and teardown "
        "(the first includes the image builds). Sizes as `podman image inspect` reports them "
        "(uncompressed).\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-scratch", action="store_true", help="remove images and cache")
    parser.add_argument("--print-pods", action="store_true", help="print the Pods, run nothing")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.print_pods:
        print_pods()
        return 0
    if args.from_scratch:
        from_scratch()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        report = run_stage(Path(scratch))
    report["from_scratch"] = args.from_scratch
    report["image_sizes_mb"] = {
        image: image_size_bytes(image) / 1e6
        for image in (SIDECAR_IMAGE, TRAINER_IMAGE, BASE_IMAGE)
        if image_exists(image)
    }
    report["host"] = {
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "podman": podman("--version").stdout.split()[-1],
    }
    command = "python tools/containers/run_pods.py" + (
        " --from-scratch" if args.from_scratch else ""
    )
    text = markdown(report, command)
    write_results(args.out, report, text)
    if args.out.resolve().parent == DEFAULT_OUT.parent:  # containers, containers_cached
        quote_in_doc(args.out.name, text, KUBERNETES_DOC)
    print(text)
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
