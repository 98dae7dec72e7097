"""Packaging: the Docker images, Makefile, workflows and README agree with setup.py; linters pass.

No Docker engine runs here, so the Dockerfiles are read as text (continuations joined, ARGs
expanded) and checked against setup.py; hadolint and actionlint (binaries from the test extra)
lint them for real.
"""

import ast
import json
import re
import shlex
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": "Dockerfile.cpu", "gpu": "Dockerfile.gpu"}
MAKE_TARGETS = ("install", "update", "run", "gpu", "webcam", "serve", "test", "lint", "demo")
TORCH_INDEX = "https://download.pytorch.org/whl/"
ISSUE_EXAMPLE = "docker run --rm -v $PWD:/data ig65m:cpu extract /data/video.mp4 /data/feats.npy"


def setup_arguments():
    """The literal keyword arguments of `setup(...)`, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    literal = ("install_requires", "extras_require", "entry_points")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg in literal}


def instructions(dockerfile):
    """[(INSTRUCTION, arguments)]: comment lines dropped, backslash continuations joined."""
    lines = (ROOT / dockerfile).read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    result = []
    for line in text.replace("\\\n", " ").splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(dockerfile):
    """Build stages as lists of instructions, ARG defaults expanded into every argument."""
    args, found = {}, []
    for keyword, rest in instructions(dockerfile):
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def pip_installs(stage):
    """[(requirements, {option: value})] of each `pip install` in a stage's RUN commands."""
    installs = []
    for keyword, rest in stage:
        for command in rest.split("&&") if keyword == "RUN" else ():
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            requirements, options, words = [], {}, iter(words[2:])
            for word in words:
                if word in ("--index-url", "--extra-index-url"):
                    options[word] = next(words)
                elif not word.startswith("-"):
                    requirements.append(word)
            installs.append((requirements, options))
    return installs


def env_of(stage):
    """ENV settings of a stage, `ENV A=1 B=2` form."""
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest))
    return env


def last(stage, keyword):
    values = [rest for key, rest in stage if key == keyword]
    return values[-1] if values else None


def run_tool(*command, cwd=ROOT):
    if shutil.which(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed: pip install -e '.[test]'")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_images_install_the_torch_pins_of_setup_py(flavour):
    pins = {Requirement(r).name: Requirement(r) for r in setup_arguments()["install_requires"]}
    build = stages(DOCKERFILES[flavour])[0]
    installs = pip_installs(build)
    torch_requirements, torch_options = installs[0]
    found = {Requirement(r).name: Requirement(r) for r in torch_requirements}
    assert set(found) == {"torch", "torchvision"}
    for name, requirement in found.items():
        (spec,) = requirement.specifier
        version = Version(spec.version)
        assert spec.operator == "==" and pins[name].specifier.contains(version)
        local = "cpu" if flavour == "cpu" else version.local
        assert version.local == local and re.fullmatch(r"cpu|cu\d{3}", local)
        assert torch_options["--index-url"] == TORCH_INDEX + local
    # everything else comes from setup.py itself, by installing the package
    assert [reqs for reqs, _ in installs[1:]] == [["."]]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_images_are_multi_stage_with_the_same_interpreter(flavour):
    found = stages(DOCKERFILES[flavour])
    assert len(found) == 2
    build_base, runtime_base = (stage[0][1].split(" AS ")[0] for stage in found)
    assert build_base == runtime_base  # the copied virtual environment needs its Python
    runtime = found[-1]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert env_of(runtime)["PATH"].startswith("/opt/venv/bin:")
    assert not pip_installs(runtime)
    assert not any("gcc" in rest or "build-essential" in rest for _, rest in runtime)
    if flavour == "cpu":
        assert re.fullmatch(r"python:3\.11-slim-\w+", runtime_base)


def test_gpu_image_carries_cuda_once():
    """CUDA comes from the torch cu1xx wheels alone (issue 14): the base is plain Ubuntu, not an
    nvidia/cuda image duplicating the libraries, and the container toolkit is asked for the driver."""
    found = stages(DOCKERFILES["gpu"])
    for stage in found:
        assert re.fullmatch(r"ubuntu:\S+ AS \w+", stage[0][1]), stage[0][1]
    (torch,) = [r for r in pip_installs(found[0])[0][0] if r.startswith("torch==")]
    (spec,) = Requirement(torch).specifier
    assert re.fullmatch(r"cu\d{3}", Version(spec.version).local)
    env = env_of(found[-1])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_runtime_stage_is_the_documented_contract(flavour):
    runtime = stages(DOCKERFILES[flavour])[-1]
    user = last(runtime, "USER")
    assert user and user.split(":")[0] not in ("0", "root")
    assert last(runtime, "WORKDIR") == "/data"
    assert json.loads(last(runtime, "ENTRYPOINT")) == ["ig65m"]
    assert json.loads(last(runtime, "CMD")) == ["--help"]
    assert last(runtime, "EXPOSE") == "5000"
    env = env_of(runtime)
    assert env["IG65M_HOST"] == "0.0.0.0" and env["IG65M_PORT"] == "5000"
    cache = env["IG65M_HOME"]
    assert cache.startswith("/") and any(cache in rest for key, rest in runtime if key == "RUN")


def test_hadolint_ignores_only_unpinnable_apt_versions():
    for name in DOCKERFILES.values():
        pragmas = re.findall(r"hadolint ignore=(\S+)", (ROOT / name).read_text(encoding="utf-8"))
        assert set(",".join(pragmas).split(",")) <= {"DL3008", ""}, name
    assert not list(ROOT.glob(".hadolint.y*ml"))


def test_entrypoint_is_the_console_script_of_setup_py():
    scripts = dict(line.replace(" ", "").split("=")
                   for line in setup_arguments()["entry_points"]["console_scripts"])
    (program,) = json.loads(last(stages(DOCKERFILES["cpu"])[-1], "ENTRYPOINT"))
    assert scripts[program] == "ig65m.cli:main"
    (installed,) = entry_points(group="console_scripts", name=program)
    assert installed.value == scripts[program]
    command = installed.load()
    assert isinstance(command, click.Group)
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_index_serve_binds_where_IG65M_HOST_says(monkeypatch, tmp_path):
    from ig65m.cli.index import index_serve

    if "host" not in {param.name for param in index_serve.params}:
        pytest.skip("index-serve has no --host option yet")
    monkeypatch.delenv("IG65M_HOST", raising=False)
    assert index_serve.make_context("index-serve", [str(tmp_path)]).params["host"] == "127.0.0.1"
    monkeypatch.setenv("IG65M_HOST", "0.0.0.0")
    assert index_serve.make_context("index-serve", [str(tmp_path)]).params["host"] == "0.0.0.0"


def _ignore_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, char if char in "[]-" else re.escape(char))
            i += 1
    return re.compile(out)


