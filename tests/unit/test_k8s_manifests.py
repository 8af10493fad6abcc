"""k8s/: every example validates against Kubernetes' schemas, and configures a working job.

The sidecar's environment of every pod is parsed by the supervisor's own
configuration code, and the trainer's command line by train-launch's parser, so
an example that drifts from the code fails here. Needs PyYAML and
kubernetes-validate (the dev extra); skipped without them, except under CI.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from k8s_examples import (
    K8S_DIR,
    SIDECAR,
    TRAINER,
    Doc,
    Workload,
    all_documents,
    command_line,
    container,
    documents,
    manifest_files,
    pod_env,
    quantity,
    workloads,
)

from launcher.launch.args import build_parser, parse_args
from supervisor.settings.serve import ConfigError, SidecarConfig, parse_config, unknown_variables
from train_supervisor import exit_codes

OLDEST_SUPPORTED = (1, 29)  # native sidecars: SidecarContainers is on by default from 1.29
WORKLOAD_FILES = ("indexed-job.yaml", "jobset.yaml")
SECRET = ("train-demo-token", "token")
STAND_IN_TOKEN = "stand-in-token-0123456789abcdef"
SHM = "/dev/shm"
# JobSet v1alpha2 fields (kubernetes-sigs/jobset api/jobset/v1alpha2/jobset_types.go).
JOBSET_SPEC_FIELDS = {
    "replicatedJobs", "network", "successPolicy", "failurePolicy", "startupPolicy", "suspend",
    "coordinator", "managedBy", "ttlSecondsAfterFinished", "volumeClaimPolicies",
}  # fmt: skip
JOBSET_RJOB_FIELDS = {"name", "groupName", "template", "replicas", "dependsOn"}
JOBSET_ACTIONS = {
    "FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob",
    "RestartJobAndIgnoreMaxRestarts",
}  # fmt: skip
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def needs(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed, but CI installs it (the dev extra)")
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


@pytest.fixture(autouse=True)
def _yaml() -> None:
    needs("yaml")


def supported_versions(validator: ModuleType) -> list[str]:
    """Every Kubernetes minor version the installed schemas cover, from OLDEST_SUPPORTED."""
    shipped = importlib.import_module(f"{validator.__name__}.utils").all_versions()
    minors = {tuple(int(p) for p in v.split(".")[:2]) for v in shipped}
    return [
        f"{major}.{minor}" for major, minor in sorted(minors) if (major, minor) >= OLDEST_SUPPORTED
    ]


def as_job(jobset: Doc, rjob: Doc) -> Doc:
    """A replicatedJob's template as the batch/v1 Job that JobSet creates from it."""
    metadata = {**(rjob["template"].get("metadata") or {})}
    metadata["name"] = f"{jobset['metadata']['name']}-{rjob['name']}-0"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
            "spec": rjob["template"]["spec"]}  # fmt: skip


def secrets() -> dict[tuple[str, str], str]:
    return {SECRET: STAND_IN_TOKEN}


def sidecar_config(workload: Workload, index: int) -> tuple[SidecarConfig, dict[str, str]]:
    env = pod_env(workload, SIDECAR, index, secrets())
    assert unknown_variables(env) == [], f"{workload.source}: unknown SUPERVISOR_* variables"
    return parse_config(env), env


def of_file(name: str) -> list[Workload]:
    found = [w for w in workloads() if w.source.startswith(f"{name}:")]
    assert found, f"no workload in k8s/{name}"
    return found


def port_named(entry: Doc, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in entry.get("ports", [])}
    return int(ports[name])


