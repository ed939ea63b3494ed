"""Bad input is refused before training, with one message that says what is wrong and what to do.

Each case breaks one thing (a scan, the table, the folder layout, the output folder or a knob) of an otherwise
good tiny run and runs the real entry point, ``python -m monai.bundle run training``, in a subprocess. The
messages are compared verbatim: they are the user interface.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pytest
from conftest import STAGE1, STAGE2, TINY_MOSA, TINY_TRAINING, cli_overrides

from alz_monai.networks import NETWORK_NAMES
from alz_monai.optim import OPTIMIZER_NAMES

if TYPE_CHECKING:
    from subprocess import CompletedProcess

    from conftest import BundleCLI, SideBySide

pytestmark = pytest.mark.slow

TRAIN_CONFIG = "configs/train.yaml"
# knobs of a good, tiny run of each bundle: a case that slipped through would train in seconds
GOOD_KNOBS = {
    STAGE1: {**TINY_TRAINING, "network_def#name": "resnet10", "num_epochs": 1},
    STAGE2: {**TINY_TRAINING, **TINY_MOSA, "from_scratch": "true", "num_epochs": 1},
}
TABLE_COLUMNS = ("image", "label", "participant_id", "session_id")  # of the good dataset's table
SCAN_HINT = "Fix or remove the listed scans (do not replace them with blank volumes), then run again."
REMOVE = "re-export it or remove it from the table"
CONCISE_ERROR = "alz-monai: "


@dataclass(frozen=True)
class BadInput:
    """What a case changes in the good run, and the lines its message must contain, verbatim."""

    knobs: dict[str, Any]
    expected: list[str]
    bundle: str = STAGE1


@dataclass(frozen=True)
class CaseFolder:
    """Where a case builds its inputs, and the good dataset's scans (table rows, absolute paths) it starts from."""

    path: Path
    good_rows: list[dict[str, str]]

    def table(self, rows: list[dict[str, str]]) -> Path:
        """A scan table (TSV) of ``rows``."""
        path = self.path / "scans.tsv"
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)
        return path


def random_volume(shape: tuple[int, ...] = (16, 16, 16)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def save_nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0])), path)


