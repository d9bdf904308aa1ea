"""A sweep's grid: one YAML file → the list of cells it asks for, each with a stable id.

A researcher's study is a grid — targets × methods × modes × hyperparameters × setting ×
seeds — and every point of it is one unlearning run (a *cell*). This module only *plans*: it
validates the YAML (every mistake is one :class:`~rwku.errors.ConfigError` line naming the key)
and expands it into :class:`Cell` objects; :mod:`rwku.experiments.sweep` runs them.

The file (docs/sweeps.md has the full reference)::

    name: my-study
    targets: ["Stephen King", 2, "11-20"]   # names, ids, or inclusive id ranges "a-b"
    methods:
      - icu
      - {name: repe, grid: {alpha: [0.5, 1.0, 1.5]}}
      - {name: npo, modes: [full, lora], grid: {lr: [1e-5, 5e-5]}}
      - {name: ga, modes: [partial], grid: {layers: ["0-4", "4-8"]}}
    modes: [lora]             # default modes of training methods
    setting: single           # single | batch | [single, batch]
    batch_sizes: [10, 20]     # batch setting: the first k targets unlearned at once
    seeds: [0]
    record_epochs: [1, 2, 3]  # also evaluate after these epochs (trade-off curves)
    attacks:                  # attack every cell's unlearned model (rwku.attacks)
      relearn: {kinds: [split, related, unrelated], budgets: [0, 10, 25, 50], mode: full}
      incontext: {}
    # every other key is an option of `rwku run` shared by all cells:
    suites: forget,neighbor,mia,utility
    limit: 20
    corpus: synthetic

Why a cell id is a hash: a re-run, a shard or a Ray worker must agree, without talking to each
other, on which result file belongs to which run. The id is a readable slug plus the first
hex digits of the SHA-256 of everything that determines the cell's numbers (targets, method,
mode, hyperparameters, seed, recorded epochs, shared options, model), and of nothing that
does not (data path, device, threads, evaluation batch size, cache use). Reordering the YAML
keeps every id; changing a learning rate changes only the cells that use it.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError
from rwku.experiments.unlearn import UnlearnConfig

#: Keys that shape the grid itself (the rest of the top level is shared UnlearnConfig options).
GRID_KEYS = (
    "name",
    "targets",
    "methods",
    "modes",
    "setting",
    "batch_sizes",
    "seeds",
    "seed",
    "record_epochs",
    "attacks",
    "keep_items",
    "save_runs",
)
#: UnlearnConfig fields a cell sets itself, so they may not appear at the top level.
CELL_FIELDS = ("targets", "setting", "method", "mode", "method_options", "run_dir", "progress", "seed")
#: Options that change speed or location but never a number: left out of the cell id.
UNHASHED = ("data", "device", "threads", "eval_batch_size", "use_cache", "gradient_checkpointing")
#: UnlearnConfig fields a method entry may fix or grid over (besides the method's own options).
HYPER_KEYS = (
    "lr",
    "epochs",
    "batch_size",
    "grad_accum",
    "max_length",
    "layers",
    "experts",
    "corpus",
    "corpus_size",
    "corpus_tokens",
)
#: Hyperparameters that only make sense when a method trains.
TRAINING_ONLY = ("lr", "epochs", "batch_size", "grad_accum", "max_length", "layers", "experts")
METHOD_ENTRY_KEYS = ("name", "modes", "grid", "options", *HYPER_KEYS)
SETTINGS = ("single", "batch")
MODES = ("full", "lora", "partial", "expert")
ID_HASH_LEN = 10

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass
class Cell:
    """One unlearning run of a sweep.

    ``targets`` holds canonical target names (one for the single setting, the first k for the
    batch setting); ``mode`` is ``None`` for inference-time methods (ICU, RepE), which have no
    training mode; ``params`` are the hyperparameters fixed or gridded in the method's entry
    (UnlearnConfig fields) and ``options`` its method options (beta, alpha, ...); ``shared``
    holds the top-level options every cell of the sweep shares.
    """

    setting: str
    targets: tuple[str, ...]
    method: str
    mode: str | None
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    record_epochs: tuple[float, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    keep_items: bool = False
    save_runs: bool = False

    def spec(self) -> dict[str, Any]:
        """Everything that determines the cell's numbers: what the id hashes.

        ``attacks`` only when asked for, so the ids of sweeps without attacks never change; with
        them, the attacks' data rule (:data:`rwku.attacks.data.DATA_RULE`, since rule 2), so a
        cell computed under an earlier rule is not taken for a finished one.
        """
        out = {
            "setting": self.setting,
            "targets": list(self.targets),
            "method": self.method,
            "mode": self.mode,
            "params": dict(sorted(self.params.items())),
            "options": dict(sorted(self.options.items())),
            "seed": self.seed,
            "record_epochs": list(self.record_epochs),
            "shared": {k: v for k, v in sorted(self.shared.items()) if k not in UNHASHED},
        }
        if self.attacks:
            from rwku.attacks.data import DATA_RULE

            out["attacks"] = {k: dict(sorted(v.items())) for k, v in sorted(self.attacks.items())}
            out["attack_data_rule"] = DATA_RULE
        return out

    @property
    def digest(self) -> str:
        blob = json.dumps(self.spec(), sort_keys=True, ensure_ascii=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:ID_HASH_LEN]

    @property
    def slug(self) -> str:
        """A readable name: method, mode, targets, varied values and seed."""
        who = _slugify(self.targets[0]) if self.setting == "single" else f"batch{len(self.targets)}"
        parts = [self.method, self.mode or "", who]
        parts += [f"{k}{_fmt_value(v)}" for k, v in sorted({**self.params, **self.options}.items())]
        parts.append(f"s{self.seed}")
        return _slugify("-".join(p for p in parts if p))[:80].strip("-")

    @property
    def id(self) -> str:
        return f"{self.slug}-{self.digest}"

    @property
    def k(self) -> int:
        """How many targets are unlearned at once."""
        return len(self.targets)

    def label(self) -> str:
        """The method group this cell belongs to, as a table row label."""
        head = self.method if self.mode is None else f"{self.method} ({self.mode})"
        extra = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted({**self.params, **self.options}.items()))
        return f"{head} {extra}".strip()

    def unlearn_config(self, **runtime: Any) -> UnlearnConfig:
        """The :class:`UnlearnConfig` of this cell; ``runtime`` adds data, run_dir, device, ..."""
        values: dict[str, Any] = {**self.shared, **self.params}
        values.update(
            targets=list(self.targets),
            method=self.method,
            mode=self.mode or "lora",  # ignored by inference-time methods
            method_options=dict(self.options),
            seed=self.seed,
            setting=self.setting,  # batch: the k targets at once; single: one target
        )
        values.update({k: v for k, v in runtime.items() if v is not None})
        return UnlearnConfig.from_dict(values, source=f"cell {self.id}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label(),
            **self.spec(),
            "shared": dict(self.shared),
            "keep_items": self.keep_items,
            "save_runs": self.save_runs,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Cell:
        """Inverse of :meth:`to_dict` (manifests, Ray transport); the id must round-trip."""
        cell = cls(
            setting=raw["setting"],
            targets=tuple(raw["targets"]),
            method=raw["method"],
            mode=raw["mode"],
            params=dict(raw["params"]),
            options=dict(raw["options"]),
            seed=int(raw["seed"]),
            record_epochs=tuple(float(e) for e in raw["record_epochs"]),
            shared=dict(raw["shared"]),
            attacks={k: dict(v) for k, v in (raw.get("attacks") or {}).items()},
            keep_items=bool(raw.get("keep_items", False)),
            save_runs=bool(raw.get("save_runs", False)),
        )
        if "id" in raw and raw["id"] != cell.id:
            raise ConfigError(f"cell {raw['id']!r} does not match its own spec (id {cell.id!r})")
        return cell


@dataclass
class SweepPlan:
    """The expanded grid: its name, the raw config and the cells, in run order."""

    name: str
    config: dict[str, Any]
    cells: list[Cell]
    duplicates: int = 0

    def shard(self, index: int, count: int) -> list[Cell]:
        """Cells ``index, index + count, ...`` of the run order: shards of one config are
        disjoint, cover the grid, and differ in size by at most one cell."""
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"--shard must be i/n with 0 <= i < n, got {index}/{count}")
        return self.cells[index::count]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` → ``(1, 4)``: shard 1 of 4 (0-based, as job-array indices are)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return index, count


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML file into a mapping (file and YAML errors become ConfigErrors)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep config not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"sweep config {path} is a directory, not a YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(err))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(raw).__name__}")
    return raw


def expand_grid(
    raw: Mapping[str, Any],
    *,
    resolve_target: Callable[[str | int], str] | None = None,
    source: str = "sweep config",
    default_name: str = "sweep",
) -> SweepPlan:
    """Validate a sweep mapping and expand it into cells.

    ``resolve_target`` turns a name or id into the canonical target name (the CLI passes the
    data's lookup, so that ``1`` and ``"Stephen King"`` are the same cell); without it targets
    are kept as written. Order: setting, targets (or batch size), method entry, mode, grid
    values, seed — so a sequential sweep runs every cell of one target together and the
    original model's evaluation of that target is computed once and then read from the cache.
    """
    where = source
    hints = typing.get_type_hints(UnlearnConfig)
    shared_keys = [f.name for f in fields(UnlearnConfig) if f.name not in CELL_FIELDS]
    unknown = sorted(set(raw) - set(GRID_KEYS) - set(shared_keys))
    if unknown:
        cell_only = [k for k in unknown if k in CELL_FIELDS]
        if cell_only:
            raise ConfigError(
                f"{where}: {', '.join(cell_only)} is set per cell; use targets/methods/modes/seeds "
                "(method options go in a method entry's options or grid)"
            )
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; grid keys: {', '.join(GRID_KEYS)}; "
            f"shared options: {', '.join(shared_keys)}"
        )

    shared: dict[str, Any] = {}
    for key in shared_keys:
        if key in raw and raw[key] is not None:
            value = raw[key]
            if key == "suites" and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            _check_type(f"{where}: {key}", value, hints[key])
            shared[key] = value
    if "suites" in shared:
        from rwku.evaluation.runner import expand_suites

        expand_suites(shared["suites"])

    name = raw.get("name", default_name)
    _check_type(f"{where}: name", name, str)
    keep_items = raw.get("keep_items", False)
    save_runs = raw.get("save_runs", False)
    _check_type(f"{where}: keep_items", keep_items, bool)
    _check_type(f"{where}: save_runs", save_runs, bool)

    targets = _targets(raw.get("targets"), where, resolve_target)
    settings = _str_list(raw.get("setting", "single"), f"{where}: setting")
    for s in settings:
        if s not in SETTINGS:
            raise ConfigError(f"{where}: setting must be single or batch (or a list of them), got {s!r}")
    batch_sizes = _batch_sizes(raw.get("batch_sizes"), settings, len(targets), where)
    seeds = _seeds(raw, where)
    record_epochs = _record_epochs(raw.get("record_epochs"), where)
    attacks = _attacks(raw.get("attacks"), where)
    default_modes = _modes(raw.get("modes", ["lora"]), f"{where}: modes")
    entries = _method_entries(raw.get("methods"), where, default_modes)

    groups: list[tuple[str, tuple[str, ...]]] = []
    for setting in settings:
        if setting == "single":
            groups += [("single", (t,)) for t in targets]
        else:
            groups += [("batch", tuple(targets[:k])) for k in batch_sizes]

    cells: list[Cell] = []
    seen: set[str] = set()
    duplicates = 0
    for setting, group in groups:
        for entry in entries:
            for mode in entry.modes:
                for values in entry.grid_points():
                    params = {**entry.fixed, **{k: v for k, v in values.items() if k in HYPER_KEYS}}
                    options = {**entry.options, **{k: v for k, v in values.items() if k not in HYPER_KEYS}}
                    if mode != "partial":
                        params.pop("layers", None)
                    if mode != "expert":
                        params.pop("experts", None)
                    for seed in seeds:
                        cell = Cell(
                            setting=setting,
                            targets=group,
                            method=entry.name,
                            mode=mode,
                            params=params,
                            options=options,
                            seed=seed,
                            record_epochs=record_epochs if entry.trains else (),
                            shared=shared,
                            attacks=attacks,
                            keep_items=keep_items,
                            save_runs=save_runs,
                        )
                        if cell.id in seen:
                            duplicates += 1
                            continue
                        seen.add(cell.id)
                        cell.unlearn_config()  # every value checked before anything runs
                        cells.append(cell)
    if not cells:
        raise ConfigError(f"{where}: the grid is empty")
    return SweepPlan(name=name, config=dict(raw), cells=cells, duplicates=duplicates)


@dataclass
class _MethodEntry:
    name: str
    trains: bool
    modes: list[str | None]
    fixed: dict[str, Any]
    options: dict[str, Any]
    grid: dict[str, list[Any]]

    def grid_points(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid lists, in the order written."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            points = [{**p, key: v} for p in points for v in values]
        return points


def _method_entries(value: Any, where: str, default_modes: list[str]) -> list[_MethodEntry]:
    from rwku.methods import get_method

    if value is None:
        raise ConfigError(f"{where}: no methods given (methods: [icu, npo, ...])")
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: methods must be a list of names or mappings")
    hints = typing.get_type_hints(UnlearnConfig)
    entries = []
    for i, item in enumerate(value):
        here = f"{where}: methods[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{here}: expected a method name or a mapping, got {type(item).__name__}")
        unknown = sorted(set(item) - set(METHOD_ENTRY_KEYS))
        if unknown:
            raise ConfigError(
                f"{here}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(METHOD_ENTRY_KEYS)}"
            )
        if "name" not in item or not isinstance(item["name"], str):
            raise ConfigError(f"{here}: a method entry needs a name (one of `rwku methods`)")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{here}: options must be a mapping of method options")
        method = get_method(item["name"], **options)  # unknown method/options: ConfigError
        here = f"{where}: method {method.name}"
        trains = method.kind == "training"
        grid = item.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"{here}: grid must be a mapping of key: [values]")
        for key, values in grid.items():
            if key not in HYPER_KEYS and key not in method.defaults:
                valid = ", ".join([*HYPER_KEYS, *sorted(method.defaults)])
                raise ConfigError(f"{here}: cannot grid over {key!r}; valid: {valid}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{here}: grid {key} must be a non-empty list, got {values!r}")
            for v in values:
                if key in HYPER_KEYS:
                    _check_type(f"{here}: grid {key}", v, hints[key])
            if key in method.defaults:
                get_method(method.name, **{**options, key: values[0]})
        fixed = {k: item[k] for k in HYPER_KEYS if k in item}
        for key, v in fixed.items():
            _check_type(f"{here}: {key}", v, hints[key])
        if not trains:
            bad = [k for k in (*fixed, *grid) if k in TRAINING_ONLY]
            if bad:
                raise ConfigError(f"{here} does not train; {', '.join(bad)} does not apply to it")
            if "modes" in item:
                raise ConfigError(f"{here} is applied at inference time; it takes no modes")
            modes: list[str | None] = [None]
        else:
            modes = list(_modes(item["modes"], f"{here}: modes")) if "modes" in item else list(default_modes)
            if "layers" in (*fixed, *grid) and "partial" not in modes:
                raise ConfigError(f"{here}: layers only applies to mode partial")
            if "experts" in (*fixed, *grid) and "expert" not in modes:
                raise ConfigError(f"{here}: experts only applies to mode expert")
        entries.append(_MethodEntry(method.name, trains, modes, fixed, dict(options), dict(grid)))
    return entries


def _targets(value: Any, where: str, resolve: Callable[[str | int], str] | None) -> list[str]:
    if value is None:
        raise ConfigError(f'{where}: no targets given (targets: ["Stephen King", 2, "11-20"])')
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: targets must be a non-empty list of names, ids or ranges like '1-10'")
    out: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ConfigError(f"{where}: target {item!r} must be a name, an id or a range like '1-10'")
        m = _RANGE.match(item) if isinstance(item, str) else None
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi or lo < 1:
                raise ConfigError(f"{where}: target range {item!r} must be a-b with 1 <= a <= b (inclusive)")
            expanded: list[str | int] = list(range(lo, hi + 1))
        else:
            expanded = [item]
        for t in expanded:
            name = resolve(t) if resolve is not None else str(t)
            if name in out:
                raise ConfigError(f"{where}: target {name!r} is listed twice")
            out.append(name)
    return out


def _batch_sizes(value: Any, settings: list[str], n_targets: int, where: str) -> list[int]:
    if "batch" not in settings:
        if value is not None:
            raise ConfigError(f"{where}: batch_sizes needs setting: batch")
        return []
    if value is None:
        raise ConfigError(f"{where}: setting batch needs batch_sizes, e.g. [10, 20, 30]")
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: batch_sizes must be a non-empty list of integers")
    for k in value:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"{where}: batch size {k!r} must be a positive integer")
        if k > n_targets:
            raise ConfigError(f"{where}: batch size {k} is larger than the {n_targets} targets listed")
    return list(dict.fromkeys(value))


def _seeds(raw: Mapping[str, Any], where: str) -> list[int]:
    if "seed" in raw and "seeds" in raw:
        raise ConfigError(f"{where}: give seed or seeds, not both")
    value = raw.get("seeds", raw.get("seed", 0))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"{where}: seed {s!r} must be an integer")
    return list(dict.fromkeys(value))


def _record_epochs(value: Any, where: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: record_epochs must be a list of epoch numbers, e.g. [1, 2, 3]")
    for e in value:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0:
            raise ConfigError(f"{where}: record_epochs entry {e!r} must be a positive number")
    return tuple(sorted({float(e) for e in value}))


def _attacks(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """``attacks: {relearn: {...options}, incontext: {}}`` (or a list of names), validated."""
    from rwku.attacks import ATTACKS
    from rwku.attacks.relearn import RelearnOptions

    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        value = {str(v): {} for v in value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: attacks must map attack names ({', '.join(ATTACKS)}) to their options")
    out: dict[str, dict[str, Any]] = {}
    for name, options in value.items():
        if name not in ATTACKS:
            raise ConfigError(f"{where}: unknown attack {name!r}; choose from: {', '.join(ATTACKS)}")
        options = dict(options or {})
        if name == "relearn":
            RelearnOptions.from_dict(options, source=f"{where}: attacks.relearn")
        elif options:
            raise ConfigError(f"{where}: attacks.{name} takes no options, got {', '.join(options)}")
        out[name] = options
    return out


def _modes(value: Any, where: str) -> list[str]:
    modes = _str_list(value, where)
    for m in modes:
        if m not in MODES:
            raise ConfigError(f"{where}: mode must be full, lora, partial or expert, got {m!r}")
    return list(dict.fromkeys(modes))


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a name or a non-empty list of names, got {value!r}")
    return value


def _check_type(where: str, value: Any, hint: Any) -> None:
    """``value`` must match the type hint (``int | None``, ``float``, ``dict[...]`` ...).

    bool is not accepted as a number (``lr: true`` is a mistake) and an int is accepted where
    a float is expected (``epochs: 2``), as YAML writes them.
    """
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        origin = typing.get_origin(t) or t
        if t is type(None) and value is None:
            return
        if origin is bool and isinstance(value, bool):
            return
        if isinstance(value, bool):
            continue
        if origin is float and isinstance(value, (int, float)):
            return
        if isinstance(origin, type) and origin is not type(None) and isinstance(value, origin):
            return
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise ConfigError(f"{where} must be {names}, got {value!r} ({type(value).__name__})")


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9_.]+", "-", text.lower()).strip("-")


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt_value(v) for v in value)
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def plan_from_file(
    path: str | Path, *, resolve_target: Callable[[str | int], str] | None = None
) -> SweepPlan:
    """Load and expand a sweep YAML file (the name defaults to the file's stem)."""
    raw = load_sweep_config(path)
    return expand_grid(raw, resolve_target=resolve_target, source=str(path), default_name=Path(path).stem)


def describe(cells: Sequence[Cell]) -> str:
    """One line per cell, for ``rwku sweep --dry-run``."""
    return "\n".join(f"{c.id}\t{c.setting}\tk={c.k}\t{c.label()}\tseed {c.seed}" for c in cells)
