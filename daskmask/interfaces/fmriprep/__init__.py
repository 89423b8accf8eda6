"""fMRIPrep's confounds: nilearn's ``load_confounds`` and ``load_confounds_strategy``."""
