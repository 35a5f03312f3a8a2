"""The cluster launchers in cluster/: what can be checked without a cloud account, a Kubernetes
cluster or a SLURM installation.

- `ray up` configs (aws.yaml, local.yaml) go through Ray's own preparation and validation, the
  code `ray up` runs before it touches a cloud; for `local` also the provider's bootstrap. (For
  AWS the rest of `ray up`'s bootstrap, resources from EC2, IAM, key pairs, subnets, needs AWS
  credentials and is not run.) Then what the configs promise: a head that runs no trials, 1-GPU
  workers that autoscale, token authentication on every `ray start`, the project installed, the
  shared storage mounted.
- The KubeRay manifests: a GPU worker group, a trial-free head, token auth via authOptions, and a
  RayJob whose entrypoint, parsed by tune-hand's own CLI, runs a resumable sweep on the volume.
- The SLURM script: `bash -n`, shellcheck (required where TUNE_HAND_REQUIRE_SHELLCHECK=1, as in
  CI), and runs of the real script under stand-ins for srun, scontrol, ray and tune-hand.
- The Dockerfile and the docker commands cluster/README.md shows.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tune_hand.sweep import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_UP = {"aws": CLUSTER / "aws.yaml", "local": CLUSTER / "local.yaml"}
KUBERAY = CLUSTER / "kuberay"
SBATCH = CLUSTER / "slurm" / "tune-hand.sbatch"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"
PAPER = load_spec("paper")  # the sweep these clusters are sized for


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def image() -> str:
    """The image every config runs: aws.yaml's, which the other configs must repeat."""
    return load_yaml(RAY_UP["aws"])["docker"]["image"]


def pinned(text: str, package: str) -> str:
    """The version `package==X` is pinned to in `text` (a pip command or a Makefile)."""
    found = set(re.findall(rf"(?<![\w-]){re.escape(package)}(?:\[[\w,]+\])?==([\w.+]+)", text))
    assert len(found) == 1, f"{package}: expected one pinned version, found {found or 'none'}"
    return found.pop()


