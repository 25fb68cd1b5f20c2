"""Data stages: each one annotates records and names a reason for every record it drops.

A stage is a small class. ``process(record)`` edits the record in place (cleaned text, annotation
columns) and returns None to keep it or a short reason string to drop it; a stage that needs to see
several records at once (the pages of one book, the documents seen so far) overrides
``process_batch``. The pipeline owns routing and counting: it hands a stage only the records of the
kinds it applies to, moves dropped records to the rejected output with the stage name and reason,
and checks that every input record ends up kept or rejected.

Record stages judge each record (or book) alone, so the pipeline runs them in worker processes.
A ``CorpusStage`` (duplicates, boilerplate lines) must see every record first: the pipeline calls
``observe`` on all records that reach it, then ``finish_observing``, then ``process`` on the same
records in the same order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

Record = dict[str, Any]


class Stage:
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("web", "ocr", "asr")
    # Annotation columns this stage adds to every record it sees, with their Arrow types.
    columns: ClassVar[dict[str, pa.DataType]] = {}

    def process(self, record: Record) -> str | None:
        raise NotImplementedError

    def process_batch(self, records: list[Record]) -> list[str | None]:
        return [self.process(record) for record in records]


class CorpusStage(Stage):
    def observe(self, record: Record) -> None:
        raise NotImplementedError

    def finish_observing(self) -> None:
        """Called once, after every record was observed and before the first ``process``."""
