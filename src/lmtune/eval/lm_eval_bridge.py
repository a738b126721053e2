"""Standard benchmarks through lm-evaluation-harness, on a model lmtune has already loaded.

lm-eval loads models itself from hub ids or folders; lmtune's targets (run folders with adapters,
aliases, GGUF files) are loaded by lmtune and handed over as objects instead. A task is a name from
lm-eval's registry or a task YAML; relative `dataset_kwargs.data_files` in a YAML are read from the
YAML's folder (lm-eval alone would read them from the working directory), so a custom task over
local files runs from anywhere, offline.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.util
import logging
import numbers
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import ConfigError, DataError

INSTALL_HINT = (
    "lmtune eval --lm-eval needs the lm-eval package (lm-evaluation-harness). "
    "Install it with: pip install 'lmtune[lm-eval]'"
)
DOCS = "docs/lm_eval.md"
# lm-eval's default of 100,000 bootstrap resamples makes the stderr of non-mean metrics (bleu, f1, ...)
# take minutes on a CPU; 1,000 are plenty for an error bar.
BOOTSTRAP_ITERS = 1000


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Run lm-eval `tasks` (registry names or task YAML paths) on a loaded causal LM (plain or PEFT).

    Returns {task: {metric: value}}: lm-eval's `acc,none` becomes `acc`, `acc_stderr,none`
    `acc_stderr`; under another filter `exact_match,strict-match` becomes `exact_match/strict-match`
    and its stderr `exact_match/strict-match_stderr`. Groups (mmlu, ...)
    get a row of their own next to their subtasks. The model is put in eval mode; lm-eval seeds
    Python's, NumPy's and torch's global generators with `seed`.
    """
    lm_eval, hflm_cls, task_manager_cls = _import_lm_eval()
    if not tasks:
        raise ConfigError("No lm-eval task given: name one (e.g. hellaswag) or a task YAML file.")
    if limit is not None and limit < 1:
        raise ConfigError(f"The lm-eval limit is a number of documents per task (1 or more), got {limit}.")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"The lm-eval few-shot count must be 0 or more, got {num_fewshot}.")
    names = [t for t in tasks if not _is_yaml_path(t)]
    yaml_paths = [Path(t) for t in tasks if _is_yaml_path(t)]

    with tempfile.TemporaryDirectory(prefix="lmtune-lm-eval-") as staging:
        yaml_names = [_stage_yaml(p, Path(staging), i) for i, p in enumerate(yaml_paths)]
        _refuse_duplicates(yaml_names, yaml_paths)
        # The built-in registry takes ~8 s to index: only built when a task is named from it.
        manager = task_manager_cls(include_path=staging if yaml_paths else None, include_defaults=bool(names))
        _check_names(names, manager.all_tasks)
        with _quiet("lm_eval"):  # HFLM warns that a ready model makes its loading options moot: intended
            lm = hflm_cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=names + yaml_names,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=BOOTSTRAP_ITERS,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except ConnectionError as err:  # `datasets` raises it when a task's data is on an unreachable hub
            which = f"The lm-eval task {tasks[0]}" if len(tasks) == 1 else f"One of the lm-eval tasks {tasks}"
            raise ConfigError(
                f"{which} downloads its data from the Hugging Face Hub, "
                f"which this machine cannot reach ({err}); evaluate a custom task YAML that reads local "
                f"data_files instead (see {DOCS})."
            ) from err
    return flatten_results(out or {})


