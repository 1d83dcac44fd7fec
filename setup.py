"""The wheel's package list (everything else is in pyproject.toml).

Besides the `aviator` packages, three directories whose place the product layout fixes
ship inside the package, unchanged and without copies, through the `package-dir`
mapping in pyproject.toml: `bpf/` (the BPF C sources) as `aviator.agent.bpf.src`,
`config/` (kustomize manifests) as `aviator.config`, and `test/functional/` (the test
app and the quick-start manifests) as `aviator.box.quickstart`. Runtime code reads
them with importlib.resources, from a wheel and from an editable install alike.
pyproject.toml cannot add mapped packages to a discovered list, hence this file.
"""

from setuptools import find_namespace_packages, find_packages, setup

SHIPPED_DIRECTORIES = {
    "aviator.agent.bpf.src": "bpf",
    "aviator.config": "config",
    "aviator.box.quickstart": "test/functional",
}


def _shipped() -> list[str]:
    # Subdirectories (config/rbac, ...) are listed too: they are data directories, and
    # setuptools warns about directories inside a package that are not in the list.
    return [
        f"{package}{suffix}"
        for package, directory in SHIPPED_DIRECTORIES.items()
        for suffix in ["", *(f".{sub}" for sub in find_namespace_packages(where=directory))]
    ]


setup(packages=[*find_packages(include=["aviator*"]), *_shipped()])
