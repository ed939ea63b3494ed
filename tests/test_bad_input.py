"""Bad input is refused before training, with one message that says what is wrong and what to do.

Each case breaks one thing (a scan, the table, the folder layout, the output folder or a knob) of an otherwise
good tiny run and runs the real entry point, ``python -m monai.bundle run training``, in a subprocess (and the
scans the pipeline cannot preprocess also through ``alz-monai validate-data``). Scans that share a run are all
reported in its one message. The messages are compared verbatim: they are the user interface.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
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


AFFINE = np.diag([6.0, 6.0, 6.0, 1.0])


def random_volume(shape: tuple[int, ...] = (16, 16, 16)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def save_nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, AFFINE), path)


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
                         ("{path}: cannot be read as a NIfTI image (no NIfTI-1 or NIfTI-2 header at the start of "
                          f"the file); {REMOVE}")),
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


def with_header(data: np.ndarray, **fields: Any) -> Callable[[Path], None]:
    """A scan whose stored header fields are then set as given (nibabel's save would make them consistent)."""
    def write(path: Path) -> None:
        image = nib.Nifti1Image(data, AFFINE)
        image.header.set_qform(AFFINE, code=1)  # both forms set, so that each can be broken alone
        stored = image.to_bytes()
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(stored), check=False)
        for name, value in fields.items():
            header[name] = value
        path.write_bytes(gzip.compress(header.binaryblock + stored[header.sizeof_hdr:]))

    return write


def intensities(high: float, dtype: type = np.int16, **replaced: float) -> np.ndarray:
    """Random values in [0, high] with ``high`` reached; ``replaced`` sets voxels by flat index ("i<index>")."""
    data = (random_volume() * high).astype(dtype)
    data.flat[0] = high
    for index, value in replaced.items():
        data.flat[int(index[1:])] = value
    return data


def non_positive() -> np.ndarray:
    """A zero background around a negative head: nothing exceeds a threshold of 0."""
    data = np.zeros((16, 16, 16), np.float32)
    data[4:12, 4:12, 4:12] = -0.5 - random_volume((8, 8, 8))
    return data


def constant_background() -> np.ndarray:
    """A head of 1000 in a background of 150: the threshold (100) keeps the whole field of view."""
    data = np.full((16, 16, 16), 150.0, np.float32)
    data[4:12, 4:12, 4:12] = 1000.0
    return data


def pixdim(*sizes: float) -> list[float]:
    return [1.0, *sizes, 1.0, 1.0, 1.0, 1.0]


NO_FORM = {"sform_code": 0, "qform_code": 0}
QFORM_ONLY = {"sform_code": 0, "qform_code": 1}
SCALED = "after the header's scaling (scl_slope={slope}, scl_inter=0)"
OVERFLOWING_SUMS = ("beyond +-7.9e+28: float32 sums over the volume in preprocessing can overflow to Inf and make "
                    f"it NaN; fix scl_slope/scl_inter in the header, {REMOVE}")
