"""Stage: the tracking store and what is kept in it.

In: a tracking URI (MLflow). Out: clients with retries (``store``), run names and provenance tags
(``provenance``), the leaderboard read back from trial runs (``leaderboard``), registered models and
the ``champion`` alias (``registry``), and URIs without their secrets (``redact``). Every later stage
may import it; it imports only ``medtune.data`` (dataset inputs of a run).
"""
