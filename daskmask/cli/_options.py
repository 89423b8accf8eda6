"""The masker options of the command: one table, NiftiMasker's parameters one to one.

Each :class:`MaskerOption` names a :class:`~daskmask.maskers.NiftiMasker`
parameter, how the command line spells it and how a value is read, from the
command line (text) or from a ``--config`` JSON file (JSON values). The
parser, the config file and the error messages are all generated from
:data:`MASKER_OPTIONS`, so a parameter is described once.

Parameters left out, and why: ``runs`` labels time points of one
concatenated input (a batch takes one run per file), ``memory`` and
``memory_level`` are accepted by NiftiMasker for nilearn compatibility only,
``verbose`` is replaced by the progress display, ``reports`` and ``cmap``
only shape HTML reports, which a batch does not write.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskmask import _params
from daskmask._fs import locate
from daskmask.maskers._core import NiftiMaskerCore
from daskmask.masking.strategies import STRATEGIES


class UsageError(Exception):
    """A command-line mistake: the message names the option and the fix (exit status 2)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"argument {option}: {message}")
        self.option = option


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{text!r} is not valid JSON ({error.msg})") from None


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = _json_text(value)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object such as '{{\"opening\": 10}}', got {value!r}")
    return value


def _standardize(value: Any) -> str | bool | None:
    words: dict[str, str | bool | None] = {
        "zscore_sample": "zscore_sample",
        "psc": "psc",
        "true": True,
        "false": False,
        "none": None,
    }
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ValueError(f"expected one of {', '.join(words)}, got {value!r}")


def _smoothing(value: Any) -> float | list[float] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, list | tuple) else [value]
    numbers = [_number(float(v) if isinstance(v, str) else v) for v in values]
    if len(numbers) not in (1, 3):
        raise ValueError(f"expected one FWHM or three (x y z), got {len(numbers)} values")
    return numbers[0] if len(numbers) == 1 else numbers


def _affine(value: Any) -> list[list[float]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = _json_text(value)
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape not in ((3, 3), (4, 4)) or not np.all(np.isfinite(array)):
        raise ValueError(
            "expected a 3x3 or 4x4 matrix in JSON, e.g. '[[3,0,0],[0,3,0],[0,0,3]]', "
            f"got {value!r}"
        )
    return array.tolist()


def _shape(value: Any) -> list[int] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, list | tuple) else [value]
    try:
        sizes = [int(v) for v in values]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or any(n < 1 for n in sizes) or any(isinstance(v, bool) for v in values):
        raise ValueError(f"expected three positive sizes (x y z), got {value!r}")
    return sizes


def _optional_number(value: Any) -> float | None:
    if value is None:
        return None
    return _number(float(value) if isinstance(value, str) else value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"expected one of {', '.join(STRATEGIES)}, got {value!r}")
    return str(value)


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


@dataclass(frozen=True)
class MaskerOption:
    """One NiftiMasker parameter as a command-line option.

    Attributes
    ----------
    param : str
        The NiftiMasker parameter (also the key in a ``--config`` file).
    help : str
        What it does, for ``--help``.
    convert : callable
        Turns a command-line value or a JSON value into the parameter's
        value; raises ValueError with what was expected.
    switch : bool
        A ``--name/--no-name`` pair instead of an option taking a value.
    nargs, metavar, choices
        As for :meth:`argparse.ArgumentParser.add_argument`.

    """

    param: str
    help: str
    convert: Callable[[Any], Any]
    switch: bool = False
    nargs: str | int | None = None
    metavar: str | None = None
    choices: Sequence[str] | None = field(default=None)

    @property
    def flag(self) -> str:
        """The option as typed: ``--mask-strategy`` for ``mask_strategy``."""
        return "--" + self.param.replace("_", "-")


#: NiftiMasker's parameters as options (see the module docstring for those left out).
MASKER_OPTIONS: tuple[MaskerOption, ...] = (
    MaskerOption(
        "mask_img",
        "a mask image (path or URL) used for every run instead of computing one",
        _text,
        metavar="PATH_OR_URL",
    ),
    MaskerOption(
        "mask_strategy",
        "how the mask is computed when no mask is given",
        _strategy,
        choices=tuple(STRATEGIES),
    ),
    MaskerOption(
        "mask_args",
        "extra arguments of the mask function, as JSON: '{\"opening\": 10}'",
        _mapping,
        metavar="JSON",
    ),
    MaskerOption(
        "smoothing_fwhm",
        "Gaussian smoothing before masking, FWHM in mm (one value, or x y z)",
        _smoothing,
        nargs="+",
        metavar="MM",
    ),
    MaskerOption(
        "standardize",
        "standardisation of each time series",
        _standardize,
        choices=("zscore_sample", "psc", "true", "false", "none"),
    ),
    MaskerOption(
        "standardize_confounds", "z-score the confounds before removing them", _boolean, True
    ),
    MaskerOption("detrend", "remove a linear trend from each time series", _boolean, True),
    MaskerOption(
        "high_variance_confounds",
        "add the 5 high-variance confounds of the run",
        _boolean,
        True,
    ),
    MaskerOption("low_pass", "low-pass cut-off in Hz", _optional_number, metavar="HZ"),
    MaskerOption("high_pass", "high-pass cut-off in Hz", _optional_number, metavar="HZ"),
    MaskerOption(
        "t_r",
        "repetition time in s (default: the sidecar's RepetitionTime, else the header's)",
        _optional_number,
        metavar="SECONDS",
    ),
    MaskerOption(
        "target_affine",
        "resample to this 3x3 or 4x4 affine, as JSON: '[[3,0,0],[0,3,0],[0,0,3]]'",
        _affine,
        metavar="JSON",
    ),
    MaskerOption(
        "target_shape",
        "shape of the resampling grid (needs a 4x4 --target-affine)",
        _shape,
        nargs=3,
        metavar="N",
    ),
    MaskerOption("dtype", "data type of the signals (float32, float64, auto)", _text),
    MaskerOption(
        "clean_args",
        'extra arguments of the signal cleaning, as JSON: \'{"filter": "cosine"}\'',
        _mapping,
        metavar="JSON",
    ),
)

