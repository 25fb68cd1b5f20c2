"""Recipes: YAML files read into dataclasses, with ``--dotted.key value`` overrides from the command line.

Every script takes ``--config FILE`` plus overrides. A key the dataclass does not have is an error
that names the key, where it came from (the file, or the command line) and the closest valid key.
YAML is read with ``yaml.safe_load``; override values are parsed as YAML too, so ``--quality.min_words 5``
gives an int and ``--languages "[hi, bn]"`` a list; a list of strings may also be given as ``hi,bn``.

Training recipes go through TRL's ``TrlParser`` instead (see ``training/config.py``), which reports
unknown keys through :func:`unknown_key_error` so both kinds of recipe fail the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe or command-line override that cannot be used, with the place and the fix in its message."""


def unknown_key_error(key: str, valid: typing.Iterable[str], where: str) -> RecipeError:
    valid = sorted(set(valid))
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: -len(leaf)]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
    return RecipeError(f"{where}: unknown key '{key}'; {hint}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        looks = " (it looks like UTF-16)" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise RecipeError(
            f"{path}: not UTF-8{looks}: byte {err.start} is {raw[err.start : err.start + 1]!r}; "
            "save the recipe as UTF-8"
        ) from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping of keys to values, got {type(content).__name__}")
    return content


def parse_overrides(argv: list[str]) -> list[tuple[str, Any]]:
    """``["--a.b", "1", "--flag", "--c", "x"]`` -> ``[("a.b", 1), ("flag", True), ("c", "x")]``."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise RecipeError(f"command line: expected '--key value', got {token!r}")
        key, eq, inline = token[2:].partition("=")
        if eq:
            raw, i = inline, i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw, i = argv[i + 1], i + 2
        else:
            raw, i = "true", i + 1  # a bare flag switches a boolean on
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
    return pairs


def set_dotted(mapping: dict[str, Any], key: str, value: Any, *, append: bool = False) -> None:
    """Set ``a.b.0.c`` inside nested dicts and lists, creating dicts on the way."""
    parts = key.split(".")
    node: Any = mapping
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"command line: '{key}': index {part!r} is not in a list of {len(node)}")
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if append and last in node:  # a repeated flag: --adapter A --adapter B
        existing = node[last] if isinstance(node[last], list) else [node[last]]
        node[last] = existing + (value if isinstance(value, list) else [value])
    else:
        node[last] = value


def build(cls: type[T], values: dict[str, Any], where: str, prefix: str = "") -> T:
    """Make a `cls` dataclass from a mapping, checking every key and value."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: '{prefix.rstrip('.') or cls.__name__}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_key_error(f"{prefix}{key}", fields, where)
        kwargs[key] = _coerce(hints[key], value, where, f"{prefix}{key}")
        check_range(
            kwargs[key],
            fields[key].metadata.get("minimum"),
            fields[key].metadata.get("maximum"),
            where,
            f"{prefix}{key}",
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{where}: missing required key(s): {', '.join(prefix + m for m in missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from None


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, key)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0])
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, where, f"{key}.")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) and args and args[0] is str and "," in value:
            value = [part.strip() for part in value.split(",")]  # --formats hf,gguf
        if not isinstance(value, list):
            value = [value]
        return [_coerce(args[0] if args else Any, v, where, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {k: _coerce(args[1] if args else Any, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{where}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{where}: '{key}' must be a string, got {value!r}")
    raise TypeError(f"recipe field '{key}' has a type the loader does not handle: {tp!r}")


def load(cls: type[T], config: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read `config` (if given), apply command-line `overrides`, and build a `cls`."""
    values: dict[str, Any] = read_yaml(config) if config else {}
    where = str(config) if config else "recipe"
    seen: set[str] = set()
    for key, value in parse_overrides(overrides or []):
        _check_path(cls, key)
        set_dotted(values, key, value, append=key in seen)
        seen.add(key)
    return build(cls, values, where)


def _check_path(cls: type, key: str) -> None:
    """Fail on an override key that does not exist before it is merged, so the error says 'command line'."""
    tp: Any = cls
    walked: list[str] = []
    for part in key.split("."):
        while typing.get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) in (list, tuple) and part.isdigit():
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise unknown_key_error(".".join([*walked, part]), hints, "command line")
            tp = hints[part]
        else:
            return
        walked.append(part)


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per key with its default and help, for ``--help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        help_text = f.metadata.get("help", "")
        # Nested settings, or a list of them (each entry's keys shown once, N standing for its index).
        listed = typing.get_origin(tp) in (list, tuple) and typing.get_args(tp)
        inner = typing.get_args(tp)[0] if listed else tp
        if dataclasses.is_dataclass(inner):
            lines.append(f"  {prefix}{f.name}:  {help_text}".rstrip())
            lines.extend(describe(inner, f"{prefix}{f.name}.{'N.' if listed else ''}"))
            continue
        if f.default is not dataclasses.MISSING:
            default = f" (default: {f.default!r})"
        elif f.default_factory is not dataclasses.MISSING:
            default = f" (default: {f.default_factory()!r})"
        else:
            default = " (required)"
        bounds = [
            f"{name} {_number(f.metadata[name])}" for name in ("minimum", "maximum") if f.metadata.get(name) is not None
        ]
        if bounds:
            help_text = f"{help_text} ({', '.join(bounds)})".lstrip()
        lines.append(f"  --{prefix}{f.name}{default}  {help_text}".rstrip())
    return lines


def parse_cli(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """The command line of a script: ``[--config FILE] [--key value ...]``; errors exit with the message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(description.strip() + "\n\nusage: --config FILE [--key value ...]\n\nkeys:")
        print("\n".join(describe(cls)))
        raise SystemExit(0)
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("error: --config needs a file")
        config = argv[i + 1]
        del argv[i : i + 2]
    try:
        return load(cls, config, argv)
    except RecipeError as err:
        raise SystemExit(f"error: {err}") from None


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    default_factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """``dataclasses.field`` with a help text shown by ``--help`` and the range a number must lie in
    (inclusive; checked by :func:`build` for the value and for each number in a list)."""
    metadata = {"help": help, "minimum": minimum, "maximum": maximum}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_ranges(obj: Any, where: str = "") -> None:
    """Check every field of a recipe dataclass against its declared range (for objects made in code)."""
    for f in dataclasses.fields(obj):
        check_range(
            getattr(obj, f.name),
            f.metadata.get("minimum"),
            f.metadata.get("maximum"),
            where or type(obj).__name__,
            f.name,
        )


def check_range(value: Any, minimum: float | None, maximum: float | None, where: str, key: str) -> None:
    """Raise a RecipeError naming the key and its range when a number (or a number in a list) is outside it."""
    for number in value if isinstance(value, list) else [value]:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            low = "" if minimum is None else f"at least {_number(minimum)}"
            high = "" if maximum is None else f"at most {_number(maximum)}"
            raise RecipeError(f"{where}: '{key}' must be {' and '.join(p for p in (low, high) if p)}, got {number!r}")


def _number(value: float) -> str:
    """1000000 as 1000000, not 1e+06; 0.5 as 0.5."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def to_dict(obj: Any) -> Any:
    """A recipe dataclass as plain YAML-able values (for the resolved recipe written next to outputs)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
