"""Install a project's pinned dependencies (not the project itself) inside an image build.

    python3 pip_install.py PYPROJECT EXTRAS [REQUIREMENT ...]

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
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

SECRETS = Path("/run/secrets")
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


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    reqs = requirements(Path(argv[0]), argv[1].split(",")) + argv[2:]
    print("pip_install: " + " ".join(reqs), flush=True)
    return subprocess.call([sys.executable, "-m", "pip", "install", *reqs], env=pip_environment(dict(os.environ)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
