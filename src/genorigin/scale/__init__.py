"""Scale-out on Ray: batch attribution on Ray Data, online serving on Ray Serve (the ``[ray]`` extra).

Modules, one job each: ``cluster`` (importing Ray lazily, connecting, quieting it), ``inputs`` (files, folders,
globs and list files → the entries of a job), ``output`` (the results file: rows keyed by content hash and
path, appended as they arrive, resumable; JSON lines or Parquet), ``actors`` (the Ray Data actor: the method
built once, batches fed to one continuous-batching loop), ``batch`` (``attribute_dataset``: the job's passes on
Ray Data), ``serve`` (the Ray Serve deployment of the HTTP service) and ``cli`` (what ``--engine ray`` runs).
docs/scale.md is the user's guide. Nothing here imports Ray until a job or a deployment starts.
"""

from genorigin.scale.batch import ScaleSummary, attribute_dataset

__all__ = ["ScaleSummary", "attribute_dataset"]
