"""Where the team's published test vectors are: ../shared/vectors beside the repository (CI lays
a copy of shared/ beside its clone)."""

from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
