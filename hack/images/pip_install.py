"""Install a project's pinned dependencies (not the project itself) inside an image build.

    python3 pip_install.py [--slim MODULES] PYPROJECT EXTRAS [REQUIREMENT ...]

Runs in the Dockerfiles' dependency layer, before any source code is copied, so that a code change rebuilds only
the layers after it. EXTRAS is a comma-separated list of extras of pyproject.toml (self-references such as
"shoprank[train]" are expanded); the build-system requirements are added so that the project itself installs
later with `pip install --no-deps --no-build-isolation .` and no network. REQUIREMENT adds packages (the GPU
variant's CUDA TensorFlow).

The host's pip settings and CA bundle reach this step as build secrets (`--secret id=pip.conf` and
`--secret id=pip-ca`, mounted under /run/secrets for this RUN only, never written into a layer): a machine whose
package index needs its own CA or index URL builds the same images as one that needs nothing. pip's cache goes to
the build's cache mount when there is one (rebuilds after a dependency change download less) and is not kept
otherwise. Standard library only: it runs before anything is installed.

`--slim MODULES` (the serving image, whose size is a target): no bytecode is compiled at install time, the test
suites that packages ship (`tests` directories) are removed, and then MODULES (space-separated) are imported once
with bytecode writing on, so exactly the modules the server imports get their .pyc. A read-only root filesystem
cannot cache bytecode at run time, so without it every start compiles them again (measured: 1.5 s of CPU from
start to ready with, 4.6 s without); compiling everything instead costs ~200 MB of .pyc for modules the server
never imports (sympy, ...). A module missing from the list costs start-up time, not correctness.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

SECRETS = Path("/run/secrets")
OPTIONAL_PRECOMPILE = ("tensorflow", "tf_keras")
PIP_CACHE = Path("/root/.cache/pip")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of `extras`, self-references expanded, build requirements added."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    name = re.sub(r"[-_.]+", "-", project["name"]).lower()
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(data.get("build-system", {}).get("requires", []))
    seen: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*\[([^\]]+)\]\s*", req)
            if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == name:
                expand([e.strip() for e in m.group(2).split(",")])
            elif req not in out:
                out.append(req)

    def expand(names: list[str]) -> None:
        for extra in names:
            if extra in seen:
                continue
            if extra not in optional:
                raise SystemExit(f"pip_install: no extra {extra!r} in {pyproject} (have: {', '.join(optional)})")
            seen.add(extra)
            add(optional[extra])

    add(project.get("dependencies", []))
    expand([e for e in extras if e])
    return out


def pip_environment(env: dict[str, str]) -> dict[str, str]:
    """The build's pip environment: the secrets when they were passed, pip's cache only on a cache mount."""
    env = dict(env)
    if (SECRETS / "pip.conf").is_file():
        env["PIP_CONFIG_FILE"] = str(SECRETS / "pip.conf")
    if (SECRETS / "pip-ca").is_file():
        env["PIP_CERT"] = str(SECRETS / "pip-ca")
    if PIP_CACHE.is_dir() and os.path.ismount(PIP_CACHE):
        env.pop("PIP_NO_CACHE_DIR", None)
        env["PIP_CACHE_DIR"] = str(PIP_CACHE)
    else:
        env["PIP_NO_CACHE_DIR"] = "1"
    return env


def drop_test_suites(prefix: Path) -> int:
    """Remove the `tests` packages installed under prefix; return the bytes freed."""
    freed = 0
    for site in prefix.glob("lib/python3*/site-packages"):
        for path in sorted(site.rglob("tests"), key=lambda p: len(p.parts)):
            if path.is_dir() and not path.is_symlink() and path.exists():
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
    return freed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slim", default="", help="space-separated modules to precompile (see the docstring)")
    p.add_argument("pyproject", type=Path)
    p.add_argument("extras")
    p.add_argument("requirements", nargs="*")
    a = p.parse_args(argv)
    reqs = requirements(a.pyproject, a.extras.split(",")) + a.requirements
    print("pip_install: " + " ".join(reqs), flush=True)
    env = pip_environment(dict(os.environ))
    rc = subprocess.call([sys.executable, "-m", "pip", "install", *(["--no-compile"] if a.slim else []), *reqs],
                         env=env)
    if rc != 0 or not a.slim:
        return rc
    importlib.invalidate_caches()  # packages were installed after this process started
    freed = drop_test_suites(Path(sys.prefix))
    print(f"pip_install: removed the packages' test suites ({freed / 1e6:.0f} MB)", flush=True)
    modules = a.slim.split()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # A module whose import fails here fails for the server too, which treats such imports as optional features
    # (KServe's OpenAI routes without vllm): what it imported before failing still gets its bytecode.
    # TensorFlow, when an extra brought it (the GPU variant's savedmodel backend), is what that backend imports.
    modules += [m for m in OPTIONAL_PRECOMPILE if importlib.util.find_spec(m) is not None]
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n        print(f'pip_install: precompile {m}: {e}', flush=True)\n")
    return subprocess.call([sys.executable, "-c", code, *modules], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