def failure_action(job_spec: Doc, code: int) -> str:
    """What the Job's podFailurePolicy does when the trainer exits with `code`."""
    for rule in job_spec["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes and codes["operator"] == "In" and code in codes["values"]:
            assert codes["containerName"] == TRAINER
            return str(rule["action"])
    return "Count"  # no rule: counts against backoffLimit


# ------------------------------------------------------------------ schemas
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    validator = needs("kubernetes_validate")
    versions = supported_versions(validator)
    assert versions and versions[0] == "1.29", f"schemas shipped: {versions}"
    failures, checked = [], 0
    for doc in documents(path):
        # A CRD has no official schema: validate what JobSet creates, a batch/v1 Job.
        if doc["kind"] == "JobSet":
            targets = [as_job(doc, rjob) for rjob in doc["spec"]["replicatedJobs"]]
        else:
            targets = [doc]
        for target in targets:
            for version in versions:
                checked += 1
                try:
                    validator.validate(target, version, strict=True)
                except Exception as err:
                    where = ".".join(str(p) for p in getattr(err, "path", ()))
                    why = getattr(err, "message", None) or str(err).splitlines()[0]
                    failures.append(f"{target['kind']} on {version}: {where}: {why}"[:300])
    assert checked > 0
    assert failures == []


def test_the_jobset_fields_the_schemas_cannot_check() -> None:
    jobsets = [doc for _, doc in all_documents() if doc["kind"] == "JobSet"]
    assert jobsets
    for jobset in jobsets:
        assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
        spec = jobset["spec"]
        assert set(spec) <= JOBSET_SPEC_FIELDS
        network = spec["network"]
        assert set(network) <= {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}
        assert network["enableDNSHostnames"] is True  # pods reach each other by name
        assert network.get("publishNotReadyAddresses", True) is True  # before Ready, too
        assert spec["successPolicy"]["operator"] in ("All", "Any")
        failure = spec["failurePolicy"]
        assert isinstance(failure["maxRestarts"], int) and failure["maxRestarts"] >= 0
        for rule in failure.get("rules", []):
            assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", rule["name"])
            assert rule["action"] in JOBSET_ACTIONS
        # The supervisor gave up (a podFailurePolicy FailJob): recreating the pods
        # would only fail the same way.
        gave_up = [r for r in failure["rules"] if "PodFailurePolicy" in r["onJobFailureReasons"]]
        assert [r["action"] for r in gave_up] == ["FailJobSet"]
        for rjob in spec["replicatedJobs"]:
            assert set(rjob) <= JOBSET_RJOB_FIELDS
            # One Job of N pods: its completion index is the pod's node rank.
            assert rjob.get("replicas", 1) == 1
    for workload in workloads():
        last = workload.hostname(workload.job_spec["completions"] - 1)
        assert DNS_LABEL.fullmatch(last) and DNS_LABEL.fullmatch(workload.subdomain), last


# ------------------------------------------------- the configuration they make
@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_every_pods_sidecar_env_is_a_complete_valid_configuration(name: str) -> None:
    for workload in of_file(name):
        spec, sidecar = workload.job_spec, container(workload.pod_spec, SIDECAR)
        nnodes = spec["completions"]
        assert spec["parallelism"] == nnodes
        for index in range(nnodes):
            config, env = sidecar_config(workload, index)
            assert (config.nnodes, config.node_rank) == (nnodes, index)
            assert config.token == STAND_IN_TOKEN
            # Every pod finds every other at its headless-Service DNS name.
            peers = [config.peer_address(i) for i in range(nnodes)]
            wanted = [f"{workload.hostname(i)}.{workload.subdomain}:{config.port}"
                      for i in range(nnodes)]  # fmt: skip
            assert peers == wanted
            assert config.port == port_named(sidecar, "grpc")
            for probe in ("startupProbe", "livenessProbe"):
                assert sidecar[probe]["grpc"]["port"] == config.port
            metrics_port = config.outputs.metrics_port
            assert metrics_port == port_named(sidecar, "metrics")
            annotations = workload.pod_metadata.get("annotations", {})
            assert annotations.get("prometheus.io/port") == str(metrics_port)
            assert config.outputs.log_format == "json"
            mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
            durable = config.offload.durable_dir
            assert durable is not None and mounts[str(durable)] == "checkpoints"
            assert config.offload.persist_every_s > 0 or config.offload.persist_every_steps > 0
            assert config.termination_log == sidecar["terminationMessagePath"]
            assert "SUPERVISOR_NODE_RANK" not in env  # JOB_COMPLETION_INDEX says it


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_the_trainer_command_line_agrees_with_the_sidecar(name: str, tmp_path: Path) -> None:
    for workload in of_file(name):
        trainer = container(workload.pod_spec, TRAINER)
        gpus = int(trainer["resources"]["limits"]["nvidia.com/gpu"])
        grace = workload.pod_spec["terminationGracePeriodSeconds"]
        for index in range(workload.job_spec["completions"]):
            sidecar, _ = sidecar_config(workload, index)
            env = pod_env(workload, TRAINER, index, secrets())
            argv = command_line(workload, TRAINER, env)
            assert not [a for a in argv if "$(" in a], f"unresolved variables in {argv}"
            assert argv[0] == "train-launch"
            # The script lives in the training image: a stand-in file of the same name.
            script = build_parser(env).parse_args(argv[1:]).training_script
            stand_in = tmp_path / Path(script).name
            stand_in.write_text("print('training')\n")
            argv[argv.index(script)] = str(stand_in)
            launch = parse_args(argv[1:], env, cpu_count=64, gpu_count=gpus)
            assert not launch.standalone
            assert (launch.nnodes, launch.node_rank) == (sidecar.nnodes, sidecar.node_rank)
            assert launch.nproc_per_node == gpus
            assert launch.supervisor_address == sidecar.local_address
            assert launch.run_id == workload.job_name  # one run id on every pod
            assert unknown_variables(env) == []
            assert env["SUPERVISOR_TOKEN"] == sidecar.token
            assert env["TRAIN_LAUNCH_TERMINATION_LOG"] == trainer["terminationMessagePath"]
            # Workers get --term-timeout after SIGTERM; the supervisor then persists.
            assert grace >= launch.term_timeout + 60


# ----------------------------------------------- what the pod template encodes
@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_the_pod_template_encodes_the_supervisors_needs(name: str) -> None:
    for workload in of_file(name):
        spec, pod = workload.job_spec, workload.pod_spec
        sidecar, trainer = container(pod, SIDECAR), container(pod, TRAINER)
        assert spec["completionMode"] == "Indexed"
        # A native sidecar: an init container that runs for the pod's life.
        assert sidecar in pod["initContainers"] and sidecar["restartPolicy"] == "Always"
        assert trainer in pod["containers"] and "restartPolicy" not in trainer
        assert pod["shareProcessNamespace"] is True  # it sees and signals the workers
        assert "SYS_PTRACE" in sidecar["securityContext"]["capabilities"]["add"]  # py-spy
        assert pod["enableServiceLinks"] is False
        assert pod["terminationGracePeriodSeconds"] >= 120
        shm = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert len(shm) == 1 and shm[0]["emptyDir"]["medium"] == "Memory"
        shm_bytes = quantity(shm[0]["emptyDir"]["sizeLimit"])
        for entry in (sidecar, trainer):
            assert {"name": "shm", "mountPath": SHM} in entry["volumeMounts"]
            assert entry["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert entry["securityContext"]["allowPrivilegeEscalation"] is False
            assert "runAsUser" not in entry["securityContext"]  # the pod's UID for both
            requests, limits = entry["resources"]["requests"], entry["resources"]["limits"]
            for resource in ("cpu", "memory"):  # Guaranteed QoS
                assert quantity(requests[resource]) == quantity(limits[resource]) > 0
        # tmpfs pages count against the containers' memory limits: a larger /dev/shm
        # could never fill.
        memory = sum(quantity(e["resources"]["limits"]["memory"]) for e in (sidecar, trainer))
        assert shm_bytes <= memory
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
        if "nvidia.com/gpu" in trainer["resources"]["limits"]:  # NVML health in the sidecar
            assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in sidecar["env"]


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_the_pod_failure_policy_acts_on_the_launchers_exit_codes(name: str) -> None:
    for workload in of_file(name):
        spec = workload.job_spec
        assert workload.pod_spec["restartPolicy"] == "Never"  # podFailurePolicy needs it
        assert spec["podReplacementPolicy"] == "Failed"
        assert isinstance(spec["backoffLimit"], int)
        assert failure_action(spec, exit_codes.REPLACE_POD) == "Ignore"  # the job goes on
        assert failure_action(spec, exit_codes.GAVE_UP) == "FailJob"
        assert failure_action(spec, exit_codes.USAGE_ERROR) == "FailJob"
        assert failure_action(spec, exit_codes.TERMINATED) == "Count"
        disruption = [
            r["action"]
            for r in spec["podFailurePolicy"]["rules"]
            if {"type": "DisruptionTarget", "status": "True"} in r.get("onPodConditions", [])
        ]
        assert disruption == ["Ignore"]


def test_the_headless_service_names_the_indexed_jobs_pods() -> None:
    docs = [doc for _, doc in all_documents()]
    jobs = [w for w in workloads() if w.source.endswith(":Job")]
    assert jobs
    for workload in jobs:
        services = [d for d in docs if d["kind"] == "Service"]
        service = next(s for s in services if s["metadata"]["name"] == workload.subdomain)
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        pod_labels = {"batch.kubernetes.io/job-name": workload.job_name,
                      **workload.pod_metadata.get("labels", {})}  # fmt: skip
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_jobset_runs_the_indexed_jobs_pods() -> None:
    """One pod template in two files: they differ only in the names JobSet gives."""

    def normalized(workload: Workload) -> Any:
        spec = copy.deepcopy(workload.job_spec)
        pod = spec["template"]["spec"]
        pod.pop("subdomain", None)  # JobSet sets it
        for entry in pod["initContainers"]:
            for var in entry.get("env", []):
                if var["name"] == "SUPERVISOR_PEER_ADDRESS_TEMPLATE":
                    var["value"] = "<peers>"
        return spec

    job, jobset = of_file("indexed-job.yaml")[0], of_file("jobset.yaml")[0]
    assert normalized(job) == normalized(jobset)


def test_the_example_secret_feeds_the_token_and_refuses_its_placeholder() -> None:
    secrets_found = [d for _, d in all_documents() if d["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets_found] == [SECRET[0]]
    placeholder = secrets_found[0]["stringData"][SECRET[1]]
    for workload in workloads():
        for name in (SIDECAR, TRAINER):
            for var in container(workload.pod_spec, name).get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert (ref["name"], ref["key"]) == SECRET
    # Applied unedited, the example cannot run with a token anyone can read.
    with pytest.raises(ConfigError, match="SUPERVISOR_TOKEN"):
        parse_config({"SUPERVISOR_TOKEN": placeholder})


def test_every_pod_mounts_one_shared_pvc() -> None:
    claims = [d for _, d in all_documents() if d["kind"] == "PersistentVolumeClaim"]
    assert len(claims) == 1
    # A replacement pod lands on another node and reads its predecessor's steps.
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    for workload in workloads():
        volume = next(v for v in workload.pod_spec["volumes"] if v["name"] == "checkpoints")
        assert volume["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]


def test_the_workload_files_are_all_the_workloads() -> None:
    found = {w.source.split(":")[0] for w in workloads()}
    assert found == set(WORKLOAD_FILES)
    assert {p.parent for p in manifest_files()} == {K8S_DIR}


# ------------------------------------------------------ the Kubernetes API access
def rbac(name: str) -> dict[str, Doc]:
    return {doc["kind"]: doc for doc in documents(K8S_DIR / name)}


def granted(role: Doc) -> set[tuple[str, str]]:
    return {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_only_the_sidecar_gets_the_token_its_events_need(name: str) -> None:
    events = rbac("rbac-events.yaml")
    account = events["ServiceAccount"]["metadata"]["name"]
    assert granted(events["Role"]) == {("events", "create"), ("events", "patch")}
    assert events["RoleBinding"]["subjects"][0]["name"] == account
    for workload in of_file(name):
        pod = workload.pod_spec
        assert pod["serviceAccountName"] == account
        assert pod["automountServiceAccountToken"] is False  # the trainer never gets it
        token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
        for entry, mounted in ((container(pod, SIDECAR), True), (container(pod, TRAINER), False)):
            paths = {m["mountPath"] for m in entry.get("volumeMounts", [])}
            assert (token_dir in paths) is mounted
        config, _ = sidecar_config(workload, 1)
        kube = config.kube
        assert kube.events and not kube.node_condition and not kube.node_taint
        assert kube.pod is not None and kube.api is not None
        assert kube.pod.name.startswith(workload.hostname(1)) and kube.pod.uid
        assert kube.pod.node == "node-1"
        assert kube.api.token_file == f"{token_dir}/token"
        assert kube.api.ca_file == f"{token_dir}/ca.crt"


def test_the_node_cluster_role_grants_the_condition_and_the_taint_only() -> None:
    node = rbac("rbac-node.yaml")
    assert granted(node["ClusterRole"]) == {
        ("nodes/status", "patch"),
        ("nodes", "get"),
        ("nodes", "patch"),
    }
    account = rbac("rbac-events.yaml")["ServiceAccount"]["metadata"]["name"]
    assert node["ClusterRoleBinding"]["subjects"][0]["name"] == account
