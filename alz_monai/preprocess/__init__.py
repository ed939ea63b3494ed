"""t1-linear-style preprocessing of raw T1 scans, offline: N4, registration to nilearn's MNI152 2009 template,
crop to a fixed MNI box, template brain mask, and quality control; as a command and as MONAI transforms."""

from alz_monai.preprocess.pipeline import PreprocessedScan, PreprocessSettings, preprocess_volume
from alz_monai.preprocess.qc import QC_THRESHOLD
from alz_monai.preprocess.runner import PreprocessSummary, preprocess_dataset

__all__ = ["QC_THRESHOLD", "PreprocessSettings", "PreprocessSummary", "PreprocessedScan", "preprocess_dataset",
           "preprocess_volume"]
