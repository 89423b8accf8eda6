"""fMRIPrep's confounds: nilearn's ``load_confounds`` and ``load_confounds_strategy``.

Both read the confounds TSV and JSON that fMRIPrep writes beside each
preprocessed run, locally or in object storage, and give nilearn 0.14.1's
``(confounds, sample_mask)``. :func:`check_confounds_length` checks the result
against the run once its length is known.
"""

from daskmask.interfaces.fmriprep._load import check_confounds_length, load_confounds
from daskmask.interfaces.fmriprep._strategies import load_confounds_strategy

__all__ = ["check_confounds_length", "load_confounds", "load_confounds_strategy"]