def truncate(path: Path) -> None:
    save_nifti(path, random_volume())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def absurd_header(path: Path) -> None:
    """A NIfTI header claiming 30000^3 int16 voxels (54 TB) followed by a few bytes: reading it cannot work."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(bytes(1024))


def with_voxels(value: float, count: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = random_volume()
        data.flat[np.arange(count) * 7] = value
        save_nifti(path, data)

    return write


# file name, how to break it, and the problem reported for it ({path}: the file's absolute path)
BAD_SCANS: dict[str, tuple[str, Callable[[Path], None] | None, str]] = {
    "zero_byte_file": ("empty.nii.gz", lambda path: path.write_bytes(b""),
                       f"{{path}}: file is empty (0 bytes); {REMOVE}"),
    "truncated_nii_gz": ("truncated.nii.gz", truncate,
                         f"{{path}}: file is truncated (gzip stream ended early); {REMOVE}"),
    "random_bytes_nii": ("noise.nii", lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
                         ('{path}: cannot be read as a NIfTI image (Cannot work out file type of "{path}"); '
                          f"{REMOVE}")),
    "absurd_dimensions": ("huge.nii", absurd_header,
                          ("{path}: header claims shape (30000, 30000, 30000) = 27,000,000,000,000 voxels "
                           "(54,000,000,000,000 bytes of int16), more than max_voxels=1,073,741,824; the header is "
                           f"probably corrupt: {REMOVE} (or raise max_voxels if the scan really is that large)")),
    "image_2d": ("flat.nii.gz", lambda path: save_nifti(path, random_volume((16, 16))),
                 ("{path}: image has shape (16, 16); expected one 3D volume (4D only with a single volume). "
                  "Extract the T1 volume or remove it from the table")),
    "image_5d": ("series.nii.gz", lambda path: save_nifti(path, random_volume((16, 16, 16, 2, 2))),
                 ("{path}: image has shape (16, 16, 16, 2, 2); expected one 3D volume (4D only with a single "
                  "volume). Extract the T1 volume or remove it from the table")),
    "nan_voxels": ("nan.nii.gz", with_voxels(np.nan, 2), f"{{path}}: 2 voxels are NaN; {REMOVE}"),
    "inf_voxels": ("inf.nii.gz", with_voxels(np.inf, 1), f"{{path}}: 1 voxel is infinite (Inf); {REMOVE}"),
    "constant_volume": ("blank.nii.gz", lambda path: save_nifti(path, np.full((16, 16, 16), 5.0, np.float32)),
                        f"{{path}}: every voxel is 5 (constant volume, no image content); {REMOVE}"),
    "missing_file": ("absent.nii.gz", None, "{path}: file does not exist; check the path or remove it from the table"),
}
SEVERAL_BAD_SCANS = ("zero_byte_file", "truncated_nii_gz", "nan_voxels", "image_2d", "missing_file")


def bad_scans_case(folder: CaseFolder, names: tuple[str, ...]) -> BadInput:
    """The good table plus one scan per name, each broken its own way: every problem in one message."""
    rows, problems = [], []
    for number, name in enumerate(names, start=1):
        file_name, write, problem = BAD_SCANS[name]
        path = folder.path / f"sub-{900 + number}_ses-M00_{file_name}"
        if write is not None:
            write(path)
        rows.append({"image": str(path), "label": "AD", "participant_id": f"sub-{900 + number}",
                     "session_id": "ses-M00"})
        problems.append(f"  - {problem.format(path=path)}")
    count, scans = len(problems), len(folder.good_rows) + len(rows)
    header = f"{CONCISE_ERROR}{count} problem{'' if count == 1 else 's'} in the {scans} input scans:"
    return BadInput({"dataset_dir": str(folder.table([*folder.good_rows, *rows]))}, [header, *problems, SCAN_HINT])


def unknown_label(folder: CaseFolder) -> BadInput:
    """A good scan of a participant labelled with a class the run does not know."""
    row = len(folder.good_rows) + 1
    image = shutil.copy(folder.good_rows[0]["image"], folder.path / "sub-0950_ses-M00_T1w.nii.gz")
    table = folder.table([*folder.good_rows, {"image": str(image), "label": "MCI", "participant_id": "sub-0950",
                                              "session_id": "ses-M00"}])
    return BadInput({"dataset_dir": str(table)}, [
        f"{CONCISE_ERROR}1 problem in {table}:",
        f"  - row {row} (line {row + 1}): label 'MCI' is not one of the classes CN, AD (or an index 0..1)"])


def duplicate_scan(folder: CaseFolder) -> BadInput:
    row = len(folder.good_rows) + 1
    image = folder.good_rows[0]["image"]
    table = folder.table([*folder.good_rows, folder.good_rows[0]])
    return BadInput({"dataset_dir": str(table)}, [
        f"{CONCISE_ERROR}1 problem in {table}:",
        f"  - row {row} (line {row + 1}) and row 1 (line 2) both list {image}; remove one"])


def empty_class_folder(folder: CaseFolder) -> BadInput:
    """Split folders holding one scan per class folder, except train/CN, which is empty."""
    root = folder.path / "scans"
    for split in ("train", "val", "test"):
        for class_name in ("CN", "AD"):
            (root / split / class_name).mkdir(parents=True)
            if (split, class_name) != ("train", "CN"):
                scan = next(row["image"] for row in folder.good_rows if row["label"] == class_name)
                shutil.copy(scan, root / split / class_name)
    return BadInput({"dataset_dir": str(root)}, [
        f"{CONCISE_ERROR}1 problem in {root}:",
        f"  - {root / 'train' / 'CN'}: class folder holds no .nii or .nii.gz scans; add scans or remove it"])


def subject_in_two_splits(folder: CaseFolder) -> BadInput:
    """Each participant in one split, except that the first one's second session is in test."""
    participants = list(dict.fromkeys(row["participant_id"] for row in folder.good_rows))
    split_of = {participant: ("train", "val", "test")[index % 3] for index, participant in enumerate(participants)}
    rows = [{**row, "split": split_of[row["participant_id"]]} for row in folder.good_rows]
    leaked = [row for row in rows if row["participant_id"] == participants[0]]
    leaked[1]["split"] = "test"
    table = folder.table(rows)
    return BadInput({"dataset_dir": str(table)}, [
        f"{CONCISE_ERROR}1 problem in the splits given by the dataset:",
        f"  - participant {participants[0]} is in 2 splits (train: {leaked[0]['image']}; test: {leaked[1]['image']})"])


