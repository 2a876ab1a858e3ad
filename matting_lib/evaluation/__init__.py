"""Evaluating matting models on a dataset, without Ray.

- :mod:`~matting_lib.evaluation.scoring`: what one image scores (models, baselines, conditions, routing).
- :mod:`~matting_lib.evaluation.summary`: the means, the router summary, and the CSV/JSON/Markdown/grid outputs.

The job that runs it over a dataset, locally or as Ray tasks, is :mod:`ray_jobs.evaluate`.
"""


