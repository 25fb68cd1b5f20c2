"""Data stages: each one annotates records and names a reason for every record it drops.

A stage is one module in this folder: a config dataclass (derived from ``StageConfig``, which gives
``enabled``) and a class derived from ``Stage``, registered with ``@stage(name, order=..., config=...,
help=...)``. Importing this package imports every module in it, so a new file is all it takes: its
config becomes the recipe key ``stages.<name>`` and the pipeline runs it at its ``order``. Every number
in a config declares its range (``field(minimum=..., maximum=...)``), checked when the recipe is loaded;
a rule across fields goes in the config's ``__post_init__``, which calls the base's.

``Stage.__init__`` keeps the config and calls ``setup`` (tables, indexes); ``process(record)`` edits the
record in place (cleaned text, annotation columns) and returns None to keep it or a short reason string
to drop it; a stage that needs to see several records at once (the pages of one book) overrides
``process_batch``. The pipeline owns routing and counting: it hands a stage only the records of the
kinds it applies to, moves dropped records to the rejected output with the stage name and reason,
and checks that every input record ends up kept or rejected.

Record stages judge each record (or book) alone, so the pipeline runs them in worker processes.
A ``CorpusStage`` (duplicates, boilerplate lines) must see every record first: the pipeline calls
``observe`` on all records that reach it, then ``finish_observing``, then ``process`` on the same
records in the same order. Corpus stages run after all record stages, so their orders come last.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from indictune.core.recipe import check_ranges, field

Record = dict[str, Any]


class StageError(ValueError):
    """A stage that cannot be registered or set up; the message names the stage and the fix."""


@dataclass
class StageConfig:
    """What every stage's settings have."""

    enabled: bool = field(True, help="false skips the stage")

    def __post_init__(self) -> None:
        # a recipe's values are checked when it is loaded; this catches settings made in code
        check_ranges(self)


class Stage:
    # Set by @stage.
    name: ClassVar[str]
    order: ClassVar[int]
    config_class: ClassVar[type[StageConfig]]
    help: ClassVar[str]
    # Record kinds the pipeline hands this stage; the others pass it untouched.
    kinds: ClassVar[tuple[str, ...]] = ("web", "ocr", "asr")
    # Annotation columns this stage adds to every record it sees, with their Arrow types.
    columns: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, config: StageConfig):
        self.config = config
        self.setup()

    def setup(self) -> None:
        """Build what ``process`` needs from ``self.config``; runs once per process that uses the stage."""

    def process(self, record: Record) -> str | None:
        raise NotImplementedError

    def process_batch(self, records: list[Record]) -> list[str | None]:
        return [self.process(record) for record in records]


class CorpusStage(Stage):
    def observe(self, record: Record) -> None:
        raise NotImplementedError

    def finish_observing(self) -> None:
        """Called once, after every record was observed and before the first ``process``."""


# name -> stage class, in run order.
STAGES: dict[str, type[Stage]] = {}


def stage(name: str, *, order: int, config: type[StageConfig], help: str):
    """Register a stage class under `name` (its recipe key) at `order` in the run, configured by `config`."""

    def register(cls: type[Stage]) -> type[Stage]:
        for other in STAGES.values():
            if name == other.name or order == other.order:
                raise StageError(
                    f"stage {name!r} (order {order}) clashes with stage {other.name!r} "
                    f"(order {other.order}) of {other.__module__}: give it another name or order"
                )
        cls.name, cls.order, cls.config_class, cls.help = name, order, config, help
        registered = sorted([*STAGES.values(), cls], key=lambda s: s.order)
        for earlier, later in zip(registered, registered[1:]):
            if issubclass(earlier, CorpusStage) and not issubclass(later, CorpusStage):
                raise StageError(
                    f"record stage {later.name!r} (order {later.order}) comes after corpus stage "
                    f"{earlier.name!r} (order {earlier.order}); record stages run first: order it lower"
                )
        STAGES.clear()
        STAGES.update((s.name, s) for s in registered)
        return cls

    return register


def discover() -> None:
    """Import every module of this package, registering its stages (a module already imported is not rerun)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def config_class() -> type:
    """The recipe's ``stages:`` mapping: one field per registered stage, in run order, holding its config."""
    fields = [
        (name, cls.config_class, field(default_factory=cls.config_class, help=cls.help)) for name, cls in STAGES.items()
    ]
    stages_config = dataclasses.make_dataclass("StagesConfig", fields)
    stages_config.__module__ = __name__  # so that worker processes can unpickle it
    stages_config.__doc__ = "The stages, in run order; each can be configured or switched off with ``enabled: false``."
    return stages_config


def build_stages(config: Any) -> list[Stage]:
    """The enabled stages of a ``StagesConfig`` (as ``config_class`` makes it), in run order."""
    settings = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]
    return [STAGES[name](stage_config) for name, stage_config in settings if stage_config.enabled]


discover()
StagesConfig = config_class()