# -- ray up ---------------------------------------------------------------------------------------
def prepared(name: str) -> dict:
    """A ray up config as `ray up` prepares and validates it (ray.autoscaler._private.commands)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_yaml(RAY_UP[name]))
    validate_config(config)
    return config


def head_and_workers(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {k: v for k, v in types.items() if k != head}


def ray_starts(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bray start\b", c)]


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_passes_rays_validator(name):
    config = prepared(name)
    assert config["cluster_name"].startswith("tune-hand")
    if name == "local":
        # The local provider's whole bootstrap is offline: run it as `ray up` does.
        from ray.autoscaler._private.commands import _bootstrap_config

        bootstrapped = _bootstrap_config(load_yaml(RAY_UP[name]), no_config_cache=True)
        assert bootstrapped["provider"]["worker_ips"]


@pytest.mark.parametrize("name", RAY_UP)
def test_every_command_is_valid_bash(name):
    config = prepared(name)
    keys = ["initialization_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    for key in keys:
        for command in config[key]:
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{name}.{key}: {command!r}: {result.stderr}"


@pytest.mark.parametrize("name", RAY_UP)
def test_head_runs_no_trials(name):
    config = prepared(name)
    (head_start,) = ray_starts(config["head_start_ray_commands"])
    assert "--head" in head_start
    assert "--num-gpus=0" in head_start.split() and "--num-cpus=0" in head_start.split()
    head, _ = head_and_workers(config)
    if name == "aws":  # what the autoscaler believes the head offers
        assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert PAPER.resources["gpu"] >= 1, "trials that ask for no GPU could land on the head's CPUs"


def test_aws_workers_have_one_gpu_each_and_autoscale():
    config = prepared("aws")
    _, workers = head_and_workers(config)
    (worker,) = workers.values()
    assert worker["resources"]["GPU"] == 1
    assert 0 == worker["min_workers"] < worker["max_workers"]
    # As many workers as trials the paper sweep runs at once, and a trial fits on one worker.
    assert worker["max_workers"] == config["max_workers"] == PAPER.max_concurrent_trials
    assert PAPER.resources["gpu"] <= worker["resources"]["GPU"]
    assert PAPER.resources["cpu"] <= worker["resources"]["CPU"]
    (worker_start,) = ray_starts(config["worker_start_ray_commands"])
    assert "--num-gpus" not in worker_start, "workers advertise the GPUs they have"
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance family


def test_local_workers_advertise_their_gpus():
    config = prepared("local")
    (worker_start,) = ray_starts(config["worker_start_ray_commands"])
    assert "--num-gpus" not in worker_start and "--num-cpus" not in worker_start
    (node_type,) = config["available_node_types"].values()
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("name", RAY_UP)
def test_token_auth_on_every_ray_start(name):
    config = prepared(name)
    starts = ray_starts(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"(^|[;&\s])RAY_AUTH_MODE=token ray start\b", command), command
    # Every node gets the token file of the machine running `ray up`, readable by its owner only.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"]["~/.config/tune-hand/key"] == "~/.config/tune-hand/key"  # the sweep key
    assert any("chmod 600 ~/.ray/auth_token" in c for c in config["setup_commands"])
    # ... and no token is written in the config.
    text = RAY_UP[name].read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text)
    if name == "aws":  # the container's environment: `ray exec`, the autoscaler, job drivers
        assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_aws_installs_the_project_with_the_image():
    config = prepared("aws")
    assert config["docker"]["image"] == image()
    registry = image().split("/")[0]
    login = [c for c in config["initialization_commands"] if "docker login" in c]
    assert login and registry in login[0], "the nodes log in to the registry the image is in"


def test_local_installs_the_project_from_this_repository():
    config = prepared("local")
    pips = " ".join(c for c in config["setup_commands"] if "pip install" in c)
    assert pinned(pips, "torch") == pinned((ROOT / "Makefile").read_text(), "torch")
    assert pinned(pips, "ray") == ray_version()
    assert "~/tune-hand " in pips + " "
    sources = {v for k, v in config["file_mounts"].items() if k.startswith("~/tune-hand/")}
    assert sources == dockerfile_copies(), "the same files as the image"


@pytest.mark.parametrize("name", RAY_UP)
def test_data_and_sweeps_on_shared_storage(name):
    config = prepared(name)
    if name == "aws":
        assert "--volume /data:/data" in config["docker"]["run_options"]
        mount = next(c for c in config["initialization_commands"] if "mount -t nfs4" in c)
        assert re.search(r"fs-\w+\.efs\.[\w-]+\.amazonaws\.com:/ /data\b", mount)
    else:
        check = config["setup_commands"][0]
        assert "test -d /data/freihand" in check and "test -d /data/sweeps" in check
    assert "--data /data/freihand --storage /data/sweeps" in RAY_UP[name].read_text()


# -- KubeRay --------------------------------------------------------------------------------------
def manifests() -> dict[str, dict]:
    """kind -> document, over every manifest in cluster/kuberay (each kind once)."""
    docs = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"{path}: a second {doc['kind']}"
            docs[doc["kind"]] = doc
    return docs


# Fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1), to catch a misspelt key that the
# API server would silently prune.
RAYCLUSTER_FIELDS = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
                     "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                     "headGroupSpec", "rayVersion", "workerGroupSpecs"}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                       "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
RAYJOB_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                 "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                 "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                 "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}


def cluster_specs() -> dict[str, dict]:
    docs = manifests()
    return {"RayCluster": docs["RayCluster"]["spec"], "RayJob": docs["RayJob"]["spec"]["rayClusterSpec"]}


def test_manifests_parse():
    docs = manifests()
    assert set(docs) == {"StorageClass", "PersistentVolumeClaim", "RayCluster", "RayJob"}
    assert docs["RayCluster"]["apiVersion"] == docs["RayJob"]["apiVersion"] == "ray.io/v1"
    assert set(docs["RayJob"]["spec"]) <= RAYJOB_FIELDS
    for spec in cluster_specs().values():
        assert set(spec) <= RAYCLUSTER_FIELDS
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
        for group in spec["workerGroupSpecs"]:
            assert set(group) <= WORKER_GROUP_FIELDS


def test_rayjob_brings_up_the_same_cluster_as_raycluster():
    specs = cluster_specs()
    assert specs["RayJob"] == specs["RayCluster"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_head_runs_no_trials_and_workers_have_one_gpu(kind):
    spec = cluster_specs()[kind]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert 0 == group["minReplicas"] < group["maxReplicas"] == PAPER.max_concurrent_trials
    (worker,) = group["template"]["spec"]["containers"]
    limits = worker["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1 == PAPER.resources["gpu"]
    assert int(limits["cpu"]) >= PAPER.resources["cpu"]
    # KubeRay takes num-gpus/num-cpus from the limits unless rayStartParams overrides them.
    assert "num-gpus" not in group["rayStartParams"] and "num-cpus" not in group["rayStartParams"]
    for container in (head, worker):
        assert container["image"] == image()


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_token_auth(kind):
    spec = cluster_specs()[kind]
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"] == ray_version()  # token auth needs Ray >= 2.52
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}, "the operator sets these from its Secret"


def volume_mounts(spec: dict) -> list[tuple[str, str]]:
    """(claim name, mount path) of every PVC mounted by every Ray container of a cluster spec."""
    out = []
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            out += [(claims[m["name"]], m["mountPath"]) for m in container["volumeMounts"] if m["name"] in claims]
    return out


def test_rayjob_runs_a_resumable_sweep_on_the_shared_volume():
    from tune_hand.cli import build_parser
    from tune_hand.cli.sweep import cmd_search

    docs = manifests()
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == docs["StorageClass"]["metadata"]["name"]
    mounts = set(volume_mounts(docs["RayJob"]["spec"]["rayClusterSpec"]))
    assert mounts == {(pvc["metadata"]["name"], "/data")}, "one shared volume, at /data on every pod"

    argv = shlex.split(docs["RayJob"]["spec"]["entrypoint"])
    assert argv[0] == "tune-hand"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_search and args.spec == "paper"
    assert args.name, "a fixed --name: re-creating the RayJob resumes that sweep"
    assert args.address == "auto", "the driver joins the job's cluster, not a Ray of its own"
    for path in (args.data, args.storage):
        assert Path(path).is_relative_to("/data"), f"{path}: not on the shared volume"
    assert docs["RayJob"]["spec"]["backoffLimit"] >= 1  # a retry re-runs the entrypoint: it resumes
    assert docs["RayJob"]["metadata"]["name"].endswith(args.name)


# -- SLURM ----------------------------------------------------------------------------------------
def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_sbatch_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("TUNE_HAND_REQUIRE_SHELLCHECK") == "1":
            pytest.fail("shellcheck is not installed (apt-get install -y shellcheck)")
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); CI requires it")
    result = subprocess.run(["shellcheck", "--shell=bash", str(SBATCH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def sbatch_options() -> list[str]:
    return [line.split(None, 1)[1].strip() for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH ")]


def test_sbatch_requeues_itself_before_the_time_limit():
    options = sbatch_options()
    assert "--requeue" in options
    (signal_option,) = [o for o in options if o.startswith("--signal=")]
    assert re.fullmatch(r"--signal=B:USR1@\d+", signal_option), "USR1 to the batch shell, before the limit"
    assert "--open-mode=append" in options


# Stand-ins: srun runs its command here, as if on the node named by -w, and records both; the
# others record their arguments with the node, RAY_AUTH_MODE and a digest of RAY_AUTH_TOKEN.
RECORD = r'''
record() {  # one line, one write: the stand-ins run concurrently
    local token_digest line
    token_digest=$(printf %s "${RAY_AUTH_TOKEN:-}" | sha256sum | cut -c1-16)
    line=$(printf '%q %q %q %q' "$(basename "$0")" "${SRUN_NODE:-batch}" "${RAY_AUTH_MODE:-}" "$token_digest"
           printf ' %q' "$@")
    printf '%s\n' "$line" >> "$FAKE_LOG"
}
record "$@"
'''
SHIMS = {
    "bin/srun": RECORD + r'''
node=
while (( $# )); do
    case $1 in
        -w) node=$2; shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
SRUN_NODE=$node exec "$@"
''',
    "bin/scontrol": RECORD + r'''
if [[ $1 == show && $2 == hostnames ]]; then printf '%s\n' $FAKE_NODES; fi
''',
    "venv/bin/ray": RECORD + r'''
case $1 in
    start)
        if [[ " $* " == *" --block "* ]]; then
            trap 'kill "$sleeper"; exit 0' TERM
            sleep 600 & sleeper=$!
            wait "$sleeper"
        fi ;;
    status)  # as Ray: only the GPUs of workers that have joined (started); like a real `ray
        # status` it takes a moment, here up to 2 s for the workers the allocation has
        nodes=($FAKE_NODES)
        for _ in $(seq 40); do
            joined=$(awk '$1 == "ray" && $5 == "start" && /--address=/' "$FAKE_LOG" | wc -l)
            (( joined >= ${#nodes[@]} )) && break
            sleep 0.05
        done
        printf ' 0.0/%s.0 GPU\n' "$(( joined * FAKE_GPUS_PER_NODE ))" ;;
esac
''',
    "venv/bin/tune-hand": RECORD + r'''
if [[ -n ${FAKE_DRIVER_WAITS:-} ]]; then
    trap 'echo stopped >> "$FAKE_LOG.driver"; kill "$sleeper"; exit 0' USR1
    sleep 600 & sleeper=$!
    echo started >> "$FAKE_LOG.driver"
    wait "$sleeper"
fi
exit "${FAKE_DRIVER_STATUS:-0}"
''',
}


class FakeSlurm:
    """The sbatch script run as job 4242 on `nodes` (the first runs the script), 4 GPUs each."""

    def __init__(self, tmp: Path, nodes=("gpu01", "gpu02"), gpus=4):
        self.tmp, self.nodes, self.log = tmp, nodes, tmp / "calls.log"
        for name, body in SHIMS.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/usr/bin/env bash\n" + body)
            path.chmod(0o755)
        (tmp / "data").mkdir()
        (tmp / "data" / "training_K.json").write_text("[]")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM", "TUNE_HAND"))}
        env.update(PATH=f"{tmp / 'bin'}:{env['PATH']}", HOME=str(tmp / "home"), FAKE_LOG=str(self.log),
                   FAKE_NODES=" ".join(nodes), FAKE_GPUS_PER_NODE=str(gpus),
                   SLURM_JOB_ID="4242", SLURM_JOB_NODELIST=f"gpu[01-{len(nodes):02d}]", SLURMD_NODENAME=nodes[0],
                   SLURM_CPUS_ON_NODE="32", SLURM_GPUS_ON_NODE=str(gpus), SLURM_SUBMIT_DIR=str(tmp),
                   TUNE_HAND_NAME="paper-1", TUNE_HAND_DATA=str(tmp / "data"),
                   TUNE_HAND_STORAGE=str(tmp / "sweeps"), TUNE_HAND_VENV=str(tmp / "venv"),
                   TUNE_HAND_HEAD_IP="10.9.8.7")
        self.env = env

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(SBATCH), *args], env={**self.env, **env}, cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def run(self, *args: str, **env: str) -> tuple[int, str]:
        proc = self.start(*args, **env)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            self.kill(proc)
        return proc.returncode, out

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """Whatever the script left behind (nothing, if it works): its whole process session."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def calls(self, tool: str | None = None) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            name, node, mode, digest, *args = shlex.split(line)
            if tool in (None, name):
                out.append({"tool": name, "node": node, "auth": mode, "token": digest, "args": args})
        return out

    def token_file(self) -> Path:
        return self.tmp / "home" / ".tune-hand" / "slurm" / "4242" / "ray_auth_token"

    def wait_for(self, path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert proc.poll() is None, f"the script ended early, with status {proc.returncode}"
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.05)


