"""`tune-hand submit / jobs / logs / stop / token`: the command sent to a cluster, tokens, errors.

The cluster tests start a one-node Ray head on loopback with token authentication (its own
temp dir, random free ports; tests/ray_nodes.py) and talk to its job server as a laptop would.
"""

import json
import os
import stat
from pathlib import Path

import pytest

from ray_nodes import LocalCluster, free_ports
from tune_hand.cli import build_parser, main
from tune_hand.errors import ConfigError, TuneHandError
from tune_hand.jobs import Jobs, Token, _ship_spec, default_address, find_token, prepare_command, write_token
from tune_hand.sweep import load_spec, spec_hash


def prepare(command, storage=None):
    """jobs.prepare_command with tune-hand's own parser, as `tune-hand submit` calls it."""
    return prepare_command(command, build_parser(), storage)


# -- the command sent to the cluster ------------------------------------------------------------
def test_a_search_gets_the_cluster_address_the_storage_and_a_name():
    command, experiment, name = prepare(
        ["--", "search", "quick", "--data", "/nfs/freihand", "--set", "model.channels=8"], storage="/nfs/sweeps")
    assert command[:7] == ["search", "quick", "--data", "/nfs/freihand", "--set", "model.channels=8", "--storage"]
    assert command[command.index("--storage") + 1] == "/nfs/sweeps"
    assert command[command.index("--address") + 1] == "auto"  # the driver joins the cluster it runs in
    run_name = command[command.index("--name") + 1]
    assert run_name.startswith("quick-") and experiment == f"/nfs/sweeps/{run_name}" and name == run_name



def test_the_spec_may_follow_the_options():
    command, _, _ = prepare(["search", "--data", "/d", "--set", "model.channels=8", "quick"], storage="/s")
    assert command[:6] == ["search", "quick", "--data", "/d", "--set", "model.channels=8"]


def test_the_commands_own_storage_name_and_address_are_kept():
    command, experiment, _ = prepare(["search", "quick", "--data", "s3://b/fh", "--storage", "s3://b/sw",
                                              "--name", "q1", "--address", "10.0.0.1:6379"])
    assert command.count("--storage") == command.count("--name") == command.count("--address") == 1
    assert "10.0.0.1:6379" in command and experiment == "s3://b/sw/q1"


def test_resume_and_other_commands_pass_through():
    command, experiment, _ = prepare(["resume", "/nfs/sweeps/q1"])
    assert command == ["resume", "/nfs/sweeps/q1", "--address", "auto"] and experiment == "/nfs/sweeps/q1"
    command, experiment, name = prepare(["inspect", "/nfs/freihand"])
    assert command == ["inspect", "/nfs/freihand"] and experiment is None and name == "inspect"


@pytest.mark.parametrize("command, storage, message", [
    ([], None, "give the tune-hand command"),
    (["jobs"], None, "give the tune-hand command"),
    (["search", "quick", "--data", "/d"], None, "needs --storage"),
    (["search", "quick", "--data", "data"], "/s", "--data data: a submitted command runs on the cluster"),
    (["search", "quick", "--data", "/d"], "sweeps", "--storage sweeps: a submitted command"),
    (["search", "quick", "--data", "/d", "--storage", "/a"], "/b", "differ"),
    (["search", "no-such-spec", "--data", "/d"], "/s", "no such sweep spec"),
    (["search", "quick", "--data", "/d", "--set", "model.nope=1"], "/s", "model.nope"),
    (["resume", "sweeps/q1"], None, "experiment sweeps/q1"),
])
def test_a_command_that_cannot_run_on_the_cluster_fails_here(command, storage, message):
    with pytest.raises(ConfigError) as err:
        prepare(command, storage=storage)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_mistyped_command_fails_here_with_usage(capsys):
    with pytest.raises(SystemExit) as err:
        prepare(["search", "quick", "--data", "/d", "--smaples", "3"], storage="/s")
    assert err.value.code == 2 and "unrecognized arguments: --smaples" in capsys.readouterr().err


def test_a_local_spec_file_travels_self_contained_with_the_same_hash(tmp_path):
    from search_spaces import SPEC_DIR
    from tune_hand.config import load_config

    load_config("small").to_yaml(tmp_path / "base.yaml")  # a base config beside the spec, by relative path
    spec_file = tmp_path / "my.yaml"
    spec_file.write_text((Path(SPEC_DIR) / "quick.yaml").read_text().replace("base: small", "base: base.yaml"))
    staging = tmp_path / "staging"
    staging.mkdir()
    env: dict = {}
    command = _ship_spec(["search", str(spec_file), "--data", "/d"], True, None, staging, env, log=print)
    assert command == ["search", "my.yaml", "--data", "/d"] and env["working_dir"] == str(staging)
    assert spec_hash(load_spec(staging / "my.yaml")) == spec_hash(load_spec(spec_file))

    env = {}
    command = _ship_spec(["search", str(spec_file)], True, tmp_path, staging, env, log=print)  # inside --working-dir
    assert command == ["search", "my.yaml"] and env["working_dir"] == str(tmp_path)
    with pytest.raises(ConfigError, match="must be inside it"):
        _ship_spec(["search", str(spec_file)], True, staging, staging, {}, log=print)


