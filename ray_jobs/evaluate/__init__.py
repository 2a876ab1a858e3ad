"""Evaluate matting checkpoints on a dataset: per-image table, summary and a visual grid.

    python -m ray_jobs.evaluate --checkpoint models/base.pt --checkpoint models/lowlight.pt \\
        --data ../shared/data/alphamatting --split train --lowlight --routed --out eval/

What is scored, per image of ``--split`` (``all``: every split file present):

- every checkpoint (named ``name=URI``, or by file stem: ``models/base.pt`` is ``base``; the
  first one is the reference that the summary's "SAD vs" column compares every row with) and
  the classical baseline ``grabcut`` (:func:`matting_lib.baselines.grabcut_alpha`, trimap-free,
  same run, same images), through :class:`matting_lib.inference.predictor.Predictor` with the
  service's settings (``--max-side``);
- metrics of :mod:`matting_lib.metrics` (SAD, MSE, MAD, Grad, Conn; SAD/Grad/Conn in
  thousands, MSE/MAD means, alpha in [0, 1]) over the whole image and, for images with a
  ``trimaps/`` file, over its unknown region (value 128): columns ``<metric>_unknown``;
- condition ``normal`` (the image as stored) and, with ``--lowlight``, condition
  ``lowlight``: the same image darkened by seed 001's physical simulation
  (:func:`matting_lib.data.darken.darken`) at the fixed :data:`LOWLIGHT` parameters, the
  noise drawn from ``numpy.random.default_rng([seed, crc32(name)])``, so every run, order
  and worker count gives the same images;
- with ``--folds FOLDS_JSON`` (from ``ray_jobs.prepare_data --folds``): cross-validation. The
  photos of the folds are scored, and a checkpoint URI containing ``{fold}`` is resolved per
  image to its fold's model (``base=runs/cv-fold{fold}/best.pt``), which never saw the photo;
- the trivial answer ``background`` (alpha 0 everywhere) beside GrabCut, so a model that
  misses its subjects is visible as one (both left out with ``--no-baseline``);
- with ``--routed`` (implies ``--lowlight``): pseudo-model ``routed``, the service's
  behaviour. Each input, normal and low-light, goes to the checkpoint that
  :class:`matting_lib.routing.BrightnessRouter` picks from the input's brightness
  (checkpoints must be named ``base`` and ``lowlight``); its row repeats that model's scores
  with ``routed_to`` and ``router_correct`` (normal images should go to ``base``, low-light
  ones to ``lowlight``). The summary has the router's accuracy.

Outputs under ``--out`` (local folder or ``s3://``): ``per_image.csv`` (one row per image,
condition and model), ``summary.json`` and ``summary.md`` (conditions, parameters, models,
per-condition per-model means, router accuracy) and ``grid.png`` (input | ground truth |
each model, the first ``--grid`` images, each condition), with ``--grid-worst N`` also
``grid_worst.png`` (the N images the first model does worst on); with ``--save-alphas`` also every
predicted alpha as ``alphas/<condition>/<model>/<name>.png`` (8-bit). One progress line per
image.

Parallelism: by default everything runs in this process (fine on a 2-CPU laptop: torch
uses the cores for each forward pass). ``--ray`` (or ``--address``) scores images as Ray
tasks of ``--task-cpus`` CPUs each (fractional, default 0.5; ``--task-gpus`` for
``--device cuda``), each worker loading the checkpoints once; results are identical. Exit status: 0 all images scored, 1 some images
failed (outputs still written, failures listed), 2 bad options, checkpoint or dataset (one
``error:`` line).
"""
