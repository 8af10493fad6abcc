"""The Indexed Job of k8s/indexed-job.yaml as the Pods `podman kube play` runs (podman 4.3).

podman 4.3 reads Pods only, and of a Pod not everything the kubelet honours. `pod_for_index`
turns the Job's pod template into pod `index` of the job and returns, next to the Pod, one
note per change it made: what it changed and why podman (or this host) needs it. Pure: the
manifest and the local settings in, a new manifest and the notes out; nothing is read or run.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class LocalSite:
    """What this host gives the job in place of a cluster's."""

    sidecar_image: str
    trainer_image: str
    token: str  # the value of the token Secret, which podman cannot read from its document
    pod_addresses: Sequence[str]  # pod i's IP on the podman network (no cluster DNS here)
    shm_dirs: Sequence[str]  # pod i's /dev/shm: a tmpfs on the host, made per pod
    checkpoints_dir: str  # the PVC: one host directory every pod mounts (ReadWriteMany)
    nproc_per_node: int  # no GPUs here: ranks per pod
    script: Sequence[str]  # the training script and its arguments, replacing the example's
    events_dir: str = ""  # optional host directory mounted at /events in the trainer
    namespace: str = "default"
    node_name: str = "localhost"
    sidecar_env: Mapping[str, str] = field(default_factory=dict)  # test settings, added


@dataclass(frozen=True)
class ConvertedPod:
    name: str
    manifest: dict[str, Any]
    notes: list[str]


