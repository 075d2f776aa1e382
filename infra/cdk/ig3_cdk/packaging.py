"""Lambda packaging without Docker: the core layer, zip functions and the llm image's build context.

Design decisions (and why):

- **Local bundling only.** Every zip asset is a ``Code.from_asset`` with an ``ILocalBundling``
  that runs ``pip install --platform manylinux2014_<arch> --only-binary=:all: --target`` on this
  machine. The Docker image CDK would otherwise need is named (it must be) but never used:
  ``try_bundle`` always returns True, so ``cdk synth`` needs no Docker daemon.
- **Exact pins with hashes.** What gets installed is the transitive closure of the requested
  pyproject groups, resolved against the installed, lock-synced environment's metadata, and
  pinned with the hashes from ``requirements/dev.lock`` (``--require-hashes --no-deps``): the
  artifact is exactly what the tests ran against, and a tampered wheel fails the install.
- **Cached by hash.** Installed dependencies are cached per (pins with hashes, platform) in
  ``infra/cdk/build/bundles/deps-<hash>`` — pip runs once per lock change, not per source edit;
  whole artifacts per (pins, platform, source tree) in ``bundles/<key>``. The asset hash is that
  key (``AssetHashType.CUSTOM``), so unchanged artifacts are never rebuilt and CloudFormation
  sees no change.
- **Layers vs. functions.** The core layer carries ``ig3`` (minus the local cloud) and the
  project's core dependencies; a function's zip carries only its handler package plus the
  pyproject groups it names in ``Function.extras`` minus what the layer already has. Heavy
  dependencies (web3, litellm) therefore never land in a shared layer.
- **Pruned.** Test suites, stubs, headers, static libraries and build tooling of the installed
  wheels are dropped (``prune``): numpy's tests alone are ~8 MB; shared objects lose their debug
  sections where this host has a ``strip`` for the target architecture.
- **boto3/botocore are left to the runtime** (they are ~25 MB unzipped and the Python 3.11
  managed runtime ships them); everything else is pinned.
- ``mode="source"`` (context ``ig3:bundle=source``) lays out the same files without running pip:
  fast test synths with the real handler layout; ``make synth`` / the bundling test use ``full``.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO = Path(__file__).resolve().parents[3]
LOCK = REPO / "requirements" / "dev.lock"
PYPROJECT = REPO / "pyproject.toml"
CACHE = REPO / "infra" / "cdk" / "build" / "bundles"
CORE_PACKAGE = REPO / "layers" / "core" / "ig3"
# Shipped by the Lambda Python runtime; bundling them would cost ~25 MB per artifact.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
# Source paths of the core library that never go to Lambda (the local cloud's moto/MQTT glue).
CORE_EXCLUDED = ("local",)
PY_VERSION = "3.11"
PRUNED_SUFFIXES = frozenset({".c", ".cpp", ".h", ".hpp", ".pyx", ".pxd", ".pyi", ".a"})
# Directories of installed distributions that the runtime never imports: test suites (numpy's alone
# are ~8 MB) and build-time tooling. Measured per artifact in the size report (issue #9).
PRUNED_DIR_NAMES = frozenset({"tests", "__pycache__"})
PRUNED_PATHS = (
    "numpy/f2py", "numpy/distutils", "numpy/_pyinstaller", "numpy/random/_examples", "numpy/_core/include",
    "numpy/_core/lib",  # Fortran wrapper generator, build helpers, C headers, static npymath
    "Crypto/SelfTest",  # pycryptodome's self-test vectors (1.6 MB)
    "google/_upb/include",
)
BUILT: dict[str, int] = {}  # artifact name -> unzipped bytes, for the size report of this process
LAMBDA_LIMIT_BYTES = 250 * 1024 * 1024
GOAL_BYTES = 60 * 1024 * 1024


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- requirement resolution
@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        return f"{self.name}=={self.version} " + " ".join(f"--hash={h}" for h in self.hashes)


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """``name==version`` entries of a uv/pip-compile lock with their ``--hash`` lines."""
    pins: dict[str, Pin] = {}
    name = version = None
    hashes: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", line)
        if m:
            if name:
                pins[_norm(name)] = Pin(name, version, tuple(hashes))
            name, version, hashes = m.group(1), m.group(2), []
        for h in re.findall(r"--hash=(\S+)", line):
            hashes.append(h)
    if name:
        pins[_norm(name)] = Pin(name, version, tuple(hashes))
    return pins


def project_requirements(groups: Iterable[str]) -> list[str]:
    """Requirement strings of pyproject's ``core`` dependencies and/or named optional groups."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    out: list[str] = []
    for g in groups:
        if g == "core":
            out += project["dependencies"]
        else:
            extras = project.get("optional-dependencies", {})
            if g not in extras:
                raise ValueError(f"pyproject has no optional-dependency group {g!r}")
            out += extras[g]
    return out


