"""BIG-bench multiple-choice tasks -> local jsonl + lm-eval task YAMLs, converted once and cached.

The task data comes from the PyPI sdist `bigbench==1.0.0` (358 MB; never installed): each
task is `bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json` with
`examples: [{input, target_scores: {choice: score}}]`. A source is either that sdist
(.tar.gz, read member by member without extracting) or an unpacked tree holding a
`benchmark_tasks` folder.

Two prompt styles (PromptStyle): COMPLETION (default) scores each choice as the
continuation of the input; BIGBENCH is BIG-bench's own zero-shot format with the choices
listed. Records are `{"query": str, "choices": [str], "gold": int}`; each style is
converted into its own folder.

A task spec is "task", "task:subtask" ("goal_step_wikihow:step_inference") or the lm-eval
name "bb_<task or default subtask>" ("bb_step_inference"). A task with default subtasks
and no ":" merges them into one task (DEFAULT_SUBTASKS). Converted tasks are named
"bb_<name>", name = the subtask for a single subtask, else the task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import yaml

from anyprec.env import cache_dir
from anyprec.fileio import atomic_path, write_text_atomic

SDIST_SPEC = "bigbench==1.0.0"
SDIST_NAME = "bigbench-1.0.0.tar.gz"
SUBSET_NAME = "bigbench-1.0.0-subset.tar.gz"
CONVERSION_VERSION = 1
TASK_PREFIX = "bb_"
DEFAULT_SUBTASKS: dict[str, tuple[str, ...]] = {
    "goal_step_wikihow": ("step_inference", "goal_inference"),
    "cause_and_effect": ("one_sentence", "two_sentences"),
}
DEFAULT_TASKS: tuple[str, ...] = ("goal_step_wikihow", "social_iqa", "winowhy", "cause_and_effect")
CHOICE_ORDER_SEED = 42


@dataclass(frozen=True)
class TaskKey:
    """One converted task: a BIG-bench `task` and the `subtasks` folders merged into it.

    No subtasks means the task's own top-level task.json holds the examples.
    """

    task: str
    subtasks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Short name used in metric keys: the subtask for one subtask, else the task."""
        return self.subtasks[0] if len(self.subtasks) == 1 else self.task

    @property
    def lm_eval_name(self) -> str:
        """The lm-eval task name of the converted YAML ("bb_" avoids lm-eval's built-in names)."""
        return TASK_PREFIX + self.name

    @property
    def rel_paths(self) -> list[str]:
        """Paths of the task.json files below `benchmark_tasks/`."""
        if not self.subtasks:
            return [f"{self.task}/task.json"]
        return [f"{self.task}/{sub}/task.json" for sub in self.subtasks]


def _subtask_owner(name: str) -> str | None:
    """The task whose default subtask is `name` ("step_inference" -> "goal_step_wikihow")."""
    owners = [task for task, subs in DEFAULT_SUBTASKS.items() if name in subs]
    return owners[0] if owners else None


def parse_task_spec(spec: str) -> TaskKey:
    """"task", "task:subtask" or an lm-eval name "bb_<task or default subtask>" -> TaskKey.

    A task with default subtasks and no ":subtask" merges them into one task.
    """
    body = spec[len(TASK_PREFIX):] if spec.startswith(TASK_PREFIX) else spec
    task, _, subtask = body.partition(":")
    if not task or ":" in subtask:
        raise ValueError(f"bad BIG-bench task spec {spec!r}: use 'task', 'task:subtask' or 'bb_<name>'")
    if subtask:
        return TaskKey(task, (subtask,))
    owner = _subtask_owner(task)
    if owner is not None:
        return TaskKey(owner, (task,))
    return TaskKey(task, DEFAULT_SUBTASKS.get(task, ()))


def parse_task_specs(specs: list[str]) -> list[TaskKey]:
    """parse_task_spec over a list, duplicates (same lm-eval name) dropped."""
    keys = {}
    for spec in specs:
        key = parse_task_spec(spec)
        keys.setdefault(key.lm_eval_name, key)
    return list(keys.values())


def _member_key(name: str) -> str | None:
    """`.../benchmark_tasks/<rel>` -> `<rel>` for a tar member or file path, else None."""
    marker = "benchmark_tasks/"
    pos = name.find(marker)
    return None if pos < 0 else name[pos + len(marker):]