def unwritable_output_folder(folder: CaseFolder) -> BadInput:
    """A folder below a regular file: mkdir fails even for root, who may write anywhere."""
    blocker = folder.path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    output_dir = blocker / "run"
    return BadInput({"output_dir": str(output_dir)}, [
        f"{CONCISE_ERROR}cannot create the output folder {output_dir} (Not a directory); choose another --output_dir"])


def unknown_network(folder: CaseFolder) -> BadInput:
    return BadInput({"network_def#name": "resnet99"},
                    [f"{CONCISE_ERROR}Unknown network 'resnet99'; valid names: {', '.join(NETWORK_NAMES)}"])


def unknown_optimizer(folder: CaseFolder) -> BadInput:
    return BadInput({"optimizer_name": "lion"},
                    [f"{CONCISE_ERROR}unknown optimizer 'lion'; valid optimizers: {', '.join(OPTIMIZER_NAMES)}"])


def mosa_size_not_multiple_of_16(folder: CaseFolder) -> BadInput:
    return BadInput({"spatial_size": [100, 100, 100]}, [
        (f"{CONCISE_ERROR}Mosa needs 3 spatial dimensions, each a positive multiple of 16, got (100, 100, 100); "
         "resize or pad the images to e.g. (96, 96, 96)")], bundle=STAGE2)


def bad_boolean(folder: CaseFolder) -> BadInput:
    return BadInput({"amp": "maybe"},
                    [f"{CONCISE_ERROR}amp must be true or false, got 'maybe'; pass --amp true or --amp false"])


CASES: dict[str, Callable[[CaseFolder], BadInput]] = {
    **{name: lambda folder, name=name: bad_scans_case(folder, (name,)) for name in BAD_SCANS},
    "several_bad_scans": lambda folder: bad_scans_case(folder, SEVERAL_BAD_SCANS),
    "unknown_label": unknown_label,
    "duplicate_scan_path": duplicate_scan,
    "empty_class_folder": empty_class_folder,
    "subject_in_two_splits": subject_in_two_splits,
    "unwritable_output_folder": unwritable_output_folder,
    "unknown_network": unknown_network,
    "unknown_optimizer": unknown_optimizer,
    "mosa_size_not_multiple_of_16": mosa_size_not_multiple_of_16,
    "bad_boolean": bad_boolean,
}


def good_rows(dataset: Path) -> list[dict[str, str]]:
    """The good dataset's scans as table rows with absolute paths."""
    with open(dataset / "scans.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [{**{column: row[column] for column in TABLE_COLUMNS}, "image": str(dataset / row["image"])}
            for row in rows]


@pytest.fixture(scope="module")
def refusals(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory, bundle_cli: BundleCLI,
             run_side_by_side: SideBySide) -> dict[str, tuple[BadInput, Path, CompletedProcess[str]]]:
    """Every case run through the training entry point: the case, its output folder and the finished process."""
    rows = good_rows(tiny_dataset)

    def run_case(name: str) -> tuple[BadInput, Path, CompletedProcess[str]]:
        folder = CaseFolder(tmp_path_factory.mktemp(name), rows)
        case = CASES[name](folder)
        knobs = {"dataset_dir": str(tiny_dataset), "output_dir": str(folder.path / "run"), **GOOD_KNOBS[case.bundle],
                 **case.knobs}
        finished = bundle_cli(case.bundle, "run", "training", "--config_file", TRAIN_CONFIG, *cli_overrides(knobs),
                              expect_success=False)
        return case, Path(knobs["output_dir"]), finished

    return run_side_by_side({name: lambda name=name: run_case(name) for name in CASES})


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_before_training(
        name: str, refusals: dict[str, tuple[BadInput, Path, CompletedProcess[str]]]) -> None:
    case, output_dir, finished = refusals[name]
    output = finished.stdout
    assert finished.returncode != 0, output[-3000:]
    assert output.count(CONCISE_ERROR) == 1, output[-3000:]  # one message, everything in it
    for expected in case.expected:
        assert expected in output.splitlines(), f"{expected!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output
    assert "Epoch[1]" not in output
    assert not (output_dir / "checkpoints").exists()
