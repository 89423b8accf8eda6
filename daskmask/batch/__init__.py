"""Many runs: finding the runs of a BIDS derivatives dataset and masking them as a batch.

:func:`find_runs` lists the preprocessed runs of an fMRIPrep derivatives
folder or URL with their companion files (:class:`BidsRun`). The runner
(``daskmask bids`` and ``daskmask run``) masks them with bounded concurrency,
skips the runs whose store is complete and made the same way, and records
every run in ``OUTPUT_DIR/daskmask_summary.tsv`` (:data:`SUMMARY_NAME`, columns
:data:`SUMMARY_COLUMNS`).
"""

from daskmask.batch._dataset import BidsExtraMissingError, BidsRun, find_runs
from daskmask.batch._summary import COLUMNS as SUMMARY_COLUMNS
from daskmask.batch._summary import SUMMARY_NAME

__all__ = ["SUMMARY_COLUMNS", "SUMMARY_NAME", "BidsExtraMissingError", "BidsRun", "find_runs"]