FIX_AFFINE = f"fix the header's orientation (or set its code to 0 to use the other form), {REMOVE}"
FOREGROUND = "the foreground threshold {threshold} (0.1 x the 99.5th percentile, foreground_fraction=0.1)"
# scans that read fine but that preprocessing would turn into NaN or a crash, each with its problem
PIPELINE_BREAKING: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "int16_scl_slope_overflow": (
        "int16_slope.nii.gz", with_header(intensities(1000), scl_slope=1e30),
        f"{{path}}: values reach 1e+33 {SCALED.format(slope='1e+30')}, {OVERFLOWING_SUMS}"),
    "float32_scl_slope_overflow": (
        "float32_slope.nii.gz", with_header(intensities(1.0, np.float32), scl_slope=1e30),
        f"{{path}}: values reach 1e+30 {SCALED.format(slope='1e+30')}, {OVERFLOWING_SUMS}"),
    "float32_range_exceeded_after_scaling": (
        "inf_after_scaling.nii.gz", with_header(intensities(1000, i7=30000, i9=30000), scl_slope=1e35),
        f"{{path}}: 2 voxels are beyond the float32 range {SCALED.format(slope='1e+35')} and become Inf in "
        f"preprocessing; fix scl_slope/scl_inter in the header, {REMOVE}"),
    "no_foreground_all_values_non_positive": (
        "non_positive.nii.gz", lambda path: save_nifti(path, non_positive()),
        f"{{path}}: no voxel is above {FOREGROUND.format(threshold=0)}, so there is no head to crop and "
        f"normalise; check the intensities (e.g. all values <= 0), {REMOVE}"),
    "zero_sform": (
        "zero_sform.nii.gz", with_header(random_volume(), srow_x=0, srow_y=0, srow_z=0),
        f"{{path}}: the affine (from the sform, sform_code 2) is zero; {FIX_AFFINE}"),
    "singular_sform": (
        "singular_sform.nii.gz", with_header(random_volume(), srow_y=[6, 0, 0, 0]),
        f"{{path}}: the affine (from the sform, sform_code 2) is singular (its axes collapse onto a plane or "
        f"line); {FIX_AFFINE}"),
    "singular_qform": (
        "singular_qform.nii.gz", with_header(random_volume(), pixdim=pixdim(6, 1e-7, 6), **QFORM_ONLY),
        f"{{path}}: the affine (from the qform, qform_code 1) is singular (its axes collapse onto a plane or "
        f"line); {FIX_AFFINE}"),
    "non_finite_qform": (
        "nan_qform.nii.gz", with_header(random_volume(), quatern_b=np.nan, **QFORM_ONLY),
        f"{{path}}: the affine (from the qform, qform_code 1) has NaN or Inf entries; fix the header's "
        f"srow_x/y/z or quatern/qoffset fields, {REMOVE}"),
    "voxel_sizes_in_metres": (
        "metres.nii.gz", with_header(random_volume(), pixdim=pixdim(0.006, 0.006, 0.006), xyzt_units=1,
                                     srow_x=[0.006, 0, 0, 0], srow_y=[0, 0.006, 0, 0], srow_z=[0, 0, 0.006, 0]),
        f"{{path}}: voxel sizes (0.006, 0.006, 0.006) (from the sform, sform_code 2; units: meter) are outside "
        f"0.05-20 mm, implausible for brain MRI; fix pixdim, the affine or xyzt_units in the header, {REMOVE}"),
}
# scans that are used, with a warning in the same report
DOUBTFUL: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "no_orientation": (
        "no_orientation.nii.gz", with_header(random_volume(), **NO_FORM),
        "{path}: sform_code and qform_code are 0, the header has no orientation; it is taken as LAS from pixdim "
        "alone, so left and right may be swapped; re-export it with its orientation"),
    "constant_positive_background": (
        "constant_background.nii.gz", lambda path: save_nifti(path, constant_background()),
        f"{{path}}: 100.0% of the voxels are above {FOREGROUND.format(threshold=100)}, so the whole field of "
        "view is foreground (e.g. a constant positive background); cropping keeps all of it and the normalisation "
        "includes the background; lower foreground_fraction or re-export it with a zero background"),
}


def add_scans(folder: CaseFolder, scans: dict[str, tuple[str, Callable[[Path], None] | None, str]],
              first_number: int) -> tuple[list[dict[str, str]], list[str]]:
    """One table row per scan, each written its own way, and the report line each must get."""
    rows, lines = [], []
    for number, (file_name, write, problem) in enumerate(scans.values(), start=first_number):
        path = folder.path / f"sub-{900 + number}_ses-M00_{file_name}"
        if write is not None:
            write(path)
        rows.append({"image": str(path), "label": "AD", "participant_id": f"sub-{900 + number}",
                     "session_id": "ses-M00"})
        lines.append(f"  - {problem.format(path=path)}")
    return rows, lines


