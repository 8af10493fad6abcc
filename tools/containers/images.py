"""The images of the podman tests, built with no container registry.

- base: a minimal Debian rootfs from `mmdebstrap` (python3, venv, pip, CA certificates) of the
  host's release, imported and tagged as the Dockerfile's base, `python:3.11-slim`. The rootfs
  tarball is cached (CACHE_DIR); the image is kept once imported.
- sidecar: the repository's Dockerfile, unchanged (`podman build --pull=never`).
- trainer: tools/containers/trainer.Containerfile: the CPU build of torch, the project and
  tests/workloads/toy_ddp.py.

pip inside a build sees what the host's pip sees: the host's find-links directories and file://
indexes are bind-mounted, a pip.conf naming them too, and the host's CA bundle. torch is asked
for as `torch==2.13.0+cpu`: no other build can satisfy it, so a multi-GB CUDA build is never
pulled; with no such wheel among the host's sources, PyTorch's CPU index is added.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONTAINERS_CONF = HERE / "containers.conf"
CACHE_DIR = Path(os.environ.get("TRAIN_SUPERVISOR_CONTAINERS_CACHE", "/var/cache/train-supervisor"))
BASE_IMAGE = "localhost/python:3.11-slim"  # the Dockerfile's FROM python:3.11-slim, resolved here
SIDECAR_IMAGE = "localhost/train-supervisor:0.1.0"
TRAINER_IMAGE = "localhost/train-demo-trainer:0.1.0"
TORCH = "torch==2.13.0+cpu"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TIMINGS_ENV = "TRAIN_SUPERVISOR_CONTAINER_TIMINGS"  # a file: the build times go there as JSON
TRAINER_CONTEXT = ("pyproject.toml", "README.md", "supervisor", "launcher", "train_supervisor",
                   "tests/frameworks/constraints.txt", "tests/workloads/toy_ddp.py")  # fmt: skip


@dataclass(frozen=True)
class PipSources:
    """Where the host's pip finds packages: `pip config list`, environment included."""

    find_links: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()
    index_url: str = ""

    def local_dirs(self) -> list[str]:
        """Directories to bind-mount into a build, at the same paths: the find-links ones, and
        for a file:// index its parent (the index's links lead to ../../files/...)."""
        found = {p for p in self.find_links if "://" not in p}
        for url in (*self.extra_index_urls, self.index_url, *self.find_links):
            if url.startswith("file://"):
                path = Path(url.removeprefix("file://"))
                found.add(str(path.parent if path.name == "simple" else path))
        return sorted(found)

    def pip_conf(self, extra_index: str = "") -> str:
        lines = ["[global]", f"cert = {CA_BUNDLE}"]
        if self.index_url:
            lines.append(f"index-url = {self.index_url}")
        if self.find_links:
            lines.append("find-links = " + " ".join(self.find_links))
        extra = [*self.extra_index_urls, *([extra_index] if extra_index else [])]
        if extra:
            lines.append("extra-index-url = " + " ".join(extra))
        return "\n".join(lines) + "\n"


def parse_pip_config(listing: str) -> PipSources:
    """`pip config list` output in, the package sources out (later lines of a key win)."""
    values: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return PipSources(
        find_links=tuple(values.get("find-links", "").split()),
        extra_index_urls=tuple(values.get("extra-index-url", "").split()),
        index_url=values.get("index-url", ""),
    )


def has_cpu_torch(sources: PipSources, version: str = "2.13.0") -> bool:
    """Whether a find-links directory or a file:// index of the host holds the CPU torch wheel."""
    wheel = f"torch-{version}+cpu-"
    for link in sources.find_links:
        directory = Path(link.removeprefix("file://"))
        if directory.is_dir() and any(p.name.startswith(wheel) for p in directory.iterdir()):
            return True
    for url in (*sources.extra_index_urls, sources.index_url):
        page = Path(url.removeprefix("file://")) / "torch" / "index.html"
        if url.startswith("file://") and page.is_file():
            text = page.read_text(errors="replace")
            if wheel in text or wheel.replace("+", "%2B") in text:
                return True
    return False


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, check=check,
        timeout=timeout,
    )  # fmt: skip


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def image_size_bytes(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


@dataclass
class BuildTimes:
    seconds: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)


def host_release() -> str:
    """VERSION_CODENAME of /etc/os-release (the base matches the host's Debian)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME: not a Debian host")


def build_base(times: BuildTimes, mirror: str = "http://deb.debian.org/debian") -> None:
    started = time.monotonic()
    if image_exists(BASE_IMAGE):
        times.cached["base"] = True
        times.seconds["base"] = time.monotonic() - started
        return
    release = host_release()
    # PEP 668's marker goes: python:3.11-slim has none, and the Dockerfile pip-installs as root.
    hook = 'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
    recipe = f"{release} {' '.join(BASE_PACKAGES)} {hook} {mirror}"
    tarball = CACHE_DIR / f"rootfs-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.tar"
    times.cached["base"] = tarball.exists()
    if not tarball.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
             f"--customize-hook={hook}", release, str(partial), mirror],
            check=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        partial.rename(tarball)
    podman("import", "--change", 'CMD ["python3"]', str(tarball), BASE_IMAGE)
    times.seconds["base"] = time.monotonic() - started


def build_mounts(sources: PipSources, conf_dir: Path) -> list[str]:
    """podman build volume flags: the host's package sources, its pip.conf, its CA bundle."""
    extra = "" if has_cpu_torch(sources) else TORCH_CPU_INDEX
    (conf_dir / "pip.conf").write_text(sources.pip_conf(extra))
    flags = ["-v", f"{conf_dir / 'pip.conf'}:/etc/pip.conf:ro", "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for directory in sources.local_dirs():
        flags += ["-v", f"{directory}:{directory}:ro"]
    return flags


def host_pip_sources() -> PipSources:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return parse_pip_config(listing)


def build(image: str, containerfile: Path, context: Path, mounts: Sequence[str]) -> None:
    done = podman(
        "build", "--pull=never", "--layers", "--network", "host", *mounts,
        "-f", str(containerfile), "-t", image, str(context), check=False, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"podman build of {image} failed:\n{done.stdout[-4000:]}{done.stderr}")


def build_all(times: BuildTimes) -> None:
    build_base(times)
    sources = host_pip_sources()
    with tempfile.TemporaryDirectory(prefix="train-supervisor-build-") as scratch:
        conf_dir = Path(scratch) / "pip"
        conf_dir.mkdir()
        mounts = build_mounts(sources, conf_dir)
        started = time.monotonic()
        build(SIDECAR_IMAGE, REPO / "Dockerfile", REPO, mounts)
        times.seconds["sidecar"] = time.monotonic() - started
        context = Path(scratch) / "trainer"
        context.mkdir()
        for item in TRAINER_CONTEXT:
            source = REPO / item
            if source.is_dir():
                shutil.copytree(source, context / source.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
            else:
                shutil.copy2(source, context / source.name)
        started = time.monotonic()
        build(TRAINER_IMAGE, HERE / "trainer.Containerfile", context,
              [*mounts, "--build-arg", f"TORCH={TORCH}"])  # fmt: skip
        times.seconds["trainer"] = time.monotonic() - started