# -- tokens -------------------------------------------------------------------------------------
@pytest.fixture
def no_token_env(monkeypatch, tmp_path):
    """No token anywhere Ray looks: no RAY_AUTH_TOKEN(_PATH), a HOME without ~/.ray/auth_token."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_the_token_is_found_where_ray_looks_in_ray_s_order(no_token_env, tmp_path):
    assert find_token().value is None and "none was found" in find_token().source
    home_token = tmp_path / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("from-home\n")
    assert find_token() == Token("from-home", str(home_token))
    (tmp_path / "path_token").write_text("from-path")
    no_token_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "path_token"))
    assert find_token().value == "from-path"
    no_token_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token() == Token("from-env", "$RAY_AUTH_TOKEN")
    (tmp_path / "file_token").write_text(" from-file \n")
    assert find_token(tmp_path / "file_token").value == "from-file"


@pytest.mark.parametrize("content", [None, ""])
def test_an_unreadable_or_empty_token_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TuneHandError, match=str(path)):
        find_token(path)


def test_a_token_file_is_created_0600_atomically_whatever_the_umask(tmp_path, monkeypatch, capsys):
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # the moment the token appears under its name: already 0600
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0)
    try:
        assert main(["token", "new", "--out", str(tmp_path / "t" / "token")]) == 0
    finally:
        os.umask(old)
    path = tmp_path / "t" / "token"
    assert seen == [0o600] and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64 and int(path.read_text(), 16) >= 0
    assert os.listdir(path.parent) == ["token"]  # no temporary left behind
    assert path.read_text() not in capsys.readouterr().err  # the token is never printed

    first = path.read_text()
    assert main(["token", "new", "--out", str(path)]) == 2  # never silently replaced
    assert "--force" in capsys.readouterr().err and path.read_text() == first
    assert main(["token", "new", "--out", str(path), "--force"]) == 0 and path.read_text() != first


def test_the_default_address_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert default_address() == "http://head:8265"


def test_an_unreachable_cluster_is_a_one_line_error(capsys, no_token_env):
    (port,) = free_ports(1)  # nothing listens there
    assert main(["jobs", "--address", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-hand: error: cannot reach the Ray dashboard") and len(err.strip().splitlines()) == 1


# -- a real cluster with token authentication -----------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray head on loopback; its token written by `tune-hand token new`."""
    token_file = tmp_path_factory.mktemp("token") / "cluster_token"
    assert main(["token", "new", "--out", str(token_file)]) == 0
    with LocalCluster(token_file=token_file) as c:
        c.start_head(num_cpus=1)
        yield c, token_file
    assert not c.leftovers()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune-hand: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_without_a_token_the_cluster_refuses_clearly(cluster, no_token_env, capsys):
    c, _ = cluster
    assert main(["jobs", "--address", c.dashboard]) == 2
    err = _one_line_error(capsys)
    assert "requires an authentication token" in err and "none was found" in err


@pytest.mark.slow
def test_a_wrong_token_is_refused_naming_where_it_came_from(cluster, no_token_env, tmp_path, capsys):
    c, _ = cluster
    wrong = write_token(tmp_path / "wrong")
    assert main(["jobs", "--address", c.dashboard, "--token-file", str(wrong)]) == 2
    err = _one_line_error(capsys)
    assert "rejected the token" in err and f"--token-file {wrong}" in err
    no_token_env.setenv("RAY_AUTH_TOKEN", "0" * 64)
    assert main(["jobs", "--address", c.dashboard]) == 2
    assert "rejected the token from $RAY_AUTH_TOKEN" in _one_line_error(capsys)


@pytest.mark.slow
def test_a_submitted_command_runs_and_its_logs_and_listing_show_it(cluster, no_token_env, tiny_data, capsys):
    c, token_file = cluster
    # Ray's job client prefers $RAY_ADDRESS over the address it is given; ours does not.
    no_token_env.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    auth = ["--address", c.dashboard, "--token-file", str(token_file)]
    assert main(["submit", *auth, "--", "inspect", str(tiny_data)]) == 0
    out = capsys.readouterr()
    job_id = json.loads(out.out)["job_id"]
    assert f"tune-hand logs {job_id} --follow" in out.err and "shipping tune_hand, trainables, search_spaces" in out.err

    assert main(["logs", job_id, "--follow", *auth]) == 0  # streams until the job ends; 0: it succeeded
    out = capsys.readouterr()
    assert "no problems found" in out.out and f"job {job_id}: SUCCEEDED" in out.err
    assert main(["logs", job_id, *auth]) == 0
    assert f"FreiHAND directory {tiny_data}" in capsys.readouterr().out

    assert main(["jobs", *auth, "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[job_id]["status"] == "SUCCEEDED" and rows[job_id]["entrypoint"].endswith(f"inspect {tiny_data}")
    assert main(["jobs", *auth]) == 0
    table = capsys.readouterr().out
    assert job_id in table and "SUCCEEDED" in table and f"inspect {tiny_data}" in table


@pytest.mark.slow
def test_stop_ends_a_running_job_and_an_unknown_job_is_a_clear_error(cluster, no_token_env, capsys):
    c, token_file = cluster
    auth = ["--address", c.dashboard, "--token-file", str(token_file)]
    jobs = Jobs(c.dashboard, token_file)
    job_id = jobs.submit("python -c 'import time; print(\"sleeping\", flush=True); time.sleep(600)'", {},
                         submission_id="sleeper")
    c.wait_for(lambda: "sleeping" in jobs.logs(job_id), 60, "the sleeping job to start")
    assert main(["stop", job_id, *auth]) == 0
    assert f"job {job_id}: STOPPED" in capsys.readouterr().err
    assert jobs.status(job_id) == "STOPPED"
    assert main(["stop", job_id, *auth]) == 0
    assert "had already ended: STOPPED" in capsys.readouterr().err

    for verb in ("logs", "stop"):
        assert main([verb, "no-such-job", *auth]) == 2
        assert "no job 'no-such-job'" in _one_line_error(capsys)