def closure(requirements: Iterable[str], *, machine: str) -> set[str]:
    """Normalised names of the requirements and everything they need on Lambda (Linux, CPython 3.11).

    Walks the installed distributions' metadata (the environment is synced to the lock, so
    versions agree) and evaluates markers for the Lambda target, not for this host.
    """
    from packaging.requirements import Requirement

    env = {"python_version": PY_VERSION, "python_full_version": PY_VERSION + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "platform_machine": machine,
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = []
    for r in requirements:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            todo.append((req.name, frozenset(req.extras)))
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (_norm(name), extras)
        if key in done:
            continue
        done.add(key)
        seen.add(_norm(name))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(f"{name} is not installed in {sys.prefix}: run `make venv`") from exc
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None:
                wanted = any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))
                if not wanted:
                    continue
            todo.append((req.name, frozenset(req.extras)))
    return seen


def pinned(names: Iterable[str], lock: dict[str, Pin]) -> list[Pin]:
    missing = sorted(n for n in names if n not in lock)
    if missing:
        raise RuntimeError(f"not pinned in {LOCK.name}: {missing} (run `make lock`)")
    return sorted((lock[n] for n in names), key=lambda p: _norm(p.name))


# ---------------------------------------------------------------- bundling
def _tree_digest(h: "hashlib._Hash", root: Path, exclude_top: tuple[str, ...] = ()) -> None:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or (rel.parts and rel.parts[0] in exclude_top) or not path.is_file():
            continue
        h.update(str(rel).encode())
        h.update(path.read_bytes())


def _copy_tree(src: Path, dst: Path, exclude_top: tuple[str, ...] = ()) -> None:
    def ignore(directory: str, names: list[str]) -> list[str]:
        drop = [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]
        if Path(directory) == src:
            drop += [n for n in names if n in exclude_top]
        return drop

    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)