def ray_starts_by_node(slurm: FakeSlurm) -> tuple[dict, list[dict]]:
    starts = [c for c in slurm.calls("ray") if c["args"][:1] == ["start"]]
    heads = [c for c in starts if "--head" in c["args"]]
    assert len(heads) == 1
    return heads[0], [c for c in starts if "--head" not in c["args"]]


def test_sbatch_starts_ray_across_the_allocation_and_runs_the_sweep(tmp_path):
    slurm = FakeSlurm(tmp_path)
    code, out = slurm.run("--samples", "32")
    assert code == 0, out

    head, workers = ray_starts_by_node(slurm)
    assert head["node"] == "gpu01"
    assert {"--num-cpus=0", "--num-gpus=0", "--block", "--port=6379", "--node-ip-address=10.9.8.7"} <= set(head["args"])
    # A worker on every node, the head's included, offering the node's CPUs and GPUs.
    assert sorted(w["node"] for w in workers) == ["gpu01", "gpu02"]
    for worker in workers:
        assert {"--address=10.9.8.7:6379", "--num-gpus=4", "--num-cpus=32", "--block"} <= set(worker["args"])
    # The head and the worker on its node must not share a dashboard-agent port or worker ports.
    agent_port = [a for a in workers[0]["args"] if a.startswith("--dashboard-agent-listen-port=")]
    assert agent_port and agent_port[0] != "--dashboard-agent-listen-port=52365"
    assert not any(a.startswith("--dashboard-agent-listen-port") for a in head["args"])
    ports = {c["node"] + ("/head" if "--head" in c["args"] else ""): c["args"] for c in [head, *workers]}
    assert "--max-worker-port=10999" in ports["gpu01/head"] and "--min-worker-port=11000" in ports["gpu01"]

    srun = {c["args"][c["args"].index("-w") + 1] + ("/head" if "--head" in c["args"] else ""): c["args"]
            for c in slurm.calls("srun") if "start" in c["args"]}
    for args in srun.values():
        assert "--overlap" in args and "--export=ALL" in args
    # srun gives a step all the job's GPUs on its node unless told otherwise: the head's step does.
    assert "--gres=none" in srun["gpu01/head"]
    assert "--gres=none" not in srun["gpu01"] + srun["gpu02"]

    (driver,) = slurm.calls("tune-hand")
    assert driver["node"] == "batch"  # in the batch script, on the head's node
    assert driver["args"] == ["search", "paper", "--data", str(tmp_path / "data"),
                              "--storage", str(tmp_path / "sweeps"), "--name", "paper-1",
                              "--address", "10.9.8.7:6379", "--samples", "32"]
    assert not any(c["args"][:1] == ["requeue"] for c in slurm.calls("scontrol"))


