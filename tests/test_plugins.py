"""Plug-ins from the user's own files: --import, the `imports:` key, entry points, `package.module:Class`,
a user folder named `strategies/`, and one clear error for an import that fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cl_bench import registry
from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config

TINY = ["scenario.n_tasks=2", "trainer.epochs=1", "checks.enabled=false", "settings=[class_il]", "seeds=[0]"]
USER_MODULE = '''
from cl_bench.module import ContinualModule
from cl_bench.registry import register


@register("{name}")
class UserNaive(ContinualModule):
    """Fine-tuning, from the user's file."""

    family = "user"
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A folder outside the repository as the working directory; registry, plug-in list and modules restored."""
    registry.strategy_names()  # the built-in strategies are loaded before the registry is saved
    saved, imported = dict(registry._REGISTRY), list(registry._IMPORTED)
    modules = set(sys.modules)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(registry.IMPORTS_ENV, "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._IMPORTED[:] = imported
    for name in set(sys.modules) - modules:
        if not name.startswith(("cl_bench", "torch", "lightning")):
            del sys.modules[name]


def test_the_imports_key_registers_before_validation(user_dir) -> None:
    (user_dir / "plug_key_mod.py").write_text(USER_MODULE.format(name="plug_key"))
    (user_dir / "exp.yaml").write_text("imports: [plug_key_mod]\nstrategy: plug_key\n")
    plan = build_plan(load_config(TINY, str(user_dir / "exp.yaml")))
    assert [s.strategy_class for s in plan.runs] == ["plug_key"]
    assert registry.plugin_modules()[-1] == "plug_key_mod"
    with pytest.raises(ConfigError, match=r"imports: no_such_plugin_mod: cannot import it \(ModuleNotFoundError"):
        load_config([*TINY, "imports=[no_such_plugin_mod]"])


def test_a_class_by_module_path_and_an_import_that_raises(user_dir, capsys) -> None:
    (user_dir / "plug_path_mod.py").write_text(
        "from cl_bench.module import ContinualModule\n\n\nclass Mine(ContinualModule):\n    \"\"\"Mine.\"\"\"\n")
    plan = build_plan(load_config([*TINY, "strategy=mine", "strategies.mine.class=plug_path_mod:Mine"]))
    assert plan.runs[0].strategy_class == "plug_path_mod:Mine"
    with pytest.raises(ConfigError, match="plug_path_mod:Nope.*has no attribute 'Nope'"):
        build_plan(load_config([*TINY, "strategy=mine", "strategies.mine.class=plug_path_mod:Nope"]))
    (user_dir / "plug_broken_mod.py").write_text("raise RuntimeError('the plug-in itself is broken')\n")
    assert main(["run", "--import", "plug_broken_mod", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config error: --import plug_broken_mod: cannot import it (RuntimeError: the plug-in itself "
                   "is broken)"]  # one line, no traceback


def test_a_users_strategies_folder_is_one_error_naming_it(user_dir, monkeypatch) -> None:
    """A user's strategies/ ahead on sys.path would stand in for the built-in package: one error names
    the folder and the fix, instead of an empty registry."""
    (user_dir / "strategies").mkdir()
    (user_dir / "strategies" / "__init__.py").write_text("")
    (user_dir / "strategies" / "mine.py").write_text(USER_MODULE.format(name="plug_folder"))
    monkeypatch.syspath_prepend(str(user_dir))  # as `python -m` or a script in that folder would have it
    saved = {k: v for k, v in sys.modules.items() if k == "strategies" or k.startswith("strategies.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setitem(registry._LOADED, "builtins", False)
    with pytest.raises(registry.PluginImportError, match=r"not cl-bench's built-in strategies .*rename your folder"):
        registry.strategy_names()
    for k in [k for k in sys.modules if k == "strategies" or k.startswith("strategies.")]:
        monkeypatch.delitem(sys.modules, k)
    sys.modules.update(saved)


def test_an_entry_point_of_an_installed_package_registers(user_dir, monkeypatch) -> None:
    site = user_dir / "site"
    (site / "plug_dist_mod").mkdir(parents=True)
    (site / "plug_dist_mod" / "__init__.py").write_text(USER_MODULE.format(name="plug_entry"))
    info = site / "plug_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nmine = plug_dist_mod\n")
    sys.path.append(str(site))
    monkeypatch.setitem(registry._LOADED, "entry_points", False)
    assert "plug_entry" in registry.strategy_names()
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nbad = plug_missing_mod\n")
    monkeypatch.setitem(registry._LOADED, "entry_points", False)
    with pytest.raises(registry.PluginImportError, match="entry point bad = plug_missing_mod"):
        registry.strategy_names()


@pytest.mark.slow
def test_pool_workers_import_the_plug_ins(user_dir) -> None:
    """sweep.workers=2: each worker process imports the --import modules before it builds a run."""
    (user_dir / "plug_pool_mod.py").write_text(USER_MODULE.format(name="plug_pool"))
    out = user_dir / "out"
    rc = main(["run", "--import", "plug_pool_mod", *TINY, "strategy=[naive,plug_pool]", "sweep.workers=2",
               f"output.dir={out}"])
    assert rc == 0
    runs = {r["label"]: r for r in json.loads(Path(out, "results.json").read_text())["runs"]}
    assert runs["plug_pool"]["family"] == "user" and runs["plug_pool"]["status"] == "ok"
    assert runs["plug_pool"]["acc"] == runs["naive"]["acc"]  # the same fine-tuning, trained in another process
