"""Writing DICOM: image runs (XA, RF, Enhanced XA, multi-frame SC) for the simulator and tests."""