def test_sbatch_token_is_private_and_reaches_every_step(tmp_path):
    slurm = FakeSlurm(tmp_path)
    code, out = slurm.run()
    assert code == 0, out

    token = slurm.token_file().read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert slurm.token_file().stat().st_mode & 0o777 == 0o600
    assert slurm.token_file().parent.stat().st_mode & 0o777 == 0o700
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    for call in slurm.calls("ray") + slurm.calls("tune-hand"):
        assert (call["auth"], call["token"]) == ("token", digest), call
    assert token not in out, "the token is never printed"
    # A run makes a fresh token.
    slurm.run()
    assert slurm.token_file().read_text() != token


def test_sbatch_stops_the_sweep_and_requeues_before_the_time_limit(tmp_path):
    slurm = FakeSlurm(tmp_path)
    proc = slurm.start(FAKE_DRIVER_WAITS="1")
    try:
        slurm.wait_for(Path(f"{slurm.log}.driver"), proc)
        os.kill(proc.pid, signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends
        out, _ = proc.communicate(timeout=60)
    finally:
        slurm.kill(proc)
    assert proc.returncode == 0, out
    assert Path(f"{slurm.log}.driver").read_text().split() == ["started", "stopped"], "Ray Tune's graceful stop"
    requeues = [c["args"] for c in slurm.calls("scontrol") if c["args"][:1] == ["requeue"]]
    assert requeues == [["requeue", "4242"]]


def test_sbatch_stops_the_sweep_without_requeueing_on_sigterm(tmp_path):
    slurm = FakeSlurm(tmp_path)
    proc = slurm.start(FAKE_DRIVER_WAITS="1")
    try:
        slurm.wait_for(Path(f"{slurm.log}.driver"), proc)
        os.kill(proc.pid, signal.SIGTERM)  # preemption or scancel: SLURM requeues (or not) itself
        out, _ = proc.communicate(timeout=60)
    finally:
        slurm.kill(proc)
    assert proc.returncode == 0, out
    assert "stopped" in Path(f"{slurm.log}.driver").read_text()
    assert not any(c["args"][:1] == ["requeue"] for c in slurm.calls("scontrol"))


def test_sbatch_passes_on_the_sweeps_exit_status(tmp_path):
    code, out = FakeSlurm(tmp_path).run(FAKE_DRIVER_STATUS="2")
    assert code == 2, out


@pytest.mark.parametrize("missing", ["TUNE_HAND_NAME", "TUNE_HAND_DATA", "TUNE_HAND_STORAGE"])
def test_sbatch_refuses_to_start_without_its_settings(tmp_path, missing):
    slurm = FakeSlurm(tmp_path)
    del slurm.env[missing]
    code, out = slurm.run()
    assert code != 0 and missing in out
    assert slurm.calls("srun") == []


def test_sbatch_refuses_a_directory_that_is_not_a_dataset(tmp_path):
    slurm = FakeSlurm(tmp_path)
    code, out = slurm.run(TUNE_HAND_DATA=str(tmp_path))
    assert code == 2 and "training_K.json" in out
    assert slurm.calls("srun") == []


# -- the image ------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, heredoc bodies dropped."""
    out, lines = [], iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
        keyword, _, rest = line.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_copies() -> set[str]:
    sources = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources |= {p.rstrip("/") for p in parts[:-1]}
    return sources


def ray_version() -> str:
    import ray

    return ray.__version__


def test_dockerfile_pins_torch_and_ray():
    instructions = dockerfile_instructions()
    (base,) = [rest for keyword, rest in instructions if keyword == "FROM"]
    # Ray's image, at the Ray version of the client that starts the cluster and submits to it.
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version())}-py3\d+-gpu", base), base
    pips = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    torch_pip = [p for p in pips if re.search(r"\btorch==", p)]
    assert torch_pip, "torch installed pinned"
    assert pinned(torch_pip[0], "torch") == pinned((ROOT / "Makefile").read_text(), "torch")
    assert "--index-url https://download.pytorch.org/whl/cu" in torch_pip[0], "a CUDA build"
    project_pip = [p for p in pips if re.search(r"pip install \.(\s|$)", p)]
    assert project_pip and pips.index(torch_pip[0]) < pips.index(project_pip[0]), "torch before the project"
    assert pinned(project_pip[0], "ray") == ray_version()


