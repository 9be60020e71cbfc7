"""Volume I/O: DICOM series and NIfTI files <-> (S, H, W) HU volumes."""
