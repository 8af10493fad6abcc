"""tools/containers/pod_convert.py: the Indexed Job's pod template as podman 4.3's Pods.

Run on the real k8s/indexed-job.yaml: every substitution podman needs is made and noted, and
nothing else of the template changes.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "containers"))
from images import PipSources, parse_pip_config
from pod_convert import LocalSite, job_of, pod_for_index

REPO = Path(__file__).resolve().parents[2]

SITE = LocalSite(
    sidecar_image="localhost/train-supervisor:0.1.0",
    trainer_image="localhost/trainer:1",
    token="t" * 32,
    pod_addresses=["10.89.77.10", "10.89.77.11"],
    shm_dirs=["/run/shm-0", "/run/shm-1"],
    checkpoints_dir="/srv/checkpoints",
    nproc_per_node=2,
    script=["/workspace/train.py", "--steps", "30"],
    events_dir="/srv/events",
    sidecar_env={"SUPERVISOR_HEARTBEAT_TIMEOUT_S": "5"},
)


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return dict(job_of(list(yaml.safe_load_all((REPO / "k8s/indexed-job.yaml").read_text()))))


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def env(container: dict[str, Any]) -> dict[str, str]:
    assert all("valueFrom" not in v for v in container["env"]), "podman gets literal values"
    return {v["name"]: v["value"] for v in container["env"]}


def test_pod_i_of_the_job_is_named_and_indexed_as_the_job_controller_does(job: Any) -> None:
    pod = pod_for_index(job, 1, SITE)
    assert pod.name == "train-demo-1" and pod.manifest["kind"] == "Pod"
    meta, spec = pod.manifest["metadata"], pod.manifest["spec"]
    assert meta["name"] == "train-demo-1" and spec["hostname"] == "train-demo-1"
    assert meta["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
    assert meta["labels"]["batch.kubernetes.io/job-name"] == "train-demo"
    for container in containers(pod.manifest).values():
        assert env(container)["JOB_COMPLETION_INDEX"] == "1"


def test_the_native_sidecar_runs_first_as_a_regular_container_without_probes(job: Any) -> None:
    pod = pod_for_index(job, 0, SITE)
    spec = pod.manifest["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["supervisor", "trainer"]
    sidecar = spec["containers"][0]
    assert sidecar["image"] == SITE.sidecar_image
    for key in ("restartPolicy", "startupProbe", "livenessProbe", "ports", "resources"):
        assert key not in sidecar, key
    assert any("native sidecar" in note for note in pod.notes)


def test_var_references_in_args_are_expanded_and_the_script_is_this_hosts(job: Any) -> None:
    pod = pod_for_index(job, 1, SITE)
    trainer = containers(pod.manifest)["trainer"]
    assert trainer["args"] == [
        "--nnodes=2", "--node-rank=1", "--nproc-per-node=2", "--max-restarts=10",
        "--rdzv-id=train-demo", "--supervisor-address=127.0.0.1:29400",
        "/workspace/train.py", "--steps", "30",
    ]  # fmt: skip
    assert "--node-rank=$(NODE_RANK) -> --node-rank=1" in " ".join(pod.notes)
    assert env(trainer)["NODE_RANK"] == "1" and env(trainer)["RUN_ID"] == "train-demo"


def test_secret_and_downward_api_values_are_literal_and_events_off(job: Any) -> None:
    pod = pod_for_index(job, 0, SITE)
    sidecar, trainer = containers(pod.manifest)["supervisor"], containers(pod.manifest)["trainer"]
    assert env(sidecar)["SUPERVISOR_TOKEN"] == env(trainer)["SUPERVISOR_TOKEN"] == SITE.token
    assert SITE.token not in " ".join(pod.notes), "the token itself is never printed"
    assert env(sidecar)["POD_NAME"] == "train-demo-0"
    assert env(sidecar)["SUPERVISOR_KUBE_EVENTS"] == "off"
    assert env(sidecar)["SUPERVISOR_HEARTBEAT_TIMEOUT_S"] == "5"
    # The example's own settings reach the sidecar unchanged.
    assert env(sidecar)["SUPERVISOR_PEER_ADDRESS_TEMPLATE"] == "train-demo-{index}.train-demo:29400"
    assert env(sidecar)["SUPERVISOR_NNODES"] == "2"


def test_peers_resolve_through_host_aliases_and_shm_is_the_pods_own_tmpfs(job: Any) -> None:
    pod = pod_for_index(job, 1, SITE)
    spec = pod.manifest["spec"]
    assert spec["hostAliases"] == [
        {"ip": "10.89.77.10", "hostnames": ["train-demo-0.train-demo"]},
        {"ip": "10.89.77.11", "hostnames": ["train-demo-1.train-demo"]},
    ]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"] == {
        "name": "shm",
        "hostPath": {"path": "/run/shm-1", "type": "Directory"},
    }
    assert volumes["checkpoints"]["hostPath"]["path"] == "/srv/checkpoints"
    assert "kube-api" not in volumes
    mounts = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
    assert mounts == {"shm", "checkpoints", "events"}


def test_every_change_is_noted_and_the_template_is_left_alone(job: Any) -> None:
    before = copy.deepcopy(job)
    pod = pod_for_index(job, 0, SITE)
    assert job == before, "a pure function: the Job it was given is unchanged"
    text = "\n".join(pod.notes)
    for said in ("hostAliases", "$(VAR)", "tmpfs", "secretKeyRef", "publishes containerPorts",
                 "probes", "native sidecar", "JOB_COMPLETION_INDEX"):  # fmt: skip
        assert said in text, said
    # What podman honours as written stays as written.
    spec = pod.manifest["spec"]
    assert spec["shareProcessNamespace"] is True and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsUser"] == 10001


def test_bad_input_is_one_clear_error(job: Any) -> None:
    with pytest.raises(ValueError, match="outside the Job's 2 completions"):
        pod_for_index(job, 2, SITE)
    with pytest.raises(ValueError, match="expected one Job"):
        job_of([{"kind": "Service"}])
    not_indexed = copy.deepcopy(job)
    not_indexed["spec"]["completionMode"] = "NonIndexed"
    with pytest.raises(ValueError, match="not an Indexed Job"):
        job_of([not_indexed])


def test_the_hosts_pip_sources_are_read_from_pip_config_list() -> None:
    listing = "\n".join([
        ":env:.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.extra-index-url='file:///opt/pypi/simple https://example.org/simple'",
    ])  # fmt: skip
    sources = parse_pip_config(listing)
    assert sources == PipSources(
        find_links=("/opt/wheels",),
        extra_index_urls=("file:///opt/pypi/simple", "https://example.org/simple"),
    )
    assert sources.local_dirs() == ["/opt/pypi", "/opt/wheels"]
    conf = sources.pip_conf("https://download.pytorch.org/whl/cpu")
    assert "find-links = /opt/wheels" in conf
    assert conf.rstrip().endswith("https://example.org/simple https://download.pytorch.org/whl/cpu")


def test_an_escaped_reference_stays_literal_and_an_unknown_one_unexpanded(job: Any) -> None:
    edited = copy.deepcopy(job)
    trainer = edited["spec"]["template"]["spec"]["containers"][0]
    trainer["args"] = ["--a=$$(NODE_RANK)", "--b=$(NOT_SET)", "--c=$(NODE_RANK)", "train.py"]
    args = containers(pod_for_index(edited, 1, SITE).manifest)["trainer"]["args"]
    assert args[:3] == ["--a=$(NODE_RANK)", "--b=$(NOT_SET)", "--c=1"], "as Kubernetes does"