def in_build_context(path, patterns):
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts, included = path.split("/"), True
    for pattern in patterns:
        regex = _ignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = pattern.startswith("!")
    return included


def test_dockerignore_sends_exactly_what_the_images_copy():
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = set()
    for name in DOCKERFILES.values():
        for keyword, rest in instructions(name):
            if keyword == "COPY" and not rest.startswith("--from"):
                copied.update(source.rstrip("/") for source in rest.split()[:-1])
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for path in tracked.stdout.split():
        wanted = any(path == src or path.startswith(src + "/") for src in copied)
        assert in_build_context(path, patterns) == wanted, path
    for junk in (".git/HEAD", ".venv/bin/python", "feats.npy", "sample.mp4", "tests/test_x.py",
                 "ig65m/__pycache__/cli.cpython-311.pyc", "ig65m.egg-info/PKG-INFO"):
        assert not in_build_context(junk, patterns), junk


def make_dry_run(*args):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_makefile_target_exists(target):
    result = make_dry_run(target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_makefile_rejects_unknown_targets():
    assert make_dry_run("no-such-target").returncode != 0


@pytest.mark.parametrize("args, expected", [
    (["install"], ["docker build -t ig65m:cpu -f Dockerfile.cpu ."]),
    (["install", "dockerfile=Dockerfile.gpu"], ["docker build -t ig65m:gpu -f Dockerfile.gpu ."]),
    (["install", "dockerimage=me/ig65m:dev"], ["docker build -t me/ig65m:dev -f Dockerfile.cpu ."]),
    (["run", "datadir=/videos"], ['-v "/videos":/data', "-it", "--entrypoint=/bin/bash ig65m:cpu"]),
    (["gpu"], ["--gpus all", "ig65m:gpu"]),
    (["webcam"], ["--device /dev/video0", "--group-add", "ig65m:cpu"]),
    (["serve"], ["-p 127.0.0.1:5000:5000", "ig65m:cpu index-serve /data/index"]),
    (["serve", "port=8080", "index=/data/clips"], ["-p 127.0.0.1:8080:5000",
                                                   "index-serve /data/clips"]),
    (["serve", "bind=0.0.0.0"], ["-p 0.0.0.0:5000:5000"]),
])
def test_makefile_commands(args, expected):
    output = make_dry_run(*args).stdout
    for fragment in expected:
        assert fragment in output, (fragment, output)


def readme_commands():
    """Commands of the README's first bash block, comment lines dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("target, index", [("demo", 0), ("test", 1)])
def test_make_demo_and_test_are_the_readme_commands(target, index):
    assert make_dry_run(target).stdout.strip() == readme_commands()[index].strip()


def docker_section():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Docker.*?(?=^## |\Z)", text, re.S | re.M)
    assert match, "README has no Docker section"
    return match.group(0)


def test_readme_documents_every_docker_and_make_use():
    section = docker_section()
    for needed in (ISSUE_EXAMPLE, "--gpus all", "--device /dev/video0", "-p 5000:5000",
                   "IG65M_HOST", "IG65M_HOME", "ig65m:gpu", "index-serve"):
        assert needed in section, needed
    documented = set(re.findall(r"^make(?: \S+=\S+)* ?(\w*)", section, re.M)) - {""}
    assert {"install", "run", "gpu", "webcam", "serve", "test", "lint", "demo"} <= documented
    for target in documented:
        assert make_dry_run(target).returncode == 0, target


def test_hadolint_passes_both_dockerfiles_at_warning_level():
    result = run_tool("hadolint", "--no-color", "--failure-threshold", "warning",
                      *DOCKERFILES.values())
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n", encoding="utf-8")
    result = run_tool("hadolint", "--no-color", "--failure-threshold", "warning", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout


def workflows():
    found = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert found, "no GitHub Actions workflow"
    return found


def test_actionlint_passes_the_workflows():
    result = run_tool("actionlint", "-no-color", *map(str, workflows()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_bad_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.nope }}\n", encoding="utf-8")
    assert run_tool("actionlint", "-no-color", str(bad)).returncode != 0


def test_workflow_lints_tests_builds_and_pushes_on_tags():
    text = "\n".join(path.read_text(encoding="utf-8") for path in workflows())
    for needed in ("pull_request:", "push:", "cache: pip", "make lint", "python -m pytest -q",
                   "flavour: [cpu, gpu]", "file: Dockerfile.${{ matrix.flavour }}",
                   "startsWith(github.ref, 'refs/tags/v')", "password: ${{ secrets."):
        assert needed in text, needed
