import ctypes.util
import os

# The GPU tests run on a real GPU when a CUDA driver is present, else under Numba's CUDA simulator,
# which must be chosen before numba is first imported.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and ctypes.util.find_library("cuda") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from hypothesis import HealthCheck, settings

# "ci" (default) keeps the suite within minutes on 2 cores; "fuzz" is for long local runs:
#   HYPOTHESIS_PROFILE=fuzz pytest tests
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=2500, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import fastconv  # noqa: E402

# The tests never write the user's autotuning cache: choices stay in memory (tests/test_autotune.py
# covers the file).
fastconv.set_autotune(True, cache=None)
