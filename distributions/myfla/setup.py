"""Package list and data of the ``myfla`` wheel (metadata: pyproject.toml beside this file).

The sources live two folders up. Besides the ``myfla`` packages the wheel carries the port's audit
data as package data in ``myfla/audit/``, taken from where a checkout keeps it: the manifests
(``manifests/*.yaml``), their ratchet baselines (``manifests/baseline/*.json``) and the golden
fixtures recorded from real fla (``tests/fixtures/golden``, ``golden_rwkv7``). portaudit finds them as
``myfla:kda``, ``myfla:``, ``myfla:golden`` and ``myfla:golden_rwkv7`` (portaudit/static/bundled.py).
"""

from setuptools import find_packages, setup

REPO = "../.."
AUDIT = {
    "myfla.audit": "manifests",
    "myfla.audit.baseline": "manifests/baseline",
    "myfla.audit.golden": "tests/fixtures/golden",
    "myfla.audit.golden_rwkv7": "tests/fixtures/golden_rwkv7",
}

setup(
    packages=find_packages(where=REPO, include=["myfla", "myfla.*"]) + list(AUDIT),
    package_dir={"": REPO, **{package: f"{REPO}/{folder}" for package, folder in AUDIT.items()}},
    package_data={
        "myfla": ["py.typed", "NOTICE"],
        "myfla.audit": ["*.yaml"],
        "myfla.audit.baseline": ["*.json"],
        "myfla.audit.golden": ["index.json", "*.pt", "*.safetensors"],
        "myfla.audit.golden_rwkv7": ["index.json", "*.pt", "*.safetensors"],
    },
    include_package_data=False,
    zip_safe=False,
)
