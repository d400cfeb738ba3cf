"""implicit objectives (filled in by their issue)."""

OBJECTIVES: dict = {}
