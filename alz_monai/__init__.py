"""alz-monai: MONAI toolkit for 3D T1-MRI classification of Alzheimer's disease."""

__version__ = "0.1.0"
