"""The box's files that are not Python code, found with importlib.resources.

They ship inside the aviator package (see setup.py), so an installed wheel and a
checkout behave alike: the test app and the quick-start manifests are the package
`aviator.box.quickstart` (test/functional/ in the repository), the namespace, RBAC,
CRD and sample policy are `aviator.config` (config/). kubectl and python want real
files, which is what installed packages are; a path that is not on a file system
shows up as a missing file, reported where it is used.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from aviator.api.crd import CRD_FILE_NAME

QUICKSTART_PACKAGE = "aviator.box.quickstart"
CONFIG_PACKAGE = "aviator.config"


def _path(entry: Traversable) -> Path:
    return entry if isinstance(entry, Path) else Path(str(entry))


def quickstart(name: str) -> Path:
    """A file of the quick-start: testapp.py, fast-app.yaml, slow-app.yaml, test-svc.yaml."""
    return _path(files(QUICKSTART_PACKAGE) / name)


def config(*parts: str) -> Path:
    """A file or kustomize directory of config/, e.g. config("rbac")."""
    return _path(files(CONFIG_PACKAGE).joinpath(*parts))


TESTAPP = quickstart("testapp.py")
CRD_FILE = config("crd", "bases", CRD_FILE_NAME)
SAMPLE_POLICY = config("samples", "aviator_v1alpha1_aviatorpolicy.yaml")
APP_MANIFESTS = [quickstart("fast-app.yaml"), quickstart("slow-app.yaml")]
SERVICE_MANIFEST = quickstart("test-svc.yaml")
