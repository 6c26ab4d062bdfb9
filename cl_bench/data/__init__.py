"""Datasets -> uint8 tensors -> task sequences -> on-device batches."""

from .batching import Augment, TaskBatches, concat_tasks, iterate_eval
from .scenarios import SCENARIO_KINDS, build_scenario, parse_scenario_cfg
from .sources import SOURCE_INFO, DatasetError, DatasetFileError, DatasetNotFoundError, Source, load_source
from .task import SETTINGS, Scenario, Task

__all__ = [
    "SETTINGS", "SCENARIO_KINDS", "SOURCE_INFO", "Augment", "DatasetError", "DatasetFileError",
    "DatasetNotFoundError", "Scenario", "Source", "Task",
    "TaskBatches", "build_scenario", "concat_tasks", "iterate_eval", "load_source", "parse_scenario_cfg",
]