def flatten_results(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's `{task: {"acc,none": 0.5, "alias": ...}}` as `{task: {"acc": 0.5}}`, numbers only."""
    table: dict[str, dict[str, float]] = {}
    for section in ("results", "groups"):
        for task, row in (out.get(section) or {}).items():
            metrics = table.setdefault(task, {})
            for key, value in row.items():
                metric, comma, filt = key.partition(",")
                if not comma or isinstance(value, bool) or not isinstance(value, numbers.Real):
                    continue  # alias, name, sample_len, a stderr of "N/A"
                metrics[_metric_name(metric, filt)] = float(value)
    return table


def _metric_name(metric: str, filt: str) -> str:
    """`acc`, `exact_match/strict-match`; a stderr is always its metric's name + `_stderr`."""
    if filt == "none":
        return metric
    stderr = metric.endswith("_stderr")
    return f"{metric.removesuffix('_stderr')}/{filt}" + ("_stderr" if stderr else "")


def _import_lm_eval() -> tuple[Any, Any, Any]:
    """Imported on use: lm-eval is an optional extra, and importing it costs over a second."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        if err.name in (None, "lm_eval") or not _installed("lm_eval"):
            raise ConfigError(INSTALL_HINT) from err
        raise ConfigError(
            f"lm-eval is installed but cannot be imported ({err}); reinstall it with: "
            "pip install --force-reinstall 'lmtune[lm-eval]'"
        ) from err
    return lm_eval, HFLM, TaskManager


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


def _is_yaml_path(task: str) -> bool:
    return task.lower().endswith((".yaml", ".yml"))


def _check_names(names: list[str], known: list[str]) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ConfigError(
                f"lm-eval has no task named '{name}'.{hint} List them all with: lm-eval ls tasks"
            )


def _refuse_duplicates(names: list[str], paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise ConfigError(
                f"{seen[name]} and {path} both define the lm-eval task '{name}'; give one another `task:` name."
            )
        seen[name] = path


class _Function(str):
    """A `!function module.name` value, kept as text: lm-eval itself imports it when it loads the task."""


class _TolerantLoader(yaml.SafeLoader):
    pass


_TolerantLoader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def _stage_yaml(path: Path, staging: Path, index: int) -> str:
    """Write a stand-in YAML into `staging` that includes `path` with its data_files made absolute.

    lm-eval's `include:` keeps `!function` imports relative to the original file, and the stand-in's
    own `dataset_kwargs` replace the included ones. Returns the task's name.
    """
    if not path.is_file():
        raise ConfigError(f"lm-eval task file {path} does not exist: give a task YAML file or a task name.")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must be a YAML mapping of task settings (task:, dataset_path:, ...).")
    if "group" in cfg or isinstance(cfg.get("task"), list):
        raise ConfigError(f"{path} defines a group of tasks; give the YAML of each task instead.")
    name = cfg.get("task")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path} has no `task:` name; add one, e.g. `task: {path.stem}`.")
    _check_functions(cfg, path)
    stand_in: dict[str, Any] = {"include": str(path.resolve())}
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        files = _resolve_data_files(kwargs["data_files"], path)
        stand_in["dataset_kwargs"] = {**kwargs, "data_files": files}
    (staging / f"{index}_{path.stem}.yaml").write_text(yaml.safe_dump(stand_in), encoding="utf-8")
    return name


def _check_functions(value: Any, path: Path) -> None:
    """A `!function` whose module is nowhere: said here, instead of as lm-eval's ImportError."""
    if isinstance(value, dict):
        for v in value.values():
            _check_functions(v, path)
    elif isinstance(value, list):
        for v in value:
            _check_functions(v, path)
    elif isinstance(value, _Function):
        module = value.rpartition(".")[0]
        if not module:
            raise ConfigError(
                f"{path}: `!function {value}` must be written module.function, e.g. "
                f"`!function utils.{value}` with utils.py next to the YAML."
            )
        local = path.parent / f"{module.replace('.', '/')}.py"
        if not (local.is_file() or _installed(module)):
            raise ConfigError(
                f"{path}: `!function {value}` needs the module '{module}', which is neither {local} "
                "nor installed; put the function in that file."
            )


def _resolve_data_files(value: Any, path: Path) -> Any:
    """data_files as `datasets` takes them (a path, a list, or split -> path(s)), relative to the YAML."""
    if isinstance(value, str):
        return _resolve_data_file(value, path)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [_resolve_data_file(v, path) for v in value]
    if isinstance(value, dict):
        return {split: _resolve_data_files(v, path) for split, v in value.items()}
    raise ConfigError(
        f"{path}: dataset_kwargs.data_files must be a path, a list of paths, or a mapping from split "
        f"name to path(s), not {value!r}."
    )


def _resolve_data_file(name: str, path: Path) -> str:
    if "://" in name:  # a URL or hf:// path: `datasets` fetches it as it is
        return name
    file = Path(name).expanduser()
    file = (file if file.is_absolute() else path.parent / file).resolve()
    found = glob.glob(str(file)) if any(c in name for c in "*?[") else file.is_file()
    if not found:
        raise DataError(
            f"data file '{name}' does not exist (looked for {file}).",
            file=str(path),
            field="dataset_kwargs.data_files",
            hint="correct the path; a relative path is read from the YAML file's folder.",
        )
    return str(file)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
