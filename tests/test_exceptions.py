"""daskmask's exception types; NotFittedError is scikit-learn's, made on first use.

``daskmask.exceptions.NotFittedError`` subclasses scikit-learn's (code written
for scikit-learn catches it), yet importing :mod:`daskmask.exceptions`, which
every path of daskmask does, must not import scikit-learn (0.5 s): the class
is defined when first looked up (PEP 562). The import checks run in a fresh
interpreter, whose ``sys.modules`` holds only what the code imported.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import sklearn.exceptions

import daskmask.exceptions
from daskmask.exceptions import DaskmaskError, NotFittedError
from daskmask.maskers._core import NiftiMaskerCore


def _run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON object it prints last."""
    finished = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


def test_not_fitted_error_is_scikit_learns_and_daskmasks():
    assert issubclass(NotFittedError, sklearn.exceptions.NotFittedError)
    assert issubclass(NotFittedError, DaskmaskError)
    assert issubclass(NotFittedError, ValueError)
    assert issubclass(NotFittedError, AttributeError)
    assert NotFittedError is daskmask.exceptions.NotFittedError
    assert NotFittedError.__module__ == "daskmask.exceptions"
    assert NotFittedError.__qualname__ == "NotFittedError"
    assert "scikit-learn" in NotFittedError.__doc__
    assert "NotFittedError" in dir(daskmask.exceptions)


def test_scikit_learn_code_catches_the_cores_error():
    """The plain core (no scikit-learn estimator) raises the same error type."""
    with pytest.raises(sklearn.exceptions.NotFittedError, match="not fitted yet") as caught:
        NiftiMaskerCore().transform("unused.nii.gz")
    assert type(caught.value) is NotFittedError
    assert isinstance(caught.value, DaskmaskError)


def test_not_fitted_error_pickles_as_itself():
    error = NotFittedError("This NiftiMasker instance is not fitted yet.")
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is NotFittedError
    assert restored.args == error.args


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchError'"):
        daskmask.exceptions.NoSuchError  # noqa: B018 - the lookup is the test


def test_importing_the_exceptions_does_not_import_scikit_learn():
    seen = _run_fresh(
        "import json, sys\n"
        "import daskmask.exceptions as exceptions\n"
        "before = 'sklearn' in sys.modules\n"
        "from daskmask.exceptions import NotFittedError\n"
        "import sklearn.exceptions\n"
        "print(json.dumps({'before': before, 'after': 'sklearn' in sys.modules,\n"
        "    'subclass': issubclass(NotFittedError, sklearn.exceptions.NotFittedError),\n"
        "    'same': NotFittedError is exceptions.NotFittedError}))"
    )
    assert seen == {"before": False, "after": True, "subclass": True, "same": True}


def test_a_pickled_error_loads_in_a_fresh_interpreter():
    """Unpickling looks the class up by its module-level name, which defines it."""
    payload = pickle.dumps(NotFittedError("not fitted"))
    seen = _run_fresh(
        "import json, pickle, sys\n"
        f"error = pickle.loads({payload!r})\n"
        "from daskmask.exceptions import NotFittedError\n"
        "print(json.dumps({'same': type(error) is NotFittedError, 'args': list(error.args)}))"
    )
    assert seen == {"same": True, "args": ["not fitted"]}


def test_threads_looking_it_up_at_once_get_one_class():
    """Two classes of the same name would make ``except`` miss errors: the first lookup locks."""
    seen = _run_fresh(
        "import json, threading\n"
        "import daskmask.exceptions as exceptions\n"
        "barrier, found = threading.Barrier(8), []\n"
        "def look():\n"
        "    barrier.wait()\n"
        "    found.append(exceptions.NotFittedError)\n"
        "threads = [threading.Thread(target=look) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(json.dumps({'found': len(found), 'distinct': len({id(c) for c in found})}))"
    )
    assert seen == {"found": 8, "distinct": 1}