OPTIONS_BY_PARAM: Mapping[str, MaskerOption] = {option.param: option for option in MASKER_OPTIONS}


def add_masker_options(parser: argparse.ArgumentParser, *, leave_out: Sequence[str] = ()) -> None:
    """Add the masker options to ``parser``; values left unset are absent from the namespace."""
    group = parser.add_argument_group(
        "masker options (NiftiMasker's parameters; also from --config FILE.json)"
    )
    group.add_argument(
        "--config",
        metavar="FILE.json",
        help="masker parameters as a JSON object (NiftiMasker's names); options given here win",
    )
    for option in MASKER_OPTIONS:
        if option.param in leave_out:
            continue
        kwargs: dict[str, Any] = {
            "dest": option.param,
            "help": option.help,
            "default": argparse.SUPPRESS,
        }
        if option.switch:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(nargs=option.nargs, metavar=option.metavar, choices=option.choices)
            if option.metavar is not None:
                kwargs.pop("choices")
        group.add_argument(option.flag, **kwargs)


def _read_config(path: str) -> dict[str, Any]:
    """Read a ``--config`` file: a JSON object of NiftiMasker parameters."""
    try:
        with locate(path).open("rb") as handle:
            content = json.loads(handle.read())
    except json.JSONDecodeError as error:
        raise UsageError(
            "--config", f"{path} is not valid JSON ({error.msg}, line {error.lineno})"
        ) from None
    except OSError as error:
        raise UsageError("--config", f"cannot read {path}: {error}") from None
    if not isinstance(content, dict):
        raise UsageError(
            "--config",
            f'{path} must hold a JSON object of NiftiMasker parameters, e.g. {{"detrend": true}}',
        )
    return content


def masker_parameters(
    namespace: argparse.Namespace, *, leave_out: Sequence[str] = ()
) -> dict[str, Any]:
    """Return the NiftiMasker parameters a command asks for: defaults, config, then options.

    Raises
    ------
    UsageError
        An unknown key in the config file, a value that does not fit, or a
        combination NiftiMasker refuses; the message names the option.

    """
    params = _params.param_values(NiftiMaskerCore())
    config_path = getattr(namespace, "config", None)
    if config_path:
        for key, value in _read_config(config_path).items():
            option = OPTIONS_BY_PARAM.get(key)
            if option is None or key in leave_out:
                known = ", ".join(p for p in OPTIONS_BY_PARAM if p not in leave_out)
                hint = " (this command chooses the mask with --mask)" if key in leave_out else ""
                raise UsageError(
                    "--config",
                    f"{config_path}: {key!r} is not a masker parameter this command takes"
                    f"{hint}; use one of {known}",
                )
            try:
                params[key] = option.convert(value)
            except ValueError as error:
                raise UsageError("--config", f"{config_path}: {key}: {error}") from None
    for option in MASKER_OPTIONS:
        if option.param in leave_out or not hasattr(namespace, option.param):
            continue
        try:
            params[option.param] = option.convert(getattr(namespace, option.param))
        except ValueError as error:
            raise UsageError(option.flag, str(error)) from None
    check_parameters(params)
    return params


def check_parameters(params: Mapping[str, Any]) -> None:
    """Let NiftiMasker judge the parameters now, not at the first run; errors name the option."""
    masker = NiftiMaskerCore(**params)
    try:
        _params.validate_params(masker)
    except (TypeError, ValueError) as error:
        name = next((p for p in OPTIONS_BY_PARAM if repr(p) in str(error) or p in str(error)), "")
        flag = OPTIONS_BY_PARAM[name].flag if name else "masker options"
        raise UsageError(flag, str(error).replace("\n", " ")) from None
    if params.get("target_shape") is not None and (
        params.get("target_affine") is None or np.asarray(params["target_affine"]).shape != (4, 4)
    ):
        raise UsageError("--target-shape", "needs a 4x4 --target-affine as well")
