from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import scaling_core

REPOSITORY = Path(__file__).resolve().parents[2]


def test_exported_names_are_exactly_the_public_ones() -> None:
    public = {name for name in vars(scaling_core) if not name.startswith("_")}
    modules = {
        "budget", "config", "controller", "failures", "growth", "isolation", "limits", "manager", "predictions", "processing",
        "quality", "rates", "results", "runs", "settings", "shifts", "sources", "store", "samples", "window",
    }
    assert set(scaling_core.__all__) == public - modules
    assert all(hasattr(scaling_core, name) for name in scaling_core.__all__)


def test_the_store_exports_exactly_its_public_names() -> None:
    from scaling_core import store

    modules = {name for name, value in vars(store).items() if isinstance(value, types.ModuleType)}
    assert modules == {"deadline", "engine", "exports", "ledger", "pipeline_store", "queries", "reports", "tables"}
    public = {name for name in vars(store) if not name.startswith("_")}
    assert set(store.__all__) == public - modules
    assert sorted(store.__all__) == sorted(set(store.__all__))


def test_scaling_core_never_imports_prefect() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, scaling_core, scaling_core.runs, scaling_core.samples.simulated_llm, scaling_core.samples.enhancer;"
            " assert 'prefect' not in sys.modules, 'prefect was imported'",
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
    )
    assert completed.returncode == 0, completed.stderr


def test_there_is_no_separate_predictor() -> None:
    offenders = [
        str(path.relative_to(REPOSITORY))
        for folder in ("scaling_core", "flows", "deployments", "bench", "tests", "docs")
        if (REPOSITORY / folder).exists()
        for path in (REPOSITORY / folder).rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".md", ".yaml", ".toml"}
        and "scaling" + "predictor" in path.read_text(encoding="utf-8", errors="replace").lower()
    ]
    assert offenders == []
    assert not hasattr(scaling_core, "Scaling" + "Predictor")
