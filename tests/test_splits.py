"""Participant-level splits: grouping, stratification, determinism, leakage guard, split tables and k folds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alz_monai.data.records import CONTENT_KEY, load_records
from alz_monai.data.splits import (
    apply_split_table,
    assign_splits,
    check_no_leakage,
    kfold_splits,
    read_split_table,
    records_for_split,
    resolve_splits,
    write_split_table,
)
from alz_monai.data.validate import ScanContent
from alz_monai.errors import DataError, LeakageError

CLASSES = ("CN", "MCI", "AD")


def make_records(labels: list[int], sessions: int = 2, root: str = "/data") -> list[dict]:
    """One participant per label, ``sessions`` scans each; later sessions keep the baseline label."""
    return [
        {
            "image": f"{root}/sub-{index:03d}_ses-{session}_T1w.nii.gz",
            "label": label,
            "label_name": CLASSES[label],
            "participant_id": f"sub-{index:03d}",
            "session_id": f"ses-{session}",
            "split": "",
        }
        for index, label in enumerate(labels)
        for session in range(1, sessions + 1)
    ]


def split_of_participants(records: list[dict]) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = {}
    for record in records:
        splits.setdefault(record["participant_id"], set()).add(record["split"])
    return splits


@pytest.fixture
def sixty_subjects() -> list[dict]:
    return make_records([0] * 24 + [1] * 18 + [2] * 18)


def test_assign_splits_groups_participants_and_stratifies(sixty_subjects: list[dict]) -> None:
    records = assign_splits(sixty_subjects, (0.7, 0.15, 0.15), seed=0)
    assert all(len(splits) == 1 for splits in split_of_participants(records).values())
    check_no_leakage(records)
    participants_per_split_and_class = Counter(
        (record["split"], record["label"]) for record in records if record["session_id"] == "ses-1"
    )
    for label, count in Counter([0] * 24 + [1] * 18 + [2] * 18).items():
        for split, ratio in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            assert abs(participants_per_split_and_class[(split, label)] - ratio * count) <= 1
    assert all(record["split"] == "" for record in sixty_subjects), "the input must not be modified"


def test_assign_splits_is_deterministic_by_seed(sixty_subjects: list[dict]) -> None:
    first = assign_splits(sixty_subjects, seed=3)
    assert first == assign_splits(sixty_subjects, seed=3)
    assert first == assign_splits(list(reversed(sixty_subjects)), seed=3)[::-1]
    assert [r["split"] for r in first] != [r["split"] for r in assign_splits(sixty_subjects, seed=4)]


def test_every_class_reaches_every_split_when_possible() -> None:
    records = assign_splits(make_records([0] * 20 + [1] * 20 + [2] * 3, sessions=1), seed=1)
    assert {(r["split"], r["label"]) for r in records} == {(s, c) for s in ("train", "val", "test") for c in range(3)}
    two_participants = assign_splits(make_records([0] * 10 + [2] * 2, sessions=1), seed=0)
    assert sorted(r["split"] for r in two_participants if r["label"] == 2) == ["test", "train"]


def test_zero_ratio_split_stays_empty() -> None:
    records = assign_splits(make_records([0] * 10 + [1] * 10), (0.8, 0.0, 0.2))
    assert Counter(r["split"] for r in records) == {"train": 32, "test": 8}


@pytest.mark.parametrize("ratios", [(0.7, 0.3), (0.8, 0.3, -0.1), (0.5, 0.2, 0.2), (float("nan"), 0.5, 0.5)])
def test_bad_ratios_are_rejected(ratios: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="ratios"):
        assign_splits(make_records([0, 1]), ratios)


def test_scan_level_split_leaks_and_the_guard_catches_it(sixty_subjects: list[dict]) -> None:
    leaky = assign_splits(sixty_subjects, seed=0, group_by_participant=False)
    with pytest.raises(LeakageError) as caught:
        check_no_leakage(leaky)
    leaked = [p for p, splits in split_of_participants(leaky).items() if len(splits) > 1]
    assert leaked and len(caught.value.problems) == len(leaked)
    assert caught.value.problems[0].startswith(f"participant {leaked[0]} is in 2 splits (")


def leaky_sources(root: Path) -> dict[str, Path]:
    """The same leak (sub-01 in train and test) described by a folder layout, a table and a datalist."""
    scans = {"train": "CN/sub-01_ses-1.nii", "test": "AD/sub-01_ses-2.nii"}
    for split, relative in {**scans, "val": "CN/sub-02_ses-1.nii"}.items():
        path = root / "folders" / split / relative
        path.parent.mkdir(parents=True)
        path.touch()
    rows = [f"folders/{split}/{relative}\t{relative[:2]}\t{split}" for split, relative in scans.items()]
    (root / "table.tsv").write_text("image\tlabel\tsplit\n" + "\n".join(rows) + "\n")
    datalist = {
        "training": [{"image": f"folders/train/{scans['train']}", "label": "CN"}],
        "testing": [{"image": f"folders/test/{scans['test']}", "label": "AD"}],
    }
    (root / "list.json").write_text(json.dumps(datalist))
    return {"folder": root / "folders", "table": root / "table.tsv", "datalist": root / "list.json"}


@pytest.mark.parametrize("source", ["folder", "table", "datalist"])
def test_leakage_in_given_splits_is_refused(tmp_path: Path, source: str) -> None:
    records = load_records(leaky_sources(tmp_path)[source])
    with pytest.raises(LeakageError) as caught:
        resolve_splits(records, tmp_path / "run")
    [problem] = caught.value.problems
    assert problem.startswith("participant sub-01 is in 2 splits (train: ")
    assert "sub-01_ses-1.nii; test: " in problem and problem.endswith("sub-01_ses-2.nii)")
    assert not (tmp_path / "run" / "splits.tsv").exists(), "a leaky assignment must never be saved"


def test_split_table_round_trip_and_reuse(tmp_path: Path, sixty_subjects: list[dict]) -> None:
    computed = resolve_splits(sixty_subjects, tmp_path, seed=0)
    table = read_split_table(tmp_path / "splits.tsv")
    assert [(row["image"], row["split"]) for row in table] == [(r["image"], r["split"]) for r in computed]
    assert table[0].keys() == {"participant_id", "session_id", "image", "label_name", "split"}
    assert apply_split_table(sixty_subjects, table) == computed
    assert resolve_splits(sixty_subjects, tmp_path, seed=99) == computed, "an existing table must be reused"
    assert [p.name for p in tmp_path.iterdir()] == ["splits.tsv"], "no temporary file may be left behind"

    write_split_table(computed, tmp_path / "again.tsv")
    assert (tmp_path / "again.tsv").read_text() == (tmp_path / "splits.tsv").read_text()


def test_resolve_splits_keeps_given_splits(tmp_path: Path) -> None:
    records = [dict(record, split="test" if record["label"] else "train") for record in make_records([0, 0, 1])]
    assert resolve_splits(records, tmp_path) == records
    assert [row["split"] for row in read_split_table(tmp_path / "splits.tsv")] == [r["split"] for r in records]


def test_mixed_given_and_missing_splits_is_an_error(tmp_path: Path) -> None:
    records = make_records([0, 1], sessions=1)
    records[0]["split"] = "train"
    with pytest.raises(DataError) as caught:
        resolve_splits(records, tmp_path)
    assert caught.value.problems == ["/data/sub-001_ses-1_T1w.nii.gz: no split"]
    assert "1 of 2 scans have one" in str(caught.value)


def test_split_table_must_match_dataset(tmp_path: Path, sixty_subjects: list[dict]) -> None:
    resolve_splits(sixty_subjects, tmp_path)
    changed = sixty_subjects[1:] + make_records([1], root="/new")
    with pytest.raises(DataError) as caught:
        resolve_splits(changed, tmp_path)
    assert caught.value.problems[0] == "/new/sub-000_ses-1_T1w.nii.gz: not in the split table"
    assert caught.value.problems[2].startswith("/data/sub-000_ses-1_T1w.nii.gz (participant sub-000, ")
    assert caught.value.problems[2].endswith("in the split table but no longer in the dataset")
    assert len(caught.value.problems) == 3


def test_bad_split_table_rows_are_named(tmp_path: Path) -> None:
    table = tmp_path / "splits.tsv"
    table.write_text(
        "participant_id\tsession_id\timage\tlabel_name\tsplit\n"
        "sub-1\t\ta.nii\tCN\ttrain\nsub-2\t\ta.nii\tAD\ttest\nsub-3\t\tb.nii\tAD\tholdout\n"
    )
    with pytest.raises(DataError) as caught:
        read_split_table(table)
    assert caught.value.problems == [
        f"row 2 (line 3): {tmp_path / 'a.nii'} is already listed on line 2",
        "row 3 (line 4): split 'holdout' is not one of train, val, test",
    ]


def test_kfold_partitions_train_and_val_participants(sixty_subjects: list[dict]) -> None:
    records = assign_splits(sixty_subjects, seed=0)
    pool = {r["participant_id"] for r in records if r["split"] in ("train", "val")}
    test_before = [r for r in records if r["split"] == "test"]
    val_sets = []
    for fold in range(4):
        folded = kfold_splits(records, num_folds=4, fold=fold, seed=0)
        check_no_leakage(folded)
        assert [r for r in folded if r["split"] == "test"] == test_before
        val_sets.append({r["participant_id"] for r in folded if r["split"] == "val"})
        assert {r["participant_id"] for r in folded if r["split"] == "train"} == pool - val_sets[-1]
        assert {r["label"] for r in folded if r["split"] == "val"} == {0, 1, 2}
    assert set().union(*val_sets) == pool
    assert sum(len(val) for val in val_sets) == len(pool), "val sets of different folds must not overlap"
    assert kfold_splits(records, 4, 1, seed=0) == kfold_splits(records, 4, 1, seed=0)


def test_kfold_rejects_bad_arguments(sixty_subjects: list[dict]) -> None:
    with pytest.raises(ValueError, match="resolve_splits first"):
        kfold_splits(sixty_subjects, 5, 0)
    with pytest.raises(ValueError, match="0 <= fold < num_folds"):
        kfold_splits(assign_splits(sixty_subjects), 5, 5)


def test_records_for_split(sixty_subjects: list[dict]) -> None:
    records = assign_splits(sixty_subjects)
    assert records_for_split(records, "validation") == [r for r in records if r["split"] == "val"]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        records_for_split(records, "dev")


def with_content(record: dict, voxels: str) -> dict:
    return {**record, CONTENT_KEY: ScanContent(size=1, mtime_ns=0, file_sha256=record["image"], voxel_sha256=voxels)}


def test_copies_under_other_participants_are_leakage_whatever_the_split() -> None:
    """Where validation hashed the voxels, a copy under another participant is refused whatever the splits (they
    may be split apart when the splits are recomputed); a copy under the same participant is no leakage."""
    records = assign_splits(make_records([0, 1, 0, 1, 0, 1], sessions=2), seed=0)
    records = [with_content(record, record["image"]) for record in records]
    original, other = records[0], next(r for r in records if r["participant_id"] != records[0]["participant_id"])
    same_person = next(r for r in records if r is not original and r["participant_id"] == original["participant_id"])
    records[records.index(other)] = with_content(other, original[CONTENT_KEY].voxel_sha256)
    records[records.index(same_person)] = with_content(same_person, original[CONTENT_KEY].voxel_sha256)
    with pytest.raises(LeakageError) as caught:
        check_no_leakage(records)
    assert caught.value.problems == [
        f"the same voxel data under participants {original['participant_id']} ({original['split']}: "
        f"{original['image']}) and {other['participant_id']} ({other['split']}: {other['image']})"]
    assert "Remove each copied scan, or list it under the participant it belongs to" in caught.value.hint
    check_no_leakage([{key: value for key, value in record.items() if key != CONTENT_KEY} for record in records])


def test_a_written_split_table_is_a_data_source_that_keeps_its_splits(tmp_path: Path) -> None:
    from alz_monai.cli import main
    from alz_monai.data.synth import generate_synthetic_dataset

    data = tmp_path / "data"
    generate_synthetic_dataset(data, subjects=4, sessions=1, spacing=6.0, seed=0, progress=False)
    table = tmp_path / "splits.tsv"
    assert main(["split", str(data), "--output", str(table), "--ratios", "0.5,0.25,0.25"]) == 0
    written = {row["image"]: row["split"] for row in read_split_table(table)}
    records = load_records(table)
    assert {record["image"]: record["split"] for record in records} == written
    assert {record["label_name"] for record in records} == {"CN", "AD"}
    with pytest.raises(SystemExit):  # no default output in the current folder
        main(["split", str(data)])
