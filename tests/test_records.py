"""Record discovery from folder layouts, tables and datalists (files are only listed here, never read)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alz_monai.data.records import load_records, summarize_records
from alz_monai.errors import DataError

THREE_CLASSES = ("CN", "MCI", "AD")
COMPARED_KEYS = ("image", "label", "label_name", "participant_id", "session_id", "split")

# (split, class folder, participant, session): participant 3 has two sessions, class folder "ad" is lower case.
SCANS = [
    ("train", "CN", "sub-01", "ses-M00"),
    ("train", "MCI", "sub-02", "ses-M00"),
    ("train", "ad", "sub-03", "ses-M00"),
    ("train", "ad", "sub-03", "ses-M12"),
    ("validation", "CN", "sub-04", "ses-M00"),
    ("validation", "MCI", "sub-05", "ses-M00"),
    ("test", "ad", "sub-06", "ses-M00"),
    ("test", "CN", "sub-07", "ses-M00"),
]
CANONICAL_SPLIT = {"train": "train", "validation": "val", "test": "test"}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    lines = [delimiter.join(header), *(delimiter.join(str(value) for value in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """The same scans in the folder layout, plus a TSV table and a datalist JSON describing them."""
    root = tmp_path / "data"
    relative_paths = []
    for split, class_folder, participant, session in SCANS:
        relative = Path(split, class_folder, f"{participant}_{session}_T1w.nii.gz")
        touch(root / relative)
        relative_paths.append(relative.as_posix())
    header = ["participant_id", "session_id", "image", "diagnosis", "split", "age", "atrophy_map"]
    rows = [
        [participant, session, relative, class_folder, split, 70 + index, f"maps/{participant}_{session}.nii.gz"]
        for index, ((split, class_folder, participant, session), relative) in enumerate(zip(SCANS, relative_paths))
    ]
    write_table(root / "table.tsv", header, rows)
    datalist: dict[str, list[dict[str, object]]] = {"training": [], "validation": [], "testing": []}
    split_keys = {"train": "training", "validation": "validation", "test": "testing"}
    for (split, class_folder, _, _), relative in zip(SCANS, relative_paths):
        label: object = THREE_CLASSES.index(class_folder.upper())  # indices and names must both work
        datalist[split_keys[split]].append({"image": relative, "label": label if split == "train" else class_folder})
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def comparable(records: list[dict]) -> list[tuple]:
    return sorted(tuple(record[key] for key in COMPARED_KEYS) for record in records)


def test_three_sources_give_identical_records(dataset: Path) -> None:
    from_folders = load_records(dataset, THREE_CLASSES)
    from_table = load_records(dataset / "table.tsv", THREE_CLASSES)
    from_datalist = load_records(dataset / "datalist.json", THREE_CLASSES)

    assert comparable(from_folders) == comparable(from_table) == comparable(from_datalist)
    expected = sorted(
        (
            str(dataset / split / folder / f"{participant}_{session}_T1w.nii.gz"),
            THREE_CLASSES.index(folder.upper()),
            folder.upper(),
            participant,
            session,
            CANONICAL_SPLIT[split],
        )
        for split, folder, participant, session in SCANS
    )
    assert comparable(from_folders) == expected


def test_table_keeps_extra_columns_and_resolves_map_paths(dataset: Path) -> None:
    record = next(r for r in load_records(dataset / "table.tsv", THREE_CLASSES) if r["participant_id"] == "sub-01")
    assert record["age"] == "70"
    assert record["atrophy_map"] == str(dataset / "maps" / "sub-01_ses-M00.nii.gz")
    assert "diagnosis" not in record


def test_csv_with_label_column_index_and_absolute_image(tmp_path: Path) -> None:
    image = touch(tmp_path / "elsewhere" / "sub-9_T1w.nii")
    table = write_table(tmp_path / "list.csv", ["image", "label", "split"], [[image, 1, "valid"]])
    [record] = load_records(table)
    assert record == {
        "image": str(image),
        "label": 1,
        "label_name": "AD",
        "participant_id": "sub-9",
        "session_id": "",
        "split": "val",
    }


def test_directory_with_scans_tsv_is_read_as_table(tmp_path: Path) -> None:
    write_table(tmp_path / "scans.tsv", ["image", "label"], [["sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz", "cn"]])
    [record] = load_records(tmp_path)
    assert record["image"] == str(tmp_path / "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz")
    assert (record["label"], record["participant_id"], record["session_id"], record["split"]) == (
        0,
        "sub-01",
        "ses-01",
        "",
    )


def test_participant_and_session_fall_back_to_bids_folders(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv", ["image", "label"], [["sub-ab12/ses-2/anat/scan.nii", "AD"]])
    [record] = load_records(tmp_path / "t.csv")
    assert (record["participant_id"], record["session_id"]) == ("sub-ab12", "ses-2")


def test_missing_sub_entity_falls_back_to_unique_stem_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [["a/scan1.nii.gz", "CN"], ["b/scan1.nii.gz", "AD"], ["b/scan2.nii", "AD"]]
    write_table(tmp_path / "t.tsv", ["image", "label"], rows)
    with caplog.at_level(logging.WARNING):
        records = load_records(tmp_path / "t.tsv")
    participants = [record["participant_id"] for record in records]
    assert participants == ["a/scan1.nii.gz", "b/scan1.nii.gz", "b/scan2.nii"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "leakage across sessions" in warnings[0].getMessage()

    write_table(tmp_path / "u.tsv", ["image", "label"], [["x/first.nii.gz", "CN"], ["x/second.nii", "AD"]])
    assert [record["participant_id"] for record in load_records(tmp_path / "u.tsv")] == ["first", "second"]


def test_label_outside_classes_names_row_line_file_and_classes(tmp_path: Path) -> None:
    table = write_table(
        tmp_path / "t.tsv",
        ["image", "label"],
        [["sub-1_T1w.nii", "CN"], ["sub-2_T1w.nii", "MCI"], ["sub-3_T1w.nii", "7"]],
    )
    with pytest.raises(DataError) as caught:
        load_records(table)
    message = str(caught.value)
    assert message.startswith(f"2 problems in {table}:")
    assert "row 2 (line 3): label 'MCI' is not one of the classes CN, AD" in message
    assert "row 3 (line 4): label index 7 is out of range" in message
    assert len(caught.value.problems) == 2

    [record] = load_records(write_table(tmp_path / "ok.tsv", ["image", "label"], [["s.nii", "mci"]]), THREE_CLASSES)
    assert (record["label"], record["label_name"]) == (1, "MCI")


def test_all_table_problems_reported_in_one_error(tmp_path: Path) -> None:
    table = write_table(
        tmp_path / "t.csv",
        ["image", "label", "split"],
        [["sub-1.nii", "AD", "train"], ["./sub-1.nii", "CN", "train"], ["sub-2.nii", "XX", "holdout"], ["", "AD", ""]],
    )
    with pytest.raises(DataError) as caught:
        load_records(table)
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0] == f"row 2 (line 3) and row 1 (line 2) both list {tmp_path / 'sub-1.nii'}; remove one"
    assert "row 3 (line 4): label 'XX'" in problems[1] and "row 3 (line 4): split 'holdout'" in problems[2]
    assert problems[3] == "row 4 (line 5): no scan path in 'image' (got '')"


def test_missing_columns_are_reported_together(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv", ["path", "group"], [["a.nii", "AD"]])
    with pytest.raises(DataError) as caught:
        load_records(table)
    assert len(caught.value.problems) == 2
    assert "no 'image' column" in caught.value.problems[0]
    assert "no 'label' or 'diagnosis' column" in caught.value.problems[1]


def test_folder_unknown_and_empty_class_folders_are_errors(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "CN" / "sub-1.nii")
    touch(tmp_path / "train" / "MCI" / "sub-2.nii")
    (tmp_path / "val" / "AD").mkdir(parents=True)
    touch(tmp_path / "test" / "sub-3.nii")
    with pytest.raises(DataError) as caught:
        load_records(tmp_path)
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith(f"{tmp_path / 'test' / 'sub-3.nii'}: scan outside a class folder")
    assert problems[1].startswith(f"{tmp_path / 'test'}: split folder has no class folders")
    assert problems[2].startswith(f"{tmp_path / 'train' / 'MCI'}: folder name 'MCI' is not one of the classes CN, AD")
    assert problems[3].startswith(f"{tmp_path / 'val' / 'AD'}: class folder holds no .nii")


def test_datalist_testing_entry_without_label_is_an_error(tmp_path: Path) -> None:
    datalist = {
        "training": [{"image": "sub-1.nii", "label": "AD", "atrophy_map": "m/sub-1.nii", "site": "x"}],
        "testing": [{"image": "sub-2.nii"}, {"image": "sub-3.nii", "label": 5}],
    }
    path = tmp_path / "list.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert caught.value.problems[0].startswith("'testing' entry 1: no 'label'")
    assert "'testing' entry 2: label index 5 is out of range" in caught.value.problems[1]

    del datalist["testing"]
    path.write_text(json.dumps(datalist))
    [record] = load_records(path)
    assert (record["split"], record["site"]) == ("train", "x")
    assert record["atrophy_map"] == str(tmp_path / "m" / "sub-1.nii")


def test_unrecognised_source_lists_accepted_layouts(tmp_path: Path) -> None:
    touch(tmp_path / "scan.nii")
    with pytest.raises(DataError, match="Accepted dataset sources") as caught:
        load_records(tmp_path)
    assert "is not a recognised dataset source" in str(caught.value)
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "missing.tsv")
    (tmp_path / "empty.json").write_text('{"training": []}')
    with pytest.raises(DataError, match="no scans are listed"):
        load_records(tmp_path / "empty.json")


def test_classes_must_be_valid() -> None:
    with pytest.raises(ValueError, match="at least two"):
        load_records(".", ("AD",))
    with pytest.raises(ValueError, match="unique"):
        load_records(".", ("AD", "ad"))


def test_summary_counts_scans_per_split_and_class(dataset: Path) -> None:
    summary = summarize_records(load_records(dataset, THREE_CLASSES), THREE_CLASSES)
    lines = [line.split() for line in summary.splitlines()]
    assert lines[0] == ["split", "CN", "MCI", "AD", "scans", "participants"]
    assert lines[1:] == [
        ["train", "1", "1", "2", "4", "3"],
        ["val", "1", "1", "0", "2", "2"],
        ["test", "1", "0", "1", "2", "2"],
        ["all", "3", "2", "3", "8", "7"],
    ]


def test_datalist_values_are_kept_as_written_beside_folders_of_the_same_names(tmp_path: Path) -> None:
    """Only image (and *_path / *_map) values are paths: a label or participant_id naming a folder beside the
    JSON stays as written (MONAI's datalist reader would turn it into that folder's path)."""
    for folder in ("AD", "CN", "sub-01", "ses-M00", "siteA"):
        (tmp_path / folder).mkdir()
    touch(tmp_path / "sub-01" / "scan.nii.gz")
    datalist = {"training": [{"image": "sub-01/scan.nii.gz", "label": "AD", "participant_id": "sub-01",
                              "session_id": "ses-M00", "site": "siteA", "mask_path": "sub-01"}]}
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    [record] = load_records(tmp_path / "list.json")
    assert record["image"] == str(tmp_path / "sub-01" / "scan.nii.gz")
    assert record["mask_path"] == str(tmp_path / "sub-01")
    assert (record["label_name"], record["participant_id"], record["session_id"], record["site"]) == (
        "AD", "sub-01", "ses-M00", "siteA")


def test_datalist_entries_that_are_not_objects_are_named(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps({"training": ["a.nii", {"image": "b.nii", "label": "CN"}],
                                                    "testing": {"image": "c.nii"}}))
    with pytest.raises(DataError) as caught:
        load_records(tmp_path / "list.json")
    entry_form = 'each entry must be an object like {"image": ..., "label": ...}'
    assert caught.value.problems == [f"'training' entry 1 is a str, not an object; {entry_form}",
                                     f"'testing' is a dict, not a list; {entry_form}"]
