"""Fixtures: a small synthetic BIG-bench source shaped like the bigbench-1.0.0 sdist (no download)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

# A task with a top-level task.json; choices appended to the input (BIG-bench's default).
SOCIAL = {
    "name": "social_iqa",
    "append_choices_to_input": True,
    "examples": [
        {"input": "Tracy went home. What will Tracy do?", "target_scores": {"sleep": 0, "eat": 1, "run": 0}},
        {"input": "Sam lost a bet. How does Sam feel?", "target_scores": {"sad": 1, "happy": 0, "bored": 0}},
        {"input": "Kim found a coin. What next?", "target_scores": {"keep it": 0, "spend it": 0, "ask around": 1}},
        {"input": "Lee won. How does Lee feel?", "target_scores": {"proud": 1, "angry": 0}},
        # No target_scores: a generative example, skipped by the converter.
        {"input": "Say hi.", "target": "hi"},
    ],
}
# A task split into subtasks, with its own prefixes and no appended choices.
PARENT = {"name": "cause_and_effect", "description": "parent of subtasks"}
ONE = {
    "name": "one_sentence",
    "task_prefix": "Which makes more sense?",
    "example_input_prefix": "\nexample:",
    "example_output_prefix": "\nanswer:",
    "append_choices_to_input": False,
    "examples": [
        {"input": "", "target_scores": {" The glass fell because it broke.": 0.0,
                                        " The glass broke because it fell.": 1.0}},
        {"input": "", "target_scores": {" It rained so the ground got wet.": 1.0,
                                        " The ground got wet so it rained.": 0.0}},
    ],
}
TWO = {**ONE, "name": "two_sentences",
       "examples": [{"input": " A: fire. B: smoke.", "target_scores": {" A": 1, " B": 0}}]}

FILES = {
    "social_iqa/task.json": SOCIAL,
    "cause_and_effect/task.json": PARENT,
    "cause_and_effect/one_sentence/task.json": ONE,
    "cause_and_effect/two_sentences/task.json": TWO,
}


def write_sdist(path: Path) -> Path:
    """Write FILES into a .tar.gz laid out like the sdist (plus an unrelated member)."""
    with tarfile.open(path, "w:gz") as archive:
        members = {f"bigbench-1.0.0/bigbench/benchmark_tasks/{rel}": json.dumps(data)
                   for rel, data in FILES.items()}
        members["bigbench-1.0.0/setup.py"] = "print('not a task')\n"
        for name, text in members.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return path


def write_tree(root: Path) -> Path:
    """Write FILES as an unpacked tree root/bigbench/benchmark_tasks/..."""
    for rel, data in FILES.items():
        target = root / "bigbench" / "benchmark_tasks" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data))
    return root


@pytest.fixture
def bb_files() -> dict[str, dict]:
    """{path below benchmark_tasks/: task.json content} of the synthetic source."""
    return FILES


@pytest.fixture
def bb_sdist(tmp_path) -> Path:
    """The synthetic source as an sdist-shaped .tar.gz."""
    return write_sdist(tmp_path / "bigbench-synthetic.tar.gz")


@pytest.fixture
def bb_tree(tmp_path) -> Path:
    """The synthetic source as an unpacked tree."""
    return write_tree(tmp_path / "bigbench-tree")
