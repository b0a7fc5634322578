import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("results_table", REPO / "bench" / "results_table.py")
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)


def test_docs_hold_the_table_generated_from_the_recorded_runs():
    doc = results_table.DOC.read_text()
    generated = results_table.table(results_table.read_records())
    assert results_table.replace_in_doc(doc, generated) == doc, "run python bench/results_table.py --write"


def test_a_rerun_replaces_its_configuration_and_settings_beyond_the_recipe_are_named():
    command = (f"train.py --config={REPO}/recipes/omniglot/cosface.yaml --seed=1 --data_dir=D --train_list=T --val_list=V "
               "--model_save_dir=O")
    base = {"model": "ResNet18", "loss": "cosface", "iterations": 1500, "wall_s": 1.0, "command": command,
            "evaluated_on": "test alphabets", "rotated_classes": True, "recall@1": 0.5}
    records = [base, {**base, "recall@1": 0.6}, {**base, "recall@1": 0.1, "evaluated_on": "validation: 40"}]
    lines = results_table.table(records).splitlines()[2:]
    assert len(lines) == 1 and "| 0.600 |" in lines[0] and "`--seed=1`" in lines[0]


def test_a_run_trained_on_several_processes_says_so():
    command = f"train.py --config={REPO}/recipes/omniglot/cosface.yaml --data_dir=D --model_save_dir=O"
    base = {"model": "ResNet18", "loss": "cosface", "iterations": 1500, "wall_s": 1.0, "command": command,
            "evaluated_on": "test alphabets", "rotated_classes": True, "recall@1": 0.5}
    one, two = (results_table.table([record]).splitlines()[2] for record in (base, {**base, "processes": 2}))
    assert "| 1500 it. |" in one and "| 1500 it., 2 processes |" in two
    assert len(results_table.table([base, {**base, "processes": 2}]).splitlines()[2:]) == 2  # not a re-run
