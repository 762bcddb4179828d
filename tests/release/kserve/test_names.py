"""The shared names (shoprank.release.kserve.names): deployment modes, and that the module stays importable
alone (deploy/cli.py and every other module of the package take their strings from it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoprank.release.kserve import names

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("given, expected", [
    ("Standard", "Standard"), ("Knative", "Knative"), ("RawDeployment", "Standard"), ("Serverless", "Knative"),
])
def test_deployment_modes_and_their_legacy_names(given, expected):
    assert names.normalize_deployment_mode(given) == expected


def test_an_unknown_deployment_mode_is_refused():
    with pytest.raises(ValueError, match="deployment mode must be one of"):
        names.normalize_deployment_mode("ModelMesh")


def test_the_api_version_is_group_and_version():
    assert names.API_VERSION == "serving.kserve.io/v1beta1" == f"{names.GROUP}/{names.VERSION}"
    assert names.CANARY_FIELD.rsplit(".", 1)[-1] == "canaryTrafficPercent"


def test_names_and_profiles_load_without_the_rest_of_the_package():
    """What deploy/cli.py imports: constants and profiles, not the plan, the client or the rollout."""
    code = ("import sys, shoprank.release.kserve.names as n; "
            "assert not [m for m in sys.modules if m.startswith('shoprank.') and m not in "
            "('shoprank.release', 'shoprank.release.kserve', 'shoprank.release.kserve.names')], sorted(sys.modules); "
            "import shoprank.release.kserve.profiles; "
            "loaded = sorted(m for m in sys.modules if m.startswith('shoprank.release.kserve.')); "
            "assert loaded == ['shoprank.release.kserve.names', 'shoprank.release.kserve.profiles', "
            "'shoprank.release.kserve.spec'], loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
