"""Readers for the outputs of other tools (fMRIPrep's confounds)."""