def read_task_jsons(source: Path, rel_paths: list[str]) -> dict[str, dict]:
    """Read task.json files (paths below `benchmark_tasks/`) from an sdist .tar.gz or a tree.

    One sequential pass over the archive (gzip has no index). Raises FileNotFoundError
    naming the missing paths and the source.
    """
    wanted = set(rel_paths)
    found: dict[str, dict] = {}
    if source.is_dir():
        for rel in wanted:
            hits = sorted(source.glob(f"**/benchmark_tasks/{rel}"))
            if hits:
                found[rel] = json.loads(hits[0].read_text(encoding="utf-8"))
    elif source.is_file():
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                rel = _member_key(member.name)
                if rel in wanted and member.isfile():
                    found[rel] = json.loads(archive.extractfile(member).read().decode("utf-8"))
                    if len(found) == len(wanted):
                        break
    else:
        raise FileNotFoundError(f"BIG-bench source {source} does not exist (pass the {SDIST_NAME} "
                                "sdist or a folder holding bigbench/benchmark_tasks)")
    missing = sorted(wanted - set(found))
    if missing:
        raise FileNotFoundError(f"BIG-bench task file(s) {missing} not found under benchmark_tasks/ "
                                f"in {source}; check the task/subtask names (task:subtask)")
    return found


def _gold_index(target_scores: dict[str, float]) -> int:
    """Index of the first highest-scoring choice; ValueError if no choice scores higher."""
    scores = list(target_scores.values())
    if len(scores) < 2 or max(scores) <= min(scores):
        raise ValueError(f"example has no single correct choice: {target_scores}")
    return scores.index(max(scores))


class PromptStyle(str, Enum):
    """How an example becomes a prompt.

    BIGBENCH: BIG-bench's own zero-shot format ("\nQ: " input, the choices listed, "\nA: ").
    COMPLETION: the input as text to continue, each choice scored as its continuation
    (lm-eval's usual multiple-choice style); only prefixes the task itself defines are kept.
    Small models sit at chance on BIGBENCH prompts (SmolLM2-135M: 0.25 on 20
    step_inference examples, against 0.60 with COMPLETION), which hides quantization error.
    """

    BIGBENCH = "bigbench"
    COMPLETION = "completion"


def example_to_record(example: dict, task_json: dict, rng: np.random.RandomState,
                      style: PromptStyle = PromptStyle.COMPLETION) -> dict:
    """One BIG-bench example -> {"query", "choices", "gold"}; choices keep the file's order."""
    target_scores = example["target_scores"]
    choices = list(target_scores.keys())
    text = example.get("input", "")
    prefix = str(task_json.get("task_prefix", ""))
    if style is PromptStyle.COMPLETION:
        query = (prefix + task_json.get("example_input_prefix", "") + text
                 + task_json.get("example_output_prefix", "")).rstrip()
        return {"query": query, "choices": [" " + c.strip() for c in choices],
                "gold": _gold_index(target_scores)}
    if task_json.get("append_choices_to_input", True):
        choice_prefix = task_json.get("choice_prefix", "\n  choice: ")
        shown = rng.permutation(sorted(choices))
        text = text + choice_prefix + choice_prefix.join(shown)
    query = (prefix + task_json.get("example_input_prefix", "\nQ: ") + text
             + task_json.get("example_output_prefix", "\nA: "))
    return {"query": query, "choices": choices, "gold": _gold_index(target_scores)}


def task_to_records(task_json: dict, style: PromptStyle = PromptStyle.COMPLETION,
                    seed: int = CHOICE_ORDER_SEED) -> list[dict]:
    """Every multiple-choice example of a task.json -> records (others skipped).

    Raises ValueError naming the task when it has no multiple-choice example.
    """
    rng = np.random.RandomState(seed)
    records = [example_to_record(ex, task_json, rng, PromptStyle(style))
               for ex in task_json.get("examples", []) if ex.get("target_scores")]
    if not records:
        raise ValueError(f"BIG-bench task {task_json.get('name')!r} has no multiple-choice "
                         "examples (target_scores); only multiple-choice tasks are supported")
    return records


def task_yaml(key: TaskKey, data_file: Path) -> dict:
    """The lm-eval task config for one converted task (zero-shot multiple choice, acc + acc_norm)."""
    metric = {"aggregation": "mean", "higher_is_better": True}
    return {
        "task": key.lm_eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        # Records carry their own separator (a leading space or the "\nA: " prefix).
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", **metric}, {"metric": "acc_norm", **metric}],
        "metadata": {"version": float(CONVERSION_VERSION), "source": SDIST_SPEC},
    }


def default_task_dir(style: PromptStyle = PromptStyle.COMPLETION) -> Path:
    """Where converted tasks live: cache_dir()/bigbench/v<CONVERSION_VERSION>-<style>."""
    return cache_dir() / "bigbench" / f"v{CONVERSION_VERSION}-{PromptStyle(style).value}"


