"""Where the optional real data samples are: ``../shared/data`` beside the repository (or ``$VKVTRAIN_SHARED_DATA``).

Tests that read them skip with a reason when they are absent; the suite never needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("VKVTRAIN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