@dataclass(frozen=True)
class Artifact:
    """One zip asset: where sources go inside it and which pinned distributions it installs."""

    name: str  # "layer-core", "fn-api"
    sources: tuple[tuple[Path, str, tuple[str, ...]], ...]  # (source dir, destination, excluded top names)
    pins: tuple[Pin, ...]
    site_dir: str  # "python" for layers (Lambda puts /opt/python on sys.path), "" for functions
    machine: str  # aarch64 | x86_64
    mode: str  # full | source

    def key(self) -> str:
        """Computed once: sources may change while a synth runs (others edit the tree)."""
        cached = self.__dict__.get("_key")
        if cached is None:
            cached = self._compute_key()
            object.__setattr__(self, "_key", cached)
        return cached

    def _compute_key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.site_dir, self.machine, self.mode, PY_VERSION,
                             [p.line() for p in self.pins], _prune_rules(self.machine)]).encode())
        for src, dest, excl in self.sources:
            h.update(dest.encode())
            _tree_digest(h, src, excl)
        return h.hexdigest()

    def deps_key(self) -> str:
        """The installed dependencies depend on the pins and the target only, not on our sources."""
        return "deps-" + hashlib.sha256(json.dumps(
            [self.machine, PY_VERSION, [p.line() for p in self.pins], _prune_rules(self.machine)]).encode()).hexdigest()

    def build(self, out: Path) -> None:
        """Lay the artifact out in ``out``: cached dependencies (pip runs once per pin set) + sources."""
        cached = CACHE / self.key()
        if not cached.is_dir():
            tmp = CACHE / (self.key() + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            site = tmp / self.site_dir if self.site_dir else tmp
            site.mkdir(parents=True)
            if self.mode == "full" and self.pins:
                deps = CACHE / self.deps_key()
                if not deps.is_dir():
                    staging = CACHE / (self.deps_key() + ".tmp")
                    shutil.rmtree(staging, ignore_errors=True)
                    staging.mkdir(parents=True)
                    self._pip_install(staging)
                    staging.rename(deps)
                shutil.copytree(deps, site, dirs_exist_ok=True)
            for src, dest, excl in self.sources:
                _copy_tree(src, site / dest, excl)
            tmp.rename(cached)
        shutil.copytree(cached, out, dirs_exist_ok=True)
        BUILT[self.name] = tree_size(cached)

    def _pip_install(self, site: Path) -> None:
        req = site.parent / f"{site.name}.requirements.txt"
        req.write_text("\n".join(p.line() for p in self.pins) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--require-hashes", "--only-binary=:all:", "--no-compile",
               "--platform", f"manylinux2014_{self.machine}", "--implementation", "cp",
               "--python-version", PY_VERSION, "--target", str(site), "-r", str(req)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        req.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"pip failed for {self.name}:\n{done.stderr[-4000:]}")
        prune(site, self.machine)


def strip_tool(machine: str) -> str | None:
    """A binutils ``strip`` that reads ``machine``'s ELF files, if this host has one."""
    import platform

    candidates = [f"{machine}-linux-gnu-strip"] + (["strip"] if platform.machine() == machine else [])
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def _prune_rules(machine: str) -> list:
    """Part of the cache keys: a change to what is pruned (or a strip appearing) rebuilds the bundles."""
    return [sorted(PRUNED_SUFFIXES), sorted(PRUNED_DIR_NAMES), list(PRUNED_PATHS), bool(strip_tool(machine)),
            STRIP_RULES]


# Bumped when what strip may do changes (2: stripped files that break the loader's segment alignment
# are discarded — auditwheel-grafted libraries, numpy.libs' OpenBLAS and libgfortran among them).
STRIP_RULES = 2


def loadable_segments(data: bytes) -> bool:
    """False when an ELF64 file has a PT_LOAD segment whose file offset and address disagree modulo
    its alignment: the dynamic loader refuses it ("ELF load command address/offset not
    page-aligned"). binutils' strip does that to libraries patchelf rewrote (auditwheel's grafted
    ``<pkg>.libs/*.so``): measured on numpy 2.2.6's x86_64 wheel, whose import then failed."""
    import struct

    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2:
        return True  # not ELF64: nothing this checks
    end = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 56 > len(data):
            return False
        p_type, _, p_offset, p_vaddr, _, _, _, p_align = struct.unpack_from(end + "IIQQQQQQ", data, at)
        if p_type == 1 and p_align > 1 and p_offset % p_align != p_vaddr % p_align:
            return False
    return True


def prune(site: Path, machine: str) -> None:
    """Drop what Lambda never reads from installed distributions: console scripts, build inputs
    (C/Cython sources, headers, stubs, static libraries), test suites and build tooling; and the
    debug sections of shared objects (``strip --strip-debug``, where this host has a strip for the
    target: measured 5 MB on x86_64 over numpy, faiss, coincurve and pycryptodome). Symbol tables
    stay (``--strip-unneeded`` on auditwheel/patchelf-rewritten libraries is a known way to break them),
    and a stripped file the loader would refuse (``loadable_segments``: even ``--strip-debug`` breaks
    the segment alignment of patchelf-rewritten libraries) is discarded for the original.
    """
    for junk in site.glob("bin"):
        shutil.rmtree(junk)
    for rel in PRUNED_PATHS:
        shutil.rmtree(site / rel, ignore_errors=True)
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts)):
        if not path.exists() or path.is_symlink():
            continue
        if path.is_dir() and path.name in PRUNED_DIR_NAMES and path.parent != site:
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in PRUNED_SUFFIXES:
            path.unlink()
    tool = strip_tool(machine)
    if tool is None:
        return
    for path in site.rglob("*.so*"):
        if not path.is_file() or path.is_symlink() or not path.read_bytes()[:4] == b"\x7fELF":
            continue
        stripped = path.with_name(path.name + ".stripped")
        done = subprocess.run([tool, "--strip-debug", "-o", str(stripped), str(path)], capture_output=True)
        if (done.returncode == 0 and stripped.stat().st_size < path.stat().st_size
                and loadable_segments(stripped.read_bytes())):
            shutil.copymode(path, stripped)
            stripped.replace(path)
        else:
            stripped.unlink(missing_ok=True)


@jsii.implements(ILocalBundling)
class LocalBundler:
    """CDK's ``ILocalBundling``: builds the artifact on this machine; Docker is never needed."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: object) -> bool:  # noqa: ARG002
        self.artifact.build(Path(output_dir))
        return True


def asset_code(artifact: Artifact, anchor: Path) -> lambda_.AssetCode:
    """``Code.from_asset`` of ``anchor`` bundled locally into ``artifact``'s layout."""
    return lambda_.Code.from_asset(
        str(anchor),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=artifact.key(),
        bundling=BundlingOptions(
            # Required by the API and never pulled: LocalBundler always succeeds.
            image=DockerImage.from_registry(f"public.ecr.aws/sam/build-python{PY_VERSION}"),
            local=LocalBundler(artifact),
            command=["false"],
        ),
    )


