"""sdedit-pipeline: SDEdit as a distributed Ray Data batch job.

Stages, one a module: ``spec`` (the job), ``rows`` (every stage's columns), ``manifest`` (read items),
``decode`` (guides and masks), ``images`` (image files <-> pixels), ``compose`` (guides and masks built
from composites and stroke edits), ``editing`` (the Ray-free editor), ``actor`` (the model stage),
``write`` (images and index rows), ``run`` (the wiring), ``cli`` (``sdedit``).
The algorithm itself lives in ``sdedit_kernel``; imports only flow pipeline -> kernel.
"""

__all__ = ["JobSpec", "load_spec", "run_job"]


def __getattr__(name: str):  # lazy: ``import pipeline`` must not pull Ray in
    if name == "JobSpec":
        from pipeline.spec import JobSpec

        return JobSpec
    if name == "load_spec":
        from pipeline.jobfile import load_spec

        return load_spec
    if name == "run_job":
        from pipeline.run import run_job

        return run_job
    raise AttributeError(name)
