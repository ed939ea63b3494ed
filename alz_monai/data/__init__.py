"""Data: discovery from four sources (folders, tables, MONAI datalists, BIDS), leakage-free splits, validation,
transforms and cached datasets."""

from alz_monai.data.augment import BatchAugmentation, DeviceBatch
from alz_monai.data.dataset import (
    CACHE_MODES,
    build_dataset,
    class_balanced_sampler,
    class_weights,
    prepare_records,
    scan_records,
    split_records,
    transform_fingerprint,
)
from alz_monai.data.records import DEFAULT_CLASSES, load_records, summarize_records
from alz_monai.data.splits import assign_splits, check_no_leakage, kfold_splits, resolve_splits
from alz_monai.data.transforms import CastToFloatd, ForegroundThreshold, NormalizeForegroundd
from alz_monai.data.validate import ScanContent, check_records, ensure_valid, validate_records

__all__ = [
    "CACHE_MODES", "DEFAULT_CLASSES", "BatchAugmentation", "CastToFloatd", "DeviceBatch", "ForegroundThreshold",
    "NormalizeForegroundd", "ScanContent",
    "assign_splits", "build_dataset", "check_no_leakage", "check_records", "class_balanced_sampler", "class_weights",
    "ensure_valid", "kfold_splits", "load_records", "prepare_records", "resolve_splits", "scan_records",
    "split_records", "summarize_records", "transform_fingerprint", "validate_records",
]
