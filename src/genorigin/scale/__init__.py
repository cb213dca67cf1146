"""Scale-out on Ray: batch attribution on Ray Data, online serving on Ray Serve (the ``[ray]`` extra).

Modules, one job each: ``cluster`` (importing Ray lazily, connecting, quieting it), ``inputs`` (files, folders,
globs and list files → the entries of a job), ``output`` (the results file: rows keyed by content hash and
path, appended as they arrive, resumable; JSON lines or Parquet), ``actors`` (the Ray Data actor: the method
built once, batches fed to one continuous-batching loop), ``batch`` (``attribute_dataset``: the job's passes on
Ray Data), ``serve`` (the Ray Serve deployment of the HTTP service) and ``cli`` (what ``--engine ray`` runs).
docs/scale.md is the user's guide. Nothing here imports Ray until a job or a deployment starts, and the
package itself imports nothing heavy: ``genorigin attribute --help`` reads ``cli``'s options without the
service's or Ray's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScaleSummary", "attribute_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from genorigin.scale import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
