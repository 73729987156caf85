"""pytest set-up for the notebooks (run with `pytest --nbval-lax --nbval-current-env notebooks/`).

Notebooks read their size profile from RLSD_PROFILE. Setting it here, at import, before nbval starts any kernel,
makes every notebook kernel inherit the fast `smoke` profile unless the caller chose a profile explicitly.
"""

import os

os.environ.setdefault("RLSD_PROFILE", "smoke")
