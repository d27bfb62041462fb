"""BIG-bench task.json -> jsonl + lm-eval YAML, from an sdist-shaped tar.gz or a tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anyprec.evaluation import bigbench as bb



@pytest.fixture
def social(bb_files):
    return bb_files["social_iqa/task.json"]


@pytest.fixture
def one(bb_files):
    return bb_files["cause_and_effect/one_sentence/task.json"]


@pytest.fixture
def two(bb_files):
    return bb_files["cause_and_effect/two_sentences/task.json"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parse_specs_names_and_subtasks():
    keys = bb.parse_task_specs(["bb_step_inference", "social_iqa", "cause_and_effect",
                                "cause_and_effect:two_sentences", "bb_social_iqa"])
    assert [k.lm_eval_name for k in keys] == ["bb_step_inference", "bb_social_iqa",
                                              "bb_cause_and_effect", "bb_two_sentences"]
    assert keys[0].rel_paths == ["goal_step_wikihow/step_inference/task.json"]
    assert keys[2].rel_paths == ["cause_and_effect/one_sentence/task.json",
                                 "cause_and_effect/two_sentences/task.json"]
    with pytest.raises(ValueError, match="task spec"):
        bb.parse_task_spec("a:b:c")


def test_completion_records_score_choices_as_continuations(social, one, bb_files):
    rec = bb.task_to_records(social)[0]
    assert rec == {"query": "Tracy went home. What will Tracy do?", "choices": [" sleep", " eat", " run"],
                   "gold": 1}
    cause = bb.task_to_records(one)[1]
    assert cause["query"] == "Which makes more sense?\nexample:\nanswer:"  # the task's own prefixes
    assert cause["choices"][0] == " It rained so the ground got wet." and cause["gold"] == 0


def test_record_format_follows_bigbench_prompt(social, one):
    rec = bb.task_to_records(social, bb.PromptStyle.BIGBENCH)[0]
    assert rec["choices"] == ["sleep", "eat", "run"]
    assert rec["gold"] == 1
    assert rec["query"].startswith("\nQ: Tracy went home. What will Tracy do?\n  choice: ")
    assert rec["query"].endswith("\nA: ")
    shown = rec["query"].split("\n  choice: ")[1:]
    shown[-1] = shown[-1].removesuffix("\nA: ")
    assert sorted(shown) == sorted(rec["choices"])
    no_choices = bb.task_to_records(one, "bigbench")[0]
    assert no_choices["query"] == "Which makes more sense?\nexample:\nanswer:"
    assert no_choices["gold"] == 1


def test_generative_only_task_and_ties_rejected():
    with pytest.raises(ValueError, match="no multiple-choice"):
        bb.task_to_records({"name": "gen", "examples": [{"input": "x", "target": "y"}]})
    with pytest.raises(ValueError, match="no single correct"):
        bb.task_to_records({"name": "tie", "examples": [{"input": "x", "target_scores": {"a": 1, "b": 1}}]})


@pytest.mark.parametrize("layout", ["sdist", "tree"])
def test_convert_from_sdist_or_tree(tmp_path, layout, one, two, request):
    source = request.getfixturevalue("bb_sdist" if layout == "sdist" else "bb_tree")
    task_dir, keys = bb.ensure_tasks(["social_iqa", "cause_and_effect"], source=source,
                                     task_dir=tmp_path / "tasks")
    social = _records(task_dir / "social_iqa.jsonl")
    assert len(social) == 4  # the generative example is skipped
    assert [r["gold"] for r in social] == [1, 0, 2, 0]
    merged = _records(task_dir / "cause_and_effect.jsonl")
    assert len(merged) == len(one["examples"]) + len(two["examples"])
    config = yaml.safe_load((task_dir / "cause_and_effect.yaml").read_text())
    assert config["task"] == "bb_cause_and_effect"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]) == task_dir / "cause_and_effect.jsonl"
    assert config["output_type"] == "multiple_choice"
    assert {m["metric"] for m in config["metric_list"]} == {"acc", "acc_norm"}


def test_missing_task_names_the_path(tmp_path, bb_sdist):
    source = bb_sdist
    with pytest.raises(FileNotFoundError, match="winowhy/task.json"):
        bb.ensure_tasks(["winowhy"], source=source, task_dir=tmp_path / "tasks")


def test_converted_tasks_are_reused_without_source(tmp_path, bb_sdist):
    source = bb_sdist
    task_dir, _ = bb.ensure_tasks(["social_iqa"], source=source, task_dir=tmp_path / "tasks")
    source.unlink()
    again, keys = bb.ensure_tasks(["bb_social_iqa"], source=source, task_dir=task_dir)
    assert again == task_dir and keys[0].name == "social_iqa"


def test_subset_archive_is_a_valid_source(tmp_path, bb_tree, two):
    subset = bb.save_subset(bb_tree, ["cause_and_effect"], tmp_path / "subset.tar.gz")
    found = bb.read_task_jsons(subset, ["cause_and_effect/two_sentences/task.json"])
    assert found["cause_and_effect/two_sentences/task.json"]["examples"] == two["examples"]
    with pytest.raises(FileNotFoundError):
        bb.read_task_jsons(subset, ["social_iqa/task.json"])


def test_lm_eval_loads_converted_yaml(tmp_path, bb_sdist, social):
    from lm_eval.tasks import TaskManager

    task_dir, _ = bb.ensure_tasks(["social_iqa"], source=bb_sdist,
                                  task_dir=tmp_path / "tasks")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    task = manager.load(["bb_social_iqa"])["tasks"]["bb_social_iqa"]
    docs = list(task.test_docs())
    assert len(docs) == 4
    assert task.doc_to_choice(docs[2]) == [" keep it", " spend it", " ask around"]
    assert task.doc_to_target(docs[2]) == 2
    assert task.doc_to_text(docs[0]) == bb.task_to_records(social)[0]["query"]
