"""The example manifests under k8s/, read as Kubernetes would run them.

Finds each workload (an Indexed Job, each replicatedJob of a JobSet), and gives a
container's environment and command line as the kubelet would for pod `index`:
the Job controller's JOB_COMPLETION_INDEX, downward API fields and Secrets with
stand-in values, and `$(VAR)` expansion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

K8S_DIR = Path(__file__).resolve().parent.parent / "k8s"
SIDECAR = "supervisor"
TRAINER = "trainer"
NAMESPACE = "default"
_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_QUANTITY = re.compile(r"([0-9.]+)([a-zA-Z]*)")
_SUFFIX = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}  # fmt: skip

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(K8S_DIR.rglob("*.yaml"))


def documents(path: Path) -> list[Doc]:
    import yaml  # the tests that call this skip without PyYAML

    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def all_documents() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in manifest_files() for doc in documents(path)]


@dataclass(frozen=True)
class Workload:
    """One Indexed Job, standing alone or created by a JobSet."""

    source: str  # file name and kind, for test ids and messages
    job_name: str  # the Job's name: pod i's hostname is <job_name>-<i>
    subdomain: str  # the headless Service's name: DNS <hostname>.<subdomain>
    job_spec: Doc
    extra_labels: Mapping[str, str]  # what a controller above the Job adds

    @property
    def pod_spec(self) -> Doc:
        spec: Doc = self.job_spec["template"]["spec"]
        return spec

    @property
    def pod_metadata(self) -> Doc:
        metadata: Doc = self.job_spec["template"].get("metadata") or {}
        return metadata

    def hostname(self, index: int) -> str:
        return f"{self.job_name}-{index}"


def workloads() -> list[Workload]:
    found = []
    for path, doc in all_documents():
        name = doc["metadata"]["name"]
        if doc["kind"] == "Job":
            subdomain = doc["spec"]["template"]["spec"].get("subdomain", "")
            found.append(Workload(f"{path.name}:Job", name, subdomain, doc["spec"], {}))
        elif doc["kind"] == "JobSet":
            network = doc["spec"].get("network") or {}
            for rjob in doc["spec"]["replicatedJobs"]:
                labels = {
                    "jobset.sigs.k8s.io/jobset-name": name,
                    "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                    "jobset.sigs.k8s.io/job-index": "0",
                }
                found.append(
                    Workload(
                        f"{path.name}:JobSet/{rjob['name']}",
                        f"{name}-{rjob['name']}-0",
                        network.get("subdomain") or name,
                        rjob["template"]["spec"],
                        labels,
                    )
                )
    return found


def container(pod_spec: Doc, name: str) -> Doc:
    for entry in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        if entry["name"] == name:
            return dict(entry)
    raise KeyError(f"no container named {name!r}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names replaced, `$$` is a literal `$`,
    an undefined `$(NAME)` left as it is."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        end = text.find(")", i + 2) if text.startswith("$(", i) else -1
        if end != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _field(workload: Workload, index: int, path: str) -> str:
    labels = {
        **(workload.pod_metadata.get("labels") or {}),
        **workload.extra_labels,
        "batch.kubernetes.io/job-name": workload.job_name,
        "job-name": workload.job_name,
        "batch.kubernetes.io/job-completion-index": str(index),
    }
    annotations = {
        **(workload.pod_metadata.get("annotations") or {}),
        "batch.kubernetes.io/job-completion-index": str(index),
    }
    simple = {
        "metadata.name": f"{workload.hostname(index)}-x7k2p",
        "metadata.namespace": NAMESPACE,
        "metadata.uid": f"0b7c{index:04d}-uid",
        "status.podIP": f"10.0.0.{index + 1}",
        "spec.nodeName": f"node-{index}",
    }
    if path in simple:
        return simple[path]
    match = _FIELD.fullmatch(path)
    if match is None:
        raise KeyError(f"fieldRef {path!r}: no stand-in value in tests/k8s_examples.py")
    source = labels if match.group(1) == "labels" else annotations
    return source[match.group(2)]


def pod_env(
    workload: Workload, name: str, index: int, secrets: Mapping[tuple[str, str], str]
) -> dict[str, str]:
    """Container `name`'s environment in pod `index`; `secrets`: (secret, key) -> value."""
    # The Job controller adds JOB_COMPLETION_INDEX to every container of an Indexed Job.
    env = {"JOB_COMPLETION_INDEX": str(index)}
    # The kubelet sets these in every container (enableServiceLinks or not).
    env |= {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    for entry in container(workload.pod_spec, name).get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[entry["name"]] = _field(workload, index, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            raise KeyError(f"{entry['name']}: valueFrom {sorted(source)} has no stand-in")
    return env


def command_line(workload: Workload, name: str, env: Mapping[str, str]) -> list[str]:
    entry = container(workload.pod_spec, name)
    return [expand(str(a), env) for a in [*entry.get("command", []), *entry.get("args", [])]]


def quantity(value: object) -> float:
    """A Kubernetes quantity ('34Gi', '500m', 4) as a number of bytes or cores."""
    match = _QUANTITY.fullmatch(str(value))
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]