def write_task(key: TaskKey, task_jsons: dict[str, dict], out_dir: Path,
               style: PromptStyle = PromptStyle.COMPLETION) -> Path:
    """Write `<name>.jsonl` (records of every subtask, in order) and `<name>.yaml` into out_dir.

    task_jsons: {rel_path: parsed task.json} holding at least key.rel_paths. Both files
    are written atomically, the yaml last (it marks the task as converted). Returns the yaml path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [rec for rel in key.rel_paths for rec in task_to_records(task_jsons[rel], style)]
    data_file = out_dir / f"{key.name}.jsonl"
    write_text_atomic(data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    yaml_file = out_dir / f"{key.name}.yaml"
    write_text_atomic(yaml_file, yaml.safe_dump(task_yaml(key, data_file), sort_keys=False))
    return yaml_file


def is_converted(key: TaskKey, task_dir: Path) -> bool:
    """True when both files of a converted task exist (the yaml is written last)."""
    return (task_dir / f"{key.name}.yaml").is_file() and (task_dir / f"{key.name}.jsonl").is_file()


def fetch_sdist_tree(workdir: Path) -> Path:
    """Download the bigbench sdist with pip (no install, no deps) and return its unpacked tree.

    `pip download` unpacks the sdist to prepare metadata and then refuses it (bigbench
    declares a file:// dependency), so the tarball itself is never kept; `--no-clean`
    with TMPDIR pointed at `workdir` leaves the unpacked tree where we can read it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(workdir)}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", SDIST_SPEC,
           "-d", str(workdir / "dist")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    trees = sorted(workdir.glob("pip-*/*/bigbench/benchmark_tasks"))
    tarballs = sorted((workdir / "dist").glob("bigbench-*.tar.gz"))
    if tarballs:
        return tarballs[0]
    if not trees:
        raise RuntimeError(f"could not fetch {SDIST_SPEC} with `{' '.join(cmd)}` (exit "
                           f"{proc.returncode}): {proc.stderr.strip()[-600:]}\nDownload it "
                           "elsewhere and pass --bigbench-source PATH (the sdist or its tree)")
    return trees[0].parent.parent


def save_subset(tree: Path, tasks: list[str], out: Path) -> Path:
    """Archive every task.json of `tasks` from an unpacked tree into an sdist-shaped .tar.gz.

    Keeps a few MB of the 1.8 GB tree so later conversions need no download.
    """
    root = next(iter(sorted(tree.glob("**/benchmark_tasks"))), None)
    if root is None:
        raise FileNotFoundError(f"no benchmark_tasks folder under {tree}")
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as archive:
        for task in sorted(set(tasks)):
            for path in sorted((root / task).glob("**/task.json")):
                rel = path.relative_to(root).as_posix()
                archive.add(path, arcname=f"bigbench-1.0.0/bigbench/benchmark_tasks/{rel}")
    return out


def _cached_sources() -> list[Path]:
    """Sources already on disk: the full sdist, then the subset kept after a download."""
    downloads = cache_dir() / "downloads"
    return [p for p in (downloads / SDIST_NAME, downloads / SUBSET_NAME) if p.is_file()]


def ensure_tasks(specs: list[str], source: Path | None = None, task_dir: Path | None = None,
                 style: PromptStyle = PromptStyle.COMPLETION) -> tuple[Path, list[TaskKey]]:
    """Convert every spec not yet in task_dir; returns (task_dir, one TaskKey per spec).

    source: the sdist .tar.gz or an unpacked tree. When None and something is missing:
    the cached sources (_cached_sources) if they hold it, else a pip download (~1-2 min,
    1.8 GB temporary, removed afterwards; a subset archive is kept in the cache).
    """
    task_dir = task_dir or default_task_dir(style)
    keys = parse_task_specs(specs)
    todo = [key for key in keys if not is_converted(key, task_dir)]
    if not todo:
        return task_dir, keys
    if source is not None:
        _convert_from(Path(source), todo, task_dir, style)
        return task_dir, keys
    for cached in _cached_sources():
        try:
            _convert_from(cached, todo, task_dir, style)
            return task_dir, keys
        except FileNotFoundError:
            continue
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="bigbench-fetch-") as tmp:
        tree = fetch_sdist_tree(Path(tmp))
        _convert_from(tree, todo, task_dir, style)
        if tree.is_dir():
            tasks = [*DEFAULT_TASKS, *(key.task for key in keys)]
            save_subset(tree, tasks, cache_dir() / "downloads" / SUBSET_NAME)
    return task_dir, keys


def _convert_from(source: Path, keys: list[TaskKey], task_dir: Path, style: PromptStyle) -> None:
    task_jsons = read_task_jsons(source, [rel for key in keys for rel in key.rel_paths])
    for key in keys:
        write_task(key, task_jsons, task_dir, style)