# ---------------------------------------------------------------- artifacts of the topology
class Packager:
    """Builds the artifacts of one synth (one target architecture, one mode)."""

    def __init__(self, *, machine: str, mode: str):
        if machine not in ("aarch64", "x86_64"):
            raise ValueError(f"unsupported machine {machine}")
        if mode not in ("full", "source"):
            raise ValueError(f"unsupported bundling mode {mode}")
        self.machine, self.mode = machine, mode
        self.lock = read_lock()
        self._closures: dict[tuple[str, ...], set[str]] = {}
        self.artifacts: list[Artifact] = []

    def _closure(self, groups: tuple[str, ...]) -> set[str]:
        if groups not in self._closures:
            reqs = project_requirements(groups)
            self._closures[groups] = closure(reqs, machine=self.machine) - RUNTIME_PROVIDED
        return self._closures[groups]

    def layer(self, name: str) -> Artifact:
        """The core layer: ``ig3`` plus the project's core dependencies; other names: a pyproject group."""
        if name == "core":
            sources = ((CORE_PACKAGE, "ig3", CORE_EXCLUDED),)
            names = self._closure(("core",))
        else:
            sources = ()
            names = self._closure((name,)) - self._closure(("core",))
        art = Artifact(f"layer-{name}", sources, tuple(pinned(names, self.lock)), "python", self.machine, self.mode)
        self.artifacts.append(art)
        return art

    def function(self, fn_name: str, handler: str, code_dir: str, layers: tuple[str, ...],
                 extras: tuple[str, ...]) -> Artifact:
        package_dir = handler_package_dir(handler)
        src = REPO / code_dir
        module_file = src / (handler.split(":")[0].rsplit(".", 1)[-1] + ".py")
        if not module_file.is_file():
            raise FileNotFoundError(f"function {fn_name}: handler module {module_file} does not exist")
        sources: list[tuple[Path, str, tuple[str, ...]]] = [(src, package_dir, ())]
        # Parent packages of the handler package need their __init__.py (ig3_functions/__init__.py).
        parent = src.parent
        for depth in range(package_dir.count("/")):
            init = parent / "__init__.py"
            if init.is_file():
                sources.append((_init_only_dir(init), str(Path(package_dir).parents[depth]), ()))
            parent = parent.parent
        provided: set[str] = set()
        for layer in layers:
            provided |= self._closure(("core",)) if layer == "core" else self._closure((layer,))
        names = (self._closure(tuple(extras)) - provided) if extras else set()
        art = Artifact(f"fn-{fn_name}", tuple(sources), tuple(pinned(names, self.lock)), "", self.machine,
                       self.mode)
        self.artifacts.append(art)
        return art

    def image_requirements(self, groups: tuple[str, ...], requirements: tuple[str, ...] = ()) -> str:
        """requirements.txt (with hashes) for an image function: core + its groups (+ further
        distributions by name, e.g. the audit image's llama-cpp-python), boto3 included."""
        names = closure([*project_requirements(("core", *groups)), *requirements], machine=self.machine)
        return "\n".join(p.line() for p in pinned(names, self.lock)) + "\n"


def handler_package_dir(handler: str) -> str:
    """``ig3_functions.api.handler:handler`` -> ``ig3_functions/api`` (the zip path of the package)."""
    module = handler.split(":")[0]
    if "." not in module:
        return ""
    return module.rsplit(".", 1)[0].replace(".", "/")


def lambda_handler(handler: str) -> str:
    """Topology ``module:callable`` -> Lambda's ``module.callable``."""
    module, _, fn = handler.partition(":")
    return f"{module}.{fn or 'handler'}"


_INIT_DIRS: dict[Path, Path] = {}


def _init_only_dir(init: Path) -> Path:
    """A folder holding only a package's ``__init__.py`` (to copy it without its siblings)."""
    if init not in _INIT_DIRS:
        d = CACHE / "inits" / hashlib.sha256(str(init).encode() + init.read_bytes()).hexdigest()[:16]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(init, d / "__init__.py")
        _INIT_DIRS[init] = d
    return _INIT_DIRS[init]


# ---------------------------------------------------------------- size report
def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def size_report(asset_dirs: dict[str, Path]) -> list[dict]:
    rows = []
    for name, path in sorted(asset_dirs.items()):
        size = tree_size(path)
        rows.append({"artifact": name, "unzipped_bytes": size, "unzipped_mb": round(size / 2**20, 1),
                     "within_limit": size <= LAMBDA_LIMIT_BYTES, "within_goal": size <= GOAL_BYTES})
    return rows

