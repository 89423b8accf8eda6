"""``daskmask bids DERIVATIVES OUTPUT``: mask every selected run of an fMRIPrep dataset.

Runs are the ``*_desc-preproc_bold.nii[.gz]`` files of the derivatives
folder or URL, filtered by ``--participant-label``, ``--session``,
``--task``, ``--run`` and ``--space``. Each run's store goes to
``OUTPUT/<the run's folder>/<its entities>_desc-daskmask_timeseries.zarr``
and ``OUTPUT/daskmask_summary.tsv`` lists every run.

``--mask fmriprep`` (the default) uses each run's own ``desc-brain_mask``; a
strategy name (``background``, ``epi``, ``whole-brain-template``,
``gm-template``, ``wm-template``) computes the mask of each run; a path or
URL uses that mask for every run. ``--confounds-strategy`` picks an fMRIPrep
denoising preset (default ``simple``; ``none`` regresses nothing).
``--t-r`` defaults to each run's sidecar ``RepetitionTime``, else the header's.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from daskmask._fs import locate
from daskmask.batch._dataset import BidsRun
from daskmask.batch._runner import RunPlan
from daskmask.cli._batch import add_batch_options, run_batch
from daskmask.cli._options import UsageError, add_masker_options, masker_parameters
from daskmask.exceptions import DaskmaskError
from daskmask.masking.strategies import STRATEGIES

#: The denoising presets of ``--confounds-strategy`` ("none": no confounds).
CONFOUNDS_STRATEGIES: tuple[str, ...] = ("simple", "scrubbing", "compcor", "ica_aroma", "none")

#: The masker parameters ``--mask`` replaces in this command.
_MASK_PARAMS = ("mask_img", "mask_strategy")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bids`` subcommand."""
    parser = commands.add_parser(
        "bids",
        help="mask the runs of an fMRIPrep derivatives dataset, one results store each",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("derivatives", metavar="DERIVATIVES_DIR_OR_URL")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR_OR_URL")
    selection = parser.add_argument_group("which runs")
    selection.add_argument("--participant-label", nargs="+", metavar="LABEL")
    selection.add_argument("--session", nargs="+", metavar="LABEL")
    selection.add_argument("--task", nargs="+", metavar="LABEL")
    selection.add_argument("--run", nargs="+", metavar="LABEL")
    selection.add_argument("--space", nargs="+", metavar="LABEL")
    denoising = parser.add_argument_group("confounds and mask")
    denoising.add_argument(
        "--confounds-strategy",
        choices=CONFOUNDS_STRATEGIES,
        default="simple",
        help="fMRIPrep denoising preset (default: simple)",
    )
    denoising.add_argument(
        "--confounds-args",
        metavar="JSON",
        default="{}",
        help='extra arguments of the preset, as JSON: \'{"motion": "full"}\'',
    )
    denoising.add_argument(
        "--mask",
        default="fmriprep",
        metavar="fmriprep|" + "|".join(STRATEGIES) + "|PATH_OR_URL",
        help="each run's brain mask (default), a strategy per run, or one mask for all",
    )
    add_masker_options(parser, leave_out=_MASK_PARAMS)
    add_batch_options(parser)
    return parser


def _labels(values: list[str] | None, prefix: str) -> list[str] | None:
    """Labels without their BIDS prefix (``sub-01`` and ``01`` both mean ``01``)."""
    if values is None:
        return None
    return [v[len(prefix) :] if v.startswith(prefix) else v for v in values]


def _mask_choice(value: str) -> dict[str, Any]:
    """Return the masker parameters ``--mask`` stands for (a run's own mask: filled per run)."""
    if value == "fmriprep":
        return {"mask_img": None, "mask_strategy": "background"}
    if value in STRATEGIES:
        return {"mask_img": None, "mask_strategy": value}
    try:
        exists = locate(value).exists()
    except DaskmaskError as error:
        raise UsageError("--mask", f"cannot reach {value} ({error})") from None
    if not exists:
        raise UsageError(
            "--mask",
            f"{value} is neither fmriprep, a strategy ({', '.join(STRATEGIES)}) nor an "
            "existing mask file; give one of them",
        )
    return {"mask_img": locate(value).url, "mask_strategy": "background"}


def _confounds_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError("--confounds-args", f"{text!r} is not valid JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise UsageError("--confounds-args", f"expected a JSON object, got {text!r}")
    return value


def _plan(run: BidsRun, args: argparse.Namespace, params: dict[str, Any], output: str) -> RunPlan:
    """One run's plan: its mask, confounds and store."""
    params = dict(params)
    problem = None
    if args.mask == "fmriprep":
        params["mask_img"] = run.mask
        if run.mask is None:
            problem = (
                f"DatasetError: no desc-brain_mask found for {run.bold}; give --mask with a "
                "strategy (epi, background, ...) or a mask file"
            )
    strategy = None if args.confounds_strategy == "none" else args.confounds_strategy
    companions = [p for p in (run.confounds, run.confounds_sidecar, run.sidecar) if p]
    return RunPlan(
        input=run.bold,
        output=locate(output).join(*run.output_path().split("/")).url,
        params=params,
        label=run.stem,
        confounds_strategy=strategy,
        confounds_args=_confounds_args(args.confounds_args) if strategy else {},
        mask=args.mask if args.mask in ("fmriprep", *STRATEGIES) else str(params["mask_img"]),
        sidecar_t_r=run.t_r,
        companions=tuple(companions) if strategy or run.sidecar else (),
        problem=problem,
    )


#: find_runs' parameter names, as the options that set them.
_SELECTION_OPTIONS = {
    "participant_label": "--participant-label",
    "session": "--session",
    "task": "--task",
    "run": "--run",
    "space": "--space",
}


def _option_named_in(message: str) -> str:
    """Return the selection option a dataset error is about, else the dataset argument."""
    for name, option in _SELECTION_OPTIONS.items():
        if f"{name}=" in message:
            return option
    return "DERIVATIVES_DIR_OR_URL"


def command(args: argparse.Namespace) -> int:
    """Run ``daskmask bids``; return the exit status."""
    from daskmask.batch._dataset import find_runs

    params = masker_parameters(args, leave_out=_MASK_PARAMS)
    params.update(_mask_choice(args.mask))
    if args.confounds_strategy != "none":
        _confounds_args(args.confounds_args)
    try:
        runs = find_runs(
            args.derivatives,
            participant_label=_labels(args.participant_label, "sub-"),
            session=_labels(args.session, "ses-"),
            task=_labels(args.task, "task-"),
            run=_labels(args.run, "run-"),
            space=_labels(args.space, "space-"),
        )
    except (DaskmaskError, OSError) as error:
        raise UsageError(_option_named_in(str(error)), str(error)) from None
    if not runs:
        raise UsageError(
            "DERIVATIVES_DIR_OR_URL",
            f"no *_desc-preproc_bold.nii[.gz] run in {args.derivatives} matches the selection "
            "(--participant-label, --session, --task, --run, --space); widen it",
        )
    output_dir = locate(args.output_dir).url
    plans = [_plan(run, args, params, output_dir) for run in runs]
    return run_batch(plans, output_dir, args, command="bids")
