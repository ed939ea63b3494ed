"""alz-monai: MONAI toolkit for 3D T1-MRI classification of Alzheimer's disease."""

# The one place the version is written: setup.cfg reads it (``attr:``), and the bundles' metadata.json names it.
__version__ = "0.1.0"