def bad_scans_case(folder: CaseFolder, names: tuple[str, ...], scans: dict = BAD_SCANS,
                   doubtful: dict | None = None) -> BadInput:
    """The good table plus one scan per name, each broken its own way (and the ``doubtful`` scans, used with a
    warning): every problem in one message, every warning in the log before it."""
    rows, problems = add_scans(folder, {name: scans[name] for name in names}, 1)
    warned_rows, warnings = add_scans(folder, doubtful or {}, len(rows) + 1)
    count, total = len(problems), len(folder.good_rows) + len(rows) + len(warned_rows)
    header = f"{CONCISE_ERROR}{count} problem{'' if count == 1 else 's'} in the {total} input scans:"
    table = folder.table([*folder.good_rows, *rows, *warned_rows])
    return BadInput({"dataset_dir": str(table)}, [header, *problems, SCAN_HINT, *warnings])


def pipeline_breaking_scans(folder: CaseFolder) -> BadInput:
    return bad_scans_case(folder, tuple(PIPELINE_BREAKING), PIPELINE_BREAKING, DOUBTFUL)


def datalist_copies_under_other_participants(folder: CaseFolder) -> BadInput:
    """A MONAI datalist beside folders named like its labels (AD/, CN/) and its participant ids, listing a
    byte-identical copy of a training scan and a re-encoded copy (float32, shifted affine: another header, the
    same voxels) under new participants in the other splits. Labels and ids must be read as written."""
    participants = list(dict.fromkeys(row["participant_id"] for row in folder.good_rows))
    split_of = {participant: ("training", "validation", "testing")[index % 3]
                for index, participant in enumerate(participants)}
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "testing": []}
    for label in ("AD", "CN"):
        (folder.path / label).mkdir()
    for row in folder.good_rows:
        scan = Path(row["image"])
        (folder.path / row["participant_id"]).mkdir(exist_ok=True)
        copied = shutil.copy(scan, folder.path / row["participant_id"] / scan.name)
        datalist[split_of[row["participant_id"]]].append(
            {"image": str(Path(copied).relative_to(folder.path)), "label": row["label"],
             "participant_id": row["participant_id"], "session_id": row["session_id"]})
    original = datalist["training"][0]
    original_path = folder.path / original["image"]
    copies = {"sub-0990": ("testing", shutil.copy(original_path, folder.path / "copy.nii.gz")),
              "sub-0991": ("validation", folder.path / "reencoded.nii.gz")}
    image = nib.load(original_path)
    shifted = image.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), shifted), copies["sub-0991"][1])
    for participant, (split, path) in copies.items():
        datalist[split].append({"image": Path(path).name, "label": original["label"], "participant_id": participant,
                                "session_id": "ses-M00"})
    datalist_path = folder.path / "datalist.json"
    datalist_path.write_text(json.dumps(datalist), encoding="utf-8")
    first = f"{original['participant_id']} (train: {original_path})"
    return BadInput({"dataset_dir": str(datalist_path)}, [
        f"{CONCISE_ERROR}2 problems in the splits given by the dataset:",
        f"  - the same voxel data under participants {first} and sub-0991 (val: {copies['sub-0991'][1]})",
        f"  - the same voxel data under participants {first} and sub-0990 (test: {copies['sub-0990'][1]})"])


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
    "pipeline_breaking_scans": pipeline_breaking_scans,
    "datalist_copies_under_other_participants": datalist_copies_under_other_participants,
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
        finished = bundle_cli(case.bundle, "run", "training", "--config_file", bundle_cli.configs(case.bundle),
                              *cli_overrides(knobs),
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


def test_validate_data_reports_what_training_refuses(
        refusals: dict[str, tuple[BadInput, Path, CompletedProcess[str]]]) -> None:
    """``alz-monai validate-data`` lists the same problems and warnings as training, without a bundle."""
    case, _, _ = refusals["pipeline_breaking_scans"]
    table = case.knobs["dataset_dir"]
    finished = subprocess.run([sys.executable, "-m", "alz_monai.cli", "validate-data", table], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    lines = finished.stdout.splitlines()
    assert finished.returncode == 1, finished.stdout[-3000:]
    reported = [line for line in case.expected if line.startswith("  - ")]
    assert len(reported) == len(PIPELINE_BREAKING) + len(DOUBTFUL)
    for expected in reported:
        assert expected in lines, f"{expected!r} not in:\n{finished.stdout[-3000:]}"
