"""The pipeline runner: resumable, parallel runs of align -> detect -> grid -> unionize over data sets."""

from brainmap.pipeline.run.runner import DatasetRun, RunSettings, grid_sections, run_pipeline, summarize_runs

__all__ = ["DatasetRun", "RunSettings", "grid_sections", "run_pipeline", "summarize_runs"]