def test_dockerfile_copies_what_the_package_needs():
    project = load_toml(ROOT / "pyproject.toml")
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert dockerfile_copies() == packages | {"pyproject.toml", project["project"]["readme"]}
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored


def load_toml(path: Path) -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    return tomllib.loads(path.read_text())


def readme_commands(program: str) -> list[list[str]]:
    """The `program ...` commands in the README's code blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(program + " "):
                commands.append(shlex.split(line, comments=True))
    return commands


def test_readme_docker_commands_build_and_push_the_configs_image():
    docker = readme_commands("docker")
    builds = [c for c in docker if c[1] == "build"]
    assert builds, "the README shows how to build the image"
    for build in builds:
        assert build[build.index("-f") + 1] == "cluster/Dockerfile" and build[-1] == ".", build
    built = {b[b.index("-t") + 1] for b in builds}
    version = load_toml(ROOT / "pyproject.toml")["project"]["version"]
    assert built == {f"tune-hand:{version}"}
    assert image().rsplit("/", 1)[1] == f"tune-hand:{version}", "the configs run this version's image"
    tags = [c for c in docker if c[1] == "tag"]
    assert [t[2:] for t in tags] == [[next(iter(built)), image()]]
    assert [c[2:] for c in docker if c[1] == "push"] == [[image()]]
    runs = [c for c in docker if c[1] == "run"]
    assert runs and all(set(r) & (built | {image()}) for r in runs), "docker run uses the image built above"


def test_every_config_runs_the_same_image():
    specs = cluster_specs()
    images = {c["image"] for spec in specs.values()
              for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert images == {image()}
    assert image() in README.read_text()