def job_of(documents: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The one Indexed Job among the manifest's documents."""
    jobs = [d for d in documents if d.get("kind") == "Job"]
    if len(jobs) != 1:
        raise ValueError(f"expected one Job in the manifest, found {len(jobs)}")
    job = jobs[0]
    if job["spec"].get("completionMode") != "Indexed":
        raise ValueError("the Job is not an Indexed Job (spec.completionMode: Indexed)")
    return job


def pod_for_index(job: Mapping[str, Any], index: int, site: LocalSite) -> ConvertedPod:
    """Pod `index` of `job` as podman 4.3 runs it, and a note for every substitution."""
    completions = int(job["spec"]["completions"])
    if not 0 <= index < completions:
        raise ValueError(f"index {index} is outside the Job's {completions} completions")
    if len(site.pod_addresses) != completions or len(site.shm_dirs) != completions:
        raise ValueError(f"the site must give {completions} pod addresses and /dev/shm dirs")
    job_name: str = job["metadata"]["name"]
    name = f"{job_name}-{index}"
    template = copy.deepcopy(job["spec"]["template"])
    spec: dict[str, Any] = template["spec"]
    notes = [
        f"Job -> Pod {name}: podman kube play reads Pods only; the Job controller's part "
        f"(name, hostname, index label and annotation) is done here",
    ]
    metadata = template.setdefault("metadata", {})
    metadata["name"] = name
    labels = metadata.setdefault("labels", {})
    labels.update({JOB_NAME_LABEL: job_name, INDEX_ANNOTATION: str(index)})
    metadata.setdefault("annotations", {})[INDEX_ANNOTATION] = str(index)
    spec["hostname"] = name
    subdomain = spec.pop("subdomain", None)
    peers = {
        f"{job_name}-{i}.{subdomain}" if subdomain else f"{job_name}-{i}": address
        for i, address in enumerate(site.pod_addresses)
    }
    spec["hostAliases"] = [{"ip": ip, "hostnames": [host]} for host, ip in peers.items()]
    notes.append(
        "peer names: no headless Service or cluster DNS; hostAliases (/etc/hosts) give "
        + ", ".join(f"{host}={ip}" for host, ip in peers.items())
        + " (the pods get these IPs with kube play --ip)"
    )
    field_values = {
        "metadata.name": name,
        "metadata.namespace": site.namespace,
        "metadata.uid": f"podman-{name}",
        "spec.nodeName": site.node_name,
        f"metadata.annotations['{INDEX_ANNOTATION}']": str(index),
        f"metadata.labels['{JOB_NAME_LABEL}']": job_name,
    }
    for key in ("terminationGracePeriodSeconds", "serviceAccountName",
                "automountServiceAccountToken"):  # fmt: skip
        if key in spec:
            notes.append(f"spec.{key}={spec.pop(key)} dropped: podman has no use for it")
    sidecars = [c for c in spec.pop("initContainers", []) if c.get("restartPolicy") == "Always"]
    if sidecars:
        notes.append(
            "native sidecar(s) " + ", ".join(c["name"] for c in sidecars) + " moved from "
            "initContainers to the front of containers: podman 4.3 ignores an init container's "
            "restartPolicy: Always and runs it to completion first (the pod hangs); the harness "
            "starts it first and restarts it when killed, as the kubelet would"
        )
        for sidecar in sidecars:
            sidecar.pop("restartPolicy")
    spec["containers"] = [*sidecars, *spec["containers"]]
    for container in spec["containers"]:
        notes += _container(container, index, site, field_values, sidecar=container in sidecars)
    notes += _volumes(spec, index, site)
    return ConvertedPod(name, template_to_pod(template), notes)


def template_to_pod(template: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", **template}


def _container(
    container: dict[str, Any],
    index: int,
    site: LocalSite,
    field_values: Mapping[str, str],
    sidecar: bool,
) -> list[str]:
    name = container["name"]
    notes: list[str] = []
    image = site.sidecar_image if sidecar else site.trainer_image
    notes.append(f"{name}: image {container['image']} -> {image} (built here, no registry)")
    container["image"] = image
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            container.pop(probe)
            notes.append(
                f"{name}: {probe} dropped: podman refuses probes on init containers and ignores "
                "gRPC probes; the trainer waits for the sidecar itself (--supervisor-wait)"
            )
    if container.pop("ports", None):
        notes.append(
            f"{name}: ports dropped: podman 4.3 publishes containerPorts on the host, where "
            "every pod would claim the same ones (the pods reach each other on their own IPs)"
        )
    if container.pop("resources", None):
        notes.append(
            f"{name}: resources dropped: this host has neither the CPUs nor the GPUs asked for "
            "(podman refuses CPU limits above the host's)"
        )
    env: list[dict[str, Any]] = container.setdefault("env", [])
    values: dict[str, str] = {"JOB_COMPLETION_INDEX": str(index)}
    env.insert(0, {"name": "JOB_COMPLETION_INDEX", "value": str(index)})
    notes.append(f"{name}: JOB_COMPLETION_INDEX={index} added (the Job controller's variable)")
    for variable in env[1:]:
        source = variable.pop("valueFrom", None)
        if source is not None:
            variable["value"], why = _resolved(source, field_values, site.token)
            notes.append(f"{name}: {variable['name']} from {why}")
        values[variable["name"]] = variable["value"]
    overrides = dict(site.sidecar_env) if sidecar else {}
    if sidecar and values.get("SUPERVISOR_KUBE_EVENTS") == "on":
        overrides["SUPERVISOR_KUBE_EVENTS"] = "off"
        notes.append(
            f"{name}: SUPERVISOR_KUBE_EVENTS=off: no API server here (the Events path is "
            "tested against tests/kube_api.py instead)"
        )
    for key, value in overrides.items():
        existing = next((v for v in env if v["name"] == key), None)
        if existing is None:
            env.append({"name": key, "value": value})
        else:
            existing["value"] = value
        values[key] = value
    extra = {k: v for k, v in overrides.items() if k != "SUPERVISOR_KUBE_EVENTS"}
    if extra:
        notes.append(f"{name}: test settings " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    if not sidecar:
        notes += _trainer_args(container, site)
    for key in ("command", "args"):
        if key in container:
            expanded = [_expand(arg, values) for arg in container[key]]
            for before, after in zip(container[key], expanded):
                if before != after:
                    notes.append(f"{name}: {before} -> {after}: podman does no $(VAR) expansion")
            container[key] = expanded
    mounts: list[dict[str, Any]] = container.get("volumeMounts", [])
    kept = [m for m in mounts if m["name"] != "kube-api"]
    if len(kept) != len(mounts):
        notes.append(f"{name}: kube-api mount dropped (a projected service account token)")
    if not sidecar and site.events_dir:
        kept.append({"name": "events", "mountPath": "/events"})
        notes.append(f"{name}: /events mounted from the host for the test's assertions")
    container["volumeMounts"] = kept
    return notes


def _resolved(
    source: Mapping[str, Any], field_values: Mapping[str, str], token: str
) -> tuple[str, str]:
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        if path not in field_values:
            raise ValueError(f"no local value for the downward API field {path}")
        return field_values[path], f"fieldRef {path} -> {field_values[path]} (set here)"
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return token, (
            f"secretKeyRef {ref['name']}/{ref['key']} -> the test's token: podman 4.3 cannot "
            "read a Secret document for secretKeyRef"
        )
    raise ValueError(f"unsupported valueFrom: {sorted(source)}")


def _trainer_args(container: dict[str, Any], site: LocalSite) -> list[str]:
    """The example's launcher flags stay; GPUs per pod and the script become this host's."""
    args: list[str] = container.get("args", [])
    first_positional = next((i for i, a in enumerate(args) if not a.startswith("--")), len(args))
    flags = args[:first_positional]
    new = [
        f"--nproc-per-node={site.nproc_per_node}" if a.startswith("--nproc-per-node=") else a
        for a in flags
    ]
    container["args"] = [*new, *site.script]
    return [
        f"{container['name']}: --nproc-per-node={site.nproc_per_node} (no GPUs here) and the "
        f"script {' '.join(args[first_positional:])} -> {' '.join(site.script)}"
    ]


def _expand(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables only; $$ escapes a dollar."""
    parts = text.split("$$")
    expanded = [
        ENV_REFERENCE.sub(lambda m: values.get(m.group(1), m.group(0)), part) for part in parts
    ]
    return "$".join(expanded)


def _volumes(spec: dict[str, Any], index: int, site: LocalSite) -> list[str]:
    notes: list[str] = []
    volumes: list[dict[str, Any]] = []
    for volume in spec.get("volumes", []):
        name = volume["name"]
        if "projected" in volume:
            notes.append(f"volume {name} dropped: podman cannot project a service account token")
            continue
        if volume.get("emptyDir", {}).get("medium") == "Memory":
            path = site.shm_dirs[index]
            volumes.append({"name": name, "hostPath": {"path": path, "type": "Directory"}})
            notes.append(
                f"volume {name}: emptyDir medium Memory -> hostPath {path}, a tmpfs made for "
                "this pod: podman turns it into an on-disk volume owned by root"
            )
            continue
        if "persistentVolumeClaim" in volume:
            path = site.checkpoints_dir
            volumes.append({"name": name, "hostPath": {"path": path, "type": "Directory"}})
            notes.append(
                f"volume {name}: PVC {volume['persistentVolumeClaim']['claimName']} -> hostPath "
                f"{path}, shared by every pod as ReadWriteMany (podman's named volume would be "
                "root's: fsGroup is not applied)"
            )
            continue
        volumes.append(volume)
    if site.events_dir:
        volumes.append(
            {"name": "events", "hostPath": {"path": site.events_dir, "type": "Directory"}}
        )
    spec["volumes"] = volumes
    return notes
