"""matting_lib: the matting model, losses, metrics, data and post-processing.

Plain torch and numpy; never imports Ray, so it runs on one GPU, a CPU or in a notebook.
"""

__version__ = "0.1.0"
