"""One source of defaults: a strategy's ``Params`` dataclass.

``configs/strategy/<label>.yaml`` may only set what differs from it: a hyper-parameter whose
value equals the dataclass default, a key the dataclass lacks, a ``class`` equal to the label,
or an ``optimizer`` / ``trainer`` key equal to the global one of ``configs/default.yaml`` fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from cl_bench.config import CONFIG_DIR, ConfigError, TrainerConfig, to_dataclass
from cl_bench.module import OptimizerConfig
from cl_bench.registry import get_strategy

STRATEGY_FILES = sorted((CONFIG_DIR / "strategy").glob("*.yaml"))
SECTIONS = {"optimizer": OptimizerConfig, "trainer": TrainerConfig}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _coerced(cls: type, key: str, value: Any, where: str) -> Any:
    """``value`` as the dataclass stores it (``1`` for a float field reads 1.0)."""
    return getattr(to_dataclass(cls, {key: value}, where), key)


def restatements(label: str, entry: dict[str, Any]) -> list[str]:
    """Every key of a strategy file that restates a default or names nothing."""
    out: list[str] = []
    if entry.get("class") == label:
        out.append(f"class: {label} is the label itself (the default class)")
    try:
        cls = get_strategy(str(entry.get("class", label)))
    except KeyError as err:
        return [*out, str(err.args[0])]
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    glob = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "default.yaml"), resolve=True)
    for key, value in entry.items():
        if key == "class":
            continue
        if key in SECTIONS:
            section, valid = SECTIONS[key], {f.name for f in dataclasses.fields(SECTIONS[key])}
            for sub, v in (value or {}).items():
                if sub not in valid:
                    out.append(f"{key}.{sub}: not a field of {section.__name__}")
                elif key in glob and sub in glob[key] and v == glob[key][sub]:
                    out.append(f"{key}.{sub}: {v!r} restates configs/default.yaml")
            continue
        if key not in fields:
            out.append(f"{key}: not a field of {cls.Params.__qualname__} (valid: {', '.join(fields)})")
            continue
        default = _default(fields[key])
        try:
            value = _coerced(cls.Params, key, value, f"strategies.{label}")
        except ConfigError as err:
            out.append(f"{key}: {err}")
            continue
        if default is not dataclasses.MISSING and value == default:
            out.append(f"{key}: {value!r} restates the default of {cls.Params.__qualname__}")
    return out


def _load(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}


def test_every_strategy_file_is_checked() -> None:
    assert len(STRATEGY_FILES) >= 2, f"no strategy files under {CONFIG_DIR / 'strategy'}"


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=[p.stem for p in STRATEGY_FILES])
def test_strategy_file_states_only_what_differs_from_params(path: Path) -> None:
    problems = restatements(path.stem, _load(path))
    assert not problems, f"{path.relative_to(CONFIG_DIR.parent)}:\n  " + "\n  ".join(problems)


def test_restated_default_is_caught() -> None:
    from cl_bench.strategies.local import EWCParams

    entry = {"lam": EWCParams().lam, "samples": 7}
    assert restatements("ewc", entry) == [f"lam: {EWCParams().lam!r} restates the default of EWCParams"]
    assert restatements("ewc", {"lam": int(EWCParams().lam)})  # 10 reads 10.0: still the default


def test_unknown_key_and_redundant_class_are_caught() -> None:
    problems = restatements("ewc", {"class": "ewc", "lamda": 3.0})
    assert any(p.startswith("class: ewc") for p in problems)
    assert any(p.startswith("lamda: not a field of EWCParams") for p in problems)
    assert restatements("nope", {}) and restatements("my_ewc", {"class": "ewc", "lam": 3.0}) == []


def test_section_overrides_must_differ_from_the_global_ones() -> None:
    glob = _load(CONFIG_DIR / "default.yaml")
    assert restatements("naive", {"optimizer": {"lr": glob["optimizer"]["lr"]}})
    assert restatements("naive", {"trainer": {"epochs": glob["trainer"]["epochs"] + 1}}) == []
    assert restatements("naive", {"trainer": {"epoch": 2}}) == ["trainer.epoch: not a field of TrainerConfig"]
