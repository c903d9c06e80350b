"""deploy/k8s/: valid against Kubernetes' schema, and saying what deploy/Procfile, the systemd units and config.py say.

A renamed setting, a changed command or a changed stop timeout elsewhere fails
here until the manifests follow.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from rq import Queue

from config import INTEGER_SETTINGS
from config import TOKEN_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
"""The schema the manifests are checked against (kubernetes-validate ships it: no download)."""

DOCS = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
WEB = ("intake", "api")
WORKERS = ("persist", "submit", "maintenance")
READ_FROM_ENV = re.compile(r"""(?:environ|env)(?:\.get\(|\[)\s*['"]([A-Z][A-Z0-9_]*)['"]""")


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"].removeprefix("captions-"): doc for doc in DOCS if doc["kind"] == kind}


def container(doc: dict) -> dict:
    [only] = doc["spec"]["template"]["spec"]["containers"]
    return only


def normalised(argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """(the environment it sets, the command) without `env`, paths to programs and the address it binds."""
    env, argv = dict(env or {}), list(argv)
    if Path(argv[0]).name == "env":
        argv.pop(0)
    while "=" in argv[0]:
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    if "--bind" in argv:
        at = argv.index("--bind")
        del argv[at:at + 2]
    return env, [Path(argv[0]).name, *argv[1:]]


def run_by(doc: dict) -> tuple[dict[str, str], list[str]]:
    spec = container(doc)
    return normalised(spec["command"], {e["name"]: e["value"] for e in spec.get("env", [])})


def procfile() -> dict[str, tuple[dict[str, str], list[str]]]:
    lines = (line.split(":", 1) for line in (ROOT / "deploy" / "Procfile").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {name: normalised(shlex.split(command)) for name, command in lines}


def systemd_units() -> list[tuple[str, tuple[dict[str, str], list[str]], int | None]]:
    """(unit, what ExecStart runs, TimeoutStopSec or None) of each unit."""
    units = []
    for path in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        text = path.read_text().replace("\\\n", " ")
        start, stop = re.search(r"^ExecStart=(.*)$", text, re.M), re.search(r"^TimeoutStopSec=(\d+)", text, re.M)
        units.append((path.stem, normalised(shlex.split(start[1])), stop and int(stop[1])))
    return units


def unit_running(command: tuple[dict[str, str], list[str]]) -> tuple[str, int | None]:
    """The systemd unit that runs `command` (a template's %i standing for any word), and its stop timeout."""
    env, argv = command
    for name, (unit_env, unit_argv), stop in systemd_units():
        if unit_env.items() <= env.items() and len(unit_argv) == len(argv) and all(
                u == a or u == "%i" for u, a in zip(unit_argv, argv)):
            return name, stop
    raise AssertionError(f"no systemd unit runs {shlex.join(argv)}")


def settings_read() -> set[str]:
    """Every environment variable the service's code reads."""
    sources = [ROOT / "config.py", ROOT / "logs.py", ROOT / "deploy" / "gunicorn.conf.py",
               *(p for d in ("receiver", "workers", "store") for p in (ROOT / d).rglob("*.py"))]
    found = {name for path in sources for name in READ_FROM_ENV.findall(path.read_text())}
    return found | set(INTEGER_SETTINGS) | set(TOKEN_SETTINGS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_each_process_runs_its_procfile_command():
    deployments, processes = of_kind("Deployment"), procfile()
    assert set(deployments) == set(processes), "one Deployment per Procfile process"
    for name, doc in deployments.items():
        (env, argv), (needs, command) = run_by(doc), processes[name]
        assert argv == command and needs.items() <= env.items(), name
    assert unit_running(run_by(of_kind("Job")["migrate"]))[0] == "captions-migrate"


def test_each_pod_gets_as_long_to_stop_as_its_systemd_unit():
    for name, doc in of_kind("Deployment").items():
        unit, stop = unit_running(run_by(doc))
        grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == stop, f"{name}: {grace} s to stop, {unit} {stop} s"
        if name in WORKERS:
            assert grace > Queue.DEFAULT_TIMEOUT, f"{name}: RQ's warm shutdown lets a job run its timeout"


def test_every_setting_given_is_one_the_service_reads():
    [settings], [secrets] = of_kind("ConfigMap").values(), of_kind("Secret").values()
    given = {*settings["data"], *secrets["stringData"]}
    given |= {e["name"] for doc in [*of_kind("Deployment").values(), *of_kind("Job").values()]
              for e in container(doc).get("env", [])}
    assert given - settings_read() == set(), "names no code reads (renamed?)"
    assert set(TOKEN_SETTINGS) | {"DATABASE_URL"} <= set(secrets["stringData"]), "tokens are Secrets"
    assert {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"} <= set(settings["data"])
    for doc in [*of_kind("Deployment").values(), *of_kind("Job").values()]:
        refs = {ref for source in container(doc)["envFrom"] for ref in source}
        assert refs == {"configMapRef", "secretRef"}, doc["metadata"]["name"]


def test_web_pods_are_probed_kept_and_scaled():
    deployments, budgets, scalers = of_kind("Deployment"), of_kind("PodDisruptionBudget"), of_kind(
        "HorizontalPodAutoscaler")
    for name in WEB:
        spec = container(deployments[name])
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert scalers[name]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                           "name": f"captions-{name}"}
    assert set(scalers) == set(WEB), "no autoscaler on the workers or the scheduler"


def test_the_scheduler_runs_once():
    cron = of_kind("Deployment")["cron"]["spec"]
    assert cron["replicas"] == 1 and cron["strategy"] == {"type": "Recreate"}, "never two schedulers at once"
