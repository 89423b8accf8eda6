"""Signal cleaning on numpy and dask arrays, equal to ``nilearn.signal.clean``."""

from daskmask.signal._clean import clean, clean_dask
from daskmask.signal._confounds import load_confounds
from daskmask.signal._errors import AllVolumesRemovedError
from daskmask.signal._high_variance import high_variance_confounds
from daskmask.signal._plan import CleanPlan, make_plan

__all__ = [
    "AllVolumesRemovedError",
    "CleanPlan",
    "clean",
    "clean_dask",
    "high_variance_confounds",
    "load_confounds",
    "make_plan",
]
